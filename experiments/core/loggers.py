"""Lightning loggers from the `logger` group: CSV always, W&B on request (offline by itself when
there is no API key), one W&B run per job, grouped by sweep."""
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


def finish_wandb(trainer, metrics: dict[str, Any]) -> None:
    """The final grid metrics as the run summary (one key per sub-model and condition, e.g.
    ``test/acc@condition=clean,layer=2``), the per-sub-model table as a ``wandb.Table``, the run's plots as
    ``wandb.Image``; then close the run (one W&B run per job)."""
    from pathlib import Path

    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            from experiments.results.files import submodel_table

            run = logger.experiment
            run.summary.update(metrics)
            header, rows = submodel_table(metrics)
            payload: dict[str, Any] = {"results/submodels": wandb.Table(columns=header, data=rows, allow_mixed_types=True)}
            for png in sorted(Path(logger.save_dir).glob("*.png")):  # results.png, pareto.png, layer_weights.png
                payload[f"plots/{png.stem}"] = wandb.Image(str(png))
            run.log(payload)
            wandb.finish()


def log_report(cfg: DictConfig, results_dir, tables: list[dict[str, Any]]) -> str:
    """``task=report report.all=true report.wandb=true``: one W&B run (job_type report, grouped by the results
    folder) holding each paper table as a ``wandb.Table`` and its plot as a ``wandb.Image``; its folder."""
    import wandb

    from experiments.core.config import get
    from experiments.results.tables import csv_rows

    node = (get(cfg, "logger.wandb") or {})
    run = wandb.init(project=node.get("project") or "efficient-transformers-lab", entity=node.get("entity"),
                     group=os.path.basename(os.path.normpath(str(results_dir))), job_type="report",
                     name=f"report/{os.path.basename(os.path.normpath(str(results_dir)))}",
                     mode="offline" if wandb_offline(node.get("offline", "auto")) else "online",
                     dir=str(results_dir), config={"results_dir": str(results_dir),
                                                  "tables": [t["spec"]["name"] for t in tables]})
    payload: dict[str, Any] = {}
    for table in tables:
        header, rows = csv_rows(table["header"], table["rows"])
        data = [[None if c == "" else c for c in row] for row in rows]
        payload[f"tables/{table['spec']['name']}"] = wandb.Table(columns=header, data=data, allow_mixed_types=True)
        if table["png"]:
            payload[f"plots/{table['spec']['name']}"] = wandb.Image(str(table["png"]))
    run.log(payload)
    folder = run.dir
    run.finish()
    return folder
