"""The Lightning base every paper's module builds on.

What all of them share, and nothing paper-specific:
- optimizers and schedulers from config: one optimizer over the trainable parameters, or several named
  ones (a GAN's generator and critic) from ``optimizer_groups()``; schedulers by transformers' name;
- checkpoints that hold only the trainable weights (a frozen or 4-bit base, a teacher, a previous
  generator are rebuilt from config) plus the random-number state, so a resumed run draws the same
  dropout masks and noise as an uninterrupted one;
- frozen reference models (``add_reference``): kept in eval mode, never trained, never checkpointed;
- evaluation conditions: a datamodule with several test sets (or corruption conditions) names them in
  ``eval_conditions(split)``, and every metric of that loader carries the condition in its key
  (``test/acc@testset=ood``), so test sets never collide;
- ``log_cell``: log a dict of metrics for one grid cell under ``<split>/<name>@<cell>``.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Mapping

import lightning.pytorch as pl
import numpy as np
import torch

from modules.submodel import SubModel, metric_key

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class BaseModule(pl.LightningModule):
    def __init__(self, optimizer: OptimizerFactory | Mapping[str, OptimizerFactory] | None = None,
                 scheduler: dict | None = None):
        super().__init__()
        self.optimizer_factory, self.scheduler_cfg = optimizer, dict(scheduler or {})
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self._reference_names: list[str] = []
        self._rng_to_restore: dict[str, Any] | None = None

    # --- frozen reference models ---------------------------------------------------------
    def add_reference(self, name: str, model: torch.nn.Module) -> torch.nn.Module:
        """Attach a frozen model (teacher, previous generator): moved with the module, never trained,
        left out of checkpoints (it is rebuilt from config), always in eval mode."""
        model.requires_grad_(False).eval()
        setattr(self, name, model)
        if name not in self._reference_names:
            self._reference_names.append(name)
        return model

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self._reference_names:
            getattr(self, name).eval()
        return self

    # --- optimisation --------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters per optimizer name; one optimizer over every trainable parameter by default.
        With several names, ``optimizer`` must map each name to its factory."""
        return {"default": [p for p in self.parameters() if p.requires_grad]}

    def configure_optimizers(self) -> Any:
        groups = self.optimizer_groups()
        factories = (self.optimizer_factory if isinstance(self.optimizer_factory, Mapping)
                     else {name: self.optimizer_factory for name in groups})
        missing = [name for name in groups if name not in factories]
        if missing:
            raise ValueError(f"optimizer: no factory for {missing}; this module has optimizers {list(groups)}")
        optimizers = [factories[name](params) for name, params in groups.items()]
        configs = [self._with_scheduler(opt) for opt in optimizers]
        return configs[0] if len(configs) == 1 else configs

    def _with_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        name = self.scheduler_cfg.get("name")
        if not name:
            return {"optimizer": optimizer}
        from transformers import get_scheduler

        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(round(self.scheduler_cfg.get("warmup_ratio", 0.0) * total))
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- checkpoints: trainable weights + RNG state ----------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # restored when training resumes (on_train_start), after everything that may draw at set-up
        self._rng_to_restore = checkpoint.get("rng")

    def on_train_start(self) -> None:
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    # --- logging -------------------------------------------------------------------------
    def eval_condition(self, split: str, dataloader_idx: int = 0) -> SubModel:
        """The condition of one evaluation loader, from the datamodule's ``eval_conditions(split)``
        (a list with one mapping per loader, e.g. ``[{}, {"testset": "ood"}]``); empty by default."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        conditions = getattr(datamodule, "eval_conditions", None)
        named = conditions(split) if callable(conditions) else None
        return SubModel.of(named[dataloader_idx]) if named and named[dataloader_idx] else SubModel(())

    def log_cell(self, split: str, metrics: Mapping[str, Any], cell: SubModel, batch_size: int,
                 **kwargs: Any) -> None:
        for name, value in metrics.items():
            self.log(metric_key(f"{split}/{name}", cell), value, batch_size=batch_size,
                     add_dataloader_idx=False, **kwargs)

    @staticmethod
    def batch_size(batch: Any) -> int:
        if isinstance(batch, Mapping):
            return len(next(iter(batch.values())))
        return len(batch[0])


def rng_state() -> dict[str, Any]:
    """The torch / numpy / python random states as tensors, ints and tuples only: a checkpoint holding them
    loads with ``torch.load(weights_only=True)`` (numpy's own state holds an ndarray, which it refuses)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "python": random.getstate()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
