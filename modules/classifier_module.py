"""Nested sequence classification (GLUE): an HF ``AutoModelForSequenceClassification`` under an adapter.

Loss: cross-entropy, or MSE for a regression task (``num_labels == 1``, STS-B). Evaluation scores every
sub-model of ``eval_grid`` (the adapter's rank / Kronecker-rank values) on the same weights. The loss is
batch-averaged as usual; GLUE's prediction-based metrics (F1, Matthews correlation, Pearson / Spearman, and
accuracy) are not batch-averageable, so the predictions of each (split, sub-model, evaluation condition) are
collected over the epoch and scored once in ``on_validation_epoch_end`` / ``on_test_epoch_end`` with
torchmetrics, under ``<split>/<metric>@<cell>`` (``test/acc@kron_rank=2,testset=matched``). Collection is per
process: under DDP each rank would score its own shard (not gathered; single-device runs only).

Metric names: ``acc`` (accuracy), ``f1`` (binary F1 of class 1), ``mcc`` (Matthews correlation),
``pearson``, ``spearman``; GLUE's official metrics per task are listed in data/glue.py.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from modules.nested_module import NestedModule
from modules.submodel import SubModel, metric_key

METRICS = ("acc", "f1", "mcc", "pearson", "spearman")
REGRESSION_METRICS = ("pearson", "spearman")


def glue_metrics(names: Sequence[str], preds: torch.Tensor, target: torch.Tensor,
                 num_labels: int) -> dict[str, float]:
    """The named metrics of predicted labels (classification) or predicted scores (regression)."""
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef
    from torchmetrics.functional.classification import (binary_f1_score, multiclass_accuracy,
                                                        multiclass_matthews_corrcoef)

    out: dict[str, float] = {}
    for name in names:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; valid choices: {', '.join(METRICS)}")
        if name in REGRESSION_METRICS:
            fn = pearson_corrcoef if name == "pearson" else spearman_corrcoef
            value = fn(preds.double(), target.double())
        elif name == "acc":
            value = (preds == target).double().mean()
        elif name == "f1":
            value = binary_f1_score(preds, target)
        else:
            value = multiclass_matthews_corrcoef(preds, target, num_classes=max(num_labels, 2))
        out[name] = float(value)
    return out


class NestedSequenceClassifier(NestedModule):
    """``model(**batch)`` returns ``.logits`` (B, num_labels); ``batch["labels"]`` holds the targets."""

    def __init__(self, *args: Any, num_labels: int = 2, metrics: Sequence[str] = ("acc",), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.num_labels, self.metric_names = int(num_labels), tuple(metrics)
        self._collected: dict[tuple[str, SubModel], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    # --- loss -------------------------------------------------------------------------------------------
    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits

    def loss_of(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.is_regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_of(self.logits(batch), batch["labels"])

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1).float() if self.is_regression else logits.argmax(-1)

    def evaluate_submodel(self, batch: Mapping[str, torch.Tensor], split: str) -> dict[str, torch.Tensor]:
        """The batch loss (logged batch-averaged) and the batch's predictions and targets (``preds``,
        ``target``: collected for the epoch-level metrics, not logged)."""
        logits = self.logits(batch)
        return {"loss": self.loss_of(logits, batch["labels"]), "preds": self.predictions(logits).detach(),
                "target": batch["labels"].detach()}

    # --- evaluation: collect per cell, score at the epoch's end -----------------------------------------
    def _evaluate_grid(self, batch: Any, split: str, dataloader_idx: int = 0) -> None:
        bs, condition = self.batch_size(batch), self.eval_condition(split, dataloader_idx)
        for sub in self.eval_grid:
            self.nested.apply(sub)
            out = self.evaluate_submodel(batch, split)
            preds, target = out.pop("preds"), out.pop("target")
            cell = sub.merged(condition)
            self.log_cell(split, out, cell, bs)
            self._collected.setdefault((split, cell), []).append((preds.cpu(), target.cpu()))
        self.nested.apply(self.nested.space.largest)

    def on_validation_epoch_start(self) -> None:
        self._collected = {k: v for k, v in self._collected.items() if k[0] != "val"}

    def on_test_epoch_start(self) -> None:
        self._collected = {k: v for k, v in self._collected.items() if k[0] != "test"}

    def epoch_metrics(self, split: str) -> dict[str, float]:
        """``<split>/<metric>@<cell>`` of every cell collected for ``split`` (and forgets them)."""
        out: dict[str, float] = {}
        for (s, cell), parts in sorted(self._collected.items(), key=lambda kv: (kv[0][0], kv[0][1].sort_key)):
            if s != split:
                continue
            preds, target = torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts])
            for name, value in glue_metrics(self.metric_names, preds, target, self.num_labels).items():
                out[metric_key(f"{split}/{name}", cell)] = value
        self._collected = {k: v for k, v in self._collected.items() if k[0] != split}
        return out

    def _log_epoch(self, split: str) -> None:
        for key, value in self.epoch_metrics(split).items():
            self.log(key, value, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
