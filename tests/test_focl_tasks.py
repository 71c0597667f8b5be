"""FoCL task stream: splits, validation messages (one line each, naming the key and the bad value)."""
import pytest
import torch

from modules.continual.tasks import TaskBatches, TaskSplitError, TaskStream, check_num_classes, even_split


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_split_and_old_classes():
    stream = TaskStream.from_config(None, 6, classes_per_task=2)
    assert stream.tasks == ((0, 1), (2, 3), (4, 5))
    assert stream.old_classes(0) == () and stream.old_classes(2) == (0, 1, 2, 3)
    assert stream.seen_classes(1) == (0, 1, 2, 3)
    assert even_split(3, 1) == [[0], [1], [2]]


def test_split_that_repeats_a_class():
    with pytest.raises(TaskSplitError) as err:
        TaskStream.from_config([[0, 1], [1, 2]], 3)
    assert "data.split repeats class 1" in one_line(err)


def test_split_that_misses_a_class():
    with pytest.raises(TaskSplitError) as err:
        TaskStream.from_config([[0, 1], [3]], 4)
    assert "data.split misses class(es) [2]" in one_line(err)


def test_split_with_a_class_out_of_range_or_empty_task():
    with pytest.raises(TaskSplitError) as err:
        TaskStream.from_config([[0, 1], [2, 10]], 10)
    assert "class 10" in one_line(err)
    with pytest.raises(TaskSplitError) as err:
        TaskStream.from_config([[0, 1], []], 2)
    assert "data.split[1]" in one_line(err)


def test_class_count_that_does_not_match_the_data():
    labels = torch.arange(10).repeat(3)
    check_num_classes(labels, 10)
    with pytest.raises(TaskSplitError) as err:
        TaskStream.from_config(None, 12, classes_per_task=2, labels=labels)
    assert "data.num_classes=12 does not match the data" in one_line(err) and "(10 classes)" in str(err.value)


def test_task_batches_are_seeded_resumable_and_of_the_task_only():
    x, y = torch.randn(100, 1, 2, 2), torch.arange(10).repeat(10)
    a = TaskBatches(x, y, [3, 7], batch_size=4, seed=5)
    seq = [next(a) for _ in range(8)]  # 20 samples -> 5 batches per epoch: crosses an epoch
    assert all(set(yb.tolist()) <= {3, 7} for _, yb in seq)
    b = TaskBatches(x, y, [3, 7], batch_size=4, seed=5)
    [next(b) for _ in range(3)]
    c = TaskBatches(x, y, [3, 7], batch_size=4, seed=5)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(next(c)[0], xb) for xb, _ in seq[3:])
