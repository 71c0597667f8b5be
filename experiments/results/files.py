"""What a run leaves behind: a self-describing folder.

``run_info.json`` (git commit + dirty flag, package versions, seed, overrides, command line),
``results.json`` (flat ``<split>/<metric>@<sub-model>`` -> value, plus ``best/*`` and ``auc/*``),
and per-run tables (Markdown + CSV) and a plot of metric vs sub-model.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from modules.submodel import SubModel, split_metric_key

PACKAGES = ("torch", "lightning", "hydra-core", "omegaconf", "transformers", "peft", "bitsandbytes",
            "wandb", "datasets", "numpy")


def git_state(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_json(path: Path, data: Any) -> None:
    """Atomic write: a crash mid-write never leaves a truncated file behind."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        tmp.replace(path)
    finally:  # a full disk: no temporary file left behind, the previous file untouched
        tmp.unlink(missing_ok=True)


def write_run_info(run_dir: Path, seed: int, overrides: list[str], init_from: dict | None = None) -> None:
    """``init_from``: the earlier run this one starts from (a stage), as ``apply_init_from`` describes it."""
    info = {
        "git": git_state(Path(__file__).resolve().parents[2]),
        "packages": package_versions(),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "seed": seed, "overrides": overrides, "argv": sys.argv,
    }
    if init_from:
        info["init_from"] = init_from
    write_json(run_dir / "run_info.json", info)


def split_of(metric: str) -> tuple[str, str]:
    """``test/em`` -> ("test", "em"); the split is ``val`` or ``test``."""
    split, _, name = metric.partition("/")
    if split not in ("val", "test") or not name:
        raise ValueError(f"eval.metric={metric} must name a split: val/<metric> or test/<metric>")
    return split, name


def objective_key(metric: str) -> str:
    """What a run returns (a search's objective): the validation score of the sub-model chosen on validation."""
    return f"best/val/{split_of(metric)[1]}"


def summarize(metrics: Mapping[str, float], metric: str, higher_is_better: bool = True) -> dict[str, Any]:
    """Choose on validation, report on test, per evaluation condition.

    ``metric`` names m (``test/em`` or ``val/em``). ``best/submodel`` is the sub-model best on ``val/m``
    (ties: the first in grid order), ``best/val/m`` its validation value and ``best/test/m`` ITS test value
    (not the maximum over test). A test condition (``testset=ood``) is chosen on the validation cells of the
    same condition, or on the plain validation cells when validation has no such condition (MNLI's two test
    sets share one validation split). No validation cells: no ``best/*`` for that condition. ``auc/test/m``
    is the area under the whole test curve over the first axis (a description of every sub-model, no choice).
    """
    from modules.metrics import area_under_curve

    name = split_of(metric)[1]
    cells: dict[str, dict[SubModel, dict[SubModel, float]]] = {"val": {}, "test": {}}
    for key, value in metrics.items():
        base, cell = split_metric_key(key)
        split, _, rest = base.partition("/")
        if rest == name and split in cells:
            cells[split].setdefault(cell.condition, {})[cell.submodel] = value
    pick = max if higher_is_better else min
    summary: dict[str, Any] = {}
    for condition, test in sorted(cells["test"].items(), key=lambda kv: kv[0].sort_key):
        at = f"@{condition.key}" if condition.dims else ""
        val = cells["val"].get(condition, cells["val"].get(SubModel(()), {}))
        candidates = sorted((s for s in test if s in val), key=lambda s: s.sort_key)  # grid order
        if candidates:
            best = pick(candidates, key=val.get)  # the first of equal scores
            summary[f"best/submodel{at}"] = best.key
            summary[f"best/val/{name}{at}"], summary[f"best/test/{name}{at}"] = val[best], test[best]
        first = next(iter(test))
        if first.dims and len(first.dims) == 1 and len(test) > 1:
            points = sorted((s.dims[0][1], v) for s, v in test.items())
            summary[f"auc/test/{name}{at}"] = area_under_curve([p[0] for p in points], [p[1] for p in points])
    return summary


def best_line(metrics: Mapping[str, Any], metric: str, at: str = "") -> str:
    """The printed summary: ``best (on val/em): rank=4 val/em=0.3125 test/em=0.2708``."""
    name = split_of(metric)[1]
    if f"best/submodel{at}" not in metrics:
        return f"best: none chosen (no val/{name}{at} beside test/{name}{at} in the results)"
    return (f"best (on val/{name}): {metrics[f'best/submodel{at}'] or 'full'}{' ' + at[1:] if at else ''} "
            f"val/{name}={metrics[f'best/val/{name}{at}']:.4f} test/{name}={metrics[f'best/test/{name}{at}']:.4f}")


def submodel_table(metrics: Mapping[str, float]) -> tuple[list[str], list[list[Any]]]:
    """Rows = sub-models, columns = metric names: (header, rows)."""
    table: dict[SubModel, dict[str, float]] = {}
    for key, value in metrics.items():
        name, sub = split_metric_key(key)
        if "/" in name and not name.startswith(("best/", "auc/", "train/", "memory/")):  # per sub-model only
            table.setdefault(sub, {})[name] = value
    columns = sorted({c for row in table.values() for c in row})
    subs = sorted(table, key=lambda s: s.sort_key)
    header = ["submodel", *columns]
    return header, [[s.key or "full", *[table[s].get(c) for c in columns]] for s in subs]


def write_results(run_dir: Path, metrics: Mapping[str, Any], plot_metrics: Sequence[str],
                  before_marker: Callable[[], None] | None = None) -> str:
    """The per-cell table (results.md / .csv), the metric-vs-sub-model plot, then ``before_marker`` (W&B, which
    uploads that table and plot) and results.json, written last (atomically): a folder holding results.json is
    a finished run. Returns the table."""
    header, rows = submodel_table(metrics)
    table = markdown_table(header, rows)
    (run_dir / "results.md").write_text(table + "\n")
    write_csv(run_dir / "results.csv", header, rows)
    plot_submodel_curve(metrics, [n for n in plot_metrics if any(k.startswith(n) for k in metrics)],
                        run_dir / "results.png")
    if before_marker is not None:
        before_marker()
    write_json(run_dir / "results.json", metrics)
    return table


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display: runs write PNGs), the one plotting setup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_submodel_curve(metrics: Mapping[str, float], names: list[str], path: Path) -> Path | None:
    """Metric vs the (single) nested axis, one panel per metric; None if nothing to plot."""
    plt = pyplot()

    series = {}
    for name in names:
        pts = sorted((sub.dims[0][1], v) for k, v in metrics.items() for n, sub in [split_metric_key(k)]
                     if n == name and len(sub.dims) == 1 and not sub.condition.dims)
        if pts:
            series[name] = pts
    if not series:
        return None
    axis = next(split_metric_key(k)[1].dims[0][0] for k in metrics
                if "@" in k and split_metric_key(k)[0] in series)
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.2), squeeze=False)
    for ax, (name, pts) in zip(axes[0], series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(axis)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
