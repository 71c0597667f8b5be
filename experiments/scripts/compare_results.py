"""Two folders of runs, results.json by results.json, key by key: are they the same results?

Every ``results.json`` under ``before`` is matched with the one at the same relative path under ``after``
(a run missing on either side is a difference). Keys that measure the machine rather than the method
(memory, latency, wall time: ``MACHINE``) are left out; every other key must be present on both sides with an
equal value (floats: equal within ``--rtol``, 0 = exactly). Prints one line per difference and a summary; exits 1
when anything differs. Used to show that a refactoring left every quick preset's results unchanged:

    bash experiments/scripts/report_all_quick.sh /work/results/quick_after
    python experiments/scripts/compare_results.py docs/quick_report /work/results/quick_after
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

# What the machine decides (its memory, its speed, the clock), not the method: never compared.
MACHINE = re.compile(r"(^|/)(latency|memory|time)(/|$)|latency_ms|memory_mb|_mib|seconds|wall")


def records(root: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))
            if ".report" not in p.parts}


def same(a, b, rtol: float) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return True
        return a == b if rtol == 0 else math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rtol) for k in a)
    return a == b


def differences(before: dict[str, dict], after: dict[str, dict], rtol: float) -> list[str]:
    out = [f"{run}: only in before" for run in before if run not in after]
    out += [f"{run}: only in after" for run in after if run not in before]
    for run in (r for r in before if r in after):
        a, b = before[run], after[run]
        for key in sorted(set(a) | set(b)):
            if MACHINE.search(key):
                continue
            if key not in b or key not in a:
                out.append(f"{run}: {key} only in {'before' if key in a else 'after'}")
            elif not same(a[key], b[key], rtol):
                out.append(f"{run}: {key}: {a[key]!r} -> {b[key]!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for floats (0: exactly equal)")
    args = ap.parse_args(argv)
    before, after = records(args.before), records(args.after)
    diffs = differences(before, after, args.rtol)
    print("\n".join(diffs))
    compared = sum(1 for r in before if r in after)
    keys = sum(1 for r in before if r in after for k in before[r] if not MACHINE.search(k))
    print(f"{compared} runs, {keys} keys compared (memory, latency and time left out): "
          f"{'no difference' if not diffs else f'{len(diffs)} differences'}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
