"""KronA: Kronecker adapters (Edalati et al., 2022, arXiv 2212.10650), with a nested Kronecker rank.

    krona            h = W0 x + s * (sum_{k<r} A_k ⊗ B_k) x             parallel to one weight; mergeable
    krona_block      h = FFN(x) + s * (sum_{k<r} A_k ⊗ B_k) x           parallel to a whole FFN block
    krona_block_res  h = FFN(x) + s * (sum_{k<r} A_k ⊗ B_k) x + g * x   plus a learnable scaled residual

A_k (a_out, a_in), B_k (b_out, b_in) with a_out*b_out = d_out, a_in*b_in = d_in; the adapter path runs
through ``kron_matmul`` (x reshaped to (a_in, b_in), A X B^T), never building A ⊗ B. The base may be
nn.Linear, transformers' GPT-2 Conv1D (weight stored (in, out)), bitsandbytes Linear4bit (NF4), or, for the
block variants, any module mapping (..., d) to (..., d): only its forward is called, so a 4-bit base is
never dequantized.

Init (ΔW = 0 at step 0): A_k kaiming-uniform(a=sqrt(5)), B_k zeros, as LoRA does for its two factors
(``init_zero="A"`` swaps them, which is PEFT LoKr's default). The residual gain g starts at ``res_init``
(0.0: the block equals the base at init). Kronecker rank r: the first r of r_max products are used
(``set_kron_rank``), so nested (DyLoRA-style) training over r needs no new weights.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Iterator, Literal, Optional, Sequence, Union

import torch
from torch import nn

from modules.adapters import Adapter, AdapterError, option, wrap_modules
from modules.kronecker import factor_shapes, is_conv1d, kron_dense, kron_matmul
from modules.submodel import NestedModel

VARIANTS = ("krona", "krona_block", "krona_block_res")
INIT_ZERO = ("A", "B")


def _is_linear(module: nn.Module) -> bool:
    # nn.Linear, its subclasses (bitsandbytes Linear4bit/Linear8bitLt) and GPT-2's Conv1D
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _is_quantized(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return type(module).__module__.startswith("bitsandbytes") or hasattr(weight, "quant_state")


def _dims(base: nn.Module, variant: str) -> tuple[int, int]:
    """(d_in, d_out) of a linear base, or of a block: first linear's input, last linear's output."""
    if variant == "krona":
        if isinstance(base, nn.Linear):
            return base.in_features, base.out_features
        if is_conv1d(base):
            return base.weight.shape[0], base.nf
        raise TypeError(f"variant 'krona' wraps nn.Linear, Conv1D or Linear4bit, got {type(base).__name__}; "
                        f"use 'krona_block' for a whole block")
    linears = [m for m in base.modules() if _is_linear(m)]
    if not linears:
        raise TypeError(f"variant {variant!r} needs a block with linear layers inside, got {type(base).__name__}")
    return _dims(linears[0], "krona")[0], _dims(linears[-1], "krona")[1]


class KronALinear(nn.Module):
    def __init__(self, base_layer: nn.Module, a_shape: Sequence[int] | None = None,
                 b_shape: Sequence[int] | None = None, factor: int = -1, r_max: int = 1, scale: float = 1.0,
                 variant: str = "krona", dropout: float = 0.0, init_zero: str = "B", res_init: float = 0.0,
                 name: str = "layer"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"adapter.variant={variant!r} is not an option; valid choices: {', '.join(VARIANTS)}")
        if init_zero not in INIT_ZERO:
            raise ValueError(f"adapter.init_zero={init_zero!r} is not an option; valid choices: A, B")
        if r_max <= 0:
            raise ValueError(f"adapter.rank must be a positive integer, got {r_max}")
        self.base_layer, self.variant, self.name = base_layer, variant, name
        self.in_features, self.out_features = _dims(base_layer, variant)
        if variant == "krona_block_res" and self.in_features != self.out_features:
            raise ValueError(f"{name}: krona_block_res adds g * x, so the block must keep its width; "
                             f"got d_in={self.in_features}, d_out={self.out_features}")
        self.a_shape, self.b_shape = factor_shapes(self.out_features, self.in_features, factor, a_shape, b_shape, name)
        self.r_max, self.rank, self.scale, self.merged = int(r_max), int(r_max), float(scale), False
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = next(base_layer.parameters(), None)
        dtype = weight.dtype if weight is not None and weight.dtype.is_floating_point else torch.float32
        device = weight.device if weight is not None else None
        self.kron_A = nn.Parameter(torch.zeros(self.r_max, *self.a_shape, dtype=dtype, device=device))
        self.kron_B = nn.Parameter(torch.zeros(self.r_max, *self.b_shape, dtype=dtype, device=device))
        random = self.kron_B if init_zero == "A" else self.kron_A
        for k in range(self.r_max):  # per product, fan-in of that factor (a_in or b_in)
            nn.init.kaiming_uniform_(random.data[k], a=math.sqrt(5))
        if variant == "krona_block_res":
            self.kron_res_scale = nn.Parameter(torch.tensor(float(res_init), dtype=dtype, device=device))

    # --- nested Kronecker rank -----------------------------------------------------------------------
    def set_kron_rank(self, k: int) -> None:
        if not 0 <= k <= self.r_max:
            raise ValueError(f"{self.name}: kron rank {k} outside 0..r_max={self.r_max}")
        if self.merged:
            raise ValueError(f"{self.name}: unmerge() before changing the kron rank")
        self.rank = int(k)

    def factors(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.rank if k is None else k
        if k == self.r_max:
            return self.kron_A, self.kron_B  # no slice: its backward would scatter into a zeros buffer
        return self.kron_A[:k], self.kron_B[:k]

    # --- forward --------------------------------------------------------------------------------------
    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """s * x (sum_{k<rank} A_k ⊗ B_k)^T: the adapter path alone, (..., d_out)."""
        A, B = self.factors()
        return self.scale * kron_matmul(self.dropout(x).to(A.dtype), A, B)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return out
        if self.rank > 0:
            out = out + self.delta(x).to(out.dtype)
        if self.variant == "krona_block_res":
            out = out + (self.kron_res_scale * x.to(self.kron_res_scale.dtype)).to(out.dtype)
        return out

    # --- merging (variant 'krona' on a float base) ----------------------------------------------------
    def delta_weight(self, k: int | None = None) -> torch.Tensor:
        """s * sum_{j<k} A_j ⊗ B_j as a dense (d_out, d_in) matrix."""
        A, B = self.factors(k)
        return self.scale * kron_dense(A, B)

    def _check_mergeable(self) -> None:
        if self.variant != "krona":
            raise ValueError(f"{self.name}: adapter.variant={self.variant!r} is not mergeable (it runs beside a "
                             f"whole block); only 'krona' merges into a weight")
        if _is_quantized(self.base_layer):
            raise ValueError(f"{self.name}: cannot merge into {type(self.base_layer).__name__} (a quantized base); "
                             f"merge into a float copy of the model")

    def merged_weight(self) -> torch.Tensor:
        """W0 + s * kron(A, B) in the base's own layout ((in, out) for Conv1D)."""
        self._check_mergeable()
        w = self.base_layer.weight
        if self.merged:
            return w.detach().clone()
        dw = self.delta_weight().detach().to(w.dtype)
        return w.detach() + (dw.T if is_conv1d(self.base_layer) else dw)

    def merge(self) -> None:
        if self.merged:
            return
        merged = self.merged_weight()
        with torch.no_grad():
            self.base_layer.weight.copy_(merged)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        dw = self.delta_weight().detach().to(self.base_layer.weight.dtype)
        with torch.no_grad():
            self.base_layer.weight.sub_(dw.T if is_conv1d(self.base_layer) else dw)
        self.merged = False

    def extra_repr(self) -> str:
        return (f"variant={self.variant}, a_shape={self.a_shape}, b_shape={self.b_shape}, r_max={self.r_max}, "
                f"rank={self.rank}, scale={self.scale}" + (", merged=True" if self.merged else ""))


def inject_krona(model: nn.Module, target_modules: Sequence[str] | str, variant: str = "krona",
                 a_shape: Sequence[int] | None = None, b_shape: Sequence[int] | None = None, factor: int = -1,
                 rank: int = 1, scale: float = 1.0, dropout: float = 0.0, init_zero: str = "B",
                 res_init: float = 0.0, exclude: Sequence[str] = ("lm_head",)) -> list[str]:
    """Wrap every module whose name ends with one of ``target_modules`` (variant 'krona': linear layers,
    "all-linear" = every linear but ``exclude``; block variants: the FFN blocks, e.g. "mlp" or
    "DenseReluDense"); freeze everything else. ``rank`` is r_max, the number of summed products; the layers
    start using all of them (``set_kron_rank`` picks the first k). Returns the wrapped module names."""
    if variant not in VARIANTS:
        raise ValueError(f"adapter.variant={variant!r} is not an option; valid choices: {', '.join(VARIANTS)}")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if targets == ["all-linear"] and variant != "krona":
        raise ValueError(f"adapter.target_modules=all-linear only fits variant 'krona'; {variant!r} wraps blocks "
                         f"(name them, e.g. mlp)")
    fits = _is_linear if variant == "krona" else (lambda m: True)

    def wrap(name: str, base: nn.Module) -> nn.Module:
        return KronALinear(base, a_shape, b_shape, factor, rank, scale, variant, dropout, init_zero, res_init, name=name)

    return wrap_modules(model, targets, lambda m: fits(m) and not isinstance(m, KronALinear), wrap, exclude,
                        "linear layer" if variant == "krona" else "module")


def krona_layers(model: nn.Module) -> Iterator[tuple[str, KronALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, KronALinear):
            yield name, module


def set_kron_rank(model: nn.Module, k: int) -> None:
    """Same Kronecker rank in every layer (one value per step for the whole model, as DyLoRA draws)."""
    for _, layer in krona_layers(model):
        layer.set_kron_rank(k)


def krona_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (the base is rebuilt from its own checkpoint)."""
    return {k: v for k, v in model.state_dict().items() if ".kron_" in k}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every KronA layer merged (W0 + s * kron(A, B), current kron rank) and the
    adapter removed: keys as in the original HF model. Only variant 'krona' on float bases."""
    layers = dict(krona_layers(model))
    merged_weights = {name: layer.merged_weight() for name, layer in layers.items()}  # raises if not mergeable
    out = {}
    for key, value in model.state_dict().items():
        if ".kron_" in key:
            continue
        owner, sep, leaf = key.rpartition(".base_layer.")
        if sep and owner in layers:
            key = f"{owner}.{leaf}"
            if leaf == "weight":
                value = merged_weights[owner]
        out[key] = value
    return out


# --- the adapter contract (modules/adapters/__init__.py) --------------------------------------------------
@dataclasses.dataclass
class KronAOptions:
    yaml: ClassVar[str] = "adapter/krona"
    closed: ClassVar[bool] = True
    kind: str = "krona"
    variant: Literal["krona", "krona_block", "krona_block_res"] = "krona"
    target_modules: Optional[Union[list[str], str]] = option("all-linear", min_len=1)  # null: a block variant on a model without model.ffn_blocks
    factor: int = -1                          # -1: balanced factors (near-square); else a_out = a_in = factor
    a_shape: Optional[list[int]] = option(None, length=2, min=1)  # explicit (a_out, a_in); b follows from the layer
    b_shape: Optional[list[int]] = option(None, length=2, min=1)
    r_max: int = option(1, min=1)             # Kronecker rank: summed products A_k ⊗ B_k
    r_min: Optional[int] = option(None, min=1)  # nested Kronecker ranks r_min..r_max (DyLoRA-style); null = fixed
    scale: float = 1.0
    dropout: float = option(0.0, min=0, below=1)
    init_zero: Literal["A", "B"] = "B"
    res_init: float = 0.0
    eval_ranks: Optional[list[int]] = None    # Kronecker ranks evaluated (null = the trained ones)


class KronA(Adapter):
    """``adapter.kind=krona``: adds the ``kron_rank`` axis (nested when r_min < r_max); merged export for the
    mergeable variant on float bases."""

    kind = "krona"
    options_schema = KronAOptions

    def _ranks(self, options) -> list[int]:
        r_max = int(options.get("r_max", 1))
        r_min = options.get("r_min") or r_max
        return list(range(int(r_min), r_max + 1))

    def check(self, options, quantized: bool = False) -> None:
        r_max = int(options.get("r_max", 1))
        if options.get("r_min") and options["r_min"] > r_max:
            raise AdapterError(f"adapter.r_min={options['r_min']} must be <= adapter.r_max={r_max}")
        if options.get("eval_ranks") is not None and len(options["eval_ranks"]) == 0:
            raise AdapterError("adapter.eval_ranks=[] is empty; give null (the trained ranks r_min..r_max) or a "
                               f"non-empty list of Kronecker ranks between 1 and {r_max}")
        for i, k in enumerate(options.get("eval_ranks") or []):
            if not 1 <= k <= r_max:
                raise AdapterError(f"adapter.eval_ranks[{i}]={k} must be between 1 and {r_max}")
        variant = options.get("variant", "krona")
        if variant != "krona" and not options.get("target_modules"):
            raise AdapterError(f"adapter.target_modules is empty: variant {variant!r} wraps whole FFN blocks, and this "
                               "model config names none (model.ffn_blocks); set adapter.target_modules=[<block>] "
                               "(T5: DenseReluDense, LLaMA / GPT-2: mlp). BERT-style encoders split their FFN "
                               "across intermediate/output, so they have no single block to wrap")

    def check_merge(self, options) -> None:
        variant = options.get("variant", "krona")
        if variant != "krona":
            raise AdapterError(f"export.merge=true with adapter.variant={variant!r}: only 'krona' (parallel to one "
                               "weight) merges into the base; the block variants run beside a whole FFN block")

    def axes(self, options) -> dict[str, list[int]]:
        return {"kron_rank": self._ranks(options)}

    def eval_values(self, options) -> dict[str, list[int]] | None:
        ranks = options.get("eval_ranks")
        return {"kron_rank": list(ranks)} if ranks else None

    def attach(self, model: nn.Module, options) -> NestedModel:
        from functools import partial

        o = dict(options)
        inject_krona(model, o.get("target_modules", "all-linear"), o.get("variant", "krona"), o.get("a_shape"),
                     o.get("b_shape"), o.get("factor", -1), o.get("r_max", 1), o.get("scale", 1.0),
                     o.get("dropout", 0.0), o.get("init_zero", "B"), o.get("res_init", 0.0))
        return NestedModel(self.axes(o), {"kron_rank": partial(set_kron_rank, model)})

    def export(self, model, sub, folder, options, *, base_name=None, merge=False, tokenizer=None) -> list:
        if not merge:
            return []
        model.save_pretrained(folder / "merged", state_dict=merged_state_dict(model))
        if tokenizer is not None:
            tokenizer.save_pretrained(folder / "merged")
        return [folder / "merged"]
