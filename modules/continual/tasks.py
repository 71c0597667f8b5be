"""The task stream: the label set cut into a sequence of tasks, e.g. [[0, 1], [2, 3], ...].

Errors a user can make here (a class twice, a class missing, a class count that does not match the
labels of the data) raise ``TaskSplitError`` with one line naming the config key and the bad value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


class TaskSplitError(ValueError):
    """A task split or class count that cannot be right."""


def even_split(num_classes: int, per_task: int) -> list[list[int]]:
    """[[0..per_task-1], [per_task..], ...]: the usual 10 x 1 or 5 x 2 split."""
    if per_task < 1 or num_classes % per_task:
        raise TaskSplitError(f"classes_per_task={per_task} does not divide num_classes={num_classes}")
    return [list(range(i, i + per_task)) for i in range(0, num_classes, per_task)]


def validate_split(split: Sequence[Sequence[int]], num_classes: int, key: str = "data.split") -> list[tuple[int, ...]]:
    """Each class 0..num_classes-1 exactly once over all tasks, no empty task. Returns tuples."""
    if isinstance(split, (str, bytes)) or not len(split):
        raise TaskSplitError(f"{key}={split!r} must be a non-empty list of lists of class ids, e.g. [[0, 1], [2, 3]]")
    tasks, seen = [], {}
    for t, task in enumerate(split):
        if isinstance(task, (int, str)) or not len(task):
            raise TaskSplitError(f"{key}[{t}]={task!r} must be a non-empty list of class ids")
        for c in task:
            if isinstance(c, bool) or int(c) != c:
                raise TaskSplitError(f"{key}[{t}] holds {c!r}, not an integer class id")
            c = int(c)
            if not 0 <= c < num_classes:
                raise TaskSplitError(f"{key}[{t}] holds class {c}, outside 0..{num_classes - 1} (num_classes={num_classes})")
            if c in seen:
                raise TaskSplitError(f"{key} repeats class {c} (in tasks {seen[c]} and {t})")
            seen[c] = t
        tasks.append(tuple(int(c) for c in task))
    missing = sorted(set(range(num_classes)) - set(seen))
    if missing:
        raise TaskSplitError(f"{key} misses class(es) {missing} of 0..{num_classes - 1}")
    return tasks


def check_num_classes(labels: torch.Tensor, num_classes: int, key: str = "data.num_classes") -> None:
    """The labels of the data must be exactly 0..num_classes-1 (every class present)."""
    present = sorted(int(c) for c in torch.as_tensor(labels).unique())
    if present != list(range(num_classes)):
        raise TaskSplitError(f"{key}={num_classes} does not match the data: its labels are {present[:12]}"
                             f"{'...' if len(present) > 12 else ''} ({len(present)} classes)")


@dataclass(frozen=True)
class TaskStream:
    """The ordered tasks; ``old_classes(t)`` are the classes of tasks < t (what replay may use)."""

    tasks: tuple[tuple[int, ...], ...]
    num_classes: int

    @classmethod
    def from_config(cls, split: Sequence[Sequence[int]] | None, num_classes: int, classes_per_task: int | None = None,
                    labels: torch.Tensor | None = None, key: str = "data.split") -> "TaskStream":
        """``split`` as given, or ``even_split(num_classes, classes_per_task)`` when it is None; with
        ``labels`` also checks that ``num_classes`` matches the data."""
        if labels is not None:
            check_num_classes(labels, num_classes)
        if split is None:
            if classes_per_task is None:
                raise TaskSplitError(f"{key} is not set: give a split or classes_per_task")
            split = even_split(num_classes, classes_per_task)
        return cls(tuple(validate_split(split, num_classes, key)), num_classes)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, t: int) -> tuple[int, ...]:
        return self.tasks[t]

    def old_classes(self, t: int) -> tuple[int, ...]:
        return tuple(c for task in self.tasks[:t] for c in task)

    def seen_classes(self, t: int) -> tuple[int, ...]:
        """Classes of tasks 0..t (what the generator must produce after task t)."""
        return self.old_classes(t + 1)


def class_indices(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Indices (N_sel,) of the samples whose label is in ``classes``."""
    return torch.isin(labels, torch.as_tensor(list(classes), dtype=labels.dtype)).nonzero().squeeze(1)


class TaskBatches:
    """Endless, seeded, resumable mini-batches of one task's classes from in-memory tensors.

    Epoch e uses the permutation drawn from seed ``seed + e``; ``state_dict`` is the number of batches
    served, so a resumed run continues with exactly the same batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], batch_size: int,
                 seed: int = 0):
        idx = class_indices(labels, classes)
        if not len(idx):
            raise TaskSplitError(f"no sample of classes {list(classes)} in the data")
        self.images, self.labels = images[idx], labels[idx]  # (N, C, H, W), (N,)
        self.batch_size = min(batch_size, len(idx))
        self.seed, self.served = seed, 0
        self.per_epoch = len(idx) // self.batch_size  # drop the ragged last batch
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) cache

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(self.served, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = (epoch, torch.randperm(len(self.labels), generator=gen))
        sel = self._perm[1][i * self.batch_size:(i + 1) * self.batch_size]
        self.served += 1
        return self.images[sel], self.labels[sel]

    def state_dict(self) -> dict:
        return {"served": self.served}

    def load_state_dict(self, state: dict) -> None:
        self.served = int(state["served"])
