"""s3prl-style featurizer: one feature sequence from all hidden states of a frozen upstream."""
from __future__ import annotations

import torch
from torch import nn


class WeightedLayerSum(nn.Module):
    """Softmax-weighted sum over layers; the weights start equal (zeros before the softmax), as in s3prl.

    ``layer_norm=True`` normalises each layer over C first (no affine), so layers with larger norms do
    not dominate the sum just by scale."""

    def __init__(self, num_layers: int, layer_norm: bool = False):
        super().__init__()
        self.num_layers = num_layers
        self.layer_norm = layer_norm
        self.weights = nn.Parameter(torch.zeros(num_layers))

    def layer_weights(self) -> torch.Tensor:
        """The softmax weights (L+1,), detached, for logging."""
        return self.weights.detach().softmax(-1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(L+1, B, T, C) -> (B, T, C)."""
        if hidden.shape[0] != self.num_layers:
            raise ValueError(f"featurizer built for {self.num_layers} layers got {hidden.shape[0]}")
        if self.layer_norm:
            hidden = nn.functional.layer_norm(hidden, hidden.shape[-1:])
        w = self.weights.softmax(-1).to(hidden.dtype)
        return torch.einsum("l,lbtc->btc", w, hidden)


class SingleLayer(nn.Module):
    """One hidden state (index 0 = the embeddings, L = the top layer): the per-layer probe."""

    def __init__(self, num_layers: int, layer: int):
        super().__init__()
        if not -num_layers <= layer < num_layers:
            raise ValueError(f"layer {layer} out of range for {num_layers} hidden states (0..{num_layers - 1})")
        self.num_layers, self.layer = num_layers, layer % num_layers

    def layer_weights(self) -> torch.Tensor:
        return nn.functional.one_hot(torch.tensor(self.layer), self.num_layers).float()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[self.layer]  # (B, T, C)


def build_featurizer(num_layers: int, layer: int | str = "weighted", layer_norm: bool = False) -> nn.Module:
    """``layer="weighted"`` -> WeightedLayerSum; an int -> SingleLayer."""
    if layer == "weighted":
        return WeightedLayerSum(num_layers, layer_norm=layer_norm)
    if isinstance(layer, int) or (isinstance(layer, str) and layer.lstrip("-").isdigit()):
        return SingleLayer(num_layers, int(layer))
    raise ValueError(f"featurizer layer must be 'weighted' or a layer index, got {layer!r}")
