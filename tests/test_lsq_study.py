"""The least-squares toy of nested-rank LoRA (experiments/scripts/qdylora_lsq_study.py), small and fast.

A 24x16 target (sigma_i = 1/i), r_max 4, 400 Adam steps (lr 2e-2, cosine to 0), seeds 0 and 1. Thresholds,
from 6 seeds of this exact setting (0..5): alpha/r_max + uniform reached at most 0.0011 excess at any rank
(limit 0.01), the separate LoRA per rank at most 1e-6 (limit 0.005), alpha/b's rank-1 excess was 0.022..0.048
(asserted: above alpha/r_max's by 0.01). docs/qdylora_lsq.md has the full-size study.
"""
import pytest
import torch

from experiments.scripts.qdylora_lsq_study import (eckart_young, main, make_target, nested_excess,
                                                   relative_error, separate_excess)

D_OUT, D_IN, R_MAX, ALPHA, STEPS, LR, RANKS, SEEDS = 24, 16, 4, 4.0, 400, 2e-2, (1, 2, 4), (0, 1)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_eckart_young_is_the_svd_tail_energy():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 9, generator=g, dtype=torch.float64)
    s = torch.linalg.svd(m).S
    for b in range(0, 10):
        assert eckart_young(m, b) == pytest.approx(float((s[b:] ** 2).sum() / (s ** 2).sum()), abs=1e-12)
        # the truncated SVD reaches it exactly (Eckart-Young)
        u, sv, vh = torch.linalg.svd(m, full_matrices=False)
        assert relative_error((u[:, :b] * sv[:b]) @ vh[:b], m) == pytest.approx(eckart_young(m, b), abs=1e-10)
    assert eckart_young(m, 0) == pytest.approx(1.0)
    low = torch.randn(12, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 9, generator=g, dtype=torch.float64)
    assert eckart_young(low, 3) == pytest.approx(0.0, abs=1e-12)
    assert eckart_young(low, 5) == pytest.approx(0.0, abs=1e-12)
    assert eckart_young(low, 2) > 1e-3


def test_target_has_the_requested_spectrum():
    m, sigma = make_target(D_OUT, D_IN, seed=3)
    assert m.shape == (D_OUT, D_IN)
    assert torch.allclose(torch.linalg.svdvals(m), sigma, atol=1e-10)
    assert torch.allclose(sigma, 1.0 / torch.arange(1, D_IN + 1, dtype=torch.float64))


@pytest.fixture(scope="module")
def runs():
    torch.set_num_threads(1)
    out = {}
    for seed in SEEDS:
        m, _ = make_target(D_OUT, D_IN, seed)
        out[seed] = {
            "r_max": nested_excess(m, R_MAX, ALPHA, "alpha/r_max", "uniform", False, STEPS, LR, seed, RANKS),
            "b": nested_excess(m, R_MAX, ALPHA, "alpha/b", "uniform", False, STEPS, LR, seed, RANKS),
            "separate": separate_excess(m, ALPHA, STEPS, LR, seed, RANKS),
        }
    return out


def test_constant_scale_reaches_nested_optimality_at_every_rank(runs):
    for seed, r in runs.items():
        for b in RANKS:
            assert -1e-6 < r["r_max"][b] < 0.01, (seed, b, r["r_max"])


def test_separate_lora_per_rank_reaches_eckart_young(runs):
    for seed, r in runs.items():
        for b in RANKS:
            assert -1e-6 < r["separate"][b] < 0.005, (seed, b, r["separate"])


def test_alpha_over_b_is_further_from_optimal_at_rank_1(runs):
    for seed, r in runs.items():
        assert r["b"][1] > r["r_max"][1] + 0.01, (seed, r["b"], r["r_max"])


def test_script_writes_table_and_csv(tmp_path):
    rows = main(["--steps", "5", "--seeds", "0", "--d-out", "8", "--d-in", "6", "--r-max", "2",
                 "--out", str(tmp_path)])
    assert len(rows) == 19  # 3 scales x 3 samplers x 2 frozen + the separate baseline
    text = (tmp_path / "lsq_study.md").read_text()
    assert "| alpha/b | sandwich | on |" in text and "separate LoRA per rank" in text
    assert "rank 4" not in text  # ranks above r_max are not evaluated
    csv_lines = (tmp_path / "lsq_study.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 20 and csv_lines[0].startswith("setting,scale,sampler,frozen,mean@1,std@1")
