"""Adapters behind one contract, found by name (``adapter.kind``).

An ``Adapter`` says, from its options alone (before any model loads), what is wrong with them
(``check``), which nested axes it adds to training (``axes``, e.g. ``{"rank": [1..8]}``) and which values
are evaluated (``eval_values``); given a model it attaches itself (``attach`` -> the ``NestedModel`` of its
axes), may re-factor itself before evaluation (``before_eval``), and exports a sub-model (``export``).
Adding an adapter is one file defining a subclass, one entry in ``ADAPTERS``, one yaml in conf/adapter/
and one row in the adapter tests.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from torch import nn

from modules.options import option  # noqa: F401  (the adapters' schemas declare their fields with it)
from modules.submodel import NestedModel, SubModel


class AdapterError(ValueError):
    """Adapter options that cannot work; the message is one line naming ``adapter.<key>``."""


def wrap_modules(model: nn.Module, targets: Sequence[str] | str, fits: Callable[[nn.Module], bool],
                 wrap: Callable[[str, nn.Module], nn.Module], exclude: Sequence[str] = ("lm_head",),
                 kind: str = "linear layer") -> list[str]:
    """Every adapter's injection: freeze the whole model, then replace each module that ``fits`` and whose last
    name is one of ``targets`` ("all-linear": every module that fits) by ``wrap(name, module)``; leaf names in
    ``exclude`` are left alone and only the outermost match of a nested pair is wrapped. Returns the wrapped
    names; when none matches, an AdapterError naming ``adapter.target_modules`` and what the model has."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    names: list[str] = []
    for name, module in model.named_modules():
        leaf = name.rpartition(".")[2]
        if not name or leaf in exclude or not fits(module):
            continue
        if (targets == ["all-linear"] or leaf in targets) and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    if not names:
        found = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if n and fits(m)})
        raise AdapterError(f"adapter.target_modules={targets} matched no {kind}; this model has: {found[:40]}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        model.set_submodule(name, wrap(name, model.get_submodule(name)))
    return names


@dataclasses.dataclass
class NoOptions:
    """``adapter=none``: nothing but its kind."""
    yaml: ClassVar[str] = "adapter/none"
    closed: ClassVar[bool] = True
    kind: str = "none"


class Adapter:
    """The contract; the defaults describe an adapter that adds no axis and exports nothing."""

    kind = ""
    #: a dataclass naming every option of the adapter's config group (type, default, range)
    options_schema: type = NoOptions
    #: option keys that configure the paradigm, not ``attach`` (not passed to it)
    NOT_ATTACH_OPTIONS: tuple[str, ...] = ("kind", "eval_ranks")

    def check(self, options: Mapping[str, Any], quantized: bool = False) -> None:
        """Raise AdapterError for options that cannot work (cheap: no model is loaded)."""

    def check_merge(self, options: Mapping[str, Any]) -> None:
        """Raise AdapterError when ``export.merge=true`` cannot merge this adapter into the base weights."""

    def axes(self, options: Mapping[str, Any]) -> dict[str, list[int]]:
        """The nested axes this adapter adds to the training space."""
        return {}

    def eval_values(self, options: Mapping[str, Any]) -> dict[str, list[int]] | None:
        """Values of its axes to evaluate (None: the training values)."""
        return None

    def attach(self, model: nn.Module, options: Mapping[str, Any]) -> NestedModel:
        raise NotImplementedError

    def before_eval(self, model: nn.Module, options: Mapping[str, Any]) -> None:
        """A chance to re-factor trained weights before the grid evaluation (post-hoc SVD)."""

    def export(self, model: nn.Module, sub: SubModel, folder: Path, options: Mapping[str, Any], *,
               base_name: str | None = None, merge: bool = False, tokenizer: Any = None) -> list[Path]:
        """Save sub-model ``sub`` of the adapter into ``folder``; the written paths."""
        return []

    def attach_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in options.items() if k not in self.NOT_ATTACH_OPTIONS}


class FullFineTuning(Adapter):
    """``adapter=none``: every weight trains, nothing is nested."""

    kind = "none"

    def check(self, options: Mapping[str, Any], quantized: bool = False) -> None:
        if quantized:
            raise AdapterError("adapter=none (full fine-tuning) cannot train a quantized base; "
                               "use quantization=none or an adapter (lora, dylora)")

    def attach(self, model: nn.Module, options: Mapping[str, Any]) -> NestedModel:
        for p in model.parameters():
            p.requires_grad_(True)
        return NestedModel({}, {})


def _registry() -> dict[str, Adapter]:
    from modules.adapters.krona import KronA
    from modules.adapters.lora import NestedLoRA, PeftLoRA

    return {a.kind: a for a in (FullFineTuning(), NestedLoRA(), PeftLoRA(), KronA())}


ADAPTERS = ("none", "nested_lora", "peft_lora", "krona")


def get_adapter(kind: str) -> Adapter:
    registry = _registry()
    if kind not in registry:
        raise AdapterError(f"adapter.kind={kind!r} is not an option; valid choices: {', '.join(registry)}")
    return registry[kind]


def attach_adapter(model: nn.Module, kind: str, **options: Any) -> NestedModel:
    """Attach adapter ``kind`` with ``options`` (the ``adapter`` config group less ``kind``)."""
    adapter = get_adapter(kind)
    return adapter.attach(model, adapter.attach_options(options))
