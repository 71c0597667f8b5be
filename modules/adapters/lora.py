"""The LoRA family behind the adapter contract (modules/adapters/__init__.py).

``NestedLoRA`` (``adapter.kind=nested_lora``): DyLoRA / QDyLoRA (ranks r_min..r_max nested), plain LoRA
(r_min = r_max), MatryoshkaLoRA and the post-hoc SVD baseline, all on the layer of ``nested_lora.py``.
``PeftLoRA`` (``peft_lora``): PEFT's own LoRA, the peer baseline. Both add the ``rank`` axis.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from torch import nn

from modules.adapters import Adapter, AdapterError, option
from modules.adapters.nested_lora import (SCALES, export_peft_adapter, inject_nested_lora, lora_layers,
                                          merged_state_dict, set_rank)
from modules.submodel import NestedModel



def _int_option(options, key: str, minimum: int, maximum: int | None = None) -> int:
    value = options.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum else f">= {minimum}"
        raise AdapterError(f"adapter.{key} must be an integer {bound}, got {value!r}")
    return value


def parse_eval_ranks(spec, r_max: int) -> list[int] | None:
    """``adapter.eval_ranks``: a list, ``pow2`` (1, 2, 4, ... r_max), ``all`` (1..r_max) or null (the
    trained ranks)."""
    if spec is None:
        return None
    if spec == "pow2":
        return sorted({2 ** i for i in range(r_max.bit_length()) if 2 ** i <= r_max} | {r_max})
    if spec == "all":
        return list(range(1, r_max + 1))
    if isinstance(spec, str) or not hasattr(spec, "__iter__") or not list(spec):
        raise AdapterError(f"adapter.eval_ranks={spec!r}: give null, all, pow2 or a non-empty list of ranks")
    ranks = list(spec)
    for i, rank in enumerate(ranks):
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= r_max:
            raise AdapterError(f"adapter.eval_ranks[{i}] must be an integer between 1 and {r_max}, got {rank!r}")
    return ranks


@dataclasses.dataclass
class NestedLoRAOptions:
    yaml: ClassVar[str] = "adapter/dylora"
    elsewhere: ClassVar[dict] = {"post_hoc_svd": "adapter/lora_svd"}  # fields only those options set
    closed: ClassVar[bool] = True
    kind: str = "nested_lora"
    r_max: int = option(8, min=1)             # largest rank (the rank of a fixed-rank LoRA)
    r_min: int = option(1, min=1)             # smallest rank trained
    alpha: float = option(16.0, above=0)
    dropout: float = option(0.05, min=0, below=1)
    scale: Literal["alpha/b", "alpha/r_max", "alpha/sqrt(b)"] = "alpha/sqrt(b)"
    frozen_prefix: bool = False
    matryoshka: bool = False
    target_modules: Union[list[str], str] = option("all-linear", min_len=1)
    eval_ranks: Any = None                    # null | all | pow2 | a list (checked by parse_eval_ranks)
    post_hoc_svd: bool = False


@dataclasses.dataclass
class PeftLoRAOptions:
    yaml: ClassVar[str] = "adapter/peft_lora"
    closed: ClassVar[bool] = True
    kind: str = "peft_lora"
    r_max: int = option(8, min=1)
    alpha: float = option(16.0, above=0)
    dropout: float = option(0.05, min=0, below=1)
    target_modules: Union[list[str], str] = option("all-linear", min_len=1)
    eval_ranks: Any = None


class NestedLoRA(Adapter):
    """DyLoRA / QDyLoRA (ranks r_min..r_max nested), plain LoRA (r_min = r_max), MatryoshkaLoRA, and the
    post-hoc SVD baseline (``post_hoc_svd``). Adds the ``rank`` axis; exports any rank as a PEFT adapter."""

    kind = "nested_lora"
    options_schema = NestedLoRAOptions
    NOT_ATTACH_OPTIONS = ("kind", "eval_ranks", "post_hoc_svd")

    def check(self, options, quantized: bool = False) -> None:
        r_max = _int_option(options, "r_max", 1)
        _int_option(options, "r_min", 1, r_max)
        if options.get("scale", "alpha/b") not in SCALES:
            raise AdapterError(f"adapter.scale={options.get('scale')!r} is not an option; valid choices: "
                               f"{', '.join(SCALES)}")
        if options.get("matryoshka") and options.get("frozen_prefix"):
            raise AdapterError("adapter.matryoshka=true trains every rank at once; it cannot be combined with "
                               "adapter.frozen_prefix=true (which trains only component b): set one of them to false")
        parse_eval_ranks(options.get("eval_ranks"), r_max)

    def axes(self, options) -> dict[str, list[int]]:
        return {"rank": list(range(int(options["r_min"]), int(options["r_max"]) + 1))}

    def eval_values(self, options) -> dict[str, list[int]] | None:
        ranks = parse_eval_ranks(options.get("eval_ranks"), int(options["r_max"]))
        return {"rank": ranks} if ranks is not None else None

    def trains_all_at_once(self, options) -> bool:
        """MatryoshkaLoRA: every rank trains in one forward at r_max, so no rank is drawn."""
        return bool(options.get("matryoshka"))

    def attach(self, model: nn.Module, options) -> NestedModel:
        from functools import partial

        o = dict(options)
        inject_nested_lora(model, list(o["target_modules"]), o["r_max"], o["alpha"], o.get("dropout", 0.0),
                           o.get("scale", "alpha/b"), o.get("frozen_prefix", False),
                           matryoshka=o.get("matryoshka", False), r_min=o["r_min"])
        return NestedModel(self.axes(o), {"rank": partial(set_rank, model)})  # picklable for ddp_spawn

    def before_eval(self, model: nn.Module, options) -> None:
        if options.get("post_hoc_svd"):
            from modules.adapters.svd_truncate import svd_truncate_

            svd_truncate_(model)

    def export(self, model, sub, folder, options, *, base_name=None, merge=False, tokenizer=None) -> list[Path]:
        rank = sub.get("rank")
        if rank is None or not list(lora_layers(model)):
            return []
        out = [export_peft_adapter(model, int(rank), folder, base_model_name_or_path=base_name)]
        if merge:
            model.save_pretrained(folder / "merged", state_dict=merged_state_dict(model, int(rank)))
            if tokenizer is not None:
                tokenizer.save_pretrained(folder / "merged")
            out.append(folder / "merged")
        return out


class PeftLoRA(Adapter):
    """PEFT's own LoRA (QLoRA on a 4-bit base): the peer baseline, one fixed rank."""

    kind = "peft_lora"
    options_schema = PeftLoRAOptions

    def check(self, options, quantized: bool = False) -> None:
        r_max = _int_option(options, "r_max", 1)
        ranks = parse_eval_ranks(options.get("eval_ranks"), r_max)
        if ranks not in (None, [r_max]):
            raise AdapterError(f"adapter.eval_ranks={ranks}: PEFT's LoRA has one rank; use null or [{r_max}] "
                               "(or adapter=dylora / adapter=lora_svd for many ranks)")

    def axes(self, options) -> dict[str, list[int]]:
        return {"rank": [int(options["r_max"])]}

    def attach(self, model: nn.Module, options) -> NestedModel:
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(r=options["r_max"], lora_alpha=options["alpha"],
                                           lora_dropout=options.get("dropout", 0.0),
                                           target_modules=list(options["target_modules"])), model)
        return NestedModel(self.axes(options), {"rank": _fixed_rank})


def _fixed_rank(b: int) -> None:
    """Setter of a one-value axis: nothing to switch (the grid only holds that value)."""
