"""experiments/scripts/compare_results.py: the before/after check of a refactoring's results."""
import json

from experiments.scripts.compare_results import differences, main, records


def write(root, run, values):
    (root / run).mkdir(parents=True)
    (root / run / "results.json").write_text(json.dumps(values))


def test_equal_runs_pass_and_machine_keys_are_left_out(tmp_path, capsys):
    values = {"test/em@rank=1": 0.25, "best/submodel": "rank=1", "params/total": 10}
    write(tmp_path / "a", "qdylora_quick", {**values, "latency_ms@rank=1": 3.0, "memory/train_peak_mib": 100.0})
    write(tmp_path / "b", "qdylora_quick", {**values, "latency_ms@rank=1": 9.0, "memory/train_peak_mib": 150.0})
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "1 runs, 3 keys compared" in capsys.readouterr().out


def test_a_changed_missing_or_extra_value_is_a_difference(tmp_path):
    write(tmp_path / "a", "run", {"test/em": 0.25, "val/em": 0.5, "gone": 1})
    write(tmp_path / "a", "lost", {"test/em": 0.1})
    write(tmp_path / "b", "run", {"test/em": 0.25000001, "val/em": 0.5, "new": 2})
    diffs = differences(records(tmp_path / "a"), records(tmp_path / "b"), rtol=0.0)
    assert diffs == ["lost: only in before", "run: gone only in before", "run: new only in after",
                     "run: test/em: 0.25 -> 0.25000001"]
    assert differences(records(tmp_path / "a"), records(tmp_path / "b"), rtol=1e-6)[-1] == "run: new only in after"
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
