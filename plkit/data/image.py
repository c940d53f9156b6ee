"""``ImageDataModule``: the base of the MNIST-family and CIFAR-10 modules, and the image batches they serve.

A subclass says where its files are and how to decode them (:meth:`ImageDataModule.find_files`,
:meth:`ImageDataModule.load_split`, :meth:`ImageDataModule.download_files`) and gives its constants
(normalisation, image shape, augmentation); the base does the rest: one decode per process into uint8
tensors, a validation split drawn with a fixed seed, and batches normalised and augmented as whole tensors
(a PIL image and a transform per sample would spend most of a small model's epoch in per-sample Python).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from plkit.data.batches import ID, INPUT, TARGET, BatchDataModule, DatasetNotFoundError

__all__ = ["BatchTransform", "ImageDataModule", "InMemoryImages", "default_data_dir", "random_hflip", "random_shift"]

Split = Literal["train", "val", "test"]
_SPLITS = ("train", "val", "test")
ENV_DATA_DIR = "PLKIT_DATA_DIR"


def default_data_dir() -> Path:
    """The per-user dataset cache: ``$PLKIT_DATA_DIR``, else ``$XDG_CACHE_HOME/plkit/datasets``, else ``~/.cache/...``.

    Example:
        >>> import os
        >>> os.environ["PLKIT_DATA_DIR"] = "/data/shared"
        >>> default_data_dir()
        PosixPath('/data/shared')
        >>> del os.environ["PLKIT_DATA_DIR"]
    """
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "plkit" / "datasets"


def random_shift(images: Tensor, max_shift: int) -> Tensor:
    """Shift each image of a ``[B, C, H, W]`` batch by its own random offset of up to ``max_shift`` pixels.

    Pixels shifted in are zero (the background of the MNIST family, black for CIFAR), the same as
    torchvision's ``RandomCrop(size, padding=max_shift)``.

    Example:
        >>> images = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
        >>> _ = torch.manual_seed(0)
        >>> random_shift(images, 1).shape
        torch.Size([1, 1, 4, 4])
    """
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, b, 1), device=images.device)
    rows = offsets[0] + torch.arange(h, device=images.device)
    cols = offsets[1] + torch.arange(w, device=images.device)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: [B, H, W, C].
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_hflip(images: Tensor) -> Tensor:
    """Mirror each image of a ``[B, C, H, W]`` batch left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class BatchTransform:
    """Turn a uint8 ``[B, C, H, W]`` batch into normalised float32, augmenting it first if asked.

    Args:
        mean: per-channel mean of the pixel values scaled to [0, 1].
        std: per-channel standard deviation, likewise.
        max_shift: random shift of up to this many pixels (0: none).
        hflip: random left-right mirroring.
        channels_last: produce the batch in the channels-last memory format (the float copy is made in that
            layout, so it costs nothing extra).

    Example:
        >>> transform = BatchTransform(mean=(0.5,), std=(0.5,))
        >>> transform(torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1)).flatten()
        tensor([-1.,  1.])
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        max_shift: int = 0,
        hflip: bool = False,
        channels_last: bool = False,
    ) -> None:
        std_t = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add.
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.max_shift = max_shift
        self.hflip = hflip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: Tensor) -> Tensor:
        if self.max_shift:
            images = random_shift(images, self.max_shift)
        if self.hflip:
            images = random_hflip(images)
        out = images.to(torch.float32, memory_format=self.memory_format)
        # In place: the result keeps the memory format chosen above.
        return out.mul_(self.scale).add_(self.shift)


class InMemoryImages(Dataset):
    """uint8 images, int64 targets and int64 ids held in memory, fetched a batch at a time.

    Args:
        images: ``[N, C, H, W]`` uint8.
        targets: ``[N]`` class indices.
        ids: ``[N]`` sample ids (rows of the original file).
        transform: applied to each batch of images.

    Raises:
        ValueError: the three tensors do not have the same length.

    Example:
        >>> images = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)
        >>> data = InMemoryImages(images, torch.arange(5), torch.arange(5) + 10, BatchTransform((0.0,), (1.0,)))
        >>> batch = data.__getitems__([3, 1])
        >>> batch["input"].shape, batch["target"].tolist(), batch["id"].tolist()
        (torch.Size([2, 1, 2, 2]), [3, 1], [13, 11])
    """

    def __init__(self, images: Tensor, targets: Tensor, ids: Tensor, transform: BatchTransform) -> None:
        if not len(images) == len(targets) == len(ids):
            raise ValueError(f"{len(images)} images, {len(targets)} targets and {len(ids)} ids: they must match")
        self.images = images
        self.targets = targets.long()
        self.ids = ids.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {INPUT: self.transform(self.images[index]), TARGET: self.targets[index], ID: self.ids[index]}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


class ImageDataModule(BatchDataModule):
    """Base of plkit's image data modules: decode once, split with a seed, batch as tensors.

    Batches are dicts: ``"input"`` (normalised float32 ``[B, C, H, W]``), ``"target"`` (int64 class
    indices) and ``"id"`` (int64, the image's row in its original file, so predictions can be traced
    back to it).

    Args:
        data_dir: a folder holding the dataset's original files, or the folder a download goes to (it must
            exist); ``None`` is the per-user cache (``$PLKIT_DATA_DIR``, else ``~/.cache/plkit/datasets``).
        batch_size: images per batch.
        val_size: images held out of the training files for validation: a count, or a fraction in
            (0, 1). The same images on every run and every rank, for a given ``seed``.
        num_workers: ``DataLoader`` worker processes; 0 (the default) is fastest for in-memory data.
        download: fetch the files into ``data_dir`` when they are not there (needs internet).
        augment: augment training batches (a random shift; CIFAR-10 adds a left-right flip).
        seed: the seed of the validation split (the training order follows ``seed_everything`` and the epoch).
        predict_split: the split ``predict`` runs on.
        channels_last: serve ``"input"`` in the channels-last memory format, the layout convolutions run
            fastest in on CPUs and recent GPUs (pair it with ``ImageClassifier(channels_last=True)``).

    Raises:
        ValueError: a bad ``batch_size``, ``val_size``, ``num_workers`` or ``predict_split``.
    """

    display_name: ClassVar[str] = "dataset"
    #: per-channel mean and std of the pixel values in [0, 1], over the training files.
    mean: ClassVar[tuple[float, ...]] = (0.5,)
    std: ClassVar[tuple[float, ...]] = (0.5,)
    #: ``(C, H, W)`` of one image.
    image_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    num_classes: ClassVar[int] = 10
    #: the name of each class index, where the dataset defines them (``plkit export`` records them).
    class_names: ClassVar[tuple[str, ...] | None] = None
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
        channels_last: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
            raise ValueError(f"val_size={val_size!r}: give a count of images (e.g. 5000) or a fraction (e.g. 0.1)")
        if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
            raise ValueError(f"val_size={val_size!r}: a fraction must be in [0, 1); for a count of images use an int")
        if val_size < 0:
            raise ValueError(f"val_size={val_size!r}: it must be >= 0 (0 means no validation set)")
        if predict_split not in _SPLITS:
            raise ValueError(f"predict_split={predict_split!r}: choose one of {', '.join(map(repr, _SPLITS))}")
        # channels_last is also ImageClassifier's (its weights' layout): Lightning refuses to log a model and a
        # data module whose hyperparameters share a key with different values, and the batches' layout changes
        # no result, so the data module leaves it out.
        self.save_hyperparameters(ignore=["channels_last"])
        if isinstance(data_dir, Path):
            # Plain data in the checkpoint, so load_from_checkpoint works with torch.load(weights_only=True).
            self.hparams["data_dir"] = str(data_dir)
        self.data_dir = (default_data_dir() if data_dir is None else Path(data_dir).expanduser()).absolute()
        self._data_dir_given = data_dir is not None
        self.val_size = val_size
        self.download = download
        self.augment = augment
        self.seed = seed
        self.predict_split = predict_split
        self.channels_last = channels_last

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

    def staging_hint(self) -> str:
        """How to put the files on disk by hand (the end of every not-found message)."""
        return f"copy the {self.display_name} files into a folder and pass it as data_dir (--data.data_dir FOLDER)"

    # The shared part.

    def not_found(self, wanted: str) -> DatasetNotFoundError:
        """The error for files ``wanted`` that are in none of :meth:`folders`: where it looked, how to stage them."""
        searched = " or ".join(str(folder) for folder in self.folders())
        hint = "" if self.download else " (download=False)"
        return DatasetNotFoundError(
            f"{self.display_name}: no {wanted} in {searched}{hint}. To use files already on disk, "
            f"{self.staging_hint()}; or set download=True on a machine with internet"
        )

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
        if self._data_dir_given and not self.data_dir.is_dir():
            # A mistyped folder must not become a fresh download target.
            raise DatasetNotFoundError(
                f"{self.display_name}: data_dir {self.data_dir} does not exist, so nothing was downloaded into it: "
                "pass the folder that holds the files, or create this one first to download into it"
            )
        new_folders = [folder for folder in self.folders() if not folder.exists()]
        try:
            self.download_files()
        except Exception as err:
            for folder in new_folders:
                _remove_empty_folders(folder, above=self.data_dir)
            reason = str(err).splitlines()[0].rstrip(":") if str(err) else type(err).__name__
            raise DatasetNotFoundError(
                f"could not download {self.display_name} into {self.data_dir} ({reason}). "
                f"Without internet, stage the files instead: {self.staging_hint()}"
            ) from err

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
            channels_last=self.channels_last,
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
    def dataset(self, split: str) -> InMemoryImages:
        """The in-memory dataset of ``split`` (after :meth:`setup`)."""
        return super().dataset(split)


def _remove_empty_folders(folder: Path, above: Path) -> None:
    """Remove ``folder`` and its parents below ``above`` while they are empty (what a failed download leaves)."""
    for path in (folder, *folder.parents):
        if path == above or above not in path.parents:
            return
        with contextlib.suppress(OSError):
            path.rmdir()
