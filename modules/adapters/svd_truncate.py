"""Post-hoc SVD truncation of an ordinary LoRA: the cheap "all ranks from one run" baseline.

Train a plain fixed-rank-r LoRA (``NestedLoRALinear`` with r_max = r), then rewrite each layer's
factors in place so that the rank-b prefix A[:b], B[:, :b] gives the best rank-b approximation
(Eckart-Young) of the trained update ΔW = s(r) B A, for every b <= r at once.

Scale rule: nested prefixes reproduce every truncation only under a rank-independent scale, so
the layer is switched to ``scale="alpha/r_max"`` (s = alpha / r for all b) and that constant is
folded out of the factors:  B' = U sqrt(S) / sqrt(s),  A' = sqrt(S) Vh / sqrt(s),  hence
s * B'[:, :b] A'[:b] = U_b S_b Vh_b. ``export_peft_adapter`` keeps working: it writes
lora_alpha = s * b, which PEFT turns back into the same scale s.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from modules.adapters.nested_lora import NestedLoRALinear, lora_layers

CONSTANT_SCALE = "alpha/r_max"


def low_rank_svd(b_factor: torch.Tensor, a_factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of B @ A (B: (d_out, r), A: (r, d_in)) without forming the d_out x d_in matrix.

    B = Qb Rb and A^T = Qa Ra, so B A = Qb (Rb Ra^T) Qa^T and only the small core is decomposed.
    Returns U (d_out, k), S (k,), Vh (k, d_in) with k = min(r, d_out, d_in), S descending.
    """
    qb, rb = torch.linalg.qr(b_factor)    # (d_out, kb), (kb, r)
    qa, ra = torch.linalg.qr(a_factor.T)  # (d_in, ka), (ka, r)
    uc, s, vhc = torch.linalg.svd(rb @ ra.T, full_matrices=False)  # core (kb, ka)
    return qb @ uc, s, vhc @ qa.T


@torch.no_grad()
def svd_truncate_layer_(layer: NestedLoRALinear) -> torch.Tensor:
    """Rewrite ``layer``'s factors in SVD order (in place); returns ΔW's singular values (r,).

    The layer's output at full rank r is unchanged; at rank b it uses the rank-b truncated SVD.
    """
    r = layer.r_max
    s_r, s_const = layer.scale(r), layer.alpha / r
    if s_const == 0:
        raise ValueError("svd truncation needs adapter.alpha != 0 (the scale is folded into the factors)")
    # float64: the orthogonalisations lose accuracy in bf16/fp32 for nearly dependent factors.
    b64, a64 = layer.lora_B.double(), layer.lora_A.double()
    u, s, vh = low_rank_svd(b64 * s_r, a64)  # SVD of ΔW = s(r) B A
    k = s.numel()  # < r only when r > min(d_out, d_in): the missing components are exact zeros
    root = torch.sqrt(s / s_const)
    new_b = torch.zeros_like(b64)
    new_a = torch.zeros_like(a64)
    new_b[:, :k] = u * root
    new_a[:k] = root[:, None] * vh
    layer.lora_B.copy_(new_b.to(layer.lora_B.dtype))
    layer.lora_A.copy_(new_a.to(layer.lora_A.dtype))
    layer.scale_mode = CONSTANT_SCALE
    return torch.cat([s, s.new_zeros(r - k)]).to(torch.float32)


def svd_truncate_(model: nn.Module) -> dict[str, torch.Tensor]:
    """Apply ``svd_truncate_layer_`` to every nested LoRA layer of ``model`` (in place).

    Returns {layer name: singular values}; afterwards ``set_rank(model, b)`` evaluates the
    SVD-truncated rank-b adapter. Raises if the model holds no LoRA layer.
    """
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("svd_truncate_: the model has no nested LoRA layers (run inject_nested_lora first)")
    return {name: svd_truncate_layer_(layer) for name, layer in layers}


def truncation_error(singular_values: torch.Tensor, b: int) -> float:
    """Frobenius error of the best rank-b approximation: sqrt(sum of the dropped sigma_i^2)."""
    return math.sqrt(float((singular_values[b:].double() ** 2).sum()))
