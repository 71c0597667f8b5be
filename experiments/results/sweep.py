"""Reading a sweep folder: every finished job's overrides and results, pooled into mean ± std cells.

Every ``<sweep>/<job>/results.json`` with its ``.hydra/overrides.yaml``; Hydra does not call
``on_multirun_end`` when a job fails, so the report and table tasks read the folder themselves.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

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
    from experiments.core.config import ConfigError

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


