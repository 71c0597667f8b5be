"""The study drivers' own logic, on fake run folders (nothing is trained):

- experiments/scripts/focl_tuned_table.py picks each row's weight on the VALIDATION mean over seeds and reports
  that weight's test values (a weight best on test only is not chosen), marks missing runs, pairs seeds;
- experiments/scripts/kngpt2_curve.py reads the curve and refuses a bad --steps in one line.
"""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from experiments.scripts import focl_tuned_table as F  # noqa: E402
from experiments.scripts import kngpt2_curve as K  # noqa: E402


def _fake(out, part, row, w, seed, val, test):
    d = F.folder(out, part, row, w, seed)
    d.mkdir(parents=True)
    (d / "wall_s").write_text("10\n")
    (d / "results.json").write_text(json.dumps({
        "tasks/done": 5, "tasks/total": 5, F.SELECT: val, "final/score@measure=avg_acc": test,
        "final/score@measure=forgetfulness": 0.1, "final/score@measure=frechet": 50.0}))


def test_the_weight_is_chosen_on_validation_and_reported_on_test(tmp_path):
    seeds = [0, 1, 2]
    for s in seeds:
        _fake(tmp_path, "weighted", "pixel", 0.01, s, val=0.5, test=0.99)  # best on test only
        _fake(tmp_path, "weighted", "pixel", 0.1, s, val=0.9, test=0.7 + 0.01 * s)  # best on validation
        _fake(tmp_path, "weighted", "pixel", 1.0, s, val=0.8, test=0.8)
        _fake(tmp_path, "weighted", "feature", 0.1, s, val=0.9, test=0.6 + 0.02 * s)
    text = F.table(tmp_path, seeds, ["weighted"])
    pixel = next(line for line in text.splitlines() if line.startswith("| pixel"))
    assert "**0.1**" in pixel and "0.710 ± 0.010" in pixel and "0.990" not in pixel.split("|")[4]
    feature = next(line for line in text.splitlines() if line.startswith("| feature"))
    assert "w=0.01,seed=0" in feature and "w=1,seed=2" in feature  # missing runs are listed, not dropped
    assert "| none | — |" in text  # a row with no finished run is shown empty
    assert "pixel − feature, test avg acc, paired over seeds [0, 1, 2]: mean difference +0.090" in text


def test_an_unfinished_run_is_not_read():
    assert F.finished(ROOT / "no" / "such") is None


def test_the_sweep_order_is_seed_by_seed():
    jobs = F.jobs([0, 1], ["weighted", "normalized"])
    assert [j[3] for j in jobs] == [0] * (len(jobs) // 2) + [1] * (len(jobs) // 2)
    assert len(jobs) == 2 * (1 + 3 * 3 + 3 + len(F.NORMALIZED))
    normalized = [j for j in jobs if j[0] == "normalized"]
    assert all("regularizer.normalize=grad" in j[4] for j in normalized)


def test_the_kngpt2_curve_reads_finished_points(tmp_path):
    for row, ppl in (("nearest", 900.0), ("dense-truncated", 300.0)):
        d = K.point_dir(tmp_path, row, 30)
        d.mkdir(parents=True)
        (d / "wall_s").write_text("100\n")
        (d / "results.json").write_text(json.dumps({"test/ppl": ppl, "val/ppl": ppl / 2}))
    text, curve = K.table(tmp_path, [30, 100], ["nearest", "dense-truncated"])
    assert curve == {"nearest": {30: 900.0}, "dense-truncated": {30: 300.0}}
    assert "| nearest | 900.0 (val 450.0) | not run | 100 |" in text


@pytest.mark.parametrize("steps", ["100,30", "0,10", "a"])
def test_a_bad_step_list_is_one_line(steps, tmp_path):
    proc = subprocess.run([sys.executable, "experiments/scripts/kngpt2_curve.py", "--out", str(tmp_path),
                           "--steps", steps], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: --steps={steps} valid: increasing positive integers, e.g. 30,100,300")
    assert not any(tmp_path.iterdir())
