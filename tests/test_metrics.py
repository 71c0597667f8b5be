import math

import pytest

from modules.metrics import (area_under_curve, best_submodel, build_mmlu_prompt, choice_loglik_accuracy,
                                 exact_match, extract_gsm8k_answer, first_answer_line, normalize_answer,
                                 perplexity)


def test_normalize_answer_squad_rules():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("  A cat and an Apple ") == "cat and apple"
    assert normalize_answer("Theater") == "theater"  # "the" only as a whole word


def test_exact_match_any_alias():
    assert exact_match("the Beatles.", ["Beatles", "Fab Four"]) == 1.0
    assert exact_match("Fab  four", ["Beatles", "Fab Four"]) == 1.0
    assert exact_match("Rolling Stones", ["Beatles"]) == 0.0
    assert exact_match("Paris", "paris") == 1.0
    with pytest.raises(ValueError, match="at least one"):
        exact_match("x", [])


@pytest.mark.parametrize("text, expected", [
    ("She pays 3*6=18 dollars.\n#### 18", "18"),
    ("Total is #### $1,234.00", "1234"),
    ("#### -7", "-7"),
    ("#### 2.50", "2.5"),
    ("So 5 apples plus 7 apples is 12 apples.", "12"),
    ("The answer is 18.0.", "18"),
    ("It costs $1,000,000 in total", "1000000"),
    ("no number here", ""),
    ("first 4, then 9, then ####", "9"),  # nothing after ####: last number
])
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_first_answer_line_cuts_at_first_stop():
    assert first_answer_line(" Paris\nQuestion: next") == "Paris"
    assert first_answer_line("Barack Obama</s>junk\nmore") == "Barack Obama"
    assert first_answer_line("\n42<|eot_id|>") == "42"
    assert first_answer_line("no stop at all ") == "no stop at all"


def test_choice_loglik_accuracy_sum_and_length_normalised():
    # q0: sums [-3, -4] -> choice 0; per token [-1.5, -1.0] -> choice 1.
    # q1: both variants pick choice 1.
    scores = [[[-1.0, -2.0], [-1.0, -1.0, -1.0, -1.0]], [[-5.0], [-0.5]]]
    out = choice_loglik_accuracy(scores, [1, 1])
    assert out == {"acc": 0.5, "acc_norm": 1.0}
    # summed floats with explicit (e.g. byte) lengths
    out = choice_loglik_accuracy([[-3.0, -4.0], [-1.0, -2.0]], [0, 1], lengths=[[1, 4], [1, 10]])
    assert out == {"acc": 0.5, "acc_norm": 0.5}
    # plain floats without lengths: acc_norm == acc
    assert choice_loglik_accuracy([[-1.0, -2.0, -0.5, -9.0]], [2]) == {"acc": 1.0, "acc_norm": 1.0}
    with pytest.raises(ValueError, match="labels"):
        choice_loglik_accuracy([[-1.0]], [0, 1])


def test_build_mmlu_prompt_standard_format():
    shots = [{"question": "1+1=?", "choices": ["1", "2", "3", "4"], "label": 1},
             {"question": "2*3=?", "choices": ["5", "6", "7", "8"], "answer": "B"}]
    prompt = build_mmlu_prompt("3-1=?", ["0", "1", "2", "3"], "elementary_mathematics", shots)
    assert prompt == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "2*3=?\nA. 5\nB. 6\nC. 7\nD. 8\nAnswer: B\n\n"
        "3-1=?\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer:")
    zero_shot = build_mmlu_prompt("Q?", ["w", "x", "y", "z"], "virology", [])
    assert zero_shot == ("The following are multiple choice questions (with answers) about virology.\n\n"
                         "Q?\nA. w\nB. x\nC. y\nD. z\nAnswer:")


def test_area_under_curve():
    assert area_under_curve([1, 2, 4], [0.7, 0.7, 0.7]) == pytest.approx(0.7)
    # trapezoids: (0+1)/2*1 + (1+1)/2*2 = 2.5 over range 3
    assert area_under_curve([4, 1, 2], [1.0, 0.0, 1.0], normalize=False) == pytest.approx(2.5)
    assert area_under_curve([1, 2, 4], [0.0, 1.0, 1.0]) == pytest.approx(2.5 / 3)
    assert area_under_curve([8], [0.42]) == 0.42
    with pytest.raises(ValueError):
        area_under_curve([1, 2], [0.5])
    with pytest.raises(ValueError, match="duplicate"):
        area_under_curve([1, 1], [0.5, 0.6])


def test_best_submodel():
    res = {"rank=1": 0.3, "rank=2": 0.6, "rank=4": 0.6, "rank=8": float("nan")}
    assert best_submodel(res, higher_is_better=True) == ("rank=2", 0.6)
    assert best_submodel({"rank=1": 3.2, "rank=2": 2.9}, higher_is_better=False) == ("rank=2", 2.9)
    with pytest.raises(ValueError):
        best_submodel({"rank=1": float("nan")}, True)


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.5)) == pytest.approx(7.5)
    assert perplexity(1e4) == math.inf
