"""One schema per config group: every option checked for type and range before anything heavy loads.

A schema is a dataclass whose fields are the group's options: the annotation is the type (``int``,
``float``, ``bool``, ``str``, ``Optional[...]``, ``list[int]``, ``Literal[...]`` choices, ``Any``) and
``opt(min=, max=, above=, below=)`` gives the range (of every element, for a list); ``opt(length=)`` or
``opt(min_len=)`` the length of a list (``min_len=1``: not empty). A ``closed`` schema also rejects keys it does not know (a
typo in ``adapter.dropuot`` is an error, not a silently ignored option); an open one (``trainer``: any
Lightning Trainer argument) checks only the options it names. ``check(cfg, "adapter", LoraSchema)``
raises ``ConfigError`` with one line naming the key, the bad value and the valid choices.

``yaml`` names the group file holding a schema's defaults (``elsewhere``: the file of an option only some
choices set; ``written``: fields a run fills in); tests/test_schema_defaults.py checks they agree.

The core groups are here; each paradigm adds the schemas of its own groups (``Paradigm.schemas``).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, ClassVar, Literal, Optional, TypeVar, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments.core.config import ConfigError
from modules.options import option as opt  # noqa: F401  (the one field helper; adapters use it too)

T = TypeVar("T")
META_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


# --- the checker ------------------------------------------------------------------------------------
def _describe(tp: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is Union:
        return " or ".join("null" if a is type(None) else _describe(a, plural) for a in args)
    if origin in (list, tuple):
        return f"{'lists' if plural else 'a list'} of {_describe(args[0], plural=True) if args else 'values'}"
    if origin is dict:
        return "mappings" if plural else "a mapping"
    names = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "true/false"),
             str: ("a string", "strings")}
    return names[tp][plural] if tp in names else str(tp)


def _bounds(meta: dict) -> str:
    """The range of a field (of each element of a list) as an error says it: ``>= 0 and < 1``."""
    parts = [f"{op} {meta[k]}" for k, op in (("min", ">="), ("above", ">"), ("max", "<="), ("below", "<")) if meta.get(k) is not None]
    return " and ".join(parts)


def _rules(meta: dict) -> str:
    """A field's length and range rules, for a type error: `` (2 values, each >= 1)``."""
    parts = ([f"{meta['length']} values"] if meta.get("length") is not None else []) + \
            ([f"at least {meta['min_len']} value{'s' * (meta['min_len'] != 1)}"] if meta.get("min_len") else [])
    if _bounds(meta):
        parts.append(f"each {_bounds(meta)}" if parts else _bounds(meta))
    return f" ({', '.join(parts)})" if parts else ""


def _choices(tp: Any) -> list[str] | None:
    """The values of a Literal (also inside Optional), as a user types them."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return [str(a) for a in args]
    if origin is Union:
        inner = [c for a in args for c in (_choices(a) or [])]
        return inner or None
    return None


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in args
    if origin is Union:
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig)) and all(_matches(v, args[0]) for v in value) if args \
            else isinstance(value, (list, tuple, ListConfig))
    if origin is dict or tp is dict:
        return isinstance(value, (dict, DictConfig))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return isinstance(value, tp)


def _check_range(key: str, value: Any, meta: dict) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not math.isfinite(value):  # nan / inf are never a setting (a diverged run would follow)
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    lo, hi, above, below = meta.get("min"), meta.get("max"), meta.get("above"), meta.get("below")
    if (lo is not None and value < lo or hi is not None and value > hi
            or above is not None and value <= above or below is not None and value >= below):
        raise ConfigError(f"{key} must be {_bounds(meta)}, got {value!r}")


def _check_list(key: str, value: list, meta: dict) -> None:
    """A list's length (``length``, ``min_len``), then the range of every element (of nested lists too)."""
    length, min_len = meta.get("length"), meta.get("min_len")
    if length is not None and len(value) != length:
        raise ConfigError(f"{key} must hold exactly {length} values, got {len(value)}: {value!r}")
    if min_len is not None and len(value) < min_len:
        what = "must not be empty" if min_len == 1 else f"must hold at least {min_len} values"
        raise ConfigError(f"{key} {what}, got {value!r}")
    for i, item in enumerate(value):
        if isinstance(item, (list, tuple)):
            _check_list(f"{key}[{i}]", item, {**meta, "length": None, "min_len": None})
        else:
            _check_range(f"{key}[{i}]", item, meta)


def check(cfg: DictConfig, group: str, schema: type) -> None:
    """Check the options of ``cfg.<group>`` against ``schema`` (see the module docstring)."""
    node = OmegaConf.select(cfg, group)
    if node is None:
        return
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{group} must be a group of options, got {node!r}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for name, field in fields.items():
        if name not in node:
            continue
        key = f"{group}.{name}"
        try:
            value = node[name]
            if OmegaConf.is_config(value):  # this option only (the whole group per option was quadratic)
                value = OmegaConf.to_container(value, resolve=True)
        except Exception as err:  # an interpolation that cannot resolve
            raise ConfigError(f"{key}: {str(err).splitlines()[0]}") from None
        if not _matches(value, hints[name]):
            choices = _choices(hints[name])
            if choices is not None and isinstance(value, str):
                raise ConfigError(f"{key}={value!r} is not an option; valid choices: {', '.join(choices)}")
            raise ConfigError(f"{key} must be {_describe(hints[name])}{_rules(field.metadata)}, got {value!r}")
        if isinstance(value, (list, tuple)):
            _check_list(key, value, dict(field.metadata))
        else:
            _check_range(key, value, dict(field.metadata))
    if getattr(schema, "closed", False):
        unknown = [k for k in node if k not in fields and k not in META_KEYS]
        if unknown:
            raise ConfigError(f"{group}.{unknown[0]} is not an option of {group}; valid options: "
                              f"{', '.join(fields)}")


def options(cfg: DictConfig, group: str, schema: type[T]) -> T:
    """``cfg.<group>`` as a typed ``schema`` object: each option the config sets (resolved), the schema's default
    for each it leaves out (so that a default lives in the schema only; ``check`` has already run). Keys an open
    schema does not name are not read here."""
    node = OmegaConf.select(cfg, group)
    names = {f.name for f in dataclasses.fields(schema)}
    given = {} if not isinstance(node, DictConfig) else \
        {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
         for k, v in node.items() if k in names}
    return schema(**given)


def check_all(cfg: DictConfig, schemas: dict[str, type]) -> None:
    for group, schema in schemas.items():
        check(cfg, group, schema)


# --- core groups (every paradigm) ----------------------------------------------------------------------
@dataclasses.dataclass
class TrainerSchema:
    """The options of Lightning's Trainer that users change most; any other Trainer argument passes."""
    yaml: ClassVar[str] = "trainer/cpu"
    closed: ClassVar[bool] = False
    accelerator: Literal["cpu", "gpu", "cuda", "mps", "tpu", "auto"] = "cpu"
    devices: Union[int, str, list[int]] = opt(1, min=-1, min_len=1)  # -1: every device; a list: device ids
    strategy: Union[str, dict, None] = "auto"  # a Lightning name, or a strategy node (trainer=fsdp, deepspeed)
    num_nodes: int = opt(1, min=1)
    precision: Union[str, int] = "32-true"
    max_steps: int = opt(100, min=-1)
    max_epochs: Optional[int] = opt(-1, min=-1)
    accumulate_grad_batches: int = opt(1, min=1)
    gradient_clip_val: Optional[float] = opt(1.0, min=0)
    val_check_interval: Optional[float] = opt(None, above=0)
    check_val_every_n_epoch: Optional[int] = opt(1, min=1)
    num_sanity_val_steps: int = opt(0, min=-1)
    log_every_n_steps: int = opt(5, min=1)
    enable_progress_bar: Optional[bool] = None
    enable_model_summary: bool = False
    limit_val_batches: Union[int, float, None] = opt(None, min=0)
    limit_test_batches: Union[int, float, None] = opt(None, min=0)
    deterministic: Union[bool, str] = False


@dataclasses.dataclass
class OptimizerSchema:
    closed: ClassVar[bool] = False  # optimizers differ in their arguments; the common ones are checked
    lr: float = opt(1e-3, above=0)
    weight_decay: float = opt(0.0, min=0)
    eps: float = opt(1e-8, above=0)
    betas: list[float] = opt([0.9, 0.999], length=2, min=0, below=1)  # Adam's (beta1, beta2)
    momentum: float = opt(0.0, min=0)


@dataclasses.dataclass
class SchedulerSchema:
    yaml: ClassVar[str] = "scheduler/constant_warmup"
    closed: ClassVar[bool] = True
    name: Optional[Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                           "polynomial", "inverse_sqrt"]] = "constant_with_warmup"
    warmup_ratio: float = opt(0.03, min=0, max=1)


@dataclasses.dataclass
class CheckpointSchema:
    yaml: ClassVar[str] = "checkpoint/default"
    closed: ClassVar[bool] = True
    every_n_steps: int = opt(50, min=1)
    resume: bool = True


@dataclasses.dataclass
class EvalSchema:
    """A paradigm whose eval group adds keys gives a subclass in its ``schemas`` (checked instead of this one)."""
    yaml: ClassVar[str] = "eval/default"
    closed: ClassVar[bool] = True
    ckpt_path: Optional[str] = None
    metric: str = "test/loss"
    higher_is_better: bool = False


@dataclasses.dataclass
class ExportSchema:
    yaml: ClassVar[str] = "export/default"
    closed: ClassVar[bool] = True  # as EvalSchema: a paradigm's own keys come with its subclass
    submodels: list[str] = opt([])  # [] (the default) exports nothing: accepted
    dir: str = "exports"


@dataclasses.dataclass
class LatencySchema:
    """``latency``: measured inference time per sub-model (the vision and GLUE paradigms)."""
    yaml: ClassVar[str] = "latency/default"
    closed: ClassVar[bool] = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = opt(1, min=1)
    warmup: int = opt(3, min=0)
    repeats: int = opt(20, min=0)


@dataclasses.dataclass
class SamplingSchema:
    """``sampling``: the options of every sampler of modules/submodel.py (one that a chosen sampler does not take
    is refused when it is built: experiments/paradigms/lm.py training_sampler)."""
    yaml: ClassVar[str] = "sampling/uniform"
    elsewhere: ClassVar[dict] = {"num_random": "sampling/sandwich", "choice": "sampling/fixed"}  # fields only those options set
    closed: ClassVar[bool] = True
    num_per_step: int = opt(1, min=1)
    num_random: int = opt(1, min=0)
    distribution: Literal["uniform", "log_uniform"] = "uniform"
    weights: Optional[dict] = None
    choice: Union[str, dict] = "largest"


@dataclasses.dataclass
class RehearsalSchema:
    """``rehearsal`` (conf/rehearsal/tiny.yaml); ``notes``, ``datasets`` and ``replaced`` are written by
    experiments/rehearsal.py itself."""
    yaml: ClassVar[str] = "rehearsal/tiny"
    elsewhere: ClassVar[dict] = {"enabled": "rehearsal/none"}  # off unless rehearsal=tiny
    written: ClassVar[tuple] = ("notes", "datasets", "replaced")  # filled in by the run, not options
    closed: ClassVar[bool] = True
    enabled: bool = False
    name: str = "tiny"
    layers: int = opt(2, min=1)
    hidden: int = opt(32, min=1)
    heads: int = opt(4, min=1)
    accelerator: Literal["cpu", "gpu"] = "cpu"
    steps: int = opt(2, min=1)
    eval_batches: int = opt(1, min=1)
    examples: int = opt(8, min=1)
    max_new_tokens: int = opt(8, min=1)
    image_size: int = opt(64, min=1)
    fixtures_dir: Optional[str] = None
    notes: Any = None
    datasets: Any = None
    replaced: Optional[dict] = None


@dataclasses.dataclass
class RootSchema:
    closed: ClassVar[bool] = False
    seed: int = opt(42, min=0, max=2 ** 32 - 1)  # numpy's seed range
    threads: Optional[int] = opt(None, min=1)
    init_from: Optional[str] = None


CORE_SCHEMAS: dict[str, type] = {"trainer": TrainerSchema, "optimizer": OptimizerSchema,
                                 "scheduler": SchedulerSchema, "checkpoint": CheckpointSchema,
                                 "eval": EvalSchema, "export": ExportSchema, "sampling": SamplingSchema,
                                 "rehearsal": RehearsalSchema}
# Groups of named factories (any Lightning logger or callback, under a name the user chooses): open by design,
# but every entry must be a node with a _target_ (a typo such as +logger.csv_dir=x would never be built).
FACTORY_GROUPS = ("logger", "callbacks")


def check_core(cfg: DictConfig, replaced: tuple[str, ...] = ()) -> None:
    """The core groups, less those ``replaced`` by a paradigm's own schema (its subclass is checked instead)."""
    root = OmegaConf.create({"root": {k: cfg.get(k) for k in ("seed", "threads", "init_from") if k in cfg}})
    try:
        check(root, "root", RootSchema)
    except ConfigError as err:
        raise ConfigError(str(err).replace("root.", "", 1)) from None
    if isinstance(cfg.get("optimizer"), DictConfig) and all(isinstance(v, DictConfig) for v in cfg.optimizer.values()):
        for name in cfg.optimizer:  # several named optimizers (a GAN's generator and critic)
            check(cfg, f"optimizer.{name}", OptimizerSchema)
        schemas = {k: v for k, v in CORE_SCHEMAS.items() if k != "optimizer"}
    else:
        schemas = CORE_SCHEMAS
    check_all(cfg, {k: v for k, v in schemas.items() if k not in replaced})
    check_trainer_arguments(cfg)
    for group in FACTORY_GROUPS:
        check_factories(cfg, group)


def check_factories(cfg: DictConfig, group: str) -> None:
    node = OmegaConf.select(cfg, group)
    if node is None:
        return
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{group} must be a group of named factories, got {node!r}")
    for name in node:
        entry = node._get_node(name)  # unresolved: a logger's save_dir reads hydra's run folder
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise ConfigError(f"{group}.{name} must be a node with a _target_ (a class to build), got {node[name]!r}")


def check_trainer_arguments(cfg: DictConfig) -> None:
    """``+trainer.<typo>``: every key of the (open) trainer group must be an argument of Lightning's Trainer
    (its signature is read only when a key outside the schema appears)."""
    node = OmegaConf.select(cfg, "trainer")
    if not isinstance(node, DictConfig):
        return
    known = {f.name for f in dataclasses.fields(TrainerSchema)} | set(META_KEYS)
    extra = [k for k in node if k not in known]
    if not extra or node.get("_target_") != "lightning.pytorch.Trainer":
        return
    valid = _trainer_arguments()
    unknown = [k for k in extra if k not in valid]
    if unknown:
        raise ConfigError(f"trainer.{unknown[0]} is not an argument of lightning.pytorch.Trainer; "
                          f"valid options: {', '.join(valid)}")


def _trainer_arguments() -> list[str]:
    """The arguments of ``lightning.pytorch.Trainer.__init__``, read from its source file (importing Lightning
    costs seconds and writes caches: this check runs before anything loads)."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("lightning")
    source = Path(spec.origin).parent / "pytorch" / "trainer" / "trainer.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            return [a.arg for a in init.args.args + init.args.kwonlyargs if a.arg != "self"]
    raise RuntimeError(f"no Trainer class in {source}")
