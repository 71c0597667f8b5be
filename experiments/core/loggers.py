"""Lightning loggers from the `logger` group: CSV always, W&B on request (offline by itself when
there is no API key), one W&B run per job, grouped by sweep. What a finished run or a report logs to W&B
(summary, tables, plots) is the results layer's: experiments/results/wandb_log.py."""
from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf


def wandb_offline(setting: Any) -> bool:
    """``offline: auto`` -> offline unless an API key is configured (env or ~/.netrc)."""
    if setting != "auto":
        return bool(setting)
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


def sweep_group() -> str | None:
    """The sweep folder's name in a multirun (all its jobs share a W&B group), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return f"{hc.runtime.choices.get('experiment', 'sweep')}/{os.path.basename(hc.sweep.dir)}"


def task_overrides() -> dict[str, str]:
    """The job's command-line overrides as key -> value (what a sweep varies: W&B filters and groups by it)."""
    from hydra.core.hydra_config import HydraConfig

    from experiments.core.config import override_pairs

    return override_pairs(HydraConfig.get().overrides.task)


def build_loggers(cfg: DictConfig) -> list:
    from experiments.core.config import instantiate

    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if name == "wandb":
            node = OmegaConf.to_container(node, resolve=True)
            node["offline"] = wandb_offline(node.get("offline", "auto"))
            node["group"] = node.get("group") or sweep_group()
            node["config"] = {**OmegaConf.to_container(cfg, resolve=True), "overrides": task_overrides()}
        loggers.append(instantiate(node, _convert_="all"))  # plain dicts: W&B cannot serialise DictConfig
    return loggers
