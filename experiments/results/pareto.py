"""Accuracy vs cost (MACs) per training method: per run, and across a sweep folder.

A sweep that compares training methods (``nested.method=sorted,standard,"depth=1,width=16",...``)
becomes one table (rows = sub-networks by MACs, a column per method) and one plot (accuracy vs
MACs, a colour per method, its Pareto front drawn as a line). Jobs that differ only in the seed
are averaged. Written into the sweep folder as ``comparison.md``/``.csv`` and ``pareto.png``:
by the Hydra callback ``ParetoCallback`` when a multirun ends (the SortedNet presets enable it)
or on demand with ``python -m experiments.results.pareto <sweep folder>`` (Hydra does not call the
callback when a job fails).
"""
from __future__ import annotations

import argparse
import statistics
import textwrap
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from hydra.experimental.callback import Callback

from experiments.results.files import pyplot
from modules.submodel import SubModel, metric_key, split_metric_key

METHODS = ("sorted", "standard")  # nested.method values; anything else is an independently trained small model
METHOD_ORDER = ("sorted", "standard", "independent")
IGNORED_LABEL_KEYS = ("nested.method", "seed")  # swept keys that do not make a method of their own


def method_label(method_value: Any) -> str:
    """The training method a ``nested.method`` value stands for: sorted, standard or independent."""
    return str(method_value) if method_value in METHODS else "independent"


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, score) points no cheaper-or-equal point beats, by increasing cost (higher score is better)."""
    front: list[tuple[float, float]] = []
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((cost, score))
    return front


def plot_run(metrics: Mapping[str, Any], grid: Sequence[SubModel], metric: str, path: Path,
             title: str = "") -> Path | None:
    """One run's grid: ``metric`` vs MACs, every sub-network a point, the Pareto front a line."""
    points = [(metrics[metric_key("macs", s)], metrics[metric_key(metric, s)], s.key) for s in grid
              if metric_key("macs", s) in metrics and metric_key(metric, s) in metrics]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=18)
    front = pareto_front((p[0], p[1]) for p in points)
    ax.plot([p[0] for p in front], [p[1] for p in front], "-", alpha=0.6)
    on_front = set(front)
    for cost, score, key in points:
        if (cost, score) in on_front:
            ax.annotate(key, (cost, score), fontsize=6, xytext=(3, -8), textcoords="offset points")
    _finish(ax, metric, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _finish(ax, metric: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(textwrap.fill(title, 80), fontsize=9)


# --- a sweep folder -------------------------------------------------------------------------
def job_label(job: Mapping[str, Any], varying: Sequence[str]) -> str:
    """``sorted``, ``standard`` or ``independent``, plus any other swept key (seeds excluded)."""

    method = job["metrics"].get("method") or method_label(job["overrides"].get("nested.method", "sorted"))
    extra = [f"{k}={job['overrides'][k]}" for k in varying
             if k not in IGNORED_LABEL_KEYS and k in job["overrides"]]
    return f"{method} ({', '.join(extra)})" if extra else str(method)


def collect(sweep_dir: str | Path, metric: str = "test/acc") -> list[dict[str, Any]]:
    """Rows {method, submodel, macs, params, latency_ms, score, std, n}: one per method and sub-network."""
    from experiments.core.config import ConfigError
    from experiments.results.sweep import load_jobs

    jobs = load_jobs(Path(sweep_dir))
    if not jobs:
        raise ConfigError(f"pareto: no <job>/results.json in {sweep_dir}")
    return collect_jobs(jobs, metric, str(sweep_dir))


def collect_jobs(jobs: Sequence[Mapping[str, Any]], metric: str = "test/acc", where: str = "the runs") -> list[dict[str, Any]]:
    """``collect`` for jobs already read (``{"overrides", "metrics"}`` each): a paper table's runs."""
    from experiments.core.config import ConfigError
    from experiments.results.sweep import varying_overrides

    varying = varying_overrides(list(jobs))
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    for job in jobs:
        label = job_label(job, varying)
        for key, value in job["metrics"].items():
            name, sub = split_metric_key(key)
            if name not in (metric, "macs", "params", "latency_ms") or not isinstance(value, (int, float)):
                continue
            cells.setdefault((label, sub.key), {}).setdefault(name, []).append(float(value))
    rows = []
    for (label, key), values in cells.items():
        if metric not in values or "macs" not in values:
            continue
        scores = values[metric]
        rows.append({"method": label, "submodel": key, "macs": statistics.fmean(values["macs"]),
                     "params": statistics.fmean(values.get("params", [float("nan")])),
                     "latency_ms": statistics.fmean(values["latency_ms"]) if "latency_ms" in values else None,
                     "score": statistics.fmean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                     "n": len(scores)})
    if not rows:
        raise ConfigError(f"pareto: no job in {where} logged both {metric}@<sub-network> and macs@<sub-network>")
    return rows


def methods_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    labels = {r["method"] for r in rows}

    def order(label: str) -> tuple[int, str]:
        base = label.split(" ")[0]
        return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), label)

    return sorted(labels, key=order)


def comparison_table(rows: Sequence[Mapping[str, Any]], metric: str = "test/acc") -> tuple[list[str], list[list[Any]]]:
    """Rows = sub-networks by MACs; columns = params, MACs, then ``metric`` per method (mean ± std over seeds)."""
    methods = methods_of(rows)
    by_sub: dict[str, dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        by_sub.setdefault(r["submodel"], {})[r["method"]] = r
    header = ["submodel", "params", "MACs", *[f"{m} {metric}" for m in methods]]
    out = []
    for key, per_method in by_sub.items():
        any_row = next(iter(per_method.values()))
        cells = [(per_method[m]["score"], per_method[m]["std"], per_method[m]["n"]) if m in per_method else None
                 for m in methods]
        out.append([key, int(any_row["params"]), int(any_row["macs"]), *cells])
    out.sort(key=lambda r: (r[2], SubModel.parse(r[0]).dims if r[0] else ()))
    return header, out


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        mean, std, n = value
        return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: Path, metric: str = "test/acc", title: str = "") -> Path:
    """``metric`` vs MACs, a colour per method; each method's Pareto front as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>"
    for i, method in enumerate(methods_of(rows)):
        pts = [(r["macs"], r["score"]) for r in rows if r["method"] == method]
        line = ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=22, marker=markers[i % len(markers)],
                          label=method, alpha=0.8)
        front = pareto_front(pts)
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], "-", color=line.get_facecolor()[0], alpha=0.6)
    ax.legend(fontsize=8)
    _finish(ax, metric, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_comparison(sweep_dir: str | Path, metric: str = "test/acc") -> list[Path]:
    """comparison.md / comparison.csv / pareto.png in the sweep folder."""
    from experiments.results.files import write_csv

    sweep = Path(sweep_dir)
    rows = collect(sweep, metric)
    header, table = comparison_table(rows, metric)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table]
    (sweep / "comparison.md").write_text("\n".join(md) + "\n")
    flat = [[c[0] if isinstance(c, tuple) else c for c in row] for row in table]
    write_csv(sweep / "comparison.csv", header, flat)
    plot_sweep(rows, sweep / "pareto.png", metric, title=sweep.name)
    return [sweep / "comparison.md", sweep / "comparison.csv", sweep / "pareto.png"]


class ParetoCallback(Callback):
    """Hydra callback: the method comparison table and plot when a multirun ends."""

    def __init__(self, metric: str = "test/acc"):
        self.metric = metric

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not any(sweep.glob("*/results.json")):
            return
        try:
            paths = write_comparison(sweep, self.metric)
            print((sweep / "comparison.md").read_text())
            print(f"method comparison: {', '.join(str(p) for p in paths)}")
        except ValueError as err:  # never hide the jobs' own results
            print(f"method comparison skipped: {err}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="accuracy-vs-MACs table and plot of a sweep folder, per method")
    parser.add_argument("sweep_dir", help="a multirun folder holding <job>/results.json")
    parser.add_argument("--metric", default="test/acc", help="the score per sub-network (default test/acc)")
    args = parser.parse_args(argv)
    if not Path(args.sweep_dir).is_dir():
        raise SystemExit(f"error: {args.sweep_dir}: no such folder")
    try:
        paths = write_comparison(args.sweep_dir, args.metric)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print(Path(paths[0]).read_text())
    print("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
