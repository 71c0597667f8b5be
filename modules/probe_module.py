"""SUPERB-style probing of a frozen upstream on cached features: featurizer + task head, nothing else.

There is no encoder inside: batches carry the cached hidden states (``data/speech.py``),
``{"hidden": (L+1, B, T, C), "lengths": (B,), "labels": (B,) or (B, slots)}``. The featurizer is the
softmax-weighted sum of all hidden states (``layer="weighted"``) or one of them (``layer=<i>``, 0 = the
embeddings); the head is the mean-pool head or the three-slot intent head (an utterance is right only if
all three slots are). s3prl's recipe: Adam, lr 1e-4, gradient clipping at 1 (the optimizer and trainer
groups carry them).

Metrics carry the layer setting as an integer axis, ``layer=<i>``, with ``layer=-1`` for the weighted sum,
beside the loader's evaluation condition: ``test/acc@condition=snr10_white,layer=3``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from modules.base_module import BaseModule
from modules.speech.featurizer import SingleLayer, build_featurizer
from modules.speech.heads import IntentHead, MeanPoolHead, intent_correct
from modules.submodel import SubModel

WEIGHTED = -1  # the layer axis value of the weighted-sum featurizer


def layer_value(layer: int | str) -> int:
    """``"weighted"`` -> -1, an index -> itself (the ``layer`` axis of metric keys)."""
    return WEIGHTED if layer == "weighted" else int(layer)


class SpeechProbe(BaseModule):
    def __init__(self, num_layers: int, input_dim: int, num_classes: Sequence[int], layer: int | str = "weighted",
                 head: str = "mean_pool", hidden_dim: int = 256, layer_norm: bool = False,
                 optimizer=None, scheduler: dict | None = None):
        super().__init__(optimizer, scheduler)
        if head not in ("mean_pool", "intent"):
            raise ValueError(f"head must be mean_pool or intent, got {head!r}")
        self.featurizer = build_featurizer(num_layers, "weighted" if layer_value(layer) == WEIGHTED else int(layer),
                                           layer_norm=layer_norm)
        self.intent = head == "intent"
        if self.intent:
            self.head = IntentHead(input_dim, list(num_classes), hidden_dim)
        else:
            if len(num_classes) != 1:
                raise ValueError(f"the mean-pool head classifies one label; this task has {len(num_classes)} slots "
                                 "(use head=intent)")
            self.head = MeanPoolHead(input_dim, int(num_classes[0]), hidden_dim)
        self.cell = SubModel.of(layer=layer_value(layer))

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> Any:
        """hidden: all states (L+1, B, T, C), or for a single-layer probe just its own (1, B, T, C)."""
        if isinstance(self.featurizer, SingleLayer) and hidden.shape[0] == 1 < self.featurizer.num_layers:
            return self.head(hidden[0], lengths)  # the loader gathered the probed layer only
        return self.head(self.featurizer(hidden), lengths)

    @property
    def probed_layer(self) -> int | None:
        """The hidden state a single-layer probe reads (the loader need gather no other); None: all."""
        return self.featurizer.layer if isinstance(self.featurizer, SingleLayer) else None

    def loss_and_correct(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, labels = self(batch["hidden"], batch["lengths"]), batch["labels"]
        if self.intent:
            return IntentHead.loss(logits, labels), intent_correct(logits, labels)
        return F.cross_entropy(logits, labels), logits.argmax(-1) == labels

    def layer_weights(self) -> list[float]:
        """The featurizer's weights over hidden states (softmax; one-hot for a single layer)."""
        return [float(w) for w in self.featurizer.layer_weights().cpu()]

    # --- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, correct = self.loss_and_correct(batch)
        bs = len(batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/acc", correct.float().mean(), batch_size=bs)
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], split: str, dataloader_idx: int) -> None:
        loss, correct = self.loss_and_correct(batch)
        cell = self.cell.merged(self.eval_condition(split, dataloader_idx))
        self.log_cell(split, {"loss": loss, "acc": correct.float().mean()}, cell, len(batch["labels"]))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", dataloader_idx)
