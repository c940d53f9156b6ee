"""The shared loader machinery: the (seed, epoch) order, loaders that leave the global random state alone,
the position a loader resumes from, and the random states a checkpoint carries."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from plkit.data import EpochSampler, MNISTDataModule, ResumableDataLoader, restore_rng_states, rng_states
from plkit.data.batches import pass_batch


class CountingRows(torch.utils.data.Dataset):
    """Rows 0..n-1, fetched a batch at a time; counts the batches actually read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reads = 0

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: Sequence[int]) -> list[int]:
        self.reads += 1
        return list(indices)


def loader(data: CountingRows, seed: int = 0) -> ResumableDataLoader:
    return ResumableDataLoader(data, batch_size=4, shuffle=True, seed=seed, collate_fn=pass_batch)


@pytest.mark.parametrize("seed", [0, 5])
def test_each_epoch_is_the_permutation_distributed_sampler_draws(seed: int) -> None:
    data = range(23)
    ours, lightnings = EpochSampler(data, seed=seed), DistributedSampler(data, num_replicas=1, rank=0, seed=seed)
    orders = []
    for epoch in range(3):
        ours.set_epoch(epoch)
        lightnings.set_epoch(epoch)
        assert list(ours) == list(lightnings)
        assert list(ours) == list(ours)  # a function of (seed, epoch): drawing it again changes nothing
        orders.append(list(ours))
    assert sorted(orders[0]) == list(range(23))
    assert orders[0] != orders[1] != orders[2]


def test_the_seed_is_seed_everythings(monkeypatch: pytest.MonkeyPatch, mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=mnist_dir, batch_size=32, val_size=64, download=False)
    dm.setup("fit")
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")  # what seed_everything(3) sets
    assert dm.train_dataloader().sampler.seed == 3
    monkeypatch.delenv("PL_GLOBAL_SEED")
    first = next(iter(dm.train_dataloader()))["id"]
    expected = dm.dataset("train").ids[torch.randperm(256, generator=torch.Generator().manual_seed(0))[:32]]
    assert torch.equal(first, expected)


def test_loaders_leave_the_global_random_state_alone(mnist_dir: Path) -> None:
    dm = MNISTDataModule(data_dir=mnist_dir, batch_size=32, val_size=64, download=False)
    dm.setup("fit")
    before = torch.get_rng_state()
    for make in (dm.train_dataloader, dm.val_dataloader):
        for _ in range(2):  # every new iterator draws a base seed: from the loader's own generator
            assert len(list(make())) > 0
    assert torch.equal(torch.get_rng_state(), before)


def test_a_loader_resumes_after_the_batches_it_served_without_reading_them() -> None:
    data = CountingRows(22)
    full = loader(data)
    full.sampler.set_epoch(2)
    epoch = list(full)
    assert len(epoch) == 6
    first = loader(data)
    first.sampler.set_epoch(2)
    iterator = iter(first)
    served = [next(iterator), next(iterator)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 2}

    resumed = loader(data)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    data.reads = 0
    rest = list(resumed)
    assert served + rest == epoch
    assert data.reads == 4  # the two batches already trained on were skipped by index, not read
    assert resumed.state_dict() == {"epoch": 2, "batches": 6}
    # The position applies to the iteration it was saved in only; the next epoch is whole.
    resumed.sampler.set_epoch(3)
    assert len(list(resumed)) == 6


def test_a_position_saved_in_another_epoch_is_ignored() -> None:
    data = CountingRows(22)
    resumed = loader(data)
    resumed.load_state_dict({"epoch": 1, "batches": 6})  # the end of epoch 1: the run goes on with epoch 2
    resumed.sampler.set_epoch(2)
    fresh = loader(data)
    fresh.sampler.set_epoch(2)
    assert list(resumed) == list(fresh)


def test_the_iterator_takes_the_epoch_set_after_it_was_created() -> None:
    # Lightning creates the training iterator, then sets the epoch on the sampler, then fetches.
    data = CountingRows(12)
    plain = loader(data)
    iterator = iter(plain)
    plain.sampler.set_epoch(4)
    expected = torch.randperm(12, generator=torch.Generator().manual_seed(4))[:4].tolist()
    assert next(iterator) == expected


def test_random_states_round_trip_through_a_weights_only_checkpoint() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    buffer = io.BytesIO()
    torch.save({"rng_states": rng_states()}, buffer)
    expected = (torch.rand(3), np.random.normal(size=3), random.random())
    buffer.seek(0)
    restore_rng_states(torch.load(buffer, weights_only=True)["rng_states"])
    again = (torch.rand(3), np.random.normal(size=3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]
