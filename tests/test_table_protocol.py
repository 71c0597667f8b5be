"""Table protocol on synthetic run folders: per-row tuning on validation, seeds and n, failed / diverged runs
marked, the caption states the protocol."""
import json
import math

import pytest
import yaml

from experiments.core.config import ConfigError
from experiments.results.tables import find_jobs, load_spec, write_table

SPEC = {"name": "reg", "metric": "final/score", "rows": ["regularizer"], "axis": "measure",
        "values": ["avg_acc"], "seeds": "seed",
        "tune": {"select": "final/val/score@measure=avg_acc", "mode": "max", "knobs": ["regularizer.weight"]}}


def _job(root, name, overrides, metrics, status=None):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "results.json").write_text(json.dumps(metrics))
    if status:
        (job / "job_status.json").write_text(json.dumps({"status": status, "error": "RuntimeError: boom"}))


def _scores(val, test):
    return {"final/val/score@measure=avg_acc": val, "final/score@measure=avg_acc": test}


@pytest.fixture
def sweep(tmp_path):
    # pixel: weight 1 is best on validation (0.6, 0.7 over two seeds), weight 10 best on test (0.9): 1 is shown.
    # feature: weight 0.1 wins on validation; its weight-1 seed 2 failed, its weight-10 seed 1 diverged.
    runs = {("pixel", "1"): [(0.6, 0.3), (0.7, 0.5)], ("pixel", "10"): [(0.5, 0.9), (0.5, 0.9)],
            ("feature", "0.1"): [(0.8, 0.4), (0.6, 0.2)], ("feature", "1"): [(0.9, 0.8), None],
            ("feature", "10"): [(math.nan, 0.1), (0.95, 0.95)]}
    for (reg, w), seeds in runs.items():
        for seed, pair in enumerate(seeds, 1):
            over = [f"regularizer={reg}", f"regularizer.weight={w}", f"seed={seed}"]
            if pair is None:
                _job(tmp_path, f"{reg}_{w}_{seed}", over, None, status="failed")
            else:
                _job(tmp_path, f"{reg}_{w}_{seed}", over, _scores(*pair), status="completed")
    return tmp_path


def test_each_row_is_rendered_at_its_validation_best_setting_with_failures_marked(sweep, tmp_path):
    spec = load_spec(SPEC)
    table = write_table(spec, find_jobs(sweep), tmp_path / "out")
    assert table["header"] == ["regularizer", "regularizer.weight (tuned)", "measure=avg_acc", "not finished"]
    rows = {r[0]: r for r in table["rows"]}
    # pixel at weight 1 (val mean 0.65 > 0.5), NOT weight 10 (test 0.9): test mean 0.4, std of (0.3, 0.5), n=2
    assert rows["pixel"][1] == "1" and rows["pixel"][2] == pytest.approx((0.4, math.sqrt(0.02), 2))
    assert rows["pixel"][3] == ""
    # feature: weight 1 has a failed seed and weight 10 a diverged one: neither competes; 0.1 (val 0.7) is chosen
    assert rows["feature"][1] == "0.1" and rows["feature"][2] == pytest.approx((0.3, math.sqrt(0.02), 2))
    assert rows["feature"][3] == "1 failed, 1 diverged"
    md = table["markdown"]
    assert "| pixel | 1 | 0.400 ± 0.141 (n=2) |  |" in md and "| feature | 0.1 | 0.300 ± 0.141 (n=2) | 1 failed, 1 diverged |" in md
    # the caption: selected on what, seeds and n, tuned knobs and the budget per row
    assert "mean over seeds of the validation key `final/val/score@measure=avg_acc` (max)" in md
    assert "budget per row: 2 settings, 4 runs; 3 settings, 6 runs" in md and "`regularizer.weight`" in md
    assert "differ only in `seed`: n = 2 per cell" in md and "(1 failed, 1 diverged)" in md
    assert "never averaged in" in md


def test_a_row_none_of_whose_runs_finished_is_shown_marked(tmp_path):
    _job(tmp_path, "a", ["regularizer=pixel", "regularizer.weight=1", "seed=1"], _scores(0.5, 0.5), "completed")
    _job(tmp_path, "b", ["regularizer=ewc", "regularizer.weight=1", "seed=1"], None, status="failed")
    _job(tmp_path, "c", ["regularizer=ewc", "regularizer.weight=1", "seed=2"], None, status="running")  # killed
    table = write_table(load_spec(SPEC), find_jobs(tmp_path), tmp_path / "out")
    ewc = next(r for r in table["rows"] if r[0] == "ewc")
    assert ewc == ["ewc", "–", None, "1 failed, 1 unfinished"]
    assert "| ewc | – | – | 1 failed, 1 unfinished |" in table["markdown"]


def test_a_cell_pooling_two_runs_of_one_seed_is_an_error(tmp_path):
    # without tune, two weights of one seed would be averaged as if they were seeds
    _job(tmp_path, "a", ["regularizer=pixel", "regularizer.weight=1", "seed=1"], _scores(0.5, 0.2))
    _job(tmp_path, "b", ["regularizer=pixel", "regularizer.weight=10", "seed=1"], _scores(0.4, 0.9))
    spec = load_spec({k: v for k, v in SPEC.items() if k != "tune"})
    with pytest.raises(ConfigError, match=r"the cell \(pixel, avg_acc\) pools 2 runs of seed=1; rows must separate"):
        write_table(spec, find_jobs(tmp_path), tmp_path / "out")


@pytest.mark.parametrize("tune, message", [
    ({"select": "final/score@measure=avg_acc", "knobs": ["w"]}, "table.tune.select=.*choose on a validation key"),
    ({"select": "val/acc", "knobs": []}, "table.tune.knobs=.*give the override keys"),
    ({"select": "val/acc", "knobs": ["w"], "mode": "best"}, "table.tune.mode='best' is not an option"),
    ({"select": "val/acc", "knobs": ["regularizer"]}, "a tuned knob cannot also form the rows"),
])
def test_bad_tune_specs_are_one_line(tune, message):
    with pytest.raises(ConfigError, match=message):
        load_spec({**SPEC, "tune": tune})
    with pytest.raises(ConfigError, match="a table reports test numbers"):
        load_spec({**SPEC, "metric": "final/val/score"})


def test_a_table_of_rehearsed_runs_says_so_in_its_caption_and_latex(tmp_path):
    """A rehearsal's numbers are never mistaken for results: task=report tables of rehearsed runs are marked."""
    spec = load_spec({"name": "r", "metric": "final/score", "rows": ["regularizer"], "axis": "measure",
                      "values": ["avg_acc"]})
    for i, rehearsal in enumerate(("tiny", None)):
        metrics = {"final/score@measure=avg_acc": 0.5, **({"rehearsal": rehearsal} if rehearsal else {})}
        _job(tmp_path / "runs", f"job{i}", [f"regularizer=pixel", f"seed={i}"], metrics)
    rehearsed = write_table(spec, find_jobs(tmp_path / "runs"), tmp_path / "out")
    assert "REHEARSAL (tiny): random shrunk models on generated data" in rehearsed["markdown"]
    assert (tmp_path / "out" / "r.tex").read_text().startswith("% REHEARSAL (tiny)")
    real = write_table(spec, find_jobs(tmp_path / "runs" / "job1"), tmp_path / "out_real")
    assert "REHEARSAL" not in real["markdown"] and "REHEARSAL" not in (tmp_path / "out_real" / "r.tex").read_text()
