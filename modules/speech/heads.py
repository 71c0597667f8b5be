"""SUPERB utterance-level heads: Linear(d, 256) -> length-masked mean pooling -> Linear(256, classes)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames only: (B, T, C), (B,) -> (B, C). A zero length counts as one frame."""
    mask = length_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class MeanPoolHead(nn.Module):
    """Project frames, mean-pool the valid ones, classify: (B, T, d), (B,) -> logits (B, classes)."""

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 256):
        super().__init__()
        self.proj = nn.Linear(input_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.out(masked_mean(self.proj(x), lengths))


class IntentHead(nn.Module):
    """Fluent-Speech-Commands style: one shared projection + pooling, one classifier per slot."""

    SLOTS = ("action", "object", "location")

    def __init__(self, input_dim: int, slot_classes: Sequence[int], hidden_dim: int = 256,
                 slots: Sequence[str] = SLOTS):
        super().__init__()
        if len(slot_classes) != len(slots):
            raise ValueError(f"{len(slots)} slots {tuple(slots)} need {len(slots)} class counts, got {list(slot_classes)}")
        self.slots = tuple(slots)
        self.proj = nn.Linear(input_dim, hidden_dim)
        self.outs = nn.ModuleList(nn.Linear(hidden_dim, n) for n in slot_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        pooled = masked_mean(self.proj(x), lengths)  # (B, 256)
        return [out(pooled) for out in self.outs]  # one (B, n_slot) per slot

    @staticmethod
    def loss(logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Sum of per-slot cross-entropies; targets (B, slots)."""
        return sum(nn.functional.cross_entropy(lg, targets[:, i]) for i, lg in enumerate(logits))


def intent_correct(logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """(B,) bool: an utterance is right only if every slot is (SUPERB IC accuracy)."""
    preds = torch.stack([lg.argmax(-1) for lg in logits], dim=1)  # (B, slots)
    return (preds == targets).all(dim=1)


def intent_accuracy(logits: Sequence[torch.Tensor], targets: torch.Tensor) -> float:
    return intent_correct(logits, targets).float().mean().item()
