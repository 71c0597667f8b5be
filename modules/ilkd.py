"""Intermediate-layer knowledge distillation (KnGPT2's ILKD): the loss terms, and what they read.

Terms (each a scalar, zero when the student's recordings equal the teacher's, positive otherwise):
- ``embedding``: MSE between the token-embedding outputs;
- ``hidden``: MSE between each student block's output and its teacher block's (``layer_map[j]`` = the teacher
  block of student block j), averaged over blocks;
- ``attention``: per block, MSE between the pre-softmax attention scores (``attention_loss="mse_scores"``)
  or KL(teacher || student) between the attention probabilities (``"kl_probs"``), over allowed
  (causal, non-padded) positions only, averaged over blocks;
- ``logits``: KL(teacher || student) of the next-token distributions at temperature T, times T^2;
- ``task``: the student's own loss (next-token cross-entropy, or the classification loss).
Every mean runs over real tokens only (``token_mask``); ``normalize`` makes each MSE relative to the teacher's
mean square (scale-free across blocks). ``ilkd_objective`` weighs them and returns each one.

``record(model)`` captures, for one forward, the token embedding output, every block's output (forward
hooks) and every attention layer's scores through an attention implementation registered with transformers
(``RECORDING_ATTENTION``: eager attention that also keeps the scores); set ``model.config._attn_implementation``
to it (``use_recording_attention``) for the attention term.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

RECORDING_ATTENTION = "ilkd_recording"
ATTENTION_LOSSES = ("mse_scores", "kl_probs")
TERMS = ("task", "logits", "hidden", "attention", "embedding")
_ACTIVE: dict[int, "Recording"] = {}  # id(attention module) -> the recording it writes to


@dataclass
class Recording:
    embedding: torch.Tensor | None = None
    hidden: list[torch.Tensor] = field(default_factory=list)
    attention: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (scores, allowed)


# --- the terms (pure) ---------------------------------------------------------------------------------
def _token_mean(x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    if token_mask is None:
        return x.mean()
    m = token_mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1)


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, token_mask: torch.Tensor | None,
               normalize: bool = False) -> torch.Tensor:
    """Mean squared difference over the features of real tokens; (B, T, C) and (B, T). ``normalize``: divided
    by the teacher's mean square (a relative error: a decoder's residual stream grows by orders of magnitude
    with depth, and outlier features would otherwise make the deepest blocks the whole loss)."""
    sq = _token_mean((student.float() - teacher.float()).pow(2).mean(-1), token_mask)
    if normalize:
        sq = sq / _token_mean(teacher.float().pow(2).mean(-1), token_mask).clamp_min(1e-12)
    return sq


def hidden_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], layer_map: Sequence[int],
               token_mask: torch.Tensor | None, normalize: bool = False) -> torch.Tensor:
    return torch.stack([masked_mse(s, teacher[t], token_mask, normalize) for s, t in zip(student, layer_map)]).mean()


def attention_term(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
                   kind: str = "mse_scores", token_mask: torch.Tensor | None = None,
                   normalize: bool = False) -> torch.Tensor:
    """One block. scores (B, H, T, S), allowed (B or 1, 1, T, S) bool. MSE over allowed entries (``normalize``:
    relative to the teacher's mean square score), or the row KL over keys averaged over real query tokens."""
    (s, allowed), (t, _) = student, teacher
    s, t = s.float(), t.float()
    allowed = allowed.expand_as(s)
    if token_mask is not None:  # padded queries (rows) out too
        allowed = allowed & token_mask.bool()[:, None, :, None]
    if kind == "mse_scores":
        mse = (s - t).pow(2)[allowed].mean()
        return mse / t.pow(2)[allowed].mean().clamp_min(1e-12) if normalize else mse
    if kind != "kl_probs":
        raise ValueError(f"attention_loss={kind!r} is not an option; valid choices: {', '.join(ATTENTION_LOSSES)}")
    neg = torch.finfo(s.dtype).min
    log_ps = s.masked_fill(~allowed, neg).log_softmax(-1)
    log_pt = t.masked_fill(~allowed, neg).log_softmax(-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).masked_fill(~allowed, 0.0).sum(-1).mean(1)  # (B, T)
    return kl[allowed.any(-1).any(1)].mean()


def attention_mse_or_kl(student, teacher, layer_map: Sequence[int], kind: str,
                        token_mask: torch.Tensor | None, normalize: bool = False) -> torch.Tensor:
    return torch.stack([attention_term(s, teacher[t], kind, token_mask, normalize)
                        for s, t in zip(student, layer_map)]).mean()


def logit_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
             token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) per token, averaged over real tokens."""
    log_ps = (student.float() / temperature).log_softmax(-1)
    log_pt = (teacher.float() / temperature).log_softmax(-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    if token_mask is not None and token_mask.shape == kl.shape:  # per-token logits (a classifier's are per row)
        m = token_mask.to(kl.dtype)
        kl = (kl * m).sum() / m.sum().clamp_min(1)
    else:
        kl = kl.mean()
    return kl * temperature ** 2


@dataclass
class ILKDWeights:
    task: float = 1.0
    logits: float = 1.0
    hidden: float = 1.0
    attention: float = 1.0
    embedding: float = 1.0
    temperature: float = 2.0
    attention_loss: str = "mse_scores"
    normalize: bool = False  # MSE terms relative to the teacher's mean square

    @property
    def needs_teacher(self) -> bool:
        return any(getattr(self, t) > 0 for t in TERMS if t != "task")


def ilkd_objective(weights: ILKDWeights, task: torch.Tensor, student: Recording, teacher: Recording | None,
                   student_logits: torch.Tensor | None, teacher_logits: torch.Tensor | None,
                   layer_map: Sequence[int], token_mask: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """(weighted total, {term: value}) for the terms with a positive weight (the task loss always)."""
    terms = {"task": task}
    if teacher is not None:
        if weights.logits > 0:
            terms["logits"] = logit_kl(student_logits, teacher_logits, weights.temperature, token_mask)
        if weights.hidden > 0:
            terms["hidden"] = hidden_mse(student.hidden, teacher.hidden, layer_map, token_mask, weights.normalize)
        if weights.attention > 0:
            terms["attention"] = attention_mse_or_kl(student.attention, teacher.attention, layer_map,
                                                     weights.attention_loss, token_mask, weights.normalize)
        if weights.embedding > 0:
            terms["embedding"] = masked_mse(student.embedding, teacher.embedding, token_mask, weights.normalize)
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, terms


# --- recording --------------------------------------------------------------------------------------
def recording_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs):
    """Eager attention (as transformers' llama / GPT-2 compute it, grouped K/V repeated) that also hands the
    pre-softmax scores and the allowed positions to an active ``record``."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, T, S)
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        if mask.dtype == torch.bool:
            allowed, additive = mask, torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            allowed, additive = mask == 0, mask
    else:
        T, S = scores.shape[-2:]
        allowed = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(S - T)[None, None]
        additive = torch.zeros_like(allowed, dtype=scores.dtype).masked_fill(~allowed, torch.finfo(scores.dtype).min)
    rec = _ACTIVE.get(id(module))
    if rec is not None:
        rec.attention.append((scores, allowed))
    probs = F.softmax(scores + additive, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def register_recording_attention() -> str:
    """Register ``RECORDING_ATTENTION`` with transformers (the function and its eager-style additive mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(RECORDING_ATTENTION, recording_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(RECORDING_ATTENTION, eager_mask)
    return RECORDING_ATTENTION


def use_recording_attention(model: nn.Module) -> nn.Module:
    register_recording_attention()
    for m in model.modules():  # every (sub-)config of the model, as set_attn_implementation would
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = RECORDING_ATTENTION
    return model


def attention_modules(block: nn.Module) -> list[nn.Module]:
    """The attention layer(s) of a block: the modules whose forward calls the attention interface."""
    return [m for m in block.modules() if hasattr(m, "layer_idx") and any(
        hasattr(m, a) for a in ("q_proj", "c_attn", "query_key_value", "qkv_proj"))]


@contextlib.contextmanager
def record(model: nn.Module, blocks: Sequence[nn.Module], embedding: nn.Module | None = None
           ) -> Iterator[Recording]:
    """Capture one forward of ``model``: token embedding output, each of ``blocks``' outputs, attention scores."""
    rec = Recording()
    handles = []

    def keep_hidden(_m, _inp, out):
        rec.hidden.append(out[0] if isinstance(out, tuple) else out)

    def keep_embedding(_m, _inp, out):
        rec.embedding = out

    for block in blocks:
        handles.append(block.register_forward_hook(keep_hidden))
        for att in attention_modules(block):
            _ACTIVE[id(att)] = rec
    if embedding is not None:
        handles.append(embedding.register_forward_hook(keep_embedding))
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()
        for block in blocks:
            for att in attention_modules(block):
                _ACTIVE.pop(id(att), None)
