"""Training loaders that continue mid-epoch, for exact resume after a kill.

``EpochShuffle`` orders the samples of epoch e as a pure function of (seed, e): exactly the order of
``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))`` (it replays that loader's draws:
per epoch one 64-bit base seed, its permutation, and, once the epoch is exhausted, the permutation that
``RandomSampler`` draws for its empty remainder), so switching to it changes no result.
``ResumableBatchSampler`` batches any index sampler with ``set_epoch`` (ours, or the ``DistributedSampler``
Lightning puts in its place under DDP) and starts where a run that took ``global_step`` optimizer steps
stopped: the epoch and the batches already consumed in it follow from the step count, the epoch length and
gradient accumulation alone (Lightning steps once more at the end of an epoch with a partial accumulation).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler


class EpochShuffle(Sampler[int]):
    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples, self.seed, self.shuffle, self.epoch = num_samples, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch):  # each finished epoch drew a base seed, its permutation, and one more
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            torch.randperm(self.num_samples, generator=generator)
            torch.randperm(self.num_samples, generator=generator)  # RandomSampler's (empty) remainder slice
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch))

    def __len__(self) -> int:
        return self.num_samples


class ResumableBatchSampler(BatchSampler):
    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False, global_step: int = 0,
                 accumulate: int = 1):
        super().__init__(sampler, batch_size, drop_last)
        self.global_step, self.accumulate = global_step, accumulate
        self.epoch: int | None = None  # known at the first iteration (the epoch length depends on the sampler)

    def start(self) -> tuple[int, int]:
        """(epoch, batches already consumed in it) after ``global_step`` optimizer steps."""
        steps_per_epoch = math.ceil(len(self) / self.accumulate)
        epoch, step_in_epoch = divmod(self.global_step, steps_per_epoch)
        return epoch, step_in_epoch * self.accumulate

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self.epoch is None:
            self.epoch, skip = self.start()
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


def resumable_loader(dataset: Sequence, batch_size: int, seed: int, trainer: Any = None, shuffle: bool = True,
                     drop_last: bool = False, step_offset: int = 0, **kwargs: Any) -> DataLoader:
    """A training DataLoader positioned at ``trainer.global_step`` (restored before loaders are built);
    ``step_offset``: optimizer steps taken before this loader's stream began (e.g. earlier tasks of a
    continual run, each with its own data), so the loader starts at step ``global_step - step_offset``."""
    step = max(int(trainer.global_step) - step_offset, 0) if trainer is not None else 0
    accumulate = int(trainer.accumulate_grad_batches) if trainer is not None else 1
    batches = ResumableBatchSampler(EpochShuffle(len(dataset), seed, shuffle), batch_size, drop_last, step, accumulate)
    # the loader's own generator (never the global one): its base-seed draw must not move the global RNG
    return DataLoader(dataset, batch_sampler=batches, generator=torch.Generator().manual_seed(seed), **kwargs)
