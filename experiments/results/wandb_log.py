"""What a finished run and a paper report log to W&B: the run's summary, per-sub-model table and plots
(``finish_wandb``), and a report's paper tables and plots (``log_report``). The loggers themselves are built in
experiments/core/loggers.py."""
from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from experiments.core.loggers import wandb_offline
from experiments.results.files import submodel_table
from experiments.results.tables import csv_rows


def finish_wandb(trainer, metrics: dict[str, Any]) -> None:
    """The final grid metrics as the run summary (one key per sub-model and condition, e.g.
    ``test/acc@condition=clean,layer=2``), the per-sub-model table as a ``wandb.Table``, the run's plots as
    ``wandb.Image``; then close the run (one W&B run per job)."""
    from pathlib import Path

    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

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
