"""The plot of a paper table (its spec's ``plot``), as a PNG beside the table.

- ``curve``: the metric against the column axis (rank, exit, ...), one line per row with ± std bars, the
  paper's rows dashed;
- ``pareto``: the metric against MACs per sub-network, a colour per training method, each method's Pareto
  front as a line (experiments/results/pareto.py);
- ``layer_weights``: the learned softmax weight of each hidden state in the weighted-sum probe
  (``weights/layer_<i>``), one line per row setting (a task), the uniform start as a dashed line.
"""
from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from experiments.results.files import pyplot


def plot_table(spec: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]], header: list[str],
               rows: list[list[Any]], path: Path, label: Callable[[Mapping[str, Any]], str] = lambda job: "ours") -> Path | None:
    """``label``: a job's row name (the spec's row keys' values), for plots drawn from the jobs themselves."""
    kind = spec.get("plot") or "none"
    if kind == "curve":
        return plot_curve(spec, header, rows, path)
    if kind == "pareto":
        from experiments.results.pareto import collect_jobs, plot_sweep

        points = collect_jobs(list(jobs), spec["metric"])
        return plot_sweep(points, path, spec["metric"], title=str(spec.get("title") or spec["name"]))
    if kind == "layer_weights":
        return plot_layer_weights(spec, jobs, path, label)
    return None


def plot_curve(spec: Mapping[str, Any], header: list[str], rows: list[list[Any]], path: Path) -> Path | None:
    axis = spec["axis"]
    columns = [(i, h.split("=", 1)[1]) for i, h in enumerate(header) if h.startswith(f"{axis}=")]
    if not columns:
        return None
    numeric = all(_is_number(v) for _, v in columns)
    xs = [float(v) for _, v in columns] if numeric else list(range(len(columns)))
    label_width = len(header) - len(columns) - (1 if spec.get("average") else 0) - len(spec.get("extra") or {})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for row in rows:
        label = ", ".join(str(c) for c in row[:label_width] if c not in ("", None)) or "ours"
        paper = label.endswith("(paper)")
        pts = [(x, row[i]) for x, (i, _) in zip(xs, columns) if row[i] is not None]
        if not pts:
            continue
        if paper:
            ax.plot([p[0] for p in pts], [float(p[1]) for p in pts], "--", marker="x", label=label)
        else:
            err = [0.0 if math.isnan(p[1][1]) else p[1][1] for p in pts]
            marker = "os^Dv<>"[drawn % 7]  # rows that meet (a truncated adapter at its full rank) stay visible
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=err, marker=marker, capsize=3,
                        label=label, alpha=0.85)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)
    if not numeric:
        ax.set_xticks(xs, [v for _, v in columns], rotation=30, fontsize=7)
    ax.set_xlabel(axis)
    ax.set_ylabel(spec["metric"] + (f" × {spec['scale']:g}" if spec.get("scale") not in (None, 1, 1.0) else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(textwrap.fill(str(spec.get("title") or spec["name"]), 80), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_layer_weights(spec: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]], path: Path,
                       label: Callable[[Mapping[str, Any]], str]) -> Path | None:
    series: dict[str, dict[int, list[float]]] = {}
    for job in jobs:
        name = label(job)
        for key, value in job["metrics"].items():
            if key.startswith("weights/layer_") and isinstance(value, (int, float)):
                series.setdefault(name, {}).setdefault(int(key.rsplit("_", 1)[1]), []).append(float(value))
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    layers = 0
    for label, per_layer in sorted(series.items()):
        xs = sorted(per_layer)
        layers = max(layers, len(xs))
        ax.plot(xs, [statistics.fmean(per_layer[x]) for x in xs], marker="o", label=label)
    ax.axhline(1 / layers, color="grey", ls="--", lw=1, label="uniform (start)")
    ax.set_xlabel("hidden state (0 = embeddings)")
    ax.set_ylabel("weight in the weighted sum")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_xticks(range(layers))
    ax.set_title(f"{spec['name']}: learned weights of the weighted-sum probe", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
