"""Depth as a nested axis of a causal LM: the first n decoder layers, read through the model's own final
norm and LM head (no new parameters; SoFT's sub-models and SortedNet's depth for LLMs).

The decoder families below run ``self.layers[: config.num_hidden_layers]`` in their forward, so setting that
config value to n truncates the depth of every forward, ``generate`` and KV cache included, without
touching the module tree (state dicts and checkpoints keep every layer).
"""
from __future__ import annotations

from torch import nn

# model_type of HF decoders whose forward slices its layer list by config.num_hidden_layers
CONFIG_SLICED_FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe")


class DepthError(ValueError):
    """A depth the model cannot take, or a model without the expected layout; one line."""


class DecoderDepth:
    """``set_depth(n)`` switches ``model`` (an HF causal LM) to its first n decoder layers."""

    def __init__(self, model: nn.Module):
        config = model.config
        if config.model_type not in CONFIG_SLICED_FAMILIES:
            raise DepthError(f"a depth axis needs a decoder whose forward runs its first config.num_hidden_layers "
                             f"layers; {type(model).__name__} (model_type={config.model_type!r}) is not one of "
                             f"{', '.join(CONFIG_SLICED_FAMILIES)}")
        self.config = config
        self.num_layers = int(config.num_hidden_layers)

    def check(self, n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.num_layers:
            raise DepthError(f"depth {n!r} is outside this model's layers: valid depths are 1..{self.num_layers}")
        return n

    def set_depth(self, n: int) -> None:
        self.config.num_hidden_layers = self.check(n)
