"""Lightning glue shared by every nested-sub-model paper (QDyLoRA, SoFT, SortedNet).

Training: at each optimizer step the sampler picks sub-models; every micro-batch of that step
trains on all of them (losses averaged). ``losses(batch, subs)`` computes them; by default one
forward per sub-model, and a paper whose sub-models share a forward (SoFT: every exit of one pass)
overrides it. Evaluation: every sub-model of ``eval_grid`` is scored on the same weights and logged as
``<split>/<metric>@<sub-model>`` (plus the loader's evaluation condition, if any). Subclasses say how
to compute a loss (``loss``) and what to measure per sub-model (``evaluate_submodel``).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from modules.base_module import BaseModule
from modules.submodel import NestedModel, Sampler, SubModel, metric_key


class NestedModule(BaseModule):
    def __init__(self, model: torch.nn.Module, nested: NestedModel, sampler: Sampler,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: dict | None = None,
                 eval_grid: Sequence[SubModel] | None = None):
        super().__init__(optimizer, scheduler)
        self.model, self.nested, self.sampler = model, nested, sampler
        self.eval_grid = list(eval_grid) if eval_grid is not None else nested.space.grid()
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found

    # --- what a paper defines ----------------------------------------------------------
    def loss(self, batch: Any) -> torch.Tensor:
        """Training loss of the active sub-model on ``batch``."""
        raise NotImplementedError

    def losses(self, batch: Any, subs: Sequence[SubModel]) -> list[torch.Tensor]:
        """The training loss of each of ``subs`` on ``batch``: one forward per sub-model by default."""
        out = []
        for sub in subs:
            self.nested.apply(sub)
            out.append(self.loss(batch))
        return out

    def evaluate_submodel(self, batch: Any, split: str) -> dict[str, float | torch.Tensor]:
        """Metrics of the active sub-model on ``batch`` (averaged over batches by Lightning)."""
        return {"loss": self.loss(batch)}

    # --- training ------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # global_step counts optimizer steps, so all micro-batches of an accumulation step share it.
        subs = self.sampler.submodels(self.global_step)
        losses = self.losses(batch, subs)
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
        self._evaluate_grid(batch, "val", dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate_grid(batch, "test", dataloader_idx)

    def _evaluate_grid(self, batch: Any, split: str, dataloader_idx: int = 0) -> None:
        bs, condition = self.batch_size(batch), self.eval_condition(split, dataloader_idx)
        for sub in self.eval_grid:
            self.nested.apply(sub)
            self.log_cell(split, self.evaluate_submodel(batch, split), sub.merged(condition), bs)
        self.nested.apply(self.nested.space.largest)
