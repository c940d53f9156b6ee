"""What every plkit data module shares: the batch keys, the two errors, and DataLoaders that resume exactly.

A plkit dataset hands the ``DataLoader`` a whole batch per ``__getitems__`` call (one gather from a tensor or a
memory map, not one Python call per sample), and :func:`pass_batch` passes it on unchanged. The loaders are
built once, in :class:`BatchDataModule`, with the checks of their arguments.

Exact resume rests on three things, all here:

- the training order of epoch ``e`` is ``torch.randperm(n)`` drawn from a generator seeded ``seed + e``
  (:class:`EpochSampler`): what Lightning's own ``DistributedSampler`` draws, so one process and DDP see the same
  permutation (under DDP Lightning swaps the sampler for its ``DistributedSampler``, which shards it);
- every loader draws its workers' base seed from its own ``torch.Generator``, so starting an epoch never
  consumes the global random state that augmentation and dropout use;
- a checkpoint holds the global random states (:meth:`BatchDataModule.state_dict`) and the number of batches
  the training loader has served in its epoch (:meth:`ResumableDataLoader.state_dict`, which Lightning saves
  and restores for a loader that has one), so a run resumed mid-epoch serves the rest of the same order.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sized
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from typing_extensions import override

__all__ = [
    "ID",
    "INPUT",
    "TARGET",
    "BatchDataModule",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "EpochSampler",
    "ResumableDataLoader",
    "pass_batch",
    "restore_rng_states",
    "rng_states",
]

INPUT = "input"
TARGET = "target"
ID = "id"


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk (and could not be downloaded).

    The message names the folder that was searched and says how to stage the files there.
    """


class DatasetFormatError(ValueError):
    """A dataset file is there but is not what it should be: truncated, a wrong magic number, mismatched counts.

    The message names the file and says how to replace it.
    """


def pass_batch(batch: Any) -> Any:
    """The ``collate_fn`` for datasets whose ``__getitems__`` already returns a whole batch."""
    return batch


def global_seed() -> int:
    """The seed ``seed_everything`` set (``PL_GLOBAL_SEED``, what Lightning's ``DistributedSampler`` uses), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochSampler(RandomSampler):
    """A shuffle that is a pure function of ``(seed, epoch)``: ``torch.randperm(n)`` seeded with ``seed + epoch``.

    Lightning calls :meth:`set_epoch` at the start of every training epoch. The permutation is the one
    ``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)`` draws; being a ``RandomSampler``, it is
    what Lightning replaces by that ``DistributedSampler`` under a distributed strategy, so every rank shards
    this same permutation.

    Args:
        data_source: the dataset (only its length is used).
        seed: the seed of every epoch's permutation.

    Example:
        >>> sampler = EpochSampler(range(5), seed=0)
        >>> sampler.set_epoch(1)
        >>> list(sampler) == torch.randperm(5, generator=torch.Generator().manual_seed(1)).tolist()
        True
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the permutation of ``epoch`` from now on."""
        self.epoch = epoch

    @override
    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose order is a function of ``(seed, epoch)`` and whose place in an epoch is checkpointed.

    Lightning saves the ``state_dict`` of a training loader that has one in every checkpoint, and hands it to
    ``load_state_dict`` when it resumes inside an epoch; this loader then skips the batches the interrupted
    run already trained on (their indices only: no sample is read or augmented) and serves the rest.

    The iterator starts drawing indices at its first batch, not when it is created, so the epoch that
    Lightning sets on the sampler in between is the one used, with worker processes too.

    Args:
        dataset: the dataset.
        batch_size: samples per batch.
        shuffle: draw each epoch's order with :class:`EpochSampler`.
        seed: the seed of the shuffle and of the loader's own generator; ``None`` is ``seed_everything``'s
            (``PL_GLOBAL_SEED``), 0 when unset.
        **kwargs: ``DataLoader``'s other arguments.

    Example:
        >>> loader = ResumableDataLoader(range(10), batch_size=4, shuffle=True, seed=0)
        >>> first = [batch.tolist() for batch in loader]
        >>> state = {"epoch": 0, "batches": 1}  # what a checkpoint taken after one batch holds
        >>> loader.load_state_dict(state)
        >>> [batch.tolist() for batch in loader] == first[1:]
        True
    """

    def __init__(
        self,
        dataset: Dataset | Sized,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        seed = global_seed() if seed is None else seed
        if shuffle and kwargs.get("sampler") is None and kwargs.get("batch_sampler") is None:
            kwargs["sampler"] = EpochSampler(dataset, seed)
            shuffle = None
        if kwargs.get("generator") is None:
            # Its own generator: creating an iterator draws a base seed, which must not come from the global state.
            kwargs["generator"] = torch.Generator().manual_seed(seed)
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)  # type: ignore[arg-type]
        self.seed = seed
        self._epoch: int | None = None
        self._served = 0
        self._resume: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The epoch of the current iteration and the number of batches it has served."""
        return {"epoch": self._epoch, "batches": self._served}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Skip the batches a checkpoint says were served, if the next iteration is of the same epoch."""
        self._resume = dict(state_dict)

    @override
    def __iter__(self) -> Iterator[Any]:
        return _LazyIterator(self)

    def _start(self) -> Iterator[Any]:
        epoch = getattr(self.sampler, "epoch", None)
        resume, self._resume = self._resume, None
        skip = resume.get("batches", 0) if resume is not None and resume.get("epoch") == epoch else 0
        self._epoch, self._served = epoch, skip
        if not skip:
            return super().__iter__()
        assert self.batch_sampler is not None, "a loader that skips batches batches its samples"
        remaining = list(self.batch_sampler)[skip:]
        # The rest of the epoch as its own loader: a list of index batches is a valid batch_sampler.
        rest = DataLoader(
            self.dataset,
            batch_sampler=remaining,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            timeout=self.timeout,
            worker_init_fn=self.worker_init_fn,
            multiprocessing_context=self.multiprocessing_context,
            generator=self.generator,
            prefetch_factor=self.prefetch_factor,
        )
        return iter(rest)


class _LazyIterator(Iterator[Any]):
    def __init__(self, loader: ResumableDataLoader) -> None:
        self.loader = loader
        self.iterator: Iterator[Any] | None = None

    def __next__(self) -> Any:
        if self.iterator is None:
            self.iterator = self.loader._start()
        batch = next(self.iterator)
        self.loader._served += 1
        return batch

    def __len__(self) -> int:
        return len(self.loader)


def rng_states() -> dict[str, Any]:
    """The global random states that augmentation and dropout draw from, as plain data for a checkpoint.

    torch's CPU generator, every CUDA device's (once CUDA is in use), numpy's global state and Python's
    ``random``; numpy's key is stored as a tensor, so ``torch.load(weights_only=True)`` reads it.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global random states :func:`rng_states` returned; a state it did not record is left as it is."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "numpy" in states:
        state = states["numpy"]
        keys = state["keys"].numpy().astype(np.uint32)
        np.random.set_state((state["kind"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))
    if "python" in states:
        random.setstate(states["python"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class BatchDataModule(pl.LightningDataModule):
    """Base of plkit's data modules: checked loader arguments, one loader per split, random states in checkpoints.

    A subclass loads its splits in ``setup`` into ``self._splits`` (split name -> dataset fetching whole
    batches through ``__getitems__``) and sets ``predict_split`` when ``predict`` does not run on a split named
    ``"predict"``. The training loader shuffles with :class:`EpochSampler`; every loader is a
    :class:`ResumableDataLoader`.

    Args:
        batch_size: samples per batch.
        num_workers: ``DataLoader`` worker processes; 0 loads in the training process (fastest for in-memory
            data, and needed for bitwise-exact resume: workers draw augmentation from their own seeds).

    Raises:
        ValueError: a ``batch_size`` or ``num_workers`` that is not a positive (resp. non-negative) integer.
    """

    #: a readable name for messages.
    display_name: ClassVar[str] = "dataset"
    #: the split ``predict`` runs on.
    predict_split: str = "predict"

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: it must be a positive integer, e.g. 128")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers={num_workers!r}: it must be an integer >= 0")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._splits: dict[str, Dataset] = {}

    def dataset(self, split: str) -> Any:
        """The dataset of ``split`` (after :meth:`setup`).

        Raises:
            RuntimeError: the split is not loaded yet.
        """
        if split not in self._splits:
            raise RuntimeError(f"the {split!r} split of {self.display_name} is not loaded: call setup() first")
        return self._splits[split]

    def _loader(self, split: str, shuffle: bool) -> ResumableDataLoader:
        return ResumableDataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=pass_batch,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> ResumableDataLoader | list:
        # An empty list is Lightning's "no validation": a split of size 0 trains on every sample.
        return self._loader("val", shuffle=False) if len(self.dataset("val")) else []

    @override
    def test_dataloader(self) -> ResumableDataLoader:
        return self._loader("test", shuffle=False)

    @override
    def predict_dataloader(self) -> ResumableDataLoader:
        return self._loader(self.predict_split, shuffle=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The global random states, so augmentation and dropout go on with the same stream after a resume."""
        return {"rng_states": rng_states()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A checkpoint written before the states were saved has none: the run resumes with the current ones.
        states = state_dict.get("rng_states")
        if states:
            restore_rng_states(states)
