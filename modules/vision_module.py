"""Nested image classification (SortedNet on ViT): cross-entropy per sub-network, accuracy per grid cell.

Training and grid evaluation come from ``NestedModule``: at each optimizer step the sampler picks
sub-networks, each is trained on the batch and their losses are averaged; evaluation scores every
sub-network of ``eval_grid`` on the same weights (``val/acc@depth=2,width=32``, ...).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from modules.nested_module import NestedModule

Batch = tuple[torch.Tensor, torch.Tensor]  # (images (B, C, H, W), labels (B,))


class NestedClassifier(NestedModule):
    """``model(pixels) -> logits`` runs the active sub-network (a ``SortedViT`` or any model the
    ``NestedModel`` setters switch)."""

    def __init__(self, *args: Any, label_smoothing: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.label_smoothing = label_smoothing

    def loss(self, batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y, label_smoothing=self.label_smoothing)

    def evaluate_submodel(self, batch: Batch, split: str) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self.model(x)  # (B, num_labels)
        return {"loss": F.cross_entropy(logits, y), "acc": (logits.argmax(-1) == y).float().mean()}
