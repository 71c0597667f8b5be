"""Config glue: the one wrapper around hydra.utils.instantiate, and checks of user input.

Every check runs before anything heavy is loaded or written, so a typo costs a second and never
touches an earlier run's checkpoints or results.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Targets a config may instantiate (Hydra 1.4 will require an allow-list).
ALLOWED_TARGET_PREFIXES = (
    "torch.", "lightning.", "transformers.", "bitsandbytes.", "peft.",
    "modules.", "data.", "experiments.",
)


class ConfigError(ValueError):
    """A mistake in the user's config or overrides; its message is one line naming the key."""


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


def instantiate(node: Any, **kwargs: Any) -> Any:
    import hydra.utils

    target = node.get("_target_") if isinstance(node, (DictConfig, dict)) else None
    if target is not None and not str(target).startswith(ALLOWED_TARGET_PREFIXES):
        raise ConfigError(f"_target_={target} is not allowed; targets must start with one of "
                          f"{', '.join(ALLOWED_TARGET_PREFIXES)}")
    return hydra.utils.instantiate(node, **kwargs)


def get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


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
