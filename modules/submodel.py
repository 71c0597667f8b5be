"""Nested sub-models: a spec, the space they live in, samplers that pick them per step.

Five of the papers train many nested sub-models in one run (DyLoRA over adapter rank, SoFT over
depth, SortedNet over depth/width/heads/MLP). A sub-model is a point in a grid of named axes,
e.g. ``SubModel(rank=4)`` or ``SubModel(depth=6, width=96)``. Everything here is plain Python +
torch: no Lightning, no Hydra.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch


class SubModelError(ValueError):
    """A sub-model or space that cannot exist (bad axis, value outside the space...)."""


Value = int | str  # an int is a sub-model axis (rank=4); a non-numeric string an evaluation condition


def _value(v: object) -> Value:
    """Integers (and integer strings) stay sub-model values; other strings are condition values."""
    if isinstance(v, bool):
        raise SubModelError(f"a sub-model or condition value cannot be a bool, got {v!r}")
    if isinstance(v, int):
        return v
    text = str(v)
    try:
        return int(text)
    except ValueError:
        if not text or any(c in text for c in ",=@"):
            raise SubModelError(f"condition value {text!r} must be non-empty and free of ',', '=' and '@'") from None
        return text


@dataclass(frozen=True)
class SubModel:
    """One cell of an evaluation grid: an immutable, ordered mapping axis -> value.

    Integer values are nested sub-model axes (``rank=4``, ``depth=6``); string values are evaluation
    conditions that sit beside them (``testset=ood``, ``condition=snr10_white``): the same sub-model scored
    on another test set or under a corruption. ``submodel`` / ``condition`` split the two.
    """

    dims: tuple[tuple[str, Value], ...]

    @classmethod
    def of(cls, mapping: Mapping[str, Value] | None = None, **dims: Value) -> "SubModel":
        merged = {**(mapping or {}), **dims}
        return cls(tuple(sorted((str(k), _value(v)) for k, v in merged.items())))

    @classmethod
    def parse(cls, key: str) -> "SubModel":
        """Inverse of ``key``: ``"depth=4,width=96"`` -> SubModel(depth=4, width=96)."""
        try:
            return cls.of(dict(part.split("=") for part in key.split(",")))
        except ValueError as err:
            raise SubModelError(f"cannot parse sub-model key {key!r}; expected 'axis=value,...'") from err

    def __getitem__(self, axis: str) -> Value:
        for name, value in self.dims:
            if name == axis:
                return value
        raise KeyError(axis)

    def get(self, axis: str, default: Value | None = None) -> Value | None:
        return dict(self.dims).get(axis, default)

    def as_dict(self) -> dict[str, Value]:
        return dict(self.dims)

    @property
    def submodel(self) -> "SubModel":
        """The nested sub-model part (integer axes)."""
        return SubModel(tuple(d for d in self.dims if isinstance(d[1], int)))

    @property
    def condition(self) -> "SubModel":
        """The evaluation-condition part (string values); empty for the default test set."""
        return SubModel(tuple(d for d in self.dims if isinstance(d[1], str)))

    def merged(self, other: "SubModel | Mapping[str, Value] | None") -> "SubModel":
        extra = other.as_dict() if isinstance(other, SubModel) else dict(other or {})
        return SubModel.of({**self.as_dict(), **extra})

    @property
    def sort_key(self) -> tuple:
        """Orders cells by axis, numbers before strings (a plain ``dims`` sort fails on mixed values)."""
        return tuple((k, isinstance(v, str), v if isinstance(v, str) else f"{v:020d}") for k, v in self.dims)

    @property
    def key(self) -> str:
        """Stable text form used in metric names: ``val/acc@depth=4,width=96``."""
        return ",".join(f"{k}={v}" for k, v in self.dims)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.key


def metric_key(name: str, sub: SubModel, condition: SubModel | Mapping[str, Value] | None = None) -> str:
    """``val/loss`` + SubModel(rank=4) -> ``val/loss@rank=4`` (plain name for a non-nested model);
    a condition joins the sub-model's axes: ``test/acc@rank=4,testset=ood``."""
    cell = sub.merged(condition) if condition else sub
    return f"{name}@{cell.key}" if cell.dims else name


def split_metric_key(key: str) -> tuple[str, SubModel]:
    """Inverse of ``metric_key``."""
    name, _, sub = key.partition("@")
    return name, (SubModel.parse(sub) if sub else SubModel(()))


class SubModelSpace:
    """The product of named axes, each a sorted list of allowed values (nested: small ⊂ large)."""

    def __init__(self, axes: Mapping[str, Iterable[int]]):
        # No axes is allowed: a plain (non-nested) model has exactly one sub-model, itself.
        self.axes: dict[str, list[int]] = {}
        for name, values in axes.items():
            vals = sorted({int(v) for v in values})
            if not vals:
                raise SubModelError(f"axis {name!r} has no values")
            self.axes[name] = vals

    def __repr__(self) -> str:
        return f"SubModelSpace({self.axes})"

    @property
    def largest(self) -> SubModel:
        return SubModel.of({k: v[-1] for k, v in self.axes.items()})

    @property
    def smallest(self) -> SubModel:
        return SubModel.of({k: v[0] for k, v in self.axes.items()})

    def grid(self) -> list[SubModel]:
        names = list(self.axes)
        return [SubModel.of(dict(zip(names, combo))) for combo in itertools.product(*self.axes.values())]

    def __len__(self) -> int:
        n = 1
        for values in self.axes.values():
            n *= len(values)
        return n

    def __contains__(self, sub: SubModel) -> bool:
        d = sub.as_dict()
        return set(d) == set(self.axes) and all(d[k] in self.axes[k] for k in d)

    def random(self, generator: torch.Generator, probs: Mapping[str, torch.Tensor] | None = None) -> SubModel:
        """Independent per axis: uniform, or ``probs[axis]`` (one probability per value, see
        ``axis_probs``) for the axes it names."""
        probs = probs or {}
        return SubModel.of({k: v[int(torch.multinomial(probs[k], 1, generator=generator)) if k in probs
                                 else int(torch.randint(len(v), (1,), generator=generator))]
                            for k, v in self.axes.items()})

    def check(self, sub: SubModel) -> SubModel:
        if sub not in self:
            raise SubModelError(f"sub-model {sub.key!r} is outside the space; valid values: {self.axes}")
        return sub


DISTRIBUTIONS = ("uniform", "log_uniform")


def axis_probs(space: SubModelSpace, distribution: str = "uniform",
               weights: Mapping[str, Sequence[float]] | None = None) -> dict[str, torch.Tensor]:
    """Per-axis probabilities of a random draw, for the axes that are not uniform.

    ``distribution`` applies to every axis: ``uniform`` (DyLoRA) or ``log_uniform`` (weight 1/value:
    about equal mass per octave, small values drawn more often). ``weights`` gives explicit weights (one
    per value, in increasing value order) for the axes it names and overrides ``distribution`` there.
    Uniform axes are left out, so they keep the plain integer draw (the default is unchanged).
    """
    if distribution not in DISTRIBUTIONS:
        raise SubModelError(f"distribution={distribution!r} is not an option; valid choices: "
                            f"{', '.join(DISTRIBUTIONS)}")
    probs: dict[str, torch.Tensor] = {}
    if distribution == "log_uniform":
        for axis, values in space.axes.items():
            if values[0] <= 0:
                raise SubModelError(f"distribution=log_uniform needs positive values; axis {axis!r} has {values}")
            probs[axis] = torch.tensor([1.0 / v for v in values], dtype=torch.float64)
    if weights is not None and not isinstance(weights, Mapping):
        raise SubModelError(f"weights must map an axis to its list of weights, e.g. {{rank: [...]}}; got {weights!r}")
    for axis, ws in (weights or {}).items():
        if axis not in space.axes:
            raise SubModelError(f"weights.{axis}: no such axis; valid choices: {', '.join(space.axes) or 'none'}")
        values = space.axes[axis]
        if isinstance(ws, str) or not isinstance(ws, Sequence):
            raise SubModelError(f"weights.{axis} must be a list of {len(values)} weights, one per value {values}; "
                                f"got {ws!r}")
        if len(ws) != len(values):
            raise SubModelError(f"weights.{axis} has {len(ws)} weights but axis {axis!r} has {len(values)} values "
                                f"{values}; give one weight per value")
        try:
            w = torch.tensor([float(x) for x in ws], dtype=torch.float64)
        except (TypeError, ValueError):
            raise SubModelError(f"weights.{axis} must be numbers, got {list(ws)!r}") from None
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise SubModelError(f"weights.{axis} must be finite, >= 0 and not all zero, got {w.tolist()}")
        probs[axis] = w
    return {axis: p / p.sum() for axis, p in probs.items()}


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator that depends only on (seed, optimizer step).

    Drawing from it gives the same sub-model on every process and for every micro-batch of a
    gradient-accumulation step, with no communication between processes.
    """
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class Sampler:
    """Picks the sub-models trained at one optimizer step: ``submodels(step) -> [SubModel, ...]``.

    Every micro-batch of the step trains on all returned sub-models (their losses averaged).
    """

    def __init__(self, space: SubModelSpace, seed: int = 0):
        self.space = space
        self.seed = seed

    def submodels(self, step: int) -> list[SubModel]:
        raise NotImplementedError


class FixedSampler(Sampler):
    """Always the same sub-model: standard (non-nested) training when ``choice="largest"``."""

    def __init__(self, space: SubModelSpace, seed: int = 0, choice: str | Mapping[str, int] = "largest"):
        super().__init__(space, seed)
        if isinstance(choice, str):
            if choice not in ("largest", "smallest"):
                raise SubModelError(f"fixed sampler choice={choice!r}; valid: largest, smallest, or a mapping")
            self.sub = getattr(space, choice)
        else:
            self.sub = space.check(SubModel.of(dict(choice)))

    def submodels(self, step: int) -> list[SubModel]:
        return [self.sub]


class UniformSampler(Sampler):
    """``num_per_step`` independent draws (per axis) each optimizer step (DyLoRA: 1), uniform by
    default; ``distribution`` / ``weights`` as in ``axis_probs``."""

    def __init__(self, space: SubModelSpace, seed: int = 0, num_per_step: int = 1, distribution: str = "uniform",
                 weights: Mapping[str, Sequence[float]] | None = None):
        super().__init__(space, seed)
        if num_per_step < 1:
            raise SubModelError(f"num_per_step must be >= 1, got {num_per_step}")
        self.num_per_step = num_per_step
        self.probs = axis_probs(space, distribution, weights)

    def submodels(self, step: int) -> list[SubModel]:
        gen = step_generator(self.seed, step)
        return [self.space.random(gen, self.probs) for _ in range(self.num_per_step)]


class SandwichSampler(Sampler):
    """Largest + smallest + ``num_random`` random draws each step (the sandwich rule); the random
    draws follow ``distribution`` / ``weights`` as in ``axis_probs`` (uniform by default)."""

    def __init__(self, space: SubModelSpace, seed: int = 0, num_random: int = 1, distribution: str = "uniform",
                 weights: Mapping[str, Sequence[float]] | None = None):
        super().__init__(space, seed)
        self.num_random = num_random
        self.probs = axis_probs(space, distribution, weights)

    def submodels(self, step: int) -> list[SubModel]:
        gen = step_generator(self.seed, step)
        return ([self.space.largest, self.space.smallest] +
                [self.space.random(gen, self.probs) for _ in range(self.num_random)])


class AllSampler(Sampler):
    """Every sub-model of the space every step (SoFT's all exits, MatryoshkaLoRA's all ranks)."""

    def submodels(self, step: int) -> list[SubModel]:
        return self.space.grid()


SAMPLERS = {"fixed": FixedSampler, "uniform": UniformSampler, "sandwich": SandwichSampler, "all": AllSampler}


class NestedModel:
    """Binds a space to the setters that switch a model to a sub-model, one setter per axis.

    ``NestedModel({"rank": [1, 2, 4, 8]}, {"rank": lambda b: set_rank(model, b)})``. Axes from
    different pieces compose: a depth axis (exit layer) and a rank axis (adapter) give the
    depth x rank grid with no new code.
    """

    def __init__(self, axes: Mapping[str, Sequence[int]], setters: Mapping[str, Callable[[int], None]]):
        missing = set(axes) - set(setters)
        if missing:
            raise SubModelError(f"no setter for axes {sorted(missing)}")
        self.axes_values = {k: list(v) for k, v in axes.items()}
        self.space = SubModelSpace(axes)
        self.setters = dict(setters)

    def apply(self, sub: SubModel) -> None:
        for axis, value in sub.dims:
            if axis not in self.setters:
                raise SubModelError(f"unknown axis {axis!r}; this model has {sorted(self.setters)}")
            self.setters[axis](value)


def parse_grid(spec: Mapping[str, Sequence[int]] | Sequence[str] | None, space: SubModelSpace) -> list[SubModel]:
    """Evaluation grid from config: ``None``/"all" -> whole space, a mapping axis -> values
    (cartesian product; values may lie outside the training distribution but are checked by
    the caller's own bounds), or a list of keys ``["rank=1", "rank=8"]``."""
    if spec is None or spec == "all":
        return space.grid()
    if isinstance(spec, Mapping):
        if not spec:
            raise SubModelError("evaluation grid is empty")
        return SubModelSpace(spec).grid()
    subs = [SubModel.parse(s) for s in spec]
    if not subs:
        raise SubModelError("evaluation grid is empty")
    return subs
