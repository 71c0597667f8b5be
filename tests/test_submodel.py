from collections import Counter

import pytest

from modules.submodel import (AllSampler, FixedSampler, NestedModel, SandwichSampler, SubModel, SubModelError,
                              SubModelSpace, UniformSampler, axis_probs, metric_key, parse_grid, split_metric_key)


def test_key_round_trip_and_order():
    sub = SubModel.of(width=96, depth=4)
    assert sub.key == "depth=4,width=96"
    assert SubModel.parse(sub.key) == sub
    assert sub["width"] == 96
    assert metric_key("val/acc", sub) == "val/acc@depth=4,width=96"
    assert split_metric_key("val/acc@depth=4,width=96") == ("val/acc", sub)
    assert split_metric_key("test/loss") == ("test/loss", SubModel(()))


def test_bad_key_is_a_clear_error():
    with pytest.raises(SubModelError, match="axis=value"):
        SubModel.parse("rank")


def test_conditions_sit_beside_submodel_axes_with_string_values():
    cell = SubModel.parse("rank=4,testset=ood")
    assert cell.submodel == SubModel.of(rank=4) and cell.condition == SubModel.of(testset="ood")
    assert cell["rank"] == 4 and cell["testset"] == "ood"
    assert metric_key("test/acc", SubModel.of(rank=4), {"testset": "ood"}) == "test/acc@rank=4,testset=ood"
    assert split_metric_key("test/acc@rank=4,testset=ood") == ("test/acc", cell)
    assert metric_key("test/acc", SubModel(()), {"testset": "ood"}) == "test/acc@testset=ood"
    with pytest.raises(SubModelError, match="free of"):
        SubModel.of(testset="a,b")
    cells = [SubModel.parse(k) for k in ("rank=8", "rank=2,testset=ood", "rank=2")]
    assert [c.key for c in sorted(cells, key=lambda c: c.sort_key)] == ["rank=2", "rank=2,testset=ood", "rank=8"]


def test_space_grid_largest_smallest():
    space = SubModelSpace({"depth": [4, 2], "width": [32, 64, 96]})
    assert len(space) == 6 == len(space.grid())
    assert space.largest == SubModel.of(depth=4, width=96)
    assert space.smallest == SubModel.of(depth=2, width=32)
    assert SubModel.of(depth=3, width=32) not in space
    assert SubModelSpace({}).grid() == [SubModel(())]


def test_uniform_sampler_is_a_function_of_seed_and_step():
    space = SubModelSpace({"rank": range(1, 9)})
    a, b = UniformSampler(space, seed=3), UniformSampler(space, seed=3)
    assert [a.submodels(s) for s in range(20)] == [b.submodels(s) for s in range(20)]
    assert a.submodels(5) == a.submodels(5)  # every micro-batch of step 5 sees the same draw
    assert [a.submodels(s) for s in range(20)] != [UniformSampler(space, seed=4).submodels(s) for s in range(20)]


def test_uniform_sampler_distribution_is_uniform():
    space = SubModelSpace({"rank": range(1, 9)})
    counts = Counter(UniformSampler(space, seed=0).submodels(s)[0]["rank"] for s in range(4000))
    assert set(counts) == set(range(1, 9))
    assert all(abs(c / 4000 - 1 / 8) < 0.025 for c in counts.values())


def _chi_square(counts: Counter, probs: dict, n: int) -> float:
    """Pearson's statistic over the values with non-zero probability (zero-probability values must not occur)."""
    assert all(probs.get(v, 0) > 0 for v in counts), f"drew a value of probability 0: {counts}"
    return sum((counts.get(v, 0) - n * p) ** 2 / (n * p) for v, p in probs.items() if p > 0)


# 99.9% quantiles of chi-square (df = k - 1): a correct sampler fails one seed in a thousand; seeds are fixed.
CHI2_999 = {2: 13.82, 3: 16.27, 5: 20.52, 7: 24.32}


@pytest.mark.parametrize("distribution, weights, expected", [
    ("uniform", None, {v: 1 / 8 for v in range(1, 9)}),
    ("log_uniform", None, {v: (1 / v) / sum(1 / u for u in range(1, 9)) for v in range(1, 9)}),
    ("uniform", {"rank": [0, 1, 2, 3, 0, 0, 4, 0]}, {v: w / 10 for v, w in zip(range(1, 9), [0, 1, 2, 3, 0, 0, 4, 0])}),
])
def test_rank_distributions_match_their_frequencies(distribution, weights, expected):
    space = SubModelSpace({"rank": range(1, 9)})
    n = 8000
    sampler = UniformSampler(space, seed=0, distribution=distribution, weights=weights)
    counts = Counter(sampler.submodels(s)[0]["rank"] for s in range(n))
    df = sum(p > 0 for p in expected.values()) - 1
    assert _chi_square(counts, expected, n) < CHI2_999[df]
    if distribution == "log_uniform":  # weight 1/value: smaller ranks strictly more often
        assert counts[1] > counts[2] > counts[4] > counts[8]


def test_log_uniform_is_one_over_value_and_weights_override_per_axis():
    space = SubModelSpace({"depth": [1, 2, 4], "width": [8, 16, 32]})
    probs = axis_probs(space, "log_uniform", {"width": [1, 1, 2]})
    assert probs["depth"].tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert probs["width"].tolist() == pytest.approx([0.25, 0.25, 0.5])
    assert axis_probs(space) == {}  # uniform axes keep the plain integer draw
    # per axis and independent: weights on width only, depth stays uniform (sandwich's random draws too)
    n = 6000
    sampler = SandwichSampler(space, seed=1, num_random=1, weights={"width": [1, 1, 2]})
    draws = [sampler.submodels(s)[2] for s in range(n)]
    depth, width = Counter(d["depth"] for d in draws), Counter(d["width"] for d in draws)
    assert _chi_square(depth, {1: 1 / 3, 2: 1 / 3, 4: 1 / 3}, n) < CHI2_999[2]
    assert _chi_square(width, {8: 0.25, 16: 0.25, 32: 0.5}, n) < CHI2_999[2]


@pytest.mark.parametrize("distribution, weights", [("log_uniform", None), ("uniform", {"rank": [3, 1, 1, 0]})])
def test_weighted_draws_are_a_function_of_seed_and_step(distribution, weights):
    space = SubModelSpace({"rank": [1, 2, 4, 8]})
    a = UniformSampler(space, seed=7, num_per_step=2, distribution=distribution, weights=weights)
    b = UniformSampler(space, seed=7, num_per_step=2, distribution=distribution, weights=weights)
    assert [a.submodels(s) for s in range(50)] == [b.submodels(s) for s in range(50)]
    assert a.submodels(9) == a.submodels(9)
    other = UniformSampler(space, seed=8, num_per_step=2, distribution=distribution, weights=weights)
    assert [a.submodels(s) for s in range(50)] != [other.submodels(s) for s in range(50)]


def test_default_distribution_is_the_plain_uniform_draw():
    space = SubModelSpace({"rank": range(1, 65)})
    explicit = UniformSampler(space, seed=5, distribution="uniform", weights=None)
    assert [explicit.submodels(s) for s in range(30)] == [UniformSampler(space, seed=5).submodels(s) for s in range(30)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(distribution="normal"), "distribution='normal' is not an option; valid choices: uniform, log_uniform"),
    (dict(weights={"rank": [1, 2, 3]}), r"weights.rank has 3 weights but axis 'rank' has 4 values \[1, 2, 4, 8\]"),
    (dict(weights={"depth": [1]}), "weights.depth: no such axis; valid choices: rank"),
    (dict(weights={"rank": [1, -1, 1, 1]}), "weights.rank must be finite, >= 0 and not all zero"),
    (dict(weights={"rank": [0, 0, 0, 0]}), "weights.rank must be finite, >= 0 and not all zero"),
    (dict(weights={"rank": ["a", 1, 1, 1]}), "weights.rank must be numbers"),
    (dict(weights={"rank": "1,2,3,4"}), "weights.rank must be a list of 4 weights"),
    (dict(weights=[1, 2, 3, 4]), "weights must map an axis to its list of weights"),
])
def test_bad_distribution_or_weights_are_one_line_errors(kwargs, message):
    space = SubModelSpace({"rank": [1, 2, 4, 8]})
    for cls in (UniformSampler, SandwichSampler):
        with pytest.raises(SubModelError, match=message) as err:
            cls(space, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(SubModelError, match="needs positive values"):
        UniformSampler(SubModelSpace({"rank": [0, 1]}), distribution="log_uniform")


def test_sandwich_fixed_all():
    space = SubModelSpace({"rank": [1, 2, 4, 8]})
    for step in range(10):
        subs = SandwichSampler(space, num_random=2).submodels(step)
        assert subs[:2] == [space.largest, space.smallest] and len(subs) == 4
    assert FixedSampler(space).submodels(0) == [SubModel.of(rank=8)]
    assert FixedSampler(space, choice={"rank": 2}).submodels(7) == [SubModel.of(rank=2)]
    with pytest.raises(SubModelError, match="outside the space"):
        FixedSampler(space, choice={"rank": 3})
    assert AllSampler(space).submodels(0) == space.grid()


def test_nested_model_applies_every_axis():
    seen = {}
    nested = NestedModel({"depth": [1, 2], "rank": [1, 4]},
                         {"depth": lambda v: seen.__setitem__("depth", v), "rank": lambda v: seen.__setitem__("rank", v)})
    nested.apply(SubModel.of(depth=2, rank=4))
    assert seen == {"depth": 2, "rank": 4}
    with pytest.raises(SubModelError, match="no setter"):
        NestedModel({"heads": [1]}, {})


def test_parse_grid_forms():
    space = SubModelSpace({"rank": [1, 2, 4]})
    assert parse_grid(None, space) == space.grid()
    assert parse_grid({"rank": [1, 4]}, space) == [SubModel.of(rank=1), SubModel.of(rank=4)]
    assert parse_grid(["rank=2"], space) == [SubModel.of(rank=2)]
    with pytest.raises(SubModelError, match="empty"):
        parse_grid([], space)
