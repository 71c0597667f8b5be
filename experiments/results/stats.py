"""Does row A beat row B? A paired comparison over seeds, for any sentence a table's conclusion makes.

``compare(a, b)`` takes two rows' numbers paired by seed (run i of A and run i of B share seed i) and returns
the mean difference a - b, the paired t-test (``scipy.stats.ttest_rel``), the Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``, exact, when there are at least 6 pairs: with fewer its smallest two-sided p-value
is above 0.05 and the test cannot reject) and a percentile bootstrap confidence interval of the mean
difference (``scipy.stats.bootstrap``, resampling the pairs, seeded). ``by_seed`` reads one row's runs
(``tables.find_jobs``) as {seed: value}, ``paired_by_seed`` pairs two rows by their common seeds.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

WILCOXON_MIN_PAIRS = 6  # n=5: the smallest exact two-sided p-value is 2/32 = 0.0625


def compare(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
            seed: int = 0) -> dict[str, Any]:
    """Paired comparison of ``a`` and ``b`` (equal length >= 2, finite values)."""
    import numpy as np
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"compare needs two paired samples of equal length >= 2; got {len(x)} and {len(y)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("compare: a value is NaN or infinite (a diverged run has no number to compare)")
    diff = x - y
    out: dict[str, Any] = {"n": len(diff), "mean_diff": float(diff.mean()),
                           "std_diff": float(diff.std(ddof=1)), "confidence": confidence}
    if np.all(diff == diff[0]):  # no spread: t is undefined (scipy may return a rounding artefact)
        out["t"] = out["t_p"] = math.nan
    else:
        t = stats.ttest_rel(x, y)
        out["t"], out["t_p"] = float(t.statistic), float(t.pvalue)
    if len(diff) >= WILCOXON_MIN_PAIRS and np.any(diff != 0):
        w = stats.wilcoxon(x, y)
        out["wilcoxon"], out["wilcoxon_p"] = float(w.statistic), float(w.pvalue)
    else:
        out["wilcoxon"] = out["wilcoxon_p"] = None
    if np.all(diff == diff[0]):  # no spread to resample: the interval is the point
        out["ci"] = (float(diff[0]), float(diff[0]))
    else:
        boot = stats.bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=resamples,
                               method="percentile", rng=np.random.default_rng(seed))
        out["ci"] = (float(boot.confidence_interval.low), float(boot.confidence_interval.high))
    return out


def paired_by_seed(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[float], list[float], list[str]]:
    """Two rows' {seed: value} -> the values of the seeds both have, in seed order, and those seeds."""
    seeds = sorted(set(a) & set(b), key=_seed_order)
    return [a[s] for s in seeds], [b[s] for s in seeds], list(seeds)


def by_seed(jobs: Sequence[Mapping[str, Any]], key: str, where: Mapping[str, str], seeds: str = "seed") -> dict[str, float]:
    """{seed: value of ``key``} of the runs (``tables.find_jobs``) whose overrides match ``where``
    (e.g. {"regularizer": "pixel", "regularizer.weight": "1"}); runs without a finite value are left out."""
    out = {}
    for job in jobs:
        value = job["metrics"].get(key)
        if all(str(job["overrides"].get(k)) == str(v) for k, v in where.items()) and \
                isinstance(value, (int, float)) and math.isfinite(value):
            seed = str(job["overrides"].get(seeds, ""))
            if seed in out:
                raise ValueError(f"by_seed: two runs of {seeds}={seed} match {dict(where)}; add the key that "
                                 "separates them")
            out[seed] = float(value)
    return out


def _seed_order(seed: Any) -> tuple:
    try:
        return (0, int(seed), "")
    except ValueError:
        return (1, 0, str(seed))


def sentence(name_a: str, name_b: str, result: Mapping[str, Any], digits: int = 3) -> str:
    """One line a conclusion can quote: the difference, its interval and the tests' p-values."""
    low, high = result["ci"]
    tests = f"paired t p={result['t_p']:.3g}" if not math.isnan(result["t_p"]) else "paired t undefined (equal differences)"
    if result["wilcoxon_p"] is not None:
        tests += f", Wilcoxon p={result['wilcoxon_p']:.3g}"
    verdict = "A > B" if low > 0 else "A < B" if high < 0 else "no difference shown"
    return (f"{name_a} - {name_b} = {result['mean_diff']:+.{digits}f} over n={result['n']} seeds, "
            f"{result['confidence']:.0%} bootstrap CI [{low:+.{digits}f}, {high:+.{digits}f}] ({tests}): {verdict}")
