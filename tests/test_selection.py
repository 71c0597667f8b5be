"""Choose on validation, report on test: files.summarize and the printed best line."""
import pytest

from experiments.results.files import best_line, objective_key, summarize


def _grid(val, test, name="em", cond=""):
    out = {}
    for rank, v in val.items():
        out[f"val/{name}@rank={rank}{cond}"] = v
    for rank, t in test.items():
        out[f"test/{name}@rank={rank}{cond}"] = t
    return out


def test_the_submodel_best_on_test_but_not_on_validation_is_not_reported():
    # rank 8 is best on test (0.9) but rank 2 is best on validation: rank 2 and ITS test score are reported
    metrics = _grid({1: 0.1, 2: 0.5, 4: 0.3, 8: 0.4}, {1: 0.2, 2: 0.3, 4: 0.6, 8: 0.9})
    s = summarize(metrics, "test/em", higher_is_better=True)
    assert s["best/submodel"] == "rank=2" and s["best/val/em"] == 0.5 and s["best/test/em"] == 0.3
    assert "best/em" not in s and objective_key("test/em") == "best/val/em"
    # the area under the TEST curve over rank (trapezoid, divided by the rank span): unchanged meaning, no choice
    assert s["auc/test/em"] == pytest.approx((1 * (0.2 + 0.3) / 2 + 2 * (0.3 + 0.6) / 2 + 4 * (0.6 + 0.9) / 2) / 7)
    assert best_line({**metrics, **s}, "test/em") == "best (on val/em): rank=2 val/em=0.5000 test/em=0.3000"


def test_lower_is_better_ties_take_the_first_in_grid_order_and_val_metric_names_the_same_choice():
    metrics = _grid({1: 0.7, 2: 0.4, 16: 0.4}, {1: 0.1, 2: 0.9, 16: 0.2}, name="loss")
    for metric in ("test/loss", "val/loss"):
        s = summarize(metrics, metric, higher_is_better=False)
        assert s["best/submodel"] == "rank=2" and s["best/test/loss"] == 0.9  # 2 before 16 (numeric order)


def test_conditions_choose_on_their_own_validation_cells_or_the_plain_ones():
    speech = {**_grid({1: 0.9, 2: 0.1}, {1: 0.1, 2: 0.9}, "acc", ",condition=clean"),
              **_grid({1: 0.2, 2: 0.8}, {1: 0.7, 2: 0.3}, "acc", ",condition=snr0")}
    s = summarize(speech, "test/acc")
    assert (s["best/submodel@condition=clean"], s["best/test/acc@condition=clean"]) == ("rank=1", 0.1)
    assert (s["best/submodel@condition=snr0"], s["best/test/acc@condition=snr0"]) == ("rank=2", 0.3)
    assert best_line({**speech, **s}, "test/acc", "@condition=snr0") == \
        "best (on val/acc): rank=2 condition=snr0 val/acc=0.8000 test/acc=0.3000"
    # MNLI: one validation split (no condition), two test sets: both chosen on it
    mnli = {"val/acc@rank=1": 0.6, "val/acc@rank=2": 0.5, "test/acc@rank=1,testset=m": 0.1,
            "test/acc@rank=2,testset=m": 0.9, "test/acc@rank=1,testset=mm": 0.2, "test/acc@rank=2,testset=mm": 0.8}
    s = summarize(mnli, "test/acc")
    assert s["best/submodel@testset=m"] == s["best/submodel@testset=mm"] == "rank=1"
    assert (s["best/test/acc@testset=m"], s["best/test/acc@testset=mm"]) == (0.1, 0.2)


def test_no_validation_cells_no_best_and_the_line_says_so():
    metrics = {"test/em@rank=1": 0.5, "test/em@rank=2": 0.6, "val/loss@rank=1": 1.0}
    s = summarize(metrics, "test/em")
    assert not any(k.startswith("best/") for k in s) and "auc/test/em" in s
    assert best_line(metrics, "test/em").startswith("best: none chosen (no val/em")
    with pytest.raises(ValueError, match="eval.metric=em must name a split"):
        summarize(metrics, "em")


def test_a_plain_model_reports_its_validation_and_test_values():
    s = summarize({"val/ppl": 30.0, "test/ppl": 31.0}, "test/ppl", higher_is_better=False)
    assert s == {"best/submodel": "", "best/val/ppl": 30.0, "best/test/ppl": 31.0}
    assert best_line(s, "test/ppl") == "best (on val/ppl): full val/ppl=30.0000 test/ppl=31.0000"
