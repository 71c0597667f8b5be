"""Adapters by name. Each attaches itself to a model and returns the nested axes it adds
(a dynamic-rank adapter adds a ``rank`` axis; no adapter adds none)."""
from __future__ import annotations

from functools import partial
from typing import Sequence

from torch import nn

from modules.adapters.nested_lora import inject_nested_lora, set_rank
from modules.submodel import NestedModel

ADAPTERS = ("none", "nested_lora", "peft_lora")


def attach_adapter(model: nn.Module, kind: str, **options) -> NestedModel:
    if kind == "none":  # full fine-tuning: every weight trains, nothing is nested
        for p in model.parameters():
            p.requires_grad_(True)
        return NestedModel({}, {})
    if kind == "nested_lora":
        return _attach_nested_lora(model, **options)
    if kind == "peft_lora":
        return _attach_peft_lora(model, **options)
    raise ValueError(f"adapter.kind={kind!r} is not an option; valid choices: {', '.join(ADAPTERS)}")


def _attach_nested_lora(model: nn.Module, r_max: int, r_min: int, alpha: float, target_modules: Sequence[str],
                        dropout: float = 0.0, scale: str = "alpha/b", frozen_prefix: bool = False,
                        matryoshka: bool = False) -> NestedModel:
    """``matryoshka``: train ranks r_min..r_max together at rank r_max (the caller then draws no rank)."""
    inject_nested_lora(model, list(target_modules), r_max, alpha, dropout, scale, frozen_prefix,
                       matryoshka=matryoshka, r_min=r_min)
    return NestedModel({"rank": range(r_min, r_max + 1)}, {"rank": partial(set_rank, model)})  # picklable for ddp_spawn


def _attach_peft_lora(model: nn.Module, r_max: int, alpha: float, target_modules: Sequence[str],
                      dropout: float = 0.0) -> NestedModel:
    """PEFT's own LoRA (QLoRA on a 4-bit base): the peer baseline, one fixed rank."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=r_max, lora_alpha=alpha, lora_dropout=dropout,
                                       target_modules=list(target_modules)), model)
    return NestedModel({"rank": [r_max]}, {"rank": _fixed_rank})


def _fixed_rank(b: int) -> None:
    """Setter of a one-value axis: nothing to switch (the grid only holds that value)."""
