from collections import Counter

import pytest

from modules.submodel import (AllSampler, FixedSampler, NestedModel, SandwichSampler, SubModel, SubModelError,
                              SubModelSpace, UniformSampler, metric_key, parse_grid, split_metric_key)


def test_key_round_trip_and_order():
    sub = SubModel.of(width=96, depth=4)
    assert sub.key == "depth=4,width=96"
    assert SubModel.parse(sub.key) == sub
    assert sub["width"] == 96
    assert metric_key("val/acc", sub) == "val/acc@depth=4,width=96"
    assert split_metric_key("val/acc@depth=4,width=96") == ("val/acc", sub)
    assert split_metric_key("test/loss") == ("test/loss", SubModel(()))


def test_bad_key_is_a_clear_error():
    with pytest.raises(SubModelError, match="axis=int"):
        SubModel.parse("rank=four")


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
