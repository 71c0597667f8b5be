"""Sweep folder -> one table (``task=report`` and the end of every multirun): rows = override settings
(seeds pooled), cells = mean ± std; with ``table=<spec>`` a paper table instead (experiments/results/tables.py).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

from hydra.experimental.callback import Callback

from experiments.results.sweep import aggregate, format_cell, load_jobs
from modules.options import option as opt


def write_report(sweep_dir: Path, header: list[str], rows: list[list[Any]]) -> tuple[Path, Path]:
    from experiments.results.files import write_csv

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


@dataclasses.dataclass
class ReportSchema:
    closed: ClassVar[bool] = True
    sweep_dir: Union[None, str, list[str]] = opt(None, min_len=1)
    metrics: Optional[list[str]] = opt(None, min_len=1)  # null, not [], is "every test/* metric"
    group_by: Optional[list[str]] = opt(None, min_len=1)
    all: bool = False
    tables: Union[None, str, list[str]] = opt(None, min_len=1)
    wandb: bool = False


def report_task(cfg) -> None:
    from experiments.core.config import ConfigError, get
    from experiments.core.schema import check

    check(cfg, "report", ReportSchema)

    sweep_dirs = get(cfg, "report.sweep_dir")
    sweep_dirs = [sweep_dirs] if isinstance(sweep_dirs, str) else list(sweep_dirs or [])
    missing = [d for d in sweep_dirs if not Path(d).is_dir()] or ([] if sweep_dirs else [None])
    if missing:
        raise ConfigError(f"report.sweep_dir={missing[0]!r}: no such folder; give a multirun folder "
                          "(e.g. multirun/qdylora/quick/<date>) or a list of them")
    if get(cfg, "report.all"):  # every paper table of a results folder, one Markdown + one HTML report
        from experiments.results.paper_report import write_paper_report

        if len(sweep_dirs) != 1:
            raise ConfigError(f"report.all=true takes one results folder in report.sweep_dir, got {sweep_dirs}")
        names = get(cfg, "report.tables")
        report = write_paper_report(Path(sweep_dirs[0]), [names] if isinstance(names, str) else names)
        print(report["markdown"].read_text())
        print(f"written: {report['markdown']} and {report['html']} "
              f"({len(report['rendered'])} tables: {', '.join(report['rendered'])})")
        if get(cfg, "report.wandb"):
            from experiments.results.wandb_log import log_report

            log_report(cfg, Path(sweep_dirs[0]), report["tables"])
        return
    if get(cfg, "table"):  # a paper table spec (conf/table/)
        from experiments.results.tables import table_task

        print(table_task(cfg, sweep_dirs))
        print(f"written: {Path(sweep_dirs[0]) / cfg.table.name}.md, .tex, .csv (and .png with table.plot)")
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
