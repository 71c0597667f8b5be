"""Paper tables as data: which runs, which metric, what forms rows and columns, reference numbers.

A table spec (``conf/table/*.yaml``) names a metric (``test/em``), the override keys whose values form
the rows (e.g. ``adapter``: QLoRA vs QDyLoRA), and an axis whose values form the columns: a sub-model axis
or condition of the metric keys (``rank``, ``condition``), or else an override / config-group choice of the
job (``data``: one GLUE task per job). A run contributes every ``<metric>@<axis>=<v>`` it logged: a QDyLoRA
run fills a whole row, a fixed-rank QLoRA run (which logs ``@rank=<its rank>``) fills one cell. Cells are
mean ± std over the runs that land in them (seeds); the paper's numbers are rows of their own, with their
source. Optional: ``average`` (a column averaging the axis columns: GLUE's "avg"), ``extra`` (per-job
scalars such as ``params/trainable_pct``, averaged per row), ``scale`` (100: accuracies in %), ``plot``
(``curve``, ``pareto``, ``layer_weights``) and ``experiments`` (the experiment presets whose runs the table
takes when a whole results folder is rendered, ``report.all=true``).
"""
from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from experiments.core.config import ConfigError, override_pairs
from experiments.results.sweep import format_cell, mean_std
from modules.submodel import split_metric_key

PLOTS = ("none", "curve", "pareto", "layer_weights")
SPEC_KEYS = ("name", "title", "metric", "rows", "axis", "values", "row_axes", "reference", "source", "notes",
             "average", "extra", "scale", "plot", "experiments", "sweep")
TABLE_DIR = Path(__file__).resolve().parents[2] / "conf" / "table"


# --- the runs a table reads --------------------------------------------------------------------------
def find_jobs(root: Path) -> list[dict[str, Any]]:
    """Every run under ``root`` (a run folder, a sweep folder, or a folder of both, at any depth) that has a
    ``results.json``: {"overrides", "metrics", "dir", "experiment", "config"}. The overrides also hold the
    job's config-group choices (``data``, ``adapter``, ...) that the command line did not set."""
    import json

    import yaml
    from omegaconf import OmegaConf

    jobs = []
    for results in sorted(root.rglob("results.json")):
        job_dir = results.parent
        hydra_dir = job_dir / ".hydra"
        if not hydra_dir.is_dir():  # not a run folder (a probe's own metrics, a copy)
            continue
        overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) if (hydra_dir / "overrides.yaml").exists() else []
        pairs = override_pairs(overrides)
        hydra = yaml.safe_load((hydra_dir / "hydra.yaml").read_text()) if (hydra_dir / "hydra.yaml").exists() else {}
        choices = {k: v for k, v in ((hydra or {}).get("hydra", {}).get("runtime", {}).get("choices") or {}).items()
                   if not k.startswith("hydra/") and v is not None}
        config = OmegaConf.load(hydra_dir / "config.yaml") if (hydra_dir / "config.yaml").exists() else None
        jobs.append({"overrides": {**{k: str(v) for k, v in choices.items()}, **pairs},
                     "metrics": json.loads(results.read_text()), "dir": job_dir,
                     "experiment": pairs.get("experiment", choices.get("experiment", "")), "config": config})
    return jobs


def jobs_of(spec: Mapping[str, Any], jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs of the experiment presets the spec names (``experiments``: names or ``<paper>/`` prefixes)."""
    wanted = list(spec.get("experiments") or [])
    if not wanted:
        return jobs
    return [j for j in jobs if any(j["experiment"] == w or (w.endswith("/") and j["experiment"].startswith(w))
                                   for w in wanted)]


def _metric_of(metric: str, job: Mapping[str, Any]) -> str:
    """``best/{eval.metric}`` -> ``best/test/mcc`` from the job's own config (GLUE tasks differ in metric)."""
    from omegaconf import OmegaConf

    def value(match: re.Match) -> str:
        node = OmegaConf.select(job["config"], match.group(1), default=None) if job.get("config") is not None else None
        if node is None:
            raise ConfigError(f"table.metric={metric!r}: the run {job.get('dir')} has no {match.group(1)} in its config")
        return str(node)

    return re.sub(r"\{([\w.]+)\}", value, metric)


def _logged(metric: str, job: Mapping[str, Any]) -> bool:
    wanted = _metric_of(metric, job)
    return any(split_metric_key(k)[0] == wanted for k in job["metrics"])


# --- the table --------------------------------------------------------------------------------------
def build_table(jobs: list[dict[str, Any]], metric: str, rows: Sequence[str], axis: str,
                values: Sequence[Any] | None = None, reference: Mapping[str, Mapping[Any, float]] | None = None,
                row_axes: Sequence[str] = (), *, average: str | None = None,
                extra: Mapping[str, str] | None = None, scale: float = 1.0) -> tuple[list[str], list[list[Any]]]:
    """Rows: the override keys ``rows`` and then the metric-key axes ``row_axes`` (a sub-model axis or an
    evaluation condition, e.g. ``layer``); columns: the values of ``axis`` (``rank``, ``testset``, or an
    override such as ``data``), then ``average`` and the ``extra`` metrics (header -> per-job metric)."""
    cells: dict[tuple, dict[Any, list[float]]] = {}
    extras: dict[tuple, dict[str, list[float]]] = {}
    for job in jobs:
        setting = tuple(row_value(job, k) for k in rows)
        name_wanted = _metric_of(metric, job)
        hit = False
        for key, value in job["metrics"].items():
            name, sub = split_metric_key(key)
            column = sub.get(axis, job["overrides"].get(axis))
            if name != name_wanted or column is None or not isinstance(value, (int, float)):
                continue
            if any(sub.get(a) is None for a in row_axes):
                continue
            row = setting + tuple(sub[a] for a in row_axes)
            cells.setdefault(row, {}).setdefault(column, []).append(float(value) * scale)
            hit = True
        if hit:
            for header_name, key in (extra or {}).items():
                if isinstance(job["metrics"].get(key), (int, float)):
                    extras.setdefault(setting, {}).setdefault(header_name, []).append(float(job["metrics"][key]))
    if not cells:
        logged = sorted({split_metric_key(k)[0] for j in jobs for k in j["metrics"]})
        raise ConfigError(f"table metric {metric!r} with axis {axis!r} was not logged by any run; "
                          f"logged metrics: {', '.join(logged)}")
    columns = list(values) if values else sorted({v for row in cells.values() for v in row}, key=_order)
    extra_names = list(extra or {})
    header = [*rows, *row_axes, *[f"{axis}={v}" for v in columns], *([average] if average else []), *extra_names]
    table = []
    for row in sorted(cells, key=lambda r: tuple(map(_order, r))):
        means = [mean_std(cells[row].get(v, [])) for v in columns]
        avg = [_average(means)] if average else []
        ex = extras.get(row[:len(rows)], {})
        # an extra is the mean over the row's runs (tasks and seeds alike), without a spread
        table.append([*row, *means, *avg, *[(statistics.fmean(ex[n]), math.nan) if ex.get(n) else None
                                            for n in extra_names]])
    for name, numbers in (reference or {}).items():  # the paper's numbers, one row each
        numbers = numbers or {}
        if not any(k in numbers or str(k) in numbers for k in [*columns, *([average] if average else []), *extra_names]):
            continue  # none of its numbers is in a column shown (e.g. another corpus): no empty row
        table.append([f"{name} (paper)", *[""] * (len(rows) + len(row_axes) - 1),
                      *[numbers.get(v, numbers.get(str(v))) for v in columns],
                      *([numbers.get(average)] if average else []), *[numbers.get(n) for n in extra_names]])
    return header, table


def row_value(job: Mapping[str, Any], key: str) -> str:
    """A row key's value: the job's override (or config-group choice), else a string the run logged (``method``)."""
    value = job["overrides"].get(key, job["metrics"].get(key, ""))
    return str(value) if not isinstance(value, float) else f"{value:g}"


def _average(cells: list) -> tuple[float, float] | None:
    """The mean of a row's column means (GLUE's average); empty when a column is missing."""
    if not cells or any(c is None for c in cells):
        return None
    return statistics.fmean(c[0] for c in cells), math.nan


def _order(value: Any) -> tuple:
    """Numbers before strings, each in their own order (conditions have string values)."""
    return (isinstance(value, str), value if isinstance(value, str) else float(value))


def render(header: list[str], rows: list[list[Any]], fmt: str = "md", digits: int = 3) -> str:
    if fmt == "latex":
        esc = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
        lines = [r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule",
                 " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(format_cell(c, digits)) for c in row) + r" \\" for row in rows]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(format_cell(c, digits) for c in row) + " |" for row in rows])


def csv_rows(header: list[str], rows: list[list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """Numbers for a spreadsheet: a column of cells becomes ``<h> mean`` and ``<h> std`` (std empty for one run)."""
    numeric = [any(isinstance(r[i], tuple) for r in rows) for i in range(len(header))]
    flat_header = [x for h, n in zip(header, numeric) for x in ((f"{h} mean", f"{h} std") if n else (h,))]
    def split(c: Any) -> tuple:
        if isinstance(c, tuple):
            return (c[0], "" if math.isnan(c[1]) else c[1])
        return (c, "")
    flat = [[x for c, n in zip(row, numeric) for x in (split(c) if n else ("" if c is None else c,))] for row in rows]
    return flat_header, flat


# --- a spec: load, check, render ------------------------------------------------------------------------
def load_spec(name_or_node: Any) -> dict[str, Any]:
    """A spec by name (``conf/table/<name>.yaml``) or an already composed node, as a plain resolved dict."""
    from omegaconf import OmegaConf

    if isinstance(name_or_node, str):
        path = TABLE_DIR / f"{name_or_node}.yaml"
        if not path.exists():
            raise ConfigError(f"table={name_or_node!r} is not a table spec; valid choices: {', '.join(spec_names())}")
        name_or_node = OmegaConf.load(path)
    spec = OmegaConf.to_container(name_or_node, resolve=True) if OmegaConf.is_config(name_or_node) else dict(name_or_node)
    check_spec(spec)
    return spec


def spec_names() -> list[str]:
    return sorted(p.stem for p in TABLE_DIR.glob("*.yaml"))


def check_spec(spec: Mapping[str, Any]) -> None:
    for key in ("name", "metric", "rows", "axis"):
        if spec.get(key) in (None, "", []) and not (key == "rows" and spec.get("row_axes")):
            raise ConfigError(f"table.{key} is missing; a table spec needs name, metric, rows and axis")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"table.{unknown[0]} is not an option of a table spec; valid options: {', '.join(SPEC_KEYS)}")
    if (spec.get("plot") or "none") not in PLOTS:
        raise ConfigError(f"table.plot={spec['plot']!r} is not an option; valid choices: {', '.join(PLOTS)}")


def table_of(spec: Mapping[str, Any], jobs: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    return build_table(jobs, spec["metric"], list(spec.get("rows") or []), spec["axis"], spec.get("values"),
                       spec.get("reference"), list(spec.get("row_axes") or []), average=spec.get("average"),
                       extra=spec.get("extra"), scale=float(spec.get("scale") or 1.0))


def markdown_of(spec: Mapping[str, Any], header: list[str], rows: list[list[Any]], jobs: Sequence[Mapping],
                image: str | None = None) -> str:
    """The table's Markdown section: title, table, where the paper's numbers come from, notes, plot."""
    parts = [f"### {spec.get('title') or spec['name']}", "", render(header, rows), "", meta_of(spec, jobs), ""]
    if image:
        parts += [f"![{spec['name']}]({image})", ""]
    return "\n".join(parts)


def meta_of(spec: Mapping[str, Any], jobs: Sequence[Mapping]) -> str:
    """What the cells are, where the paper's rows come from, the spec's notes."""
    meta = [f"Metric `{spec['metric']}`" + (f" × {spec['scale']:g}" if spec.get("scale") not in (None, 1, 1.0) else "") +
            f"; cells are mean ± std over {len(jobs)} run{'s' * (len(jobs) != 1)} (seeds pooled; no ± for one run)."]
    if spec.get("reference"):
        meta.append(f"Paper rows: {spec.get('source') or 'source not given'}.")
    if spec.get("notes"):
        meta.append(str(spec["notes"]).strip())
    return " ".join(meta)


def write_table(spec: Mapping[str, Any], jobs: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """``<name>.md``, ``.tex``, ``.csv`` (and ``.png`` when the spec has a plot) in ``out``; what was written."""
    from experiments.results.files import write_csv
    from experiments.results.table_plots import plot_table

    header, rows = table_of(spec, jobs)
    jobs = [j for j in jobs if _logged(spec["metric"], j)]  # the runs counted and listed: those in a cell
    out.mkdir(parents=True, exist_ok=True)
    name = spec["name"]
    label = lambda job: ", ".join(row_value(job, k) for k in spec.get("rows") or []) or "ours"  # noqa: E731
    png = plot_table(spec, jobs, header, rows, out / f"{name}.png", label)
    markdown = markdown_of(spec, header, rows, jobs, png.name if png else None)
    (out / f"{name}.md").write_text(markdown)
    (out / f"{name}.tex").write_text(render(header, rows, "latex") + "\n")
    write_csv(out / f"{name}.csv", *csv_rows(header, rows))
    return {"spec": spec, "header": header, "rows": rows, "markdown": markdown, "png": png, "jobs": jobs}


def table_task(cfg, sweep_dirs: Sequence[str]) -> str:
    """Write ``<name>.md``, ``.tex``, ``.csv`` (and ``.png``) of the ``table`` spec into the first sweep folder."""
    spec = load_spec(cfg.table)
    jobs = [job for d in sweep_dirs for job in find_jobs(Path(d))]
    if not jobs:
        raise ConfigError(f"report.sweep_dir={list(sweep_dirs)}: no <job>/results.json found")
    return write_table(spec, jobs, Path(sweep_dirs[0]))["markdown"]
