"""Resumable training loaders: the same order as a seeded shuffling DataLoader, and a mid-epoch start."""
import torch
from torch.utils.data import DataLoader

from data.resumable import EpochShuffle, ResumableBatchSampler, resumable_loader


def test_epoch_order_equals_a_seeded_shuffling_dataloader_over_several_epochs():
    data = list(range(23))
    reference = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7))
    ours = resumable_loader(data, 4, seed=7)
    for _ in range(4):  # full epochs, then a new iterator each: the generator state carries over
        assert [b.tolist() for b in reference] == [b.tolist() for b in ours]


def test_start_after_global_steps_skips_the_consumed_batches_with_accumulation():
    data = list(range(10))  # 3 batches of 4 per epoch; accumulate 2 -> 2 optimizer steps per epoch
    loader = resumable_loader(data, 4, seed=1)
    full = [b.tolist() for _ in range(3) for b in loader]
    sampler = ResumableBatchSampler(EpochShuffle(10, seed=1), 4, global_step=3, accumulate=2)
    assert sampler.start() == (1, 2)  # epoch 1, its first 2 batches done
    loader = DataLoader(data, batch_sampler=sampler)
    resumed = [b.tolist() for _ in range(2) for b in loader]
    assert resumed == full[5:]  # epoch 0 (3 batches) + 2 batches of epoch 1 were consumed


def test_the_global_rng_is_not_touched():
    state = torch.get_rng_state()
    for _ in resumable_loader(list(range(9)), 2, seed=3):
        pass
    assert torch.equal(state, torch.get_rng_state())
