"""FoCL's table under the protocol of docs/focl.md: each regulariser at its validation-selected weight, seeds, spread.

Runs ``experiment=focl/quick`` one job at a time (threads=1), each in its own folder
``<out>/<part>/<row>/w<weight>/seed<s>`` with its wall time in ``wall_s``, then prints (and writes to
``<out>/table.md``) the table:

- part ``weighted``: for each regulariser the weights of ``GRID``; the weight whose mean over seeds (those every
  weight of the row has finished) of the VALIDATION average accuracy (``final/val/score@measure=avg_acc``) is
  highest is chosen (ties: the first in grid order); the row shows the TEST measures of that weight, mean ± std over seeds (n);
- part ``normalized``: the tuning-free protocol (``regularizer.normalize=grad``, each term's gradient at
  ``grad_ratio`` = 1 x the GAN loss's), nothing tuned;
- a paired t-test over seeds (scipy.stats.ttest_rel) for pixel vs feature in each part.

A job whose folder already has a finished results.json and wall_s is not rerun (rerun after a kill to continue);
a job that failed is shown as failed (its log is ``<job>/run.log``), never dropped. The same selection is what
``conf/table/focl_tuned.yaml`` declares (``tune:`` / ``seeds:``) for the table
renderer.

    python experiments/scripts/focl_tuned_table.py --out /work/results/focl_tuned
    python experiments/scripts/focl_tuned_table.py --out /work/results/focl_tuned --table-only
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SELECT = "final/val/score@measure=avg_acc"  # validation: what chooses the weight
MEASURES = ("avg_acc", "forgetfulness", "frechet")  # test: what the cells show (final/score@measure=...)
ALIGN = (0.01, 0.1, 1.0)  # spans the measured 17-94x gap between the feature and the pixel term
GRID = {"none": (0.0,), "pixel": ALIGN, "feature": ALIGN, "combined": ALIGN, "ewc": (10.0, 100.0, 1000.0)}
NORMALIZED = ("pixel", "feature", "combined", "ewc")


def jobs(seeds: list[int], parts: list[str]) -> list[tuple[str, str, float, int, list[str]]]:
    """(part, row, weight, seed, overrides) in run order: seed by seed, so a cut-short sweep has every setting
    at the same number of seeds."""
    out = []
    for s in seeds:
        for part in parts:
            rows = GRID if part == "weighted" else {r: (1.0,) for r in NORMALIZED}
            for row, weights in rows.items():
                for w in weights:
                    extra = [f"regularizer={row}", f"seed={s}"]
                    extra += [f"regularizer.weight={w}"] if row != "none" else []
                    extra += ["regularizer.normalize=grad", "regularizer.grad_ratio=1.0"] if part == "normalized" else []
                    out.append((part, row, w, s, extra))
    return out


def folder(out: Path, part: str, row: str, w: float, s: int) -> Path:
    return out / part / row / f"w{w:g}" / f"seed{s}"  # no "=" in a path: Hydra reads it as an override


def finished(job_dir: Path) -> dict | None:
    path = job_dir / "results.json"
    if not (path.is_file() and (job_dir / "wall_s").is_file()):
        return None
    r = json.loads(path.read_text())
    return r if r.get("tasks/done") == r.get("tasks/total") and SELECT in r else None


def run_all(out: Path, todo, extra: list[str]) -> None:
    for i, (part, row, w, s, overrides) in enumerate(todo, 1):
        job_dir = folder(out, part, row, w, s)
        if finished(job_dir):
            continue
        job_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "run.py", "experiment=focl/quick", "threads=1", "logger=none", *overrides, *extra,
               f"hydra.run.dir={job_dir}"]
        start = time.time()
        with open(job_dir / "run.log", "w") as log:
            rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wall = time.time() - start
        if rc == 0:
            (job_dir / "wall_s").write_text(f"{wall:.1f}\n")
        print(f"[{i}/{len(todo)}] {part} {row} w={w:g} seed={s}: rc={rc}, {wall:.0f} s", flush=True)


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"  # one seed: no spread
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(out: Path, seeds: list[int], parts: list[str]) -> str:
    from scipy.stats import ttest_rel

    lines, total_wall = [], 0.0
    for part in parts:
        rows = GRID if part == "weighted" else {r: (1.0,) for r in NORMALIZED}
        lines += [f"\n### {part}: " + ("weight selected on validation average accuracy (mean over seeds)"
                                      if part == "weighted" else "gradient-normalised, grad_ratio 1, nothing tuned"),
                  "", "| regulariser | weight (val avg acc per weight tried) | val avg acc | test avg acc | "
                  "test forgetfulness | test Fréchet | n | failed/unfinished |", "|---|---|---|---|---|---|---|---|"]
        chosen_runs: dict[str, dict[int, dict]] = {}
        for row, weights in rows.items():
            per_weight, missing = {}, []
            for w in weights:
                runs = {}
                for s in seeds:
                    job_dir = folder(out, part, row, w, s)
                    r = finished(job_dir)
                    if r is None:
                        missing.append(f"w={w:g},seed={s}")
                        continue
                    runs[s] = r
                    total_wall += float((job_dir / "wall_s").read_text())
                per_weight[w] = runs
            # selection compares weights on the same seeds only (a cut-short sweep may have more seeds for some)
            common = set(seeds).intersection(*(set(runs) for runs in per_weight.values() if runs))
            scored = {w: statistics.mean(runs[s][SELECT] for s in sorted(common)) for w, runs in per_weight.items()
                      if runs and common}
            if not scored:
                lines.append(f"| {row} | — | — | — | — | — | 0 | {', '.join(missing)} |")
                continue
            best = max(scored, key=lambda w: (scored[w], -weights.index(w)))  # ties: the first in grid order
            runs = per_weight[best]
            chosen_runs[row] = runs
            tried = ", ".join(f"{w:g}: {v:.3f}" for w, v in scored.items())
            cells = [mean_std([r[f"final/score@measure={m}"] for r in runs.values()]) for m in MEASURES]
            lines.append(f"| {row} | **{best:g}** ({tried}) | {mean_std([r[SELECT] for r in runs.values()])} | "
                         f"{' | '.join(cells)} | {len(runs)} | {', '.join(missing) or '—'} |")
        for a, b in (("pixel", "feature"), ("pixel", "combined"), ("feature", "combined")):
            if a in chosen_runs and b in chosen_runs:
                common = sorted(set(chosen_runs[a]) & set(chosen_runs[b]))
                if len(common) >= 2:
                    x = [chosen_runs[a][s]["final/score@measure=avg_acc"] for s in common]
                    y = [chosen_runs[b][s]["final/score@measure=avg_acc"] for s in common]
                    res = ttest_rel(x, y)
                    p = "nan" if math.isnan(res.pvalue) else f"{res.pvalue:.3f}"
                    lines.append(f"\n{a} − {b}, test avg acc, paired over seeds {common}: mean difference "
                                 f"{statistics.mean(x) - statistics.mean(y):+.3f}, paired t-test p = {p}")
    lines.append(f"\nseeds {seeds}; total wall time of the runs read: {total_wall:.0f} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/focl_tuned"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--parts", default="weighted,normalized")
    ap.add_argument("--table-only", action="store_true", help="read the finished runs, train nothing")
    ap.add_argument("overrides", nargs="*", help="extra run.py overrides for every job")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    parts = args.parts.split(",")
    bad = [p for p in parts if p not in ("weighted", "normalized")]
    if bad:
        sys.exit(print(f"error: --parts={bad[0]} valid: weighted, normalized", file=sys.stderr) or 2)
    if not args.table_only:
        run_all(args.out, jobs(seeds, parts), args.overrides)
    text = table(args.out, seeds, parts)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
