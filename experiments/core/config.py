"""Config glue: the one wrapper around hydra.utils.instantiate, and checks of user input.

Every check runs before anything heavy is loaded or written, so a typo costs a second and never
touches an earlier run's checkpoints or results.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Targets a config may instantiate, by exact name (Hydra 1.4 will require an allow-list). Besides these, a
# class or function *defined* in this project's packages (checked in its source file, nothing is imported):
# never a loader (torch.load, pickle, builtins) or a name reached through another module's imports.
ALLOWED_TARGETS = frozenset({
    "lightning.pytorch.Trainer",
    "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.WandbLogger",
    "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.callbacks.LearningRateMonitor", "lightning.pytorch.callbacks.EarlyStopping",
    "lightning.pytorch.callbacks.RichProgressBar", "lightning.pytorch.callbacks.TQDMProgressBar",
    "lightning.pytorch.strategies.DDPStrategy", "lightning.pytorch.strategies.FSDPStrategy",
    "lightning.pytorch.strategies.DeepSpeedStrategy",
    "torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.RMSprop", "torch.optim.Adagrad",
    "torch.distributed.fsdp.wrap.size_based_auto_wrap_policy",
    "transformers.BitsAndBytesConfig",
    "bitsandbytes.optim.PagedAdamW32bit", "bitsandbytes.optim.PagedAdamW8bit", "bitsandbytes.optim.AdamW8bit",
    "bitsandbytes.optim.PagedAdamW", "bitsandbytes.optim.AdamW32bit",
})
PROJECT_PACKAGES = ("modules", "data", "experiments", "hydra_plugins")
_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
CONF_DIR = _ROOT / "conf"  # the config groups (run.py's config_path)


class ConfigError(ValueError):
    """A mistake in the user's config or overrides; its message is one line naming the key (exit 2)."""


class RunError(RuntimeError):
    """A run that cannot go on (it diverged, a disk is full): one line, exit 1, the sweep job marked failed."""


def describe_os_error(err: BaseException, path: Any = None) -> str:
    """One phrase for an I/O failure; torch reports a full disk only as "unexpected pos", so ask the disk."""
    import errno
    import shutil

    code = getattr(err, "errno", None)
    if code is None and path is not None:
        try:
            if shutil.disk_usage(path.parent).free < 1024 ** 2:
                code = errno.ENOSPC
        except OSError:
            pass
    return {errno.ENOSPC: "no space left on the device", errno.EACCES: "permission denied",
            errno.EROFS: "the file system is read-only", errno.EDQUOT: "the disk quota is exceeded"}.get(
        code, (str(err).splitlines() or [type(err).__name__])[0])


def override_pairs(overrides: Any) -> dict[str, str]:
    """Command-line overrides as key -> value (``+``/``~`` dropped; Hydra's quotes, as in
    ``adapter.scale='alpha/sqrt(b)'``, are not part of the value)."""
    pairs = {}
    for o in overrides or []:
        if "=" in o:
            key, value = o.lstrip("+~").split("=", 1)
            quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
            pairs[key] = value[1:-1] if quoted else value
    return pairs


def _defined_in_project(target: str) -> bool:
    """``pkg.module.Name`` where ``Name`` is a class or function defined at the top of that module's file."""
    import ast
    from functools import lru_cache

    @lru_cache(maxsize=None)
    def top_level_names(module: str) -> frozenset:
        base = _ROOT.joinpath(*module.split("."))
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                tree = ast.parse(path.read_text())
                return frozenset(n.name for n in tree.body
                                 if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
        return frozenset()

    module, _, name = target.rpartition(".")
    return module.split(".")[0] in PROJECT_PACKAGES and name in top_level_names(module)


def check_target(target: Any, key: str = "_target_") -> None:
    if not isinstance(target, str) or not (target in ALLOWED_TARGETS or _defined_in_project(target)):
        raise ConfigError(f"{key}={target} is not allowed; a target is a class or function of this project "
                          f"(modules., data., experiments.) or one of: {', '.join(sorted(ALLOWED_TARGETS))}")


def check_targets(node: Any, prefix: str = "") -> None:
    """Every ``_target_`` at every depth of ``node`` (a whole config, hydra.callbacks included) is allowed."""
    if isinstance(node, (DictConfig, dict)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for k, v in items:
            if k == "_target_":
                check_target(v, f"{prefix}_target_")
            else:
                check_targets(v, f"{prefix}{k}.")
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, v in enumerate(node):
            check_targets(v, f"{prefix}{i}.")


def instantiate(node: Any, **kwargs: Any) -> Any:
    import hydra.utils

    check_targets(node)
    check_targets(kwargs)
    return hydra.utils.instantiate(node, **kwargs)


def get(cfg: DictConfig, key: str) -> Any:
    """The value at a dotted ``key`` (None where the config has no such key). No default on purpose: an option's
    default is its schema's (experiments/core/schema.py ``options``), never a second one at the call site."""
    return OmegaConf.select(cfg, key)


def plain(value: Any) -> Any:
    """A config node as plain (resolved) Python lists and dicts; any other value as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def require_int(cfg: DictConfig, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """The value at ``key`` as an int, or a ConfigError naming the key and the valid range."""
    value = get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            value = int(float(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if minimum is not None and value < minimum:
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{key} must be an integer {bound}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key} must be an integer between {minimum} and {maximum}, got {value}")
    return value


def require_number(cfg: DictConfig, key: str, minimum: float | None = None) -> float:
    value = get(cfg, key)
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {number}")
    return number


def require_bool(cfg: DictConfig, key: str, default: bool = False) -> bool:
    """A true/false switch (absent or null = ``default``), or a ConfigError naming the key."""
    value = get(cfg, key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def require_choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> str:
    value = get(cfg, key)
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not an option; valid choices: {', '.join(choices)}")
    return value


def int_list(cfg: DictConfig, key: str, minimum: int, maximum: int) -> list[int] | None:
    """An optional list of ints within [minimum, maximum] (e.g. evaluation ranks)."""
    value = get(cfg, key)
    if value is None:
        return None
    if not isinstance(value, (list, ListConfig)) or not value:
        raise ConfigError(f"{key} must be a non-empty list of integers, got {value!r}")
    out = []
    for i, item in enumerate(value):
        holder = OmegaConf.create({"v": item})
        try:
            out.append(require_int(holder, "v", minimum, maximum))
        except ConfigError as err:
            raise ConfigError(str(err).replace("v ", f"{key}[{i}] ", 1)) from None
    return out
