"""Paper tables as data: which runs, which metric, what forms rows and columns, reference numbers.

A table spec (``conf/table/*.yaml``) names a metric (``test/em``), the override keys whose values form
the rows (e.g. ``adapter``: QLoRA vs QDyLoRA), and a sub-model axis whose values form the columns
(``rank``). A run contributes every ``<metric>@<axis>=<v>`` it logged: a QDyLoRA run fills a whole row,
a fixed-rank QLoRA run (which logs ``@rank=<its rank>``) fills one cell. Cells are mean ± std over
the runs that land in them (seeds); the paper's numbers are shown beside ours.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from experiments.core.config import ConfigError
from experiments.results.sweep import format_cell, load_jobs, mean_std
from modules.submodel import split_metric_key


def build_table(jobs: list[dict[str, Any]], metric: str, rows: Sequence[str], axis: str,
                values: Sequence[int] | None = None, reference: Mapping[str, Mapping[Any, float]] | None = None,
                row_axes: Sequence[str] = ()) -> tuple[list[str], list[list[Any]]]:
    """Rows: the override keys ``rows`` and then the metric-key axes ``row_axes`` (a sub-model axis or an
    evaluation condition, e.g. ``layer``); columns: the values of ``axis`` (``rank``, ``testset``, ...)."""
    cells: dict[tuple, dict[Any, list[float]]] = {}
    for job in jobs:
        setting = tuple(str(job["overrides"].get(k, "")) for k in rows)
        for key, value in job["metrics"].items():
            name, sub = split_metric_key(key)
            if name != metric or sub.get(axis) is None or not isinstance(value, (int, float)):
                continue
            if any(sub.get(a) is None for a in row_axes):
                continue
            row = setting + tuple(sub[a] for a in row_axes)
            cells.setdefault(row, {}).setdefault(sub[axis], []).append(float(value))
    if not cells:
        logged = sorted({split_metric_key(k)[0] for j in jobs for k in j["metrics"]})
        raise ConfigError(f"table metric {metric!r} with axis {axis!r} was not logged by any run; "
                          f"logged metrics: {', '.join(logged)}")
    columns = list(values) if values else sorted({v for row in cells.values() for v in row}, key=_order)
    header = [*rows, *row_axes, *[f"{axis}={v}" for v in columns]]
    table = [[*row, *[mean_std(cells[row].get(v, [])) for v in columns]]
             for row in sorted(cells, key=lambda r: tuple(map(_order, r)))]
    for name, numbers in (reference or {}).items():  # the paper's numbers, one row each
        table.append([f"{name} (paper)", *[""] * (len(rows) + len(row_axes) - 1),
                      *[numbers.get(v, numbers.get(str(v))) for v in columns]])
    return header, table


def _order(value: Any) -> tuple:
    """Numbers before strings, each in their own order (conditions have string values)."""
    return (isinstance(value, str), value if isinstance(value, str) else float(value))


def render(header: list[str], rows: list[list[Any]], fmt: str = "md", digits: int = 3) -> str:
    cell = lambda c: format_cell(c, digits) if isinstance(c, tuple) or c is None else (  # noqa: E731
        f"{c:.{digits}f}" if isinstance(c, float) else str(c))
    if fmt == "latex":
        lines = [r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule",
                 " & ".join(header) + r" \\", r"\midrule"]
        lines += [" & ".join(cell(c).replace("±", r"$\pm$") for c in row) + r" \\" for row in rows]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def table_task(cfg, sweep_dirs: Sequence[str]) -> str:
    """Write ``<name>.md``, ``.tex`` and ``.csv`` of the ``table`` spec into the first sweep folder."""
    from experiments.results.files import write_csv

    spec = cfg.table
    for key in ("name", "metric", "rows", "axis"):
        if spec.get(key) in (None, "", []):
            raise ConfigError(f"table.{key} is missing; a table spec needs name, metric, rows and axis")
    jobs = [job for d in sweep_dirs for job in load_jobs(Path(d))]
    if not jobs:
        raise ConfigError(f"report.sweep_dir={list(sweep_dirs)}: no <job>/results.json found")
    header, rows = build_table(jobs, spec.metric, list(spec.rows), spec.axis, spec.get("values"),
                               spec.get("reference"), list(spec.get("row_axes") or []))
    out = Path(sweep_dirs[0])
    markdown = f"### {spec.get('title') or spec.name}\n\n" + render(header, rows) + "\n"
    (out / f"{spec.name}.md").write_text(markdown)
    (out / f"{spec.name}.tex").write_text(render(header, rows, "latex") + "\n")
    write_csv(out / f"{spec.name}.csv", header, [[format_cell(c) if isinstance(c, tuple) or c is None else c
                                                  for c in row] for row in rows])
    return markdown
