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
from experiments.results.sweep import STATUS_FILE, format_cell, incomplete_jobs
from modules.submodel import split_metric_key

PLOTS = ("none", "curve", "pareto", "layer_weights")
SPEC_KEYS = ("name", "title", "metric", "rows", "axis", "values", "row_axes", "reference", "source", "notes",
             "average", "extra", "scale", "plot", "experiments", "sweep", "tune", "seeds")
TUNE_KEYS = ("select", "mode", "knobs")
PROBLEMS = ("failed", "diverged", "unfinished", "missing")  # a run that gives no number, in the order shown
TABLE_DIR = Path(__file__).resolve().parents[2] / "conf" / "table"
REHEARSAL = "REHEARSAL ({name}): random shrunk models on generated data, a few steps; not results."


def rehearsal_caption(name: str) -> str:
    """What heads every table and results file of a rehearsed run (experiments/rehearsal.py)."""
    return REHEARSAL.format(name=name)


def rehearsals_of(jobs: Sequence[Mapping]) -> list[str]:
    """The rehearsal names among the jobs' results (``"rehearsal": "tiny"``); empty for real runs."""
    return sorted({str(j["metrics"]["rehearsal"]) for j in jobs
                   if isinstance(j.get("metrics"), Mapping) and j["metrics"].get("rehearsal")})


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
        choices = _choices(hydra_dir)
        config = OmegaConf.load(hydra_dir / "config.yaml") if (hydra_dir / "config.yaml").exists() else None
        status = json.loads((job_dir / STATUS_FILE).read_text()).get("status") if (job_dir / STATUS_FILE).is_file() else None
        jobs.append({"overrides": {**choices, **pairs},
                     "metrics": json.loads(results.read_text()), "dir": job_dir,
                     "experiment": pairs.get("experiment", choices.get("experiment", "")), "config": config,
                     "status": "failed" if status == "failed" else "finished"})
    # a sweep's jobs that failed, were killed (job_status.json, no results.json) or never started (multirun.yaml)
    seen = {j["dir"] for j in jobs}
    sweeps = {p.parent for p in root.rglob("multirun.yaml")} | {p.parent.parent for p in root.rglob(STATUS_FILE)}
    for sweep in sorted(sweeps):
        for job in incomplete_jobs(sweep, seen):
            if job["dir"] is not None:
                seen.add(job["dir"])
            choices = _choices(job["dir"] / ".hydra") if job["dir"] else {}
            jobs.append({**job, "overrides": {**choices, **job["overrides"]}, "config": None,
                         "experiment": job["overrides"].get("experiment", choices.get("experiment", ""))})
    return jobs


def _choices(hydra_dir: Path) -> dict[str, str]:
    """The job's config-group choices (``data``, ``adapter``, ...) from Hydra's record of the run."""
    import yaml

    path = hydra_dir / "hydra.yaml"
    hydra = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return {k: str(v) for k, v in ((hydra or {}).get("hydra", {}).get("runtime", {}).get("choices") or {}).items()
            if not k.startswith("hydra/") and v is not None}


def problem(job: Mapping[str, Any], keys: Sequence[str] = ()) -> str | None:
    """Why a run gives no number: failed / unfinished / missing (its sweep says so), diverged (a non-finite
    value among ``keys``, or results.json says ``status: diverged``); None for a good run."""
    status = job.get("status", "finished")
    if status != "finished":
        return status
    metrics = job["metrics"]
    if metrics.get("status") in ("diverged", "failed"):
        return str(metrics["status"])
    wanted = set(keys)
    bad = any(isinstance(v, float) and not math.isfinite(v) for k, v in metrics.items()
              if k in wanted or split_metric_key(k)[0] in wanted)
    return "diverged" if bad else None


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
                extra: Mapping[str, str] | None = None, scale: float = 1.0, seeds: str = "seed",
                tuned: Mapping[tuple, Mapping[str, Any]] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Rows: the override keys ``rows`` and then the metric-key axes ``row_axes`` (a sub-model axis or an
    evaluation condition, e.g. ``layer``); columns: the values of ``axis`` (``rank``, ``testset``, or an
    override such as ``data``), then ``average`` and the ``extra`` metrics (header -> per-job metric).

    A cell is (mean, std, n) over its runs, which must differ only in ``seeds`` (two runs of one seed in a
    cell pool settings the rows do not separate: an error). Runs that failed, diverged, did not finish or
    never started give no number; their rows are marked in a last column ``not finished``. ``tuned``: the
    knob values chosen per row (``tune``), shown after the row keys."""
    cells: dict[tuple, dict[Any, list[tuple[float, str]]]] = {}
    extras: dict[tuple, dict[str, list[float]]] = {}
    marks: dict[tuple, list[str]] = {}
    for job in jobs:
        setting = tuple(row_value(job, k) for k in rows)
        why = _problem_of(metric, job)
        if why:
            marks.setdefault(setting, []).append(why)
            continue
        name_wanted, hit = _metric_of(metric, job), False
        for key, value in job["metrics"].items():
            name, sub = split_metric_key(key)
            column = sub.get(axis, job["overrides"].get(axis))
            if name != name_wanted or column is None or not isinstance(value, (int, float)):
                continue
            if any(sub.get(a) is None for a in row_axes):
                continue
            row = setting + tuple(sub[a] for a in row_axes)
            cells.setdefault(row, {}).setdefault(column, []).append((float(value) * scale, _seed(job, seeds)))
            hit = True
        if hit:
            for header_name, key in (extra or {}).items():
                if isinstance(job["metrics"].get(key), (int, float)):
                    extras.setdefault(setting, {}).setdefault(header_name, []).append(float(job["metrics"][key]))
    if not cells:
        logged = sorted({split_metric_key(k)[0] for j in jobs for k in j["metrics"]})
        raise ConfigError(f"table metric {metric!r} with axis {axis!r} was not logged by any run; "
                          f"logged metrics: {', '.join(logged)}")
    for row in [m for m in marks if not any(r[:len(rows)] == m for r in cells)]:
        cells[row + ("",) * len(row_axes)] = {}  # no run of the row gave a number: the row is still shown
    columns = list(values) if values else sorted({v for row in cells.values() for v in row}, key=_order)
    extra_names, knobs = list(extra or {}), list(next(iter((tuned or {}).values()), {}).get("values") or {})
    header = [*rows, *[f"{k} (tuned)" for k in knobs], *row_axes, *[f"{axis}={v}" for v in columns],
              *([average] if average else []), *extra_names, *(["not finished"] if marks else [])]
    table = []
    for row in sorted(cells, key=lambda r: tuple(map(_order, r))):
        means = [_cell(cells[row].get(v, []), seeds, row, v) for v in columns]
        avg = [_average(means)] if average else []
        ex = extras.get(row[:len(rows)], {})
        chosen = (tuned or {}).get(row[:len(rows)], {}).get("values") or {}
        # an extra is the mean over the row's runs (tasks and seeds alike), without a spread
        table.append([*row[:len(rows)], *[chosen.get(k, "–") for k in knobs], *row[len(rows):], *means, *avg,
                      *[(statistics.fmean(ex[n]), math.nan) if ex.get(n) else None for n in extra_names],
                      *([_count(marks.get(row[:len(rows)], []))] if marks else [])])
    for name, numbers in (reference or {}).items():  # the paper's numbers, one row each
        numbers = numbers or {}
        if not any(k in numbers or str(k) in numbers for k in [*columns, *([average] if average else []), *extra_names]):
            continue  # none of its numbers is in a column shown (e.g. another corpus): no empty row
        table.append([f"{name} (paper)", *[""] * (len(rows) + len(knobs) + len(row_axes) - 1),
                      *[numbers.get(v, numbers.get(str(v))) for v in columns],
                      *([numbers.get(average)] if average else []), *[numbers.get(n) for n in extra_names],
                      *([""] if marks else [])])
    return header, table


def _problem_of(metric: str, job: Mapping[str, Any]) -> str | None:
    """``problem`` of a run for a table of ``metric`` (its own config resolves ``{eval.metric}``)."""
    finished = job.get("status", "finished") == "finished"
    return problem(job, [_metric_of(metric, job)] if finished else [])


def _seed(job: Mapping[str, Any], key: str) -> str:
    """The run's seed: its override, else its config's value."""
    from omegaconf import OmegaConf

    if key in job["overrides"]:
        return str(job["overrides"][key])
    config = job.get("config")
    return str(OmegaConf.select(config, key, default="")) if config is not None else ""


def _cell(runs: list[tuple[float, str]], seeds: str, row: tuple, column: Any) -> tuple[float, float, int] | None:
    seen = [s for _, s in runs]
    dup = next((s for s in seen if s and seen.count(s) > 1), None)
    if dup is not None:
        raise ConfigError(f"table: the cell ({', '.join(map(str, row))}, {column}) pools {seen.count(dup)} runs of "
                          f"{seeds}={dup}; rows must separate every override but {seeds} (add it to rows or tune)")
    if not runs:
        return None
    values = [v for v, _ in runs]
    # one run has no spread: std is NaN and the cell shows the mean alone (not a misleading ± 0)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan), len(values)


def _count(problems: list[str]) -> str:
    """"1 failed, 2 diverged" (empty for a row whose runs all gave numbers)."""
    return ", ".join(f"{problems.count(p)} {p}" for p in PROBLEMS if p in problems)


def tune_rows(spec: Mapping[str, Any], jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[tuple, dict]]:
    """Per row (the ``rows`` keys), the knob setting whose mean over seeds of the validation key ``tune.select``
    is best (``tune.mode``); only that setting's runs fill the row. A setting with a run that failed, diverged
    or did not finish is no candidate (its mean would stand on fewer seeds); such runs stay in the returned
    jobs, so the row says so. Ties: the first setting in sorted order. Returns (jobs, {row: choice})."""
    tune = spec["tune"]
    knobs, select, higher = list(tune["knobs"]), str(tune["select"]), tune.get("mode", "max") == "max"
    groups: dict[tuple, dict[tuple, list[dict]]] = {}
    for job in jobs:
        setting = tuple(row_value(job, k) for k in spec.get("rows") or [])
        values = tuple(str(job["overrides"].get(k, "")) for k in knobs)
        groups.setdefault(setting, {}).setdefault(values, []).append(job)
    kept, chosen = [], {}
    for setting, by_values in groups.items():
        scores = {}
        for values, members in by_values.items():
            numbers = [] if any(_problem_of(select, j) for j in members) else \
                [j["metrics"].get(_metric_of(select, j)) for j in members]
            if numbers and all(isinstance(v, (int, float)) for v in numbers):
                scores[values] = statistics.fmean(numbers)
        best = None
        if scores:
            pick = max if higher else min
            best = pick(sorted(scores, key=lambda v: tuple(map(_order_text, v))), key=scores.get)
            kept += by_values[best]
        kept += [{**j, "status": why} for values, members in by_values.items() if values != best for j in members
                 if (why := _problem_of(select, j))]  # only to mark the row: they fill no cell
        chosen[setting] = {"values": dict(zip(knobs, best)) if best else {k: "–" for k in knobs},
                           "score": scores.get(best), "tried": len(by_values), "candidates": len(scores),
                           "runs": sum(map(len, by_values.values()))}
    return kept, chosen


def _order_text(value: str) -> tuple:
    """Override values are text: numbers in numeric order, then the rest."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


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


def cell_text(cell: Any, digits: int = 3) -> str:
    """``mean ± std (n=3)``; one run shows its number alone; ``–`` for none."""
    if isinstance(cell, tuple) and len(cell) == 3:
        return format_cell(cell[:2], digits) + (f" (n={cell[2]})" if cell[2] > 1 else "")
    return format_cell(cell, digits)


def render(header: list[str], rows: list[list[Any]], fmt: str = "md", digits: int = 3) -> str:
    if fmt == "latex":
        esc = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
        lines = [r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule",
                 " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(cell_text(c, digits)) for c in row) + r" \\" for row in rows]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell_text(c, digits) for c in row) + " |" for row in rows])


def csv_rows(header: list[str], rows: list[list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """Numbers for a spreadsheet: a column of cells becomes ``<h> mean``, ``<h> std`` (empty for one run) and
    ``<h> n`` (runs in the cell)."""
    numeric = [any(isinstance(r[i], tuple) for r in rows) for i in range(len(header))]
    flat_header = [x for h, n in zip(header, numeric) for x in ((f"{h} mean", f"{h} std", f"{h} n") if n else (h,))]
    def split(c: Any) -> tuple:
        if isinstance(c, tuple):
            return (c[0], "" if math.isnan(c[1]) else c[1], c[2] if len(c) > 2 else "")
        return (c, "", "")
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
    tune = spec.get("tune")
    if tune is not None:
        if not isinstance(tune, Mapping) or any(k not in TUNE_KEYS for k in tune):
            raise ConfigError(f"table.tune={tune!r}: give a mapping of {', '.join(TUNE_KEYS)}")
        if not tune.get("knobs") or not isinstance(tune["knobs"], list):
            raise ConfigError(f"table.tune.knobs={tune.get('knobs')!r}: give the override keys tuned per row, "
                              "e.g. [regularizer.weight]")
        if "val/" not in str(tune.get("select") or ""):
            raise ConfigError(f"table.tune.select={tune.get('select')!r}: choose on a validation key (one holding "
                              "val/, e.g. final/val/score@measure=avg_acc); the cells stay on test")
        if tune.get("mode", "max") not in ("max", "min"):
            raise ConfigError(f"table.tune.mode={tune['mode']!r} is not an option; valid choices: max, min")
        if set(tune["knobs"]) & set(spec.get("rows") or []):
            raise ConfigError(f"table.tune.knobs={tune['knobs']}: a tuned knob cannot also form the rows")
    if "val/" in str(spec.get("metric")):
        raise ConfigError(f"table.metric={spec['metric']!r}: a table reports test numbers; validation keys "
                          "choose (tune.select, best/*)")


def table_of(spec: Mapping[str, Any], jobs: list[dict[str, Any]],
             tuned: Mapping[tuple, Mapping[str, Any]] | None = None) -> tuple[list[str], list[list[Any]]]:
    """The spec's table; with ``tune``, pass the jobs and choices of ``tune_rows`` (else they are computed)."""
    if spec.get("tune") and tuned is None:
        jobs, tuned = tune_rows(spec, jobs)
    return build_table(jobs, spec["metric"], list(spec.get("rows") or []), spec["axis"], spec.get("values"),
                       spec.get("reference"), list(spec.get("row_axes") or []), average=spec.get("average"),
                       extra=spec.get("extra"), scale=float(spec.get("scale") or 1.0),
                       seeds=str(spec.get("seeds") or "seed"), tuned=tuned)


def markdown_of(spec: Mapping[str, Any], header: list[str], rows: list[list[Any]], jobs: Sequence[Mapping],
                image: str | None = None, tuned: Mapping[tuple, Mapping[str, Any]] | None = None) -> str:
    """The table's Markdown section: title, table, where the paper's numbers come from, notes, plot."""
    parts = [f"### {spec.get('title') or spec['name']}", "", render(header, rows), "", meta_of(spec, jobs, rows, tuned), ""]
    if image:
        parts += [f"![{spec['name']}]({image})", ""]
    return "\n".join(parts)


def meta_of(spec: Mapping[str, Any], jobs: Sequence[Mapping], rows: Sequence[Sequence[Any]] = (),
            tuned: Mapping[tuple, Mapping[str, Any]] | None = None) -> str:
    """The caption: the protocol (what was selected on what, seeds and n, tuned knobs and budget), where the
    paper's rows come from, the spec's notes."""
    metric = spec["metric"]
    ns = sorted({c[2] for row in rows for c in row if isinstance(c, tuple) and len(c) == 3})
    seeds = str(spec.get("seeds") or "seed")
    meta = [f"Cells: test metric `{metric}`" + (f" × {spec['scale']:g}" if spec.get("scale") not in (None, 1, 1.0) else "") +
            f", mean ± std over the runs of a cell, which differ only in `{seeds}`: n = "
            f"{'–'.join(map(str, sorted({ns[0], ns[-1]}))) if ns else 0} per cell (shown as (n=…) above 1; one run: no ±)."]
    meta.append(_selection_of(spec, tuned))
    meta[:0] = [rehearsal_caption(name) for name in rehearsals_of(jobs)]  # never mistaken for results
    bad = [why for j in jobs if (why := _problem_of(spec["metric"], j))]
    if bad:
        meta.append(f"Runs that gave no number ({_count(bad)}) are counted in the `not finished` column of their "
                    "row, never averaged in.")
    if spec.get("reference"):
        meta.append(f"Paper rows: {spec.get('source') or 'source not given'}.")
    if spec.get("notes"):
        meta.append(str(spec["notes"]).strip())
    return " ".join(meta)


def _selection_of(spec: Mapping[str, Any], tuned: Mapping[tuple, Mapping[str, Any]] | None) -> str:
    """What was chosen on what: per-row tuning, each run's best/* sub-model, or nothing (every cell shown)."""
    parts = []
    tune = spec.get("tune")
    if tune:
        budgets = sorted({(c["tried"], c["runs"]) for c in (tuned or {}).values()})
        budget = "; ".join(f"{t} setting{'s' * (t != 1)}, {r} runs" for t, r in budgets)
        parts.append(f"Tuned per row: {', '.join(f'`{k}`' for k in tune['knobs'])} at the setting with the best "
                     f"mean over seeds of the validation key `{tune['select']}` ({tune.get('mode', 'max')}); "
                     f"budget per row: {budget} (the chosen values are the `(tuned)` columns).")
    if str(spec["metric"]).startswith("best/"):
        parts.append("Each run's sub-model was chosen on its validation split (`best/submodel`, on `val/<m>`) and "
                     "is reported with its test value.")
    elif not tune:
        parts.append("Selected on: nothing (every sub-model and setting is shown as measured; no choice on test).")
    return " ".join(parts)


def write_table(spec: Mapping[str, Any], jobs: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """``<name>.md``, ``.tex``, ``.csv`` (and ``.png`` when the spec has a plot) in ``out``; what was written."""
    from experiments.results.files import write_csv
    from experiments.results.table_plots import plot_table

    tuned = None
    if spec.get("tune"):
        jobs, tuned = tune_rows(spec, jobs)
    header, rows = table_of(spec, jobs, tuned)
    # the runs counted and listed: those in a cell, and those that gave no number (marked in their row)
    jobs = [j for j in jobs if j.get("status", "finished") != "finished" or _logged(spec["metric"], j)]
    out.mkdir(parents=True, exist_ok=True)
    name = spec["name"]
    label = lambda job: ", ".join(row_value(job, k) for k in spec.get("rows") or []) or "ours"  # noqa: E731
    good = [j for j in jobs if not _problem_of(spec["metric"], j)]
    png = plot_table(spec, good, header, rows, out / f"{name}.png", label)
    markdown = markdown_of(spec, header, rows, jobs, png.name if png else None, tuned)
    (out / f"{name}.md").write_text(markdown)
    marks = "".join(f"% {rehearsal_caption(r)}\n" for r in rehearsals_of(jobs))
    (out / f"{name}.tex").write_text(marks + render(header, rows, "latex") + "\n")
    write_csv(out / f"{name}.csv", *csv_rows(header, rows))
    return {"spec": spec, "header": header, "rows": rows, "markdown": markdown, "png": png, "jobs": jobs,
            "tuned": tuned}


def table_task(cfg, sweep_dirs: Sequence[str]) -> str:
    """Write ``<name>.md``, ``.tex``, ``.csv`` (and ``.png``) of the ``table`` spec into the first sweep folder."""
    spec = load_spec(cfg.table)
    jobs = [job for d in sweep_dirs for job in find_jobs(Path(d))]
    if not jobs:
        raise ConfigError(f"report.sweep_dir={list(sweep_dirs)}: no <job>/results.json found")
    return write_table(spec, jobs, Path(sweep_dirs[0]))["markdown"]
