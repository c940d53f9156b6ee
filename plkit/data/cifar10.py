"""CIFAR-10: the python batches of ``cifar-10-batches-py``, read from a staged folder or downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from plkit.data._base import ImageDataModule
from plkit.data._cifar_batches import read_cifar_batch
from plkit.data._errors import DatasetFormatError

__all__ = ["CIFAR10DataModule"]

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
BATCH_FOLDER = "cifar-10-batches-py"


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10: 50,000 training and 10,000 test 32x32 colour images, 10 classes.

    ``data_dir`` may hold the extracted batches directly (``data_batch_1`` ... ``data_batch_5``,
    ``test_batch``), or ``data_dir/cifar-10-batches-py/`` (torchvision's layout, where
    ``download=True`` puts them). ``augment=True`` shifts by up to 4 pixels and flips left-right,
    the usual random crop with padding 4 and horizontal flip.

    See :class:`~plkit.data.ImageDataModule` for the arguments and the batch format.

    Example:
        >>> dm = CIFAR10DataModule(data_dir="/data/cifar10", augment=True)
        >>> dm.image_shape, dm.augment_shift, dm.augment_hflip
        ((3, 32, 32), 4, True)
    """

    display_name: ClassVar[str] = "CIFAR-10"
    mean: ClassVar[tuple[float, ...]] = (0.4914, 0.4822, 0.4465)
    std: ClassVar[tuple[float, ...]] = (0.2470, 0.2435, 0.2616)
    image_shape: ClassVar[tuple[int, int, int]] = (3, 32, 32)
    augment_shift: ClassVar[int] = 4
    augment_hflip: ClassVar[bool] = True

    @override
    def folders(self) -> list[Path]:
        return [self.data_dir, self.data_dir / BATCH_FOLDER]

    @override
    def staging_hint(self) -> str:
        return (
            f"extract cifar-10-python.tar.gz and put the batches of its {BATCH_FOLDER} folder "
            f"({', '.join(TRAIN_BATCHES + TEST_BATCHES)}) in one folder, and pass it as data_dir "
            "(--data.data_dir FOLDER)"
        )

    @override
    def find_files(self, train: bool) -> dict[str, Path]:
        names = TRAIN_BATCHES if train else TEST_BATCHES
        for folder in self.folders():
            if all((folder / name).is_file() for name in names):
                return {name: folder / name for name in names}
        raise self.not_found(", ".join(names))

    @override
    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        parts = [read_cifar_batch(path) for path in self.find_files(train).values()]
        images = torch.cat([images for images, _ in parts])
        labels = torch.cat([labels for _, labels in parts])
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise DatasetFormatError(
                f"the {self.display_name} batches in {self.data_dir} hold labels outside 0..{self.num_classes - 1}: "
                "stage the CIFAR-10 batches (not CIFAR-100's)"
            )
        return images, labels

    @override
    def download_files(self) -> None:
        import torchvision.datasets  # slow to import, and only a download needs it

        # Downloads and extracts cifar-10-python.tar.gz into data_dir/cifar-10-batches-py.
        torchvision.datasets.CIFAR10(root=str(self.data_dir), train=True, download=True)
