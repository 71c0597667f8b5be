"""Multi-exit readout of HF decoder LMs (SoFT, sorted fine-tuning over depth).

Exit n = the first n decoder layers, then the model's own final norm and shared LM head: no new
parameters. ``DecoderDepth(model).set_depth(n)`` makes the model's own forward (and therefore HF
``generate`` with its KV cache) run only those n layers. ``multi_exit_loss`` reads every exit from one
pass through the blocks and averages their answer-only next-token losses (SoFT: all exits, uniform
weights; SFT: the last exit only). ``ExitHeads`` is the SFT+ICT baseline: one new head per exit.

Pure torch + transformers: no Lightning, no Hydra. Supported layouts (found generically): LLaMA /
Mistral / Qwen2 / SmolLM (``model.layers`` + ``model.norm``) and Falcon (``transformer.h`` +
``transformer.ln_f``), with the head from ``get_output_embeddings()``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # label of prompt and padding tokens (HF's and modules/lm_module.py's convention)

# (decoder layer list, final norm) attribute names on the HF base model, in search order
LAYOUTS = (("layers", "norm"), ("h", "ln_f"))


class MultiExitError(ValueError):
    """An exit that cannot exist, or a model without the expected decoder layout."""


class LayerRange(nn.ModuleList):
    """A ModuleList that keeps every layer (state_dict, parameters, ``.to()`` see them all) but yields
    only ``layers[start:stop]`` when iterated or sliced, so the model's own forward runs just those.
    Integer indexing and ``len`` stay absolute."""

    start: int = 0
    stop: int | None = None

    def active(self) -> list[nn.Module]:
        return list(self._modules.values())[self.start:self.stop]

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.active())

    def __getitem__(self, idx):
        if isinstance(idx, slice):  # LLaMA/Qwen2 loop over self.layers[: config.num_hidden_layers]
            return self.active()[idx]
        return super().__getitem__(idx)


def find_layout(model: nn.Module) -> tuple[nn.Module, str, str, nn.Module]:
    """(base model, layer-list attribute, final-norm attribute, LM head) or one clear MultiExitError."""
    arch = type(model).__name__
    base = getattr(model, "base_model", None)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    for layers_name, norm_name in LAYOUTS:
        layers, norm = getattr(base, layers_name, None), getattr(base, norm_name, None)
        if isinstance(layers, nn.ModuleList) and isinstance(norm, nn.Module) and isinstance(head, nn.Module):
            return base, layers_name, norm_name, head
    raise MultiExitError(
        f"{arch} does not have the decoder layout multi-exit needs: looked for a layer list + final norm at "
        f"base_model.layers + base_model.norm (LLaMA/Mistral/Qwen2) or base_model.h + base_model.ln_f (Falcon), "
        f"and an LM head from get_output_embeddings() (found: {type(base).__name__} base, head "
        f"{type(head).__name__ if head is not None else None})")


class DecoderDepth:
    """Depth setter for an HF decoder LM: ``set_depth(n)`` runs the first n layers, then the shared
    final norm + head. State lives on the (class-swapped) layer list, so several DecoderDepth objects
    over one model agree. Use as the ``depth`` setter of a ``NestedModel``."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.base, self.layers_name, self.norm_name, self.head = find_layout(model)
        layers = getattr(self.base, self.layers_name)
        if type(layers) is nn.ModuleList:
            layers.__class__ = LayerRange  # in place: same module object, same parameters
            layers.start, layers.stop = 0, len(layers)
        elif not isinstance(layers, LayerRange):
            raise MultiExitError(f"{type(model).__name__}: {self.layers_name} is a {type(layers).__name__}, "
                                 f"expected a plain nn.ModuleList")
        self.layers: LayerRange = layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def depth(self) -> int:
        return self.layers.stop

    @property
    def norm(self) -> nn.Module:
        return getattr(self.base, self.norm_name)

    def check_exit(self, n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.num_layers:
            raise MultiExitError(f"exit layer {n!r} is outside the valid range 1..{self.num_layers} "
                                 f"({type(self.model).__name__} has {self.num_layers} decoder layers)")
        return n

    def check_exits(self, exits: Sequence[int]) -> list[int]:
        if not len(exits):
            raise MultiExitError("exits is empty; give at least one exit layer")
        return sorted({self.check_exit(e) for e in exits})

    def set_depth(self, n: int) -> None:
        self.layers.start, self.layers.stop = 0, self.check_exit(n)

    @contextlib.contextmanager
    def layer_range(self, start: int, stop: int):
        """Temporarily run only layers[start:stop] (0 <= start < stop <= num_layers)."""
        if not 0 <= start < stop <= self.num_layers:
            raise MultiExitError(f"layer range {start}..{stop} is outside 0..{self.num_layers}")
        saved = self.layers.start, self.layers.stop
        self.layers.start, self.layers.stop = start, stop
        try:
            yield
        finally:
            self.layers.start, self.layers.stop = saved

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """Shared final norm + head on pre-norm hidden states: (..., C) -> (..., V)."""
        return self.head(self.norm(hidden))


@contextlib.contextmanager
def capture_outputs(depth: DecoderDepth, exits: Sequence[int]):
    """Record the (pre-norm) output of decoder layer e-1 for each exit e: {e: (B, T, C)}."""
    states: dict[int, torch.Tensor] = {}

    def hook(exit_layer):
        def fn(module, args, output):
            # decoder layers return a tensor (LLaMA, Qwen2) or a tuple led by it (Falcon)
            states[exit_layer] = output[0] if isinstance(output, (tuple, list)) else output
        return fn

    handles = [depth.layers[e - 1].register_forward_hook(hook(e)) for e in exits]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


def exit_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                exits: Sequence[int]) -> dict[int, torch.Tensor]:
    """Pre-norm hidden state after each exit layer, {exit: (B, T, C)}, from one pass through the
    blocks (layers above the deepest exit do not run)."""
    depth = DecoderDepth(model)
    exits = depth.check_exits(exits)
    with depth.layer_range(0, exits[-1]), capture_outputs(depth, exits) as states:
        depth.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return {e: states[e] for e in exits}


def multi_exit_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      exits: Sequence[int]) -> dict[int, torch.Tensor]:
    """{exit: final_norm(h_exit)} (B, T, C), ready for the LM head; the norm is applied once per exit
    (HF's own last hidden state is already normed, its intermediate ones are not: hooks avoid the mix)."""
    norm = DecoderDepth(model).norm
    return {e: norm(h) for e, h in exit_states(model, input_ids, attention_mask, exits).items()}


class ExitHeads(nn.Module):
    """SFT+ICT baseline: a separate linear head per exit, initialised from the shared head (the body
    and final norm stay frozen: ``model.requires_grad_(False)``; train only these heads). An exit without
    a head of its own (e.g. the last one, whose head SFT already trained) reads through the shared head.

    ``install()`` routes the model's own head to the selected exit's head (``select(n)``), so the model's
    forward, HF ``generate`` and losses read exit n through head n with no change to the caller. The shared
    head keeps its parameters (tied embeddings stay tied) and the state dict keeps its keys."""

    def __init__(self, model: nn.Module, exits: Sequence[int]):
        super().__init__()
        depth = DecoderDepth(model)
        shared = depth.head
        if not isinstance(shared, nn.Linear):
            raise MultiExitError(f"{type(model).__name__}: the LM head is a {type(shared).__name__}, "
                                 "per-exit heads need an nn.Linear head")
        self.__dict__["shared"] = shared  # not a submodule: it belongs to the model (and its checkpoint)
        self.heads = nn.ModuleDict()
        for e in depth.check_exits(exits):
            self.heads[str(e)] = nn.Linear(shared.in_features, shared.out_features, bias=shared.bias is not None,
                                           device=shared.weight.device, dtype=shared.weight.dtype)
        self.reset_from_shared()

    @torch.no_grad()
    def reset_from_shared(self) -> None:
        """Every head := a copy of the shared head as it is now (a stage calls this after loading the SFT
        run's weights, so the heads start from the trained head, not the pretrained one)."""
        for head in self.heads.values():
            head.weight.copy_(self.shared.weight)  # a copy: untied from the input embeddings
            if head.bias is not None:
                head.bias.copy_(self.shared.bias)

    @property
    def exits(self) -> list[int]:
        return [int(k) for k in self.heads]

    def head_of(self, exit_layer: int):
        """The exit's own head, or the shared one (always the plain shared weights, whatever is selected)."""
        own = self.heads[str(exit_layer)] if str(exit_layer) in self.heads else None
        return own if own is not None else (lambda x: F.linear(x, self.shared.weight, self.shared.bias))

    def forward(self, exit_layer: int, normed_hidden: torch.Tensor) -> torch.Tensor:
        return self.head_of(exit_layer)(normed_hidden)  # (..., V)

    def install(self) -> "ExitHeads":
        if type(self.shared) is nn.Linear:
            self.shared.__class__ = RoutedHead  # in place: same module, same (possibly tied) weight
        self.shared.__dict__["route"] = None
        return self

    def select(self, exit_layer: int) -> None:
        """After ``install``: the model's head reads through exit ``exit_layer``'s head (shared if it has none)."""
        self.shared.__dict__["route"] = self.heads[str(exit_layer)] if str(exit_layer) in self.heads else None


class RoutedHead(nn.Linear):
    """The shared LM head, forwarding to the selected exit head (``ExitHeads.select``) when there is one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route = self.__dict__.get("route")
        return route(x) if route is not None else super().forward(x)


def truncate_layers(model: nn.Module, n: int) -> nn.Module:
    """The "extracted" baseline: keep only the first n decoder layers (then the model's own final norm and
    head), in place; the config says n layers, so caches and generation size themselves to n."""
    base, layers_name, _, _ = find_layout(model)
    layers = getattr(base, layers_name)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(layers):
        raise MultiExitError(f"truncate to {n!r} layers is outside the valid range 1..{len(layers)} "
                             f"({type(model).__name__} has {len(layers)} decoder layers)")
    setattr(base, layers_name, nn.ModuleList(list(layers)[:n]))
    config = model.config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int) and key in config.to_dict():
            setattr(config, key, n)
            break
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:n]
    return model


def multi_exit_loss(model: nn.Module, batch: Mapping[str, torch.Tensor], exits: Sequence[int],
                    weights: Sequence[float] | None = None, heads: ExitHeads | None = None,
                    checkpoint_head: bool = True) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Weighted mean (uniform by default, as in SoFT) of each exit's next-token cross-entropy over
    answer tokens (labels != -100), from one pass through the blocks. Returns (total, {exit: loss}).

    The norm + head run only on labelled positions and one exit at a time; with ``checkpoint_head``
    each exit's (N, V) logits are recomputed in backward instead of kept, so at most one exit's
    full-vocabulary logits are alive at once. ``heads``: per-exit heads (SFT+ICT) instead of the
    shared head. SFT is ``exits=[num_layers]``.
    """
    depth = DecoderDepth(model)
    exits = depth.check_exits(exits)
    if weights is None:
        w = [1.0] * len(exits)
    else:
        w = [float(x) for x in weights]
        if len(w) != len(exits) or any(x < 0 for x in w) or sum(w) <= 0:
            raise MultiExitError(f"weights {list(weights)} must be {len(exits)} non-negative numbers, one per "
                                 f"exit {exits}, not all zero")
    states = exit_states(model, batch["input_ids"], batch.get("attention_mask"), exits)
    labels = batch["labels"][:, 1:]  # position t predicts token t+1
    keep = labels != IGNORE_INDEX
    target = labels[keep]  # (N,)

    losses: dict[int, torch.Tensor] = {}
    for e in exits:
        head = heads.head_of(e) if heads is not None else depth.head

        def exit_loss(h: torch.Tensor, head=head) -> torch.Tensor:
            return F.cross_entropy(head(depth.norm(h)).float(), target)

        h = states[e][:, :-1][keep]  # (N, C): labelled positions only
        use_ckpt = checkpoint_head and torch.is_grad_enabled() and len(exits) > 1
        losses[e] = checkpoint(exit_loss, h, use_reentrant=False) if use_ckpt else exit_loss(h)
    total = sum(wi * losses[e] for wi, e in zip(w, exits)) / sum(w)
    return total, losses


def sft_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The SFT baseline: the answer-only loss at the last exit (= the model's ordinary loss)."""
    return multi_exit_loss(model, batch, [DecoderDepth(model).num_layers])[0]


def exit_model(model: nn.Module, n: int) -> nn.Module:
    """Exit n as a standalone HF model: a copy holding only the first n decoder layers (plus the shared
    embeddings, final norm and head), its config saying n layers, so ``save_pretrained`` /
    ``from_pretrained`` give a plain model whose forward equals the exit's."""
    import copy

    small = copy.deepcopy(model)
    depth = DecoderDepth(small)
    depth.check_exit(n)
    setattr(depth.base, depth.layers_name, nn.ModuleList(list(depth.layers._modules.values())[:n]))
    config = small.config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, n)
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (newer configs)
        config.layer_types = config.layer_types[:n]
    return small
