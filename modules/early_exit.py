"""Dynamic-depth decoding for multi-exit LMs (SoFT's inference side). Greedy, batch size 1.

- ``hf_self_speculative``: transformers' own self-speculative decoding (LayerSkip's
  ``generate(..., assistant_early_exit=n)``), the peer to beat. Its draft runs the first n layers with
  a cache of its own; verification re-runs all layers on the drafted tokens.
- ``self_speculative_generate``: ours. The draft (first n layers + norm + head) writes the K/V of
  layers < n into the one shared cache; verification runs only layers n.. on the drafted tokens,
  starting from the draft's exit hidden states. Rejected tokens are cropped from every layer.
- ``confidence_early_exit``: per token, stop at the first exit whose max softmax probability reaches
  its threshold. KV back-fill: a token that exits at e leaves layers >= e without its K/V; the next
  token that goes past e first runs those pending positions (from their stored exit hidden states)
  through the deeper layers, in the same forward. Every cached K/V is therefore exactly the full
  model's, and each layer runs on each position at most once.

Greedy verification makes both speculative decoders return exactly the tokens of full-depth greedy
decoding (up to floating-point ties between batched and one-token matmuls).

Running a layer range inside the model's own forward: ``DecoderDepth.layer_range`` picks the layers,
and the cache is shown through a view whose layers below the range alias the first running layer, so
the positions and mask sizes the model reads from cache layer 0 are those of the layers that run.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from modules.multi_exit import DecoderDepth, MultiExitError, capture_outputs

# SoFT's thresholds for LLaMA2-13B exits 12..36 (exit 40 is the full model)
PAPER_THRESHOLDS = {12: 0.95, 16: 0.95, 20: 0.9, 24: 0.9, 28: 0.8, 32: 0.8, 36: 0.7}


@dataclass
class DecodeResult:
    tokens: list[int]                       # the new tokens (prompt excluded)
    stats: dict = field(default_factory=dict)


def _check_batch(input_ids: torch.Tensor) -> torch.Tensor:
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.shape[0] != 1:
        raise ValueError(f"dynamic-depth decoding takes one prompt at a time (batch 1), got batch "
                         f"{input_ids.shape[0]}")
    return input_ids


def _truncate(tokens: list[int], max_new_tokens: int, eos_token_id: int | None) -> list[int]:
    tokens = tokens[:max_new_tokens]
    if eos_token_id is not None and eos_token_id in tokens:
        tokens = tokens[:tokens.index(eos_token_id) + 1]
    return tokens


def new_cache(model: nn.Module):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)  # one layer object per decoder layer, created up front


def cache_view(cache, start: int):
    """The cache as seen by a forward running layers ``start..`` only (see module docstring)."""
    if start == 0:
        return cache
    view = copy.copy(cache)
    view.layers = [cache.layers[start]] * start + list(cache.layers[start:])
    return view


def run_layers(depth: DecoderDepth, start: int, stop: int, cache, input_ids: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Pre-norm hidden after layer ``stop`` for new positions (1, T, C): layers[start:stop] on
    ``input_ids`` (start == 0) or on the hidden states ``inputs_embeds`` entering layer ``start``."""
    with depth.layer_range(start, stop), capture_outputs(depth, [stop]) as out:
        depth.base(input_ids=input_ids, inputs_embeds=inputs_embeds, cache=cache_view(cache, start),
                   use_cache=True)
    return out[stop]


def _check_one_attention_kind(model: nn.Module) -> None:
    # a forward over layers[start:] indexes config.layer_types from 0 (Qwen2), so the kinds must agree
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        raise MultiExitError(f"{type(model).__name__} mixes attention kinds {sorted(set(layer_types))}; "
                             f"running a layer range needs one kind in every layer")


@torch.no_grad()
def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | None = None) -> DecodeResult:
    """Reference: HF greedy decoding at the model's current depth (KV cache on)."""
    input_ids = _check_batch(input_ids)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                         max_new_tokens=max_new_tokens, use_cache=True, eos_token_id=eos_token_id,
                         pad_token_id=eos_token_id if eos_token_id is not None else 0)
    tokens = _truncate(out[0, input_ids.shape[1]:].tolist(), max_new_tokens, eos_token_id)
    return DecodeResult(tokens, {"tokens": len(tokens)})


@torch.no_grad()
def hf_self_speculative(model: nn.Module, input_ids: torch.Tensor, exit_layer: int, max_new_tokens: int,
                        num_draft: int | None = None, eos_token_id: int | None = None) -> DecodeResult:
    """transformers' ``generate(..., assistant_early_exit=exit_layer)``, greedy. Draft / verify counts
    come from forward calls of the first and last decoder layer (the last one runs only to verify).
    ``num_draft``: tokens drafted per round at a constant schedule (None: transformers' defaults, which
    also stop a draft early when its confidence is low).
    Needs a model whose forward runs ``layers[:config.num_hidden_layers]`` (LLaMA, Mistral, Qwen2
    do; Falcon runs every layer and fails inside transformers, so it is refused here)."""
    input_ids = _check_batch(input_ids)
    depth = DecoderDepth(model)  # run_layers picks layer ranges itself
    if not 1 <= exit_layer < depth.num_layers:
        raise MultiExitError(f"assistant_early_exit={exit_layer} is outside the valid range "
                             f"1..{depth.num_layers - 1} (the draft must be shallower than the model)")
    if "num_hidden_layers]" not in inspect.getsource(type(depth.base).forward):
        raise MultiExitError(f"transformers' assistant_early_exit needs a forward that runs "
                             f"layers[:config.num_hidden_layers]; {type(depth.base).__name__} runs every layer "
                             f"(use self_speculative_generate)")
    calls = [0, 0]  # forward calls of the first and the last decoder layer
    hooks = [depth.layers[i].register_forward_hook(lambda *_, j=j: calls.__setitem__(j, calls[j] + 1))
             for j, i in enumerate((0, depth.num_layers - 1))]
    # the draft length is read from the *assistant's* generation_config (here the model's own), not from
    # generate's kwargs; None keeps transformers' defaults (20, adapted by its heuristics)
    gen_config = model.generation_config
    saved = gen_config.num_assistant_tokens, gen_config.num_assistant_tokens_schedule
    if num_draft is not None:
        gen_config.num_assistant_tokens, gen_config.num_assistant_tokens_schedule = num_draft, "constant"
    try:
        with depth.layer_range(0, depth.num_layers):  # the whole model verifies
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, use_cache=True, assistant_early_exit=exit_layer,
                                 eos_token_id=eos_token_id,
                                 pad_token_id=eos_token_id if eos_token_id is not None else 0)
    finally:
        gen_config.num_assistant_tokens, gen_config.num_assistant_tokens_schedule = saved
        for h in hooks:
            h.remove()
    tokens = _truncate(out[0, input_ids.shape[1]:].tolist(), max_new_tokens, eos_token_id)
    drafted, verify = calls[0] - calls[1], calls[1]  # each draft step proposes one token
    accepted = max(len(tokens) - verify, 0)  # each verification adds the accepted drafts + one token
    return DecodeResult(tokens, {"tokens": len(tokens), "drafted": drafted, "accepted": accepted,
                                 "verify_steps": verify,
                                 "acceptance_rate": accepted / drafted if drafted else float("nan")})


@torch.no_grad()
def self_speculative_generate(model: nn.Module, input_ids: torch.Tensor, exit_layer: int, max_new_tokens: int,
                              num_draft: int = 4, eos_token_id: int | None = None) -> DecodeResult:
    """Greedy self-speculative decoding with one shared KV cache (see module docstring)."""
    input_ids = _check_batch(input_ids)
    depth = DecoderDepth(model)  # run_layers picks layer ranges itself
    n, N = exit_layer, depth.num_layers
    if not 1 <= n < N:
        raise MultiExitError(f"exit_layer={n} is outside the valid range 1..{N - 1} (the draft must be "
                             f"shallower than the model)")
    if num_draft < 1:
        raise ValueError(f"num_draft must be >= 1, got {num_draft}")
    _check_one_attention_kind(model)
    cache = new_cache(model)
    h = run_layers(depth, 0, N, cache, input_ids=input_ids)  # prefill, all layers: (1, P, C)
    tokens = [int(depth.readout(h[:, -1]).argmax(-1))]
    drafted = accepted = verify = 0
    while len(tokens) < max_new_tokens and tokens[-1] != eos_token_id:
        # draft: the first n layers, one token at a time, from the last committed token
        k = min(num_draft, max_new_tokens - len(tokens))
        x, draft, exit_h = tokens[-1], [], []
        for _ in range(k):
            hx = run_layers(depth, 0, n, cache, input_ids=torch.tensor([[x]], device=input_ids.device))  # (1,1,C)
            exit_h.append(hx)
            x = int(depth.readout(hx[:, -1]).argmax(-1))
            draft.append(x)
            if x == eos_token_id:
                break
        k = len(draft)
        # verify: layers n.. on the k exit states (inputs: last token, d_1..d_{k-1}) -> p_1..p_k
        full = depth.readout(run_layers(depth, n, N, cache, inputs_embeds=torch.cat(exit_h, 1))).argmax(-1)[0]
        a = 0
        while a < k and draft[a] == int(full[a]):
            a += 1
        drafted, accepted, verify = drafted + k, accepted + a, verify + 1
        tokens += draft[:a] + ([int(full[a])] if a < k else [])
        # inputs kept in the cache: the last token and the accepted drafts (the last accepted one,
        # or the correction, is the next round's pending input)
        drop = k - min(a + 1, k)
        if drop:
            cache.crop(-drop)
    tokens = _truncate(tokens, max_new_tokens, eos_token_id)
    return DecodeResult(tokens, {"tokens": len(tokens), "drafted": drafted, "accepted": accepted,
                                 "verify_steps": verify,
                                 "acceptance_rate": accepted / drafted if drafted else float("nan")})


def check_thresholds(depth: DecoderDepth, exits: Sequence[int], thresholds: Sequence[float]) -> list[int]:
    exits = list(exits)
    if exits != sorted(set(exits)):
        raise MultiExitError(f"exits {exits} must be increasing and distinct")
    for e in exits:
        depth.check_exit(e)
    if exits and exits[-1] >= depth.num_layers:
        raise MultiExitError(f"early-exit layers {exits} must lie below the model's depth {depth.num_layers} "
                             f"(the full model is always the last exit)")
    if len(thresholds) != len(exits):
        raise MultiExitError(f"{len(thresholds)} thresholds for {len(exits)} exits {exits}; give one per exit")
    return exits


@torch.no_grad()
def confidence_early_exit(model: nn.Module, input_ids: torch.Tensor, exits: Sequence[int],
                          thresholds: Sequence[float], max_new_tokens: int,
                          eos_token_id: int | None = None) -> DecodeResult:
    """Per token, go through ``exits`` in order and emit the argmax of the first exit whose max softmax
    probability is >= its threshold (a threshold >= 1 never exits early); otherwise the full model's.
    Stats: mean exit layer and per-exit counts (the full depth included)."""
    input_ids = _check_batch(input_ids)
    depth = DecoderDepth(model)  # run_layers picks layer ranges itself
    N = depth.num_layers
    exits = check_thresholds(depth, exits, thresholds)
    _check_one_attention_kind(model)
    bounds = [0] + exits + [N]  # segment s runs layers bounds[s]..bounds[s+1]
    thr = [float(t) for t in thresholds] + [0.0]  # the full model always emits
    cache = new_cache(model)
    P = input_ids.shape[1]
    ids = torch.cat([input_ids[0], input_ids.new_zeros(max_new_tokens)])[None]  # (1, P + max_new)
    hidden: torch.Tensor | None = None  # (1, P + max_new, C): each position's state at its deepest bound
    filled = [0] * (len(bounds) - 1)  # positions whose K/V segment s holds (non-increasing in s)
    tokens, exit_used = [], []
    cur = P - 1  # the position being decoded: its input token is known, its successor is not
    while len(tokens) < max_new_tokens:
        for s in range(len(bounds) - 1):
            start, stop = bounds[s], bounds[s + 1]
            lo = filled[s]  # pending positions lo..cur-1 (back-fill) + the current one
            if s == 0:
                h = run_layers(depth, start, stop, cache, input_ids=ids[:, lo:cur + 1])
            else:
                h = run_layers(depth, start, stop, cache, inputs_embeds=hidden[:, lo:cur + 1])
            if hidden is None:
                hidden = h.new_zeros(1, ids.shape[1], h.shape[-1])
            hidden[:, lo:cur + 1] = h
            filled[s] = cur + 1
            if thr[s] >= 1.0:  # never exits here: skip the head (a large share of a small model's cost)
                continue
            conf, tok = depth.readout(h[:, -1]).float().softmax(-1).max(-1)  # (1,), (1,)
            if float(conf) >= thr[s]:
                break
        tokens.append(int(tok))
        exit_used.append(stop)
        if tokens[-1] == eos_token_id:
            break
        cur += 1
        ids[0, cur] = tokens[-1]
    counts = {e: exit_used.count(e) for e in exits + [N]}
    return DecodeResult(tokens, {"tokens": len(tokens), "exit_counts": counts,
                                 "mean_exit_layer": sum(exit_used) / len(exit_used) if exit_used else float("nan")})
