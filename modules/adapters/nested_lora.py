"""Nested-rank LoRA (DyLoRA / QDyLoRA): one layer for plain LoRA, dynamic rank, NF4 bases.

At rank b:  h = W0 x + s(b) * B[:, :b] @ A[:b, :] @ dropout(x),   s(b) = alpha / b (paper).
A is (r_max, d_in) kaiming-uniform(a=sqrt(5)), B is (d_out, r_max) zeros, as in LoRA/PEFT. Plain
LoRA is the fixed-rank case (rank == r_max). The base may be ``nn.Linear`` or bitsandbytes
``Linear4bit``: only its forward is called, so weights are never merged while the rank changes.

MatryoshkaLoRA option (``matryoshka=True``): in training mode at rank r_max, one forward trains every
nested rank through a fixed diagonal between A and B,  delta = B diag(p) A dropout(x),  with
p_i = (1/|R|) * sum_{b in R, b >= i} s(b) over the training ranks R = r_min..r_max: exactly the mean of
the rank-b adapters' outputs over R. In eval mode, or at any other rank, it is the plain rank-b LoRA.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modules.adapters import wrap_modules

SCALES = ("alpha/b", "alpha/r_max", "alpha/sqrt(b)")


class NestedLoRALinear(nn.Module):
    def __init__(self, base_layer: nn.Module, r_max: int, alpha: float, dropout: float = 0.0,
                 scale: str = "alpha/b", frozen_prefix: bool = False, matryoshka: bool = False, r_min: int = 1):
        super().__init__()
        if r_max <= 0:
            raise ValueError(f"adapter.r_max must be a positive integer, got {r_max}")
        if scale not in SCALES:
            raise ValueError(f"adapter.scale={scale!r} is not an option; choose one of: {', '.join(SCALES)}")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r_max, self.alpha, self.scale_mode = int(r_max), float(alpha), scale
        # DyLoRA's "frozen" update: components < b are detached so only component b learns.
        self.frozen_prefix = frozen_prefix
        self.rank = self.r_max
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(self.r_max, self.in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r_max))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        # MatryoshkaLoRA: a plain attribute, so the forward with it off runs exactly the ops it did before.
        self.matryoshka = bool(matryoshka)
        if self.matryoshka:
            if frozen_prefix:
                raise ValueError("adapter.matryoshka=true trains every rank at once; it cannot be combined "
                                 "with adapter.frozen_prefix=true (which trains only component b)")
            if not 1 <= r_min <= self.r_max:
                raise ValueError(f"adapter.r_min={r_min} must lie in 1..r_max={self.r_max}")
            # fixed, not trained, not saved: rebuilt from (r_min, r_max, alpha, scale)
            self.register_buffer("matryoshka_p", self.matryoshka_diagonal(r_min), persistent=False)

    def scale(self, b: int) -> float:
        if self.scale_mode == "alpha/b":
            return self.alpha / b
        if self.scale_mode == "alpha/r_max":
            return self.alpha / self.r_max
        return self.alpha / math.sqrt(b)

    def matryoshka_diagonal(self, r_min: int) -> torch.Tensor:
        """p (r_max,): p_i = (1/|R|) sum_{b in R, b >= i} s(b), R = r_min..r_max, so that
        B diag(p) A = mean over b in R of s(b) B[:, :b] A[:b] (the mean of the nested adapters)."""
        s = torch.tensor([self.scale(b) for b in range(r_min, self.r_max + 1)], dtype=torch.float64)
        tail = s.flip(0).cumsum(0).flip(0)  # tail[j] = sum of s(b) for b >= r_min + j
        return (torch.cat([tail[:1].expand(r_min - 1), tail]) / len(s)).float()

    def set_rank(self, b: int) -> None:
        if not 0 <= b <= self.r_max:
            raise ValueError(f"rank {b} outside 0..r_max={self.r_max}")
        self.rank = int(b)

    def factors(self, b: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The rank-b slices (A[:b], B[:, :b]) the forward uses, honouring the frozen option."""
        b = self.rank if b is None else b
        if b == self.r_max and not (self.frozen_prefix and self.training and b > 1):
            return self.lora_A, self.lora_B  # no slice: its backward copies the gradient into a zeros buffer
        a, bm = self.lora_A[:b], self.lora_B[:, :b]
        if self.frozen_prefix and self.training and b > 1:
            a = torch.cat([a[: b - 1].detach(), a[b - 1:]], 0)
            bm = torch.cat([bm[:, : b - 1].detach(), bm[:, b - 1:]], 1)
        return a, bm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.rank == 0:
            return out
        if self.matryoshka and self.training and self.rank == self.r_max:  # mean of all nested adapters
            bm = self.lora_B * self.matryoshka_p.to(self.lora_B.dtype)  # B diag(p): the scales are in p
            delta = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A), bm)
            return out + delta.to(out.dtype)
        a, bm = self.factors()
        delta = F.linear(F.linear(self.dropout(x).to(a.dtype), a), bm)  # (..., d_out)
        return torch.add(out, delta.to(out.dtype), alpha=self.scale(self.rank))  # out + s * delta, one kernel

    def delta_weight(self, b: int | None = None) -> torch.Tensor:
        """s(b) * B[:, :b] @ A[:b] as a dense (d_out, d_in) matrix (for tests and SVD baselines)."""
        b = self.rank if b is None else b
        return self.scale(b) * self.lora_B[:, :b] @ self.lora_A[:b]

    def extra_repr(self) -> str:
        return (f"r_max={self.r_max}, rank={self.rank}, alpha={self.alpha}, scale={self.scale_mode}"
                + (", matryoshka=True" if self.matryoshka else ""))


def _is_linear(module: nn.Module) -> bool:
    # nn.Linear and bitsandbytes Linear4bit/Linear8bitLt (subclasses of nn.Linear) qualify.
    return isinstance(module, nn.Linear)


def inject_nested_lora(model: nn.Module, target_modules: Sequence[str], r_max: int, alpha: float,
                       dropout: float = 0.0, scale: str = "alpha/b", frozen_prefix: bool = False,
                       exclude: Sequence[str] = ("lm_head",), matryoshka: bool = False, r_min: int = 1) -> list[str]:
    """Wrap every linear whose name ends with one of ``target_modules`` ("all-linear" = every
    linear but ``exclude``); freeze everything else. Returns the wrapped module names.
    ``matryoshka``: MatryoshkaLoRA training over ranks r_min..r_max (see the module docstring)."""
    def wrap(name: str, base: nn.Module) -> nn.Module:
        device = next((p.device for p in base.parameters()), torch.device("cpu"))
        return NestedLoRALinear(base, r_max, alpha, dropout, scale, frozen_prefix, matryoshka, r_min).to(device)

    return wrap_modules(model, target_modules, _is_linear, wrap, exclude)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, NestedLoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, NestedLoRALinear):
            yield name, module


def set_rank(model: nn.Module, b: int) -> None:
    """Same rank in every layer (DyLoRA draws one b per step for the whole model)."""
    for _, layer in lora_layers(model):
        layer.set_rank(b)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the trainable adapter weights (what a checkpoint needs; the base is rebuilt)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A" in k or ".lora_B" in k}


def _peft_key(layer_name: str) -> str:
    # PEFT wraps the model as base_model.model.<...>; our wrapper's base sits in ``base_layer``.
    return f"base_model.model.{layer_name}"


def export_peft_adapter(model: nn.Module, rank: int, out_dir: str | Path,
                        base_model_name_or_path: str | None = None) -> Path:
    """Write rank ``rank`` as a plain PEFT LoRA adapter folder (adapter_config.json + safetensors).

    PEFT scales by lora_alpha / r, so lora_alpha = s(b) * b reproduces any of our scale modes
    exactly (it is just alpha for the paper's alpha/b).
    """
    from safetensors.torch import save_file

    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("the model has no nested LoRA layers to export")
    first = layers[0][1]
    if not 1 <= rank <= first.r_max:
        raise ValueError(f"export rank {rank} outside 1..r_max={first.r_max}")
    tensors, leaves, alphas = {}, set(), set()
    for name, layer in layers:
        a, bm = layer.lora_A[:rank], layer.lora_B[:, :rank]
        tensors[f"{_peft_key(name)}.lora_A.weight"] = a.detach().float().contiguous().cpu()
        tensors[f"{_peft_key(name)}.lora_B.weight"] = bm.detach().float().contiguous().cpu()
        leaves.add(name.split(".")[-1])
        alphas.add(layer.scale(rank) * rank)
    if len(alphas) != 1:
        raise ValueError("layers disagree on the adapter scale; cannot express as one LoraConfig")
    dropout = next((m.p for _, l in layers for m in [l.dropout] if isinstance(m, nn.Dropout)), 0.0)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alphas.pop(),
        "lora_dropout": dropout, "target_modules": sorted(leaves), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True,
        "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out




def merged_state_dict(model: nn.Module, rank: int) -> dict[str, torch.Tensor]:
    """The base model's state dict with rank ``rank`` merged in (W + s(b) B[:, :b] A[:b]) and the
    adapter removed: a plain HF checkpoint. Only for float bases; a 4-bit base cannot absorb it."""
    merged = {}
    layers = dict(lora_layers(model))
    for key, value in model.state_dict().items():
        if ".lora_A" in key or ".lora_B" in key:
            continue
        owner, _, leaf = key.rpartition(".base_layer.")
        if owner in layers:
            if type(layers[owner].base_layer) is not nn.Linear:
                raise ValueError(f"cannot merge into {type(layers[owner].base_layer).__name__} (a quantized base)")
            if leaf == "weight":
                value = value + layers[owner].delta_weight(rank).detach().to(value.dtype)
            key = f"{owner}.{leaf}"
        merged[key] = value
    return merged
