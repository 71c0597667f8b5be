"""Sweep folder -> one table: rows = override settings (seeds pooled), cells = mean ± std.

Reads every ``<sweep>/<job>/results.json`` with its ``.hydra/overrides.yaml``; Hydra does not call
``on_multirun_end`` when a job fails, so the same function runs on demand as ``task=report``.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback

SEED_KEYS = ("seed",)


def load_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """[{"overrides": {key: value}, "metrics": {...}, "dir": Path}] for each finished job."""
    import yaml

    jobs = []
    for results in sorted(sweep_dir.glob("*/results.json")):
        job_dir = results.parent
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        pairs = dict(o.lstrip("+~").split("=", 1) for o in overrides or [] if "=" in o)
        jobs.append({"overrides": pairs, "metrics": json.loads(results.read_text()), "dir": job_dir})
    return jobs


def default_metrics(jobs: list[dict[str, Any]]) -> list[str]:
    names = {k for job in jobs for k, v in job["metrics"].items()
             if isinstance(v, (int, float)) and k.startswith(("test/", "best/", "auc/", "memory/"))}
    return sorted(names)


def aggregate(jobs: list[dict[str, Any]], metrics: Sequence[str] | None = None,
              group_by: Sequence[str] | None = None) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per setting of ``group_by`` (default: the swept overrides but the seed),
    each metric as mean ± std over the jobs of that setting (the seeds)."""
    from experiments.config import ConfigError

    if not jobs:
        raise ConfigError("report: no <job>/results.json found in the sweep folder")
    metrics = list(metrics) if metrics else default_metrics(jobs)
    logged = {k for job in jobs for k in job["metrics"]}
    unknown = [m for m in metrics if m not in logged]
    if unknown:
        raise ConfigError(f"report.metrics: {unknown[0]!r} was not logged by any run; logged metrics: "
                          f"{', '.join(sorted(logged))}")
    keys = list(group_by) if group_by else varying_overrides(jobs)
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        groups.setdefault(tuple(job["overrides"].get(k, "") for k in keys), []).append(job)
    header = [*keys, "n", *metrics]
    rows = []
    for setting, members in sorted(groups.items()):
        cells = []
        for m in metrics:
            values = [j["metrics"][m] for j in members if isinstance(j["metrics"].get(m), (int, float))]
            cells.append(mean_std(values))
        rows.append([*setting, len(members), *cells])
    return header, rows


def varying_overrides(jobs: list[dict[str, Any]]) -> list[str]:
    """Override keys whose value differs between jobs (what the sweep swept), seeds excluded."""
    keys = sorted({k for j in jobs for k in j["overrides"] if k not in SEED_KEYS})
    return [k for k in keys if len({j["overrides"].get(k) for j in jobs}) > 1]


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    # one run has no spread: std is NaN and the cell shows the mean alone (not a misleading ± 0)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def format_cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"
    return str(value)


def write_report(sweep_dir: Path, header: list[str], rows: list[list[Any]]) -> tuple[Path, Path]:
    from experiments.results import write_csv

    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(format_cell(c) for c in row) + " |" for row in rows]
    md_path = sweep_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    # CSV: each metric becomes two numeric columns, "<metric> mean" and "<metric> std".
    flat_header = [c for h in header for c in ([f"{h} mean", f"{h} std"] if _is_metric(h) else [h])]
    flat_rows = [[x for h, c in zip(header, row) for x in ((c or (None, None)) if _is_metric(h) else (c,))]
                 for row in rows]
    csv_path = sweep_dir / "report.csv"
    write_csv(csv_path, flat_header, flat_rows)
    return md_path, csv_path


def _is_metric(name: str) -> bool:
    return "/" in name


def report_sweep(sweep_dir: str | Path, metrics: Sequence[str] | None = None,
                 group_by: Sequence[str] | None = None) -> str:
    sweep = Path(sweep_dir)
    header, rows = aggregate(load_jobs(sweep), metrics, group_by)
    md_path, _ = write_report(sweep, header, rows)
    return md_path.read_text()


def report_task(cfg) -> None:
    from experiments.config import ConfigError, get

    sweep_dirs = get(cfg, "report.sweep_dir")
    sweep_dirs = [sweep_dirs] if isinstance(sweep_dirs, str) else list(sweep_dirs or [])
    missing = [d for d in sweep_dirs if not Path(d).is_dir()] or ([] if sweep_dirs else [None])
    if missing:
        raise ConfigError(f"report.sweep_dir={missing[0]!r}: no such folder; give a multirun folder "
                          "(e.g. multirun/qdylora/quick/<date>) or a list of them")
    if get(cfg, "table"):  # a paper table spec (conf/table/)
        from experiments.tables import table_task

        print(table_task(cfg, sweep_dirs))
        print(f"written: {Path(sweep_dirs[0]) / cfg.table.name}.md, .tex and .csv")
        return
    print(report_sweep(sweep_dirs[0], get(cfg, "report.metrics"), get(cfg, "report.group_by")))
    print(f"written: {Path(sweep_dirs[0]) / 'report.md'} and report.csv")


class SweepReportCallback(Callback):
    """Hydra callback: aggregate the sweep folder when a multirun ends."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not any(sweep.glob("*/results.json")):
            return
        try:
            print(report_sweep(sweep, config.get("report", {}).get("metrics"),
                               config.get("report", {}).get("group_by")))
            print(f"sweep table: {sweep / 'report.md'}")
        except ValueError as err:  # a bad table spec must not hide the jobs' own results
            print(f"sweep report skipped: {err}")
