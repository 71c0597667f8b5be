"""Lightning glue shared by every nested-sub-model paper (QDyLoRA, SoFT, SortedNet).

Training: at each optimizer step the sampler picks sub-models; every micro-batch of that step
trains on all of them (losses averaged). Evaluation: every sub-model of ``eval_grid`` is scored
on the same weights and logged as ``<split>/<metric>@<sub-model>``. Subclasses say how to compute
a loss (``loss``) and what to measure per sub-model (``evaluate_submodel``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch

from modules.submodel import NestedModel, Sampler, SubModel, metric_key


class NestedModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, nested: NestedModel, sampler: Sampler,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: dict | None = None,
                 eval_grid: Sequence[SubModel] | None = None):
        super().__init__()
        self.model, self.nested, self.sampler = model, nested, sampler
        self.optimizer_factory, self.scheduler_cfg = optimizer, scheduler or {}
        self.eval_grid = list(eval_grid) if eval_grid is not None else nested.space.grid()
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found

    # --- what a paper defines ----------------------------------------------------------
    def loss(self, batch: Any) -> torch.Tensor:
        """Training loss of the active sub-model on ``batch``."""
        raise NotImplementedError

    def evaluate_submodel(self, batch: Any, split: str) -> dict[str, float | torch.Tensor]:
        """Metrics of the active sub-model on ``batch`` (averaged over batches by Lightning)."""
        return {"loss": self.loss(batch)}

    @staticmethod
    def batch_size(batch: Any) -> int:
        return len(batch["input_ids"]) if isinstance(batch, dict) else len(batch[0])

    # --- training ------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # global_step counts optimizer steps, so all micro-batches of an accumulation step share it.
        subs = self.sampler.submodels(self.global_step)
        losses = []
        for sub in subs:
            self.nested.apply(sub)
            losses.append(self.loss(batch))
        loss = torch.stack(losses).mean()
        bs = self.batch_size(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        if len(subs) > 1:
            for sub, sub_loss in zip(subs, losses):
                self.log(metric_key("train/loss", sub), sub_loss, batch_size=bs)
        elif subs[0].dims:
            for axis, value in subs[0].dims:
                self.log(f"train/{axis}", float(value), batch_size=bs)
        return loss

    # --- evaluation over the grid ------------------------------------------------------
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate_grid(batch, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate_grid(batch, "test")  # several test sets log distinct metric names

    def _evaluate_grid(self, batch: Any, split: str) -> None:
        bs = self.batch_size(batch)
        for sub in self.eval_grid:
            self.nested.apply(sub)
            for name, value in self.evaluate_submodel(batch, split).items():
                self.log(metric_key(f"{split}/{name}", sub), value, batch_size=bs, add_dataloader_idx=False)
        self.nested.apply(self.nested.space.largest)

    def on_validation_epoch_end(self) -> None:
        self._log_perplexities("val")

    def on_test_epoch_end(self) -> None:
        self._log_perplexities("test")

    def _log_perplexities(self, split: str) -> None:
        # Perplexity of the epoch-mean loss (exp of a mean, not a mean of exps).
        metrics = self.trainer.callback_metrics
        for sub in self.eval_grid:
            loss = metrics.get(metric_key(f"{split}/loss", sub))
            if loss is not None:
                self.log(metric_key(f"{split}/ppl", sub), math.exp(min(float(loss), 50.0)))

    # --- optimisation and checkpoints ---------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        name = self.scheduler_cfg.get("name")
        if not name:
            return optimizer
        from transformers import get_scheduler

        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(round(self.scheduler_cfg.get("warmup_ratio", 0.0) * total))
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Keep only trainable weights: a frozen (possibly 4-bit) base is rebuilt from its name.
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
