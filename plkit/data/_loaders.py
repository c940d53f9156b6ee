"""The ``DataLoader`` s of plkit's data modules: whole batches from ``__getitems__``, no per-sample collation."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from plkit.data._batches import pass_batch

__all__ = ["BatchLoaders"]


class BatchLoaders(pl.LightningDataModule):
    """A data module whose splits are datasets that fetch a whole batch per ``__getitems__`` call.

    A subclass sets ``batch_size`` and ``num_workers``, and provides :meth:`dataset` (and
    :meth:`predict_split_name` when ``predict`` does not run on a split named ``"predict"``).
    """

    batch_size: int
    num_workers: int

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (after ``setup``)."""
        raise NotImplementedError

    def predict_split_name(self) -> str:
        """The split ``predict`` runs on."""
        return "predict"

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=pass_batch,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader | list:
        # An empty list is Lightning's "no validation": a split of size 0 trains on every sample.
        return self._loader("val", shuffle=False) if len(self.dataset("val")) else []

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split_name(), shuffle=False)
