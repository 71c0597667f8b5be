"""KnGPT2's model transform: Kronecker-decompose chosen linear maps and the token embedding of a decoder LM,
or truncate it to fewer dense layers (the equal-size dense baseline). Pure PyTorch (+ transformers' layouts).

Which maps: every linear map (``nn.Linear`` or GPT-2's ``Conv1D``) inside the selected decoder blocks
(``layers``: ``odd`` = 0-based indices 1, 3, 5, ... i.e. every second block starting with the second, ``even``,
``all``, ``none`` or a list of indices), optionally restricted to ``targets`` (names inside a block, e.g.
``q_proj`` or ``attn.c_attn``), and the token embedding (``embedding``). A fused map listed in ``fused``
(GPT-2's ``c_attn``: 3 = Q, K, V) is split into equal output slices before decomposing. Factor shapes:
``a_shape`` (A's (a_out, a_in), B derived) or ``b_shape``, or a balanced split by ``factor``; ``rank`` products;
``init``: ``nearest`` (Van Loan-Pitsianis, modules/kronecker.py) or ``random``. A tied LM head stays tied:
it reads the Kronecker embedding's factors (``KroneckerTiedHead``).

``plan_compression`` checks everything from shapes alone (it runs on a meta-device model, before any weight
loads); ``compress`` applies it. ``parameter_counts`` reports totals with the head counted once (tied) and
as its own matrix, and ``truncate_layers`` keeps a subset of blocks (``layer_map``: teacher layer of each).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from modules.kronecker import (FusedKroneckerLinear, KroneckerEmbedding, KroneckerLinear, KroneckerTiedHead,
                               _dense_weight, check_init, divisors, factor_shapes, is_conv1d, kron_params)

LAYOUTS = ("layers", "h")  # decoder block list on the HF base model: llama-style, GPT-2-style
SELECTIONS = ("odd", "even", "all", "none")


class CompressionError(ValueError):
    """A selection or shape the model cannot take; one line naming the option and the valid choices."""


@dataclass
class Compression:
    """The options of the transform (the ``compression`` config group)."""
    kind: str = "kronecker"
    layers: Any = "odd"
    embedding: bool = True
    targets: Sequence[str] | None = None
    a_shape: Sequence[int] | None = (2, 1)
    b_shape: Sequence[int] | None = None
    factor: int = -1
    rank: int = 1
    embedding_factor: int = 2
    embedding_rank: int = 1
    init: str = "nearest"
    fused: dict = field(default_factory=lambda: {"c_attn": 3})
    num_layers: int | None = None

    @classmethod
    def of(cls, options: dict) -> "Compression":
        known = {k: v for k, v in options.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Step:
    name: str                  # module path in the model
    kind: str                  # linear | fused | embedding
    shape: tuple[int, int]     # dense (d_out, d_in) or (V, d)
    dense_params: int
    kron_params: int
    a_shape: tuple[int, int] | None = None
    b_shape: tuple[int, int] | None = None


# --- the layout ---------------------------------------------------------------------------------------
def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, block list) of an HF decoder (``model.layers`` of llama/Qwen/SmolLM, ``transformer.h`` of GPT-2)."""
    base = getattr(model, "base_model", model)
    prefix = next((n for n, m in model.named_modules() if m is base), "")
    for attr in LAYOUTS:
        blocks = getattr(base, attr, None)
        if isinstance(blocks, nn.ModuleList):
            return (f"{prefix}.{attr}" if prefix else attr), blocks
    raise CompressionError(f"{type(model).__name__}: no decoder block list at base_model.layers (llama-style) or "
                           f"base_model.h (GPT-2-style)")


def select_layers(layers: Any, n: int) -> list[int]:
    if isinstance(layers, str):
        if layers not in SELECTIONS:
            raise CompressionError(f"compression.layers={layers!r} is not an option; valid choices: "
                                   f"{', '.join(SELECTIONS)} or a list of block indices 0..{n - 1}")
        return {"odd": list(range(1, n, 2)), "even": list(range(0, n, 2)), "all": list(range(n)), "none": []}[layers]
    out = [int(i) for i in layers]
    for i in out:
        if not 0 <= i < n:
            raise CompressionError(f"compression.layers: block {i} does not exist; this model has {n} blocks, "
                                   f"valid indices 0..{n - 1}")
    return sorted(set(out))


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _shapes(opts: Compression, d_out: int, d_in: int, name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        a, b = factor_shapes(d_out, d_in, opts.factor, opts.a_shape, opts.b_shape, name)
    except ValueError as err:
        key = "a_shape" if opts.a_shape is not None else "b_shape" if opts.b_shape is not None else "factor"
        value = getattr(opts, key)
        raise CompressionError(f"compression.{key}={list(value) if isinstance(value, (list, tuple)) else value} "
                               f"does not fit {err}") from None
    limit = min(a[0] * a[1], b[0] * b[1])
    if not 1 <= opts.rank <= limit:
        raise CompressionError(f"compression.rank={opts.rank} is outside 1..{limit} for {name} (a_shape={a}, "
                               f"b_shape={b})")
    return a, b


def plan_compression(model: nn.Module, options: Compression | dict) -> list[Step]:
    """Every replacement ``compress`` would make, checked from shapes alone (works on a meta-device model)."""
    opts = options if isinstance(options, Compression) else Compression.of(options)
    if opts.kind != "kronecker":
        return []
    try:
        check_init(opts.init, "compression")
    except ValueError as err:
        raise CompressionError(f"compression.init={opts.init!r} is not an option; valid choices: nearest, random") from None
    path, blocks = decoder_blocks(model)
    steps: list[Step] = []
    if opts.embedding:
        emb = model.get_input_embeddings()
        V, d = emb.weight.shape
        f = opts.embedding_factor
        if f <= 0 or d % f:
            raise CompressionError(f"compression.embedding_factor={f} does not divide the embedding width {d}; "
                                   f"valid choices: {divisors(d)}")
        name = next(n for n, m in model.named_modules() if m is emb)
        steps.append(Step(name, "embedding", (V, d), V * d, opts.embedding_rank * (V * d // f + f)))
    chosen = select_layers(opts.layers, len(blocks))
    targets = list(opts.targets) if opts.targets else None
    for i in chosen:
        linears = [(n, m) for n, m in blocks[i].named_modules() if n and is_linear(m)]
        if targets is not None:
            names = [n for n, _ in linears]
            for t in targets:
                if not any(n == t or n.endswith("." + t) for n in names):
                    raise CompressionError(f"compression.targets: block {i} has no linear map {t!r}; valid choices: "
                                           f"{', '.join(names)}")
            linears = [(n, m) for n, m in linears if any(n == t or n.endswith("." + t) for t in targets)]
        for n, m in linears:
            W, _ = _dense_weight(m)
            d_out, d_in = W.shape
            full = f"{path}.{i}.{n}"
            parts = int(opts.fused.get(n.rsplit(".", 1)[-1], 1)) if opts.fused else 1
            if parts > 1 and d_out % parts:
                raise CompressionError(f"compression.fused: {full} has {d_out} outputs, not divisible into {parts} parts")
            a, b = _shapes(opts, d_out // parts, d_in, full)
            steps.append(Step(full, "fused" if parts > 1 else "linear", (d_out, d_in), d_out * d_in,
                              parts * kron_params(a, b, opts.rank), a, b))
    return steps


def compress(model: nn.Module, options: Compression | dict) -> list[Step]:
    """Replace the planned maps in place (nearest-Kronecker or random factors); returns the plan."""
    opts = options if isinstance(options, Compression) else Compression.of(options)
    steps = plan_compression(model, opts)
    tied = _head_is_tied(model)
    for step in steps:
        old = model.get_submodule(step.name)
        if step.kind == "embedding":
            new = KroneckerEmbedding.from_dense(old.weight.data, opts.embedding_factor, opts.embedding_rank,
                                                step.name, opts.init)
        elif step.kind == "fused":
            parts = int(opts.fused[step.name.rsplit(".", 1)[-1]])
            new = FusedKroneckerLinear.from_dense(old, parts, step.a_shape, step.b_shape, opts.rank,
                                                  name=step.name, init=opts.init)
        else:
            new = KroneckerLinear.from_dense(old, step.a_shape, step.b_shape, opts.rank, name=step.name, init=opts.init)
        model.set_submodule(step.name, new.to(_device_of(old)))
        if step.kind == "embedding" and tied:
            model.set_output_embeddings(KroneckerTiedHead(new))
    return steps


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _head_is_tied(model: nn.Module) -> bool:
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and (head.weight is emb.weight or isinstance(head, KroneckerTiedHead))


# --- the equal-size dense baseline ---------------------------------------------------------------------
def spread(n: int, k: int) -> list[int]:
    """k block indices spread evenly over 0..n-1, first and last included (k=1: the last)."""
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def truncate_layers(model: nn.Module, keep: Sequence[int]) -> list[int]:
    """Keep only the blocks ``keep`` (in order), renumbered; returns ``keep`` (the teacher layer of each)."""
    path, blocks = decoder_blocks(model)
    keep = list(keep)
    if not keep or any(not 0 <= i < len(blocks) for i in keep):
        raise CompressionError(f"compression.num_layers: cannot keep blocks {keep} of {len(blocks)}")
    kept = nn.ModuleList([blocks[i] for i in keep])
    for j, block in enumerate(kept):
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = j  # the KV cache is indexed by it
    model.set_submodule(path, kept)
    config = model.config
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    return keep


def layers_matching(model: nn.Module, target_params: int) -> int:
    """The number of dense blocks whose model has the parameter count closest to ``target_params``."""
    _, blocks = decoder_blocks(model)
    per_block = sum(p.numel() for p in blocks[0].parameters())
    outside = parameter_counts(model)["params/total"] - per_block * len(blocks)
    k = round((target_params - outside) / per_block)
    return max(1, min(len(blocks), k))


# --- counting -------------------------------------------------------------------------------------------
def parameter_counts(model: nn.Module) -> dict[str, float]:
    """``params/total``: distinct parameters (a tied head shares the embedding's, counted once);
    ``params/head``: the LM head's own numbers if untied, else 0; ``params/total_untied_head``: the total
    with a tied head counted a second time at the size of what it reads (the input embedding's parameters: a
    Kronecker embedding's factors, not a V x d matrix); ``params/embedding``: the token embedding;
    ``params/body``: everything but the token embedding and the head (blocks, norms, position embeddings)."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[id(p)] = p.numel()
    total = sum(seen.values())
    emb = model.get_input_embeddings()
    emb_params = sum(p.numel() for p in emb.parameters())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and _head_is_tied(model)
    head_own = 0 if head is None or tied else sum(p.numel() for p in head.parameters())
    return {"params/total": float(total), "params/head": float(head_own),
            "params/total_untied_head": float(total + (emb_params if tied else 0)),
            "params/embedding": float(emb_params), "params/body": float(total - emb_params - head_own),
            "params/head_tied": float(tied)}


def compression_metrics(student: nn.Module, dense_counts: dict[str, float]) -> dict[str, float]:
    """The student's counts, the dense model's (``dense_params/*``) and the ratios dense / student."""
    own = parameter_counts(student)
    out = dict(own)
    out.update({k.replace("params/", "dense_params/"): v for k, v in dense_counts.items()})
    out["compression/ratio"] = dense_counts["params/total"] / own["params/total"]
    out["compression/ratio_untied_head"] = dense_counts["params/total_untied_head"] / own["params/total_untied_head"]
    out["compression/ratio_body"] = dense_counts["params/body"] / max(own["params/body"], 1.0)
    return out


def approximation_errors(model: nn.Module) -> dict[str, float]:
    """Mean relative Frobenius error of the nearest-Kronecker factors (those built by from_dense)."""
    errs = [m.approx_error for m in model.modules()
            if isinstance(m, (KroneckerLinear, KroneckerEmbedding)) and m.approx_error is not None]
    return {"compression/approx_error_mean": float(sum(errs) / len(errs))} if errs else {}


def meta_copy(config: Any, sequence_classification: bool = False) -> nn.Module:
    """The architecture of ``config`` on the meta device: shapes without memory, for planning."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if sequence_classification else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)

