"""Every paper table of a results folder in one report (``task=report report.all=true``).

Each spec in ``conf/table/`` takes the runs of its ``experiments`` found anywhere under the folder; a table
whose runs are absent (or whose metric they did not log) is listed as not rendered, with the reason. Written
into ``<folder>/tables/``: each table's ``.md``/``.csv``/``.tex``/``.png``, then ``report.md`` (the plots as
links beside it) and ``report.html`` (one file: the tables as HTML, the plots inline as base64 PNG).
"""
from __future__ import annotations

import base64
import datetime
import html
from pathlib import Path
from typing import Any, Sequence

from experiments.core.config import ConfigError
from experiments.results.tables import cell_text, find_jobs, jobs_of, load_spec, meta_of, spec_names, write_table


def write_paper_report(results_dir: Path, names: Sequence[str] | None = None,
                       out: Path | None = None) -> dict[str, Any]:
    """Render every table spec (``names``: a subset) from the runs under ``results_dir``."""
    out = out or results_dir / "tables"
    all_jobs = find_jobs(results_dir)
    if not all_jobs:
        raise ConfigError(f"report.sweep_dir={str(results_dir)!r}: no run folder with a results.json under it")
    rendered, skipped = [], []
    for name in names or spec_names():
        spec = load_spec(name)
        jobs = jobs_of(spec, all_jobs)
        if not jobs:
            skipped.append((name, f"no run of {', '.join(spec.get('experiments') or ['any preset'])}"))
            continue
        try:
            rendered.append(write_table(spec, jobs, out))
        except ConfigError as err:  # the runs exist but did not log this table's metric
            skipped.append((name, str(err)))
    if not rendered:
        raise ConfigError(f"report.all: no table spec found its runs under {results_dir}: " +
                          "; ".join(f"{n}: {why}" for n, why in skipped))
    title = f"Paper tables: {results_dir.name}"
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(_markdown(title, results_dir, all_jobs, rendered, skipped))
    html_path.write_text(_html(title, results_dir, all_jobs, rendered, skipped))
    return {"markdown": md_path, "html": html_path, "rendered": [t["spec"]["name"] for t in rendered],
            "skipped": skipped, "tables": rendered}


def _intro(results_dir: Path, jobs: list, rendered: list) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{len(rendered)} table{'s' * (len(rendered) != 1)} from {len(jobs)} run"
            f"{'s' * (len(jobs) != 1)} under `{results_dir}`, rendered {when} by "
            f"`python run.py task=report report.all=true report.sweep_dir={results_dir}`.")


def _markdown(title: str, results_dir: Path, jobs: list, rendered: list, skipped: list) -> str:
    parts = [f"# {title}", "", _intro(results_dir, jobs, rendered), ""]
    for table in rendered:
        parts += [table["markdown"], _runs(table), ""]
    if skipped:
        parts += ["## Not rendered", ""] + [f"- `{name}`: {why}" for name, why in skipped] + [""]
    return "\n".join(parts)


def _runs(table: dict) -> str:
    experiments = sorted({j["experiment"] or "?" for j in table["jobs"]})
    return f"Runs: {len(table['jobs'])} ({', '.join(experiments)}). Sweep: `{table['spec'].get('sweep') or '-'}`"


def _html(title: str, results_dir: Path, jobs: list, rendered: list, skipped: list) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f"<p>{e(_intro(results_dir, jobs, rendered))}</p>"]
    for table in rendered:
        spec = table["spec"]
        body.append(f"<h2>{e(str(spec.get('title') or spec['name']))}</h2>")
        head = "".join(f"<th>{e(h)}</th>" for h in table["header"])
        rows = "".join("<tr>" + "".join(f"<td>{e(cell_text(c, 3))}</td>" for c in row) + "</tr>" for row in table["rows"])
        body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        body.append(f"<p class='meta'>{e(meta_of(spec, table['jobs'], table['rows'], table.get('tuned')))}</p><p class='meta'>{e(_runs(table))}</p>")
        if table["png"]:
            data = base64.b64encode(Path(table["png"]).read_bytes()).decode()
            body.append(f"<img alt='{e(spec['name'])}' src='data:image/png;base64,{data}'>")
    if skipped:
        body.append("<h2>Not rendered</h2><ul>" + "".join(f"<li><code>{e(n)}</code>: {e(w)}</li>" for n, w in skipped)
                    + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
             "td:first-child,th:first-child{text-align:left}.meta{color:#555;font-size:13px}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
