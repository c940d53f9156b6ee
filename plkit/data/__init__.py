"""Reusable LightningDataModules.

Importing this package reads no data and downloads nothing: files are read in ``prepare_data`` / ``setup``.

Every batch is a dict: ``"input"`` (float32), ``"target"`` (int64 class indices, when there are targets)
and ``"id"`` (each sample's id: its row in the original file, or the ids given to :class:`NpyDataModule`).
"""

from plkit.data._base import ImageDataModule
from plkit.data._batches import ID, INPUT, TARGET
from plkit.data._errors import DatasetFormatError, DatasetNotFoundError
from plkit.data._paths import default_data_dir
from plkit.data.cifar10 import CIFAR10DataModule
from plkit.data.mnist import FashionMNISTDataModule, KMNISTDataModule, MNISTDataModule
from plkit.data.npy import NpyDataModule, NpySplit

__all__ = [
    "ID",
    "INPUT",
    "TARGET",
    "CIFAR10DataModule",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "KMNISTDataModule",
    "MNISTDataModule",
    "NpyDataModule",
    "NpySplit",
    "default_data_dir",
]
