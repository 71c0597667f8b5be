"""experiments/results/stats.py against scipy and a hand computation."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments.results.stats import by_seed, compare, paired_by_seed, sentence

A = [0.61, 0.58, 0.66, 0.70, 0.59, 0.64, 0.63]
B = [0.55, 0.57, 0.60, 0.61, 0.60, 0.58, 0.56]


def test_paired_t_and_wilcoxon_match_scipy_and_the_formula():
    r = compare(A, B)
    d = np.subtract(A, B)
    t_hand = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert r["n"] == 7 and r["mean_diff"] == pytest.approx(d.mean()) and r["t"] == pytest.approx(t_hand)
    assert r["t_p"] == pytest.approx(2 * sps.t.sf(abs(t_hand), df=6))
    assert r["t_p"] == pytest.approx(sps.ttest_rel(A, B).pvalue)
    # Wilcoxon by hand: |d| ranks, W = the smaller rank sum; exact p from the 2^7 sign patterns
    ranks = sps.rankdata(np.abs(d))
    w = min(ranks[d > 0].sum(), ranks[d < 0].sum())
    patterns = np.array(np.meshgrid(*[[0, 1]] * 7)).reshape(7, -1).T
    sums = patterns @ ranks
    p_hand = np.mean(np.minimum(sums, ranks.sum() - sums) <= w)
    assert r["wilcoxon"] == w and r["wilcoxon_p"] == pytest.approx(p_hand)


def test_bootstrap_interval_matches_a_hand_percentile_bootstrap():
    r = compare(A, B, resamples=20_000)
    d = np.subtract(A, B)
    rng = np.random.default_rng(1)
    means = d[rng.integers(0, len(d), size=(20_000, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    assert r["ci"][0] == pytest.approx(low, abs=3e-3) and r["ci"][1] == pytest.approx(high, abs=3e-3)
    assert r["ci"][0] < r["mean_diff"] < r["ci"][1] and r["ci"][0] > 0  # A beats B here
    assert compare(A, B)["ci"] == compare(A, B)["ci"]  # seeded: the same interval every time
    assert sentence("pixel", "feature", r) == (f"pixel - feature = +0.049 over n=7 seeds, 95% bootstrap CI "
                                               f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] (paired t p={r['t_p']:.3g}, "
                                               f"Wilcoxon p={r['wilcoxon_p']:.3g}): A > B")


def test_few_seeds_skip_wilcoxon_and_bad_input_is_refused():
    r = compare([0.5, 0.6, 0.7], [0.5, 0.5, 0.8])
    assert r["wilcoxon_p"] is None and r["t_p"] == pytest.approx(sps.ttest_rel([0.5, 0.6, 0.7], [0.5, 0.5, 0.8]).pvalue)
    assert "no difference shown" in sentence("a", "b", r)
    same = compare([1.0, 2.0], [0.5, 1.5])  # every difference 0.5: the interval is the point, t undefined
    assert same["ci"] == (0.5, 0.5) and math.isnan(same["t_p"])
    with pytest.raises(ValueError, match="equal length >= 2"):
        compare([1.0], [2.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        compare([1.0, math.nan], [2.0, 1.0])


def test_rows_pair_by_their_common_seeds_in_seed_order():
    a, b, seeds = paired_by_seed({"10": 0.1, "2": 0.2, "3": 0.3}, {"3": 0.9, "2": 0.8, "7": 0.0, "10": 0.5})
    assert seeds == ["2", "3", "10"] and a == [0.2, 0.3, 0.1] and b == [0.8, 0.9, 0.5]


def test_runs_read_by_seed_from_their_overrides():
    jobs = [{"overrides": {"regularizer": r, "seed": str(s)}, "metrics": {"final/score@measure=avg_acc": v}}
            for r, s, v in (("pixel", 1, 0.5), ("pixel", 2, 0.7), ("feature", 1, 0.4), ("pixel", 3, math.nan))]
    assert by_seed(jobs, "final/score@measure=avg_acc", {"regularizer": "pixel"}) == {"1": 0.5, "2": 0.7}
    with pytest.raises(ValueError, match="two runs of seed=1 match"):
        by_seed(jobs, "final/score@measure=avg_acc", {})
