"""KnGPT2: test perplexity vs pre-training steps for three students of the offline SmolLM2 setup (kngpt2/quick).

Rows (the same overrides as experiments/scripts/kngpt2_quick_table.sh):
  nearest+ILKD     the preset: nearest-Kronecker init, ILKD from the dense model
  nearest          nearest-Kronecker init, task loss only (distill=none)
  dense-truncated  the dense model cut to the block count of equal size (compression=truncate), ILKD

Each row is a chain of runs (run point by point: every row at the first count, then the next), one per point of ``--steps`` (cumulative, e.g. 30,100,300): the first trains
``steps[0]`` steps from the compressed start, each next one ``steps[i] - steps[i-1]`` more from the previous
run's weights (``init_from``: the spine's stages), and every run ends with the preset's test evaluation, so the
curve costs one evaluation per point, not one run from scratch per point. The optimizer's moments and the
warm-up (10 % of each segment) restart at every point; the learning rate is otherwise constant (constant_warmup).

    python experiments/scripts/kngpt2_curve.py --out /work/results/kngpt2_curve --steps 30,100,300
    python experiments/scripts/kngpt2_curve.py --out /work/results/kngpt2_curve --table-only

Writes ``<out>/<row>/s<steps>/`` (a run folder with ``wall_s``), ``<out>/curve.md`` and ``<out>/curve.png``.
A point whose run finished is not rerun (rerun after a kill to continue); one at a time, threads=1.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = {"nearest+ILKD": [], "nearest": ["distill=none"], "dense-truncated": ["compression=truncate"]}


def point_dir(out: Path, row: str, steps: int) -> Path:
    return out / row / f"s{steps}"


def finished(run_dir: Path) -> dict | None:
    path = run_dir / "results.json"
    if not (path.is_file() and (run_dir / "wall_s").is_file()):
        return None
    r = json.loads(path.read_text())
    return r if "test/ppl" in r else None


def run_all(out: Path, steps: list[int], rows: list[str], extra: list[str], keep: bool = False) -> None:
    """Point by point (every row at steps[0], then every row at steps[1], ...): a cut-short curve is even."""
    broken: set[str] = set()
    for i, n in enumerate(steps):
        previous = steps[i - 1] if i else 0
        for row in rows:
            run_dir = point_dir(out, row, n)
            if row in broken or finished(run_dir):
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "run.py", "experiment=kngpt2/quick", "threads=1", "logger=none",
                   f"trainer.max_steps={n - previous}", *ROWS[row], *extra, f"hydra.run.dir={run_dir}"]
            if previous:
                cmd.append(f"init_from={point_dir(out, row, previous)}")
            start = time.time()
            with open(run_dir / "run.log", "w") as log:
                rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            wall = time.time() - start
            print(f"{row} -> {n} steps (+{n - previous}): rc={rc}, {wall:.0f} s", flush=True)
            if rc != 0:
                broken.add(row)  # the rest of this row's chain needs this point
                continue
            (run_dir / "wall_s").write_text(f"{wall:.1f}\n")
            if previous and not keep:  # ~1.1 GB each; the chain needs only the newest
                shutil.rmtree(point_dir(out, row, previous) / "checkpoints", ignore_errors=True)


def table(out: Path, steps: list[int], rows: list[str]) -> tuple[str, dict]:
    curve: dict[str, dict[int, float]] = {}
    lines = ["| row | " + " | ".join(f"{n} steps" for n in steps) + " | wall s (all points) |",
             "|---|" + "---|" * (len(steps) + 1)]
    total = 0.0
    for row in rows:
        cells, wall = [], 0.0
        for n in steps:
            r = finished(point_dir(out, row, n))
            if r is None:
                cells.append("not run")
                continue
            curve.setdefault(row, {})[n] = r["test/ppl"]
            wall += float((point_dir(out, row, n) / "wall_s").read_text())
            cells.append(f"{r['test/ppl']:.1f} (val {r['val/ppl']:.1f})")
        total += wall
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {wall:.0f} |")
    lines.append(f"\ntest perplexity (validation in brackets), strided protocol of the preset; total wall time {total:.0f} s")
    return "\n".join(lines), curve


def plot(curve: dict, path: Path) -> None:
    from experiments.results.files import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for row, points in curve.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=row)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("pre-training steps (4 x 64 tokens each)")
    ax.set_ylabel("test perplexity")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/kngpt2_curve"))
    ap.add_argument("--steps", default="30,100,300", help="cumulative step counts, increasing")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep every point's last.ckpt (default: the newest)")
    ap.add_argument("--table-only", action="store_true", help="read the finished points, train nothing")
    ap.add_argument("overrides", nargs="*", help="extra run.py overrides for every run")
    args = ap.parse_args()
    try:
        steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        steps = []
    if not steps or steps[0] < 1 or any(b <= a for a, b in zip(steps, steps[1:])):
        sys.exit(print(f"error: --steps={args.steps} valid: increasing positive integers, e.g. 30,100,300",
                       file=sys.stderr) or 2)
    rows = args.rows.split(",")
    bad = [r for r in rows if r not in ROWS]
    if bad:
        sys.exit(print(f"error: --rows={bad[0]} valid: {', '.join(ROWS)}", file=sys.stderr) or 2)
    if not args.table_only:
        run_all(args.out, steps, rows, args.overrides, args.keep_checkpoints)
    text, curve = table(args.out, steps, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.md").write_text(text + "\n")
    if curve:
        plot(curve, args.out / "curve.png")
    print(text)


if __name__ == "__main__":
    main()
