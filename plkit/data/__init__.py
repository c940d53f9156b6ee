"""Reusable LightningDataModules.

Importing this package reads no data and downloads nothing: files are read in ``prepare_data`` / ``setup``.

Every batch is a dict: ``"input"`` (float32), ``"target"`` (int64 class indices, when there are targets)
and ``"id"`` (each sample's id: its row in the original file, or the ids given to :class:`NpyDataModule`).

The modules: ``batches`` (the batch keys, the errors, the loaders and exact resume, shared by all),
``image`` (``ImageDataModule``, the base of the image modules), ``mnist`` (the MNIST family and its IDX
reader), ``cifar10`` (CIFAR-10 and its safe unpickler) and ``npy`` (your own ``.npy`` arrays).
"""

from plkit.data.batches import (
    ID,
    INPUT,
    TARGET,
    BatchDataModule,
    DatasetFormatError,
    DatasetNotFoundError,
    EpochSampler,
    ResumableDataLoader,
    restore_rng_states,
    rng_states,
)
from plkit.data.cifar10 import CIFAR10DataModule
from plkit.data.image import ImageDataModule, default_data_dir
from plkit.data.mnist import FashionMNISTDataModule, KMNISTDataModule, MNISTDataModule
from plkit.data.npy import NpyDataModule, NpySplit

__all__ = [
    "ID",
    "INPUT",
    "TARGET",
    "BatchDataModule",
    "CIFAR10DataModule",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "EpochSampler",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "KMNISTDataModule",
    "MNISTDataModule",
    "NpyDataModule",
    "NpySplit",
    "ResumableDataLoader",
    "default_data_dir",
    "restore_rng_states",
    "rng_states",
]
