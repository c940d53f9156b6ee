"""``ImageDataModule``: the small shared base of the MNIST-family and CIFAR-10 data modules.

A subclass says where its files are and how to decode them (:meth:`ImageDataModule.find_files`,
:meth:`ImageDataModule.load_split`, :meth:`ImageDataModule.download_files`) and gives its constants
(normalisation, image shape, augmentation); the base does the rest: one decode per process into uint8
tensors, a validation split drawn with a fixed seed, and ``DataLoader`` s that fetch whole batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import Tensor
from typing_extensions import override

from plkit.data._batches import BatchTransform, InMemoryImages
from plkit.data._errors import DatasetNotFoundError
from plkit.data._loaders import BatchLoaders
from plkit.data._paths import resolve_data_dir

__all__ = ["ImageDataModule"]

Split = Literal["train", "val", "test"]
_SPLITS = ("train", "val", "test")


class ImageDataModule(BatchLoaders):
    """Base of plkit's image data modules: decode once, split with a seed, batch as tensors.

    Batches are dicts: ``"input"`` (normalised float32 ``[B, C, H, W]``), ``"target"`` (int64 class
    indices) and ``"id"`` (int64, the image's row in its original file, so predictions can be traced
    back to it).

    Args:
        data_dir: a folder holding the dataset's original files, or the cache a download goes to;
            ``None`` is the per-user cache (``$PLKIT_DATA_DIR``, else ``~/.cache/plkit/datasets``).
        batch_size: images per batch.
        val_size: images held out of the training files for validation: a count, or a fraction in
            (0, 1). The same images on every run and every rank, for a given ``seed``.
        num_workers: ``DataLoader`` worker processes; 0 (the default) is fastest for in-memory data.
        download: fetch the files into ``data_dir`` when they are not there (needs internet).
        augment: augment training batches (a random shift; CIFAR-10 adds a left-right flip).
        seed: the seed of the validation split (not of shuffling, which follows ``seed_everything``).
        predict_split: the split ``predict`` runs on.

    Raises:
        ValueError: a bad ``batch_size``, ``val_size``, ``num_workers`` or ``predict_split``.
    """

    #: a readable name for messages.
    display_name: ClassVar[str] = "dataset"
    #: per-channel mean and std of the pixel values in [0, 1], over the training files.
    mean: ClassVar[tuple[float, ...]] = (0.5,)
    std: ClassVar[tuple[float, ...]] = (0.5,)
    #: ``(C, H, W)`` of one image.
    image_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10
    #: augmentation: random shift of up to this many pixels, and left-right flip.
    augment_shift: ClassVar[int] = 2
    augment_hflip: ClassVar[bool] = False

    def __init__(
        self,
        data_dir: str | Path | None = None,
        batch_size: int = 128,
        val_size: int | float = 5000,
        num_workers: int = 0,
        download: bool = True,
        augment: bool = False,
        seed: int = 0,
        predict_split: Split = "test",
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: it must be a positive integer, e.g. 128")
        if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
            raise ValueError(f"val_size={val_size!r}: give a count of images (e.g. 5000) or a fraction (e.g. 0.1)")
        if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
            raise ValueError(f"val_size={val_size!r}: a fraction must be in [0, 1); for a count of images use an int")
        if val_size < 0:
            raise ValueError(f"val_size={val_size!r}: it must be >= 0 (0 means no validation set)")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers={num_workers!r}: it must be an integer >= 0")
        if predict_split not in _SPLITS:
            raise ValueError(f"predict_split={predict_split!r}: choose one of {', '.join(map(repr, _SPLITS))}")
        self.save_hyperparameters()
        if isinstance(data_dir, Path):
            # Plain data in the checkpoint, so load_from_checkpoint works with torch.load(weights_only=True).
            self.hparams["data_dir"] = str(data_dir)
        self.data_dir = resolve_data_dir(data_dir)
        self.batch_size = batch_size
        self.val_size = val_size
        self.num_workers = num_workers
        self.download = download
        self.augment = augment
        self.seed = seed
        self.predict_split = predict_split
        self._splits: dict[str, InMemoryImages] = {}

    # What a subclass provides.

    def find_files(self, train: bool) -> dict[str, Path]:
        """The files of the training (``train=True``) or test split.

        Raises:
            DatasetNotFoundError: a file is missing; the message names the folder and how to stage it.
        """
        raise NotImplementedError

    def folders(self) -> list[Path]:
        """The folders searched for the files, in order: ``data_dir`` itself, then torchvision's layout in it."""
        return [self.data_dir]

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """Decode the training or test files into uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``."""
        raise NotImplementedError

    def download_files(self) -> None:
        """Download the files into ``data_dir`` (torchvision's download code and layout)."""
        raise NotImplementedError

    # The shared part.

    def _missing(self) -> DatasetNotFoundError | None:
        for train in (True, False):
            try:
                self.find_files(train)
            except DatasetNotFoundError as err:
                return err
        return None

    @override
    def prepare_data(self) -> None:
        missing = self._missing()
        if missing is None:
            return
        if not self.download:
            raise missing
        try:
            self.download_files()
        except Exception as err:
            raise DatasetNotFoundError(
                f"could not download {self.display_name} into {self.data_dir} ({type(err).__name__}: {err}). "
                f"Without internet, stage the files instead: {self.staging_hint()}"
            ) from err

    def not_found(self, wanted: str) -> DatasetNotFoundError:
        """The error for files ``wanted`` that are in none of :meth:`folders`: where it looked, how to stage them."""
        searched = " or ".join(str(folder) for folder in self.folders())
        hint = "" if self.download else " (download=False)"
        return DatasetNotFoundError(
            f"{self.display_name}: no {wanted} in {searched}{hint}. To use files already on disk, "
            f"{self.staging_hint()}; or set download=True on a machine with internet"
        )

    def staging_hint(self) -> str:
        """How to put the files on disk by hand (the end of every not-found message)."""
        return f"copy the {self.display_name} files into a folder and pass it as data_dir (--data.data_dir FOLDER)"

    def _val_count(self, n: int) -> int:
        count = round(self.val_size * n) if isinstance(self.val_size, float) else self.val_size
        if count >= n:
            raise ValueError(
                f"val_size={self.val_size!r} holds out {count} of the {n} training images of {self.data_dir}, "
                "leaving none to train on: give a smaller count or a fraction such as 0.1"
            )
        return count

    def _transform(self, train: bool) -> BatchTransform:
        augment = train and self.augment
        return BatchTransform(
            self.mean,
            self.std,
            max_shift=self.augment_shift if augment else 0,
            hflip=augment and self.augment_hflip,
        )

    def _load_train_val(self) -> None:
        images, labels = self.load_split(train=True)
        n = len(images)
        # An explicit generator: the split must not depend on the global seed, the rank or the run.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_val = self._val_count(n)
        val_ids, train_ids = order[:n_val].sort().values, order[n_val:].sort().values
        self._splits["train"] = InMemoryImages(images[train_ids], labels[train_ids], train_ids, self._transform(True))
        self._splits["val"] = InMemoryImages(images[val_ids], labels[val_ids], val_ids, self._transform(False))

    def _load_test(self) -> None:
        images, labels = self.load_split(train=False)
        ids = torch.arange(len(images))
        self._splits["test"] = InMemoryImages(images, labels, ids, self._transform(False))

    @override
    def setup(self, stage: str) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": (self.predict_split,)}
        for split in needed.get(stage, _SPLITS):
            if split in self._splits:
                continue
            if split == "test":
                self._load_test()
            else:
                self._load_train_val()

    @override
    def dataset(self, split: Split) -> InMemoryImages:
        """The in-memory dataset of ``split`` (after :meth:`setup`)."""
        if split not in self._splits:
            raise RuntimeError(f"the {split!r} split of {self.display_name} is not loaded: call setup() first")
        return self._splits[split]

    @override
    def predict_split_name(self) -> str:
        return self.predict_split
