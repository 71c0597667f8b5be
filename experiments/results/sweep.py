"""Reading a sweep folder: every finished job's overrides and results, pooled into mean ± std cells.

Every ``<sweep>/<job>/results.json`` with its ``.hydra/overrides.yaml``; Hydra does not call
``on_multirun_end`` when a job fails, so the report and table tasks read the folder themselves.
The jobs that did not finish are kept beside the finished ones (``load_jobs(...).incomplete``) and the
table marks them: ``failed`` (the job raised: ``<job>/job_status.json``, written by ``JobStatusCallback``,
holds the error), ``unfinished`` (killed, or still running; a diverged job is ``failed``, its error says so) and ``missing`` (planned by the grid in
``<sweep>/multirun.yaml`` but never started).
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback

from experiments.core.config import override_pairs

SEED_KEYS = ("seed",)
STATUS_FILE = "job_status.json"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class Jobs(list):
    """The finished jobs (a list, as before); ``incomplete``: the sweep's jobs that did not finish."""
    incomplete: list[dict[str, Any]]


def load_jobs(sweep_dir: Path) -> Jobs:
    """[{"overrides": {key: value}, "metrics": {...}, "dir": Path, "status": "finished"}] for each finished
    job; ``.incomplete`` the same for failed, unfinished and missing jobs (empty metrics, an ``error``)."""
    jobs = Jobs()
    for results in sorted(sweep_dir.glob("*/results.json")):
        job_dir = results.parent
        jobs.append({"overrides": override_pairs(_overrides_of(job_dir)), "metrics": json.loads(results.read_text()),
                     "dir": job_dir, "status": "finished"})
    jobs.incomplete = incomplete_jobs(sweep_dir, {j["dir"] for j in jobs})
    return jobs


def _overrides_of(job_dir: Path) -> list[str]:
    """The job's overrides: ``.hydra/overrides.yaml``, or, for a job refused before it wrote anything (a bad
    value), the ones its ``job_status.json`` recorded."""
    import yaml

    path = job_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        return list(yaml.safe_load(path.read_text()) or [])
    status = job_dir / STATUS_FILE
    return list(json.loads(status.read_text()).get("overrides") or []) if status.is_file() else []


def planned_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Each job's overrides as the basic sweeper expands them from ``<sweep>/multirun.yaml``; None when the
    plan is not a grid (a search) or not known."""
    from omegaconf import OmegaConf

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    hydra_cfg = OmegaConf.load(path).hydra
    if hydra_cfg.sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:  # the sweeper's own order: the preset's params, then the command line
        params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides([*params, *hydra_cfg.overrides.task])
        return BasicSweeper.split_arguments(parsed, None)[0]
    except Exception:  # e.g. glob(...) sweeps need the config loader: no plan, the folders alone
        return None


def incomplete_jobs(sweep_dir: Path, finished: set[Path]) -> list[dict[str, Any]]:
    folders = {frozenset(_overrides_of(d)): d for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir())
               if (d / ".hydra" / "overrides.yaml").is_file() or (d / STATUS_FILE).is_file()}
    planned = planned_jobs(sweep_dir)
    if planned is None:  # the folders the sweep's own jobs made (a job writes its status file)
        candidates = [(list(o), d) for o, d in folders.items() if (d / STATUS_FILE).is_file()]
    else:
        candidates = [(o, folders.get(frozenset(o))) for o in planned]
    out = []
    for overrides, job_dir in candidates:
        if job_dir in finished:
            continue
        record = json.loads((job_dir / STATUS_FILE).read_text()) if job_dir and (job_dir / STATUS_FILE).is_file() \
            else {}
        status = "missing" if job_dir is None else "failed" if record.get("status") == "failed" else "unfinished"
        out.append({"overrides": override_pairs(overrides), "metrics": {}, "dir": job_dir, "status": status,
                    "error": record.get("error")})
    return out


class JobStatusCallback(Callback):
    """Hydra callback: each multirun job's ``job_status.json`` (running, completed, or failed with the error),
    so that a sweep's table tells a failed job from one that was killed."""

    def on_job_start(self, config, **kwargs: Any) -> None:
        self._write(config, {"status": "running", "overrides": list(config.hydra.overrides.task)})

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        record: dict[str, Any] = {"status": "completed" if job_return.status == JobStatus.COMPLETED else "failed",
                                  "overrides": list(config.hydra.overrides.task)}
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value  # the exception (``return_value`` would raise it)
            record["error"] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        self._write(config, record)

    @staticmethod
    def _write(config, record: dict[str, Any]) -> None:
        import os

        from hydra.types import RunMode

        # one writer per job: SLURM runs the job once per task (DDP rank); rank 0 speaks for it
        rank = next((os.environ[k] for k in ("SLURM_PROCID", "RANK", "LOCAL_RANK") if k in os.environ), "0")
        if config.hydra.mode == RunMode.MULTIRUN and rank == "0":
            (Path(config.hydra.runtime.output_dir) / STATUS_FILE).write_text(json.dumps(record) + "\n")


def default_metrics(jobs: list[dict[str, Any]]) -> list[str]:
    names = {k for job in jobs for k, v in job["metrics"].items()
             if isinstance(v, (int, float)) and k.startswith(("test/", "best/", "auc/", "memory/"))}
    return sorted(names)


def aggregate(jobs: list[dict[str, Any]], metrics: Sequence[str] | None = None,
              group_by: Sequence[str] | None = None) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per setting of ``group_by`` (default: the swept overrides but the seed),
    each metric as mean ± std over the jobs of that setting (the seeds)."""
    from experiments.core.config import ConfigError

    incomplete = list(getattr(jobs, "incomplete", []))
    if not jobs:
        raise ConfigError("report: no <job>/results.json found in the sweep folder" +
                          (f" ({_not_finished(incomplete)})" if incomplete else ""))
    metrics = list(metrics) if metrics else default_metrics(jobs)
    logged = {k for job in jobs for k in job["metrics"]}
    unknown = [m for m in metrics if m not in logged]
    if unknown:
        raise ConfigError(f"report.metrics: {unknown[0]!r} was not logged by any run; logged metrics: "
                          f"{', '.join(sorted(logged))}")
    keys = list(group_by) if group_by else varying_overrides([*jobs, *incomplete])
    groups: dict[tuple, list[dict]] = {}
    for job in [*jobs, *incomplete]:  # a setting none of whose jobs finished still gets its (marked) row
        groups.setdefault(tuple(job["overrides"].get(k, "") for k in keys), []).append(job)
    header = [*keys, "n", *metrics, *(["not finished"] if incomplete else [])]
    rows = []
    for setting, members in sorted(groups.items()):
        done = [j for j in members if j.get("status", "finished") == "finished"]
        cells = []
        for m in metrics:
            values = [j["metrics"][m] for j in done if isinstance(j["metrics"].get(m), (int, float))]
            cells.append(mean_std(values))
        marks = [_not_finished([j for j in members if j not in done])] if incomplete else []
        rows.append([*setting, len(done), *cells, *marks])
    return header, rows


def _not_finished(jobs: list[dict[str, Any]]) -> str:
    """"1 failed, 2 missing" (the order of how much is left to redo)."""
    counts = [(s, sum(j["status"] == s for j in jobs)) for s in ("failed", "unfinished", "missing")]
    return ", ".join(f"{n} {s}" for s, n in counts if n)


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
    """A table cell: ``–`` for none, ``mean ± std`` (no ± for one run), counts such as parameters as 93,817,364."""
    if value is None:
        return "–"
    if isinstance(value, tuple):
        mean, std = value
        return f"{_number(mean, digits)} ± {_number(std, digits)}" if not math.isnan(std) else _number(mean, digits)
    return _number(value, digits) if isinstance(value, float) else str(value)


def _number(x: float, digits: int) -> str:
    return f"{x:,.0f}" if abs(x) >= 1e5 else f"{x:.{digits}f}"


