"""MNIST, Fashion-MNIST and KMNIST: four IDX files each, read from a staged folder or downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from plkit.data._base import ImageDataModule
from plkit.data._errors import DatasetFormatError
from plkit.data._idx import read_idx

__all__ = ["FashionMNISTDataModule", "KMNISTDataModule", "MNISTDataModule"]

IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class _IDXDataModule(ImageDataModule):
    """The MNIST family: 28x28 grayscale images and labels in IDX files, ``.gz`` or plain.

    ``data_dir`` may hold the four files directly (the layout of a manual download, or of Debian's
    ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``), or torchvision's layout
    ``data_dir/<Name>/raw/`` (where ``download=True`` puts them).
    """

    #: torchvision's dataset class, and the folder name of its layout.
    torchvision_name: ClassVar[str] = "MNIST"
    image_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    augment_shift: ClassVar[int] = 2

    @override
    def folders(self) -> list[Path]:
        return [self.data_dir, self.data_dir / self.torchvision_name / "raw"]

    @override
    def staging_hint(self) -> str:
        names = ", ".join(name for pair in IDX_FILES.values() for name in pair)
        return (
            f"put the four {self.display_name} IDX files ({names}; each .gz or not) in one folder and pass it as "
            "data_dir (--data.data_dir FOLDER)"
        )

    @override
    def find_files(self, train: bool) -> dict[str, Path]:
        for folder in self.folders():
            found = {}
            for key, name in zip(("images", "labels"), IDX_FILES[train], strict=True):
                # The plain file first: torchvision's download leaves both, and plain reads faster.
                path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
                if path is not None:
                    found[key] = path
            if len(found) == 2:
                return found
        raise self.not_found(" and ".join(f"{name}[.gz]" for name in IDX_FILES[train]))

    @override
    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        files = self.find_files(train)
        images, labels = read_idx(files["images"], ndim=3), read_idx(files["labels"], ndim=1)
        if len(images) != len(labels):
            raise DatasetFormatError(
                f"{files['images']} holds {len(images)} images but {files['labels']} holds {len(labels)} labels: "
                "the two files come from different datasets or one is incomplete; stage a matching pair"
            )
        if tuple(images.shape[1:]) != self.image_shape[1:]:
            raise DatasetFormatError(
                f"{files['images']} holds {tuple(images.shape[1:])} images, {self.display_name} has "
                f"{self.image_shape[1:]}: stage the {self.display_name} files"
            )
        if len(labels) and int(labels.max()) >= self.num_classes:
            raise DatasetFormatError(
                f"{files['labels']} holds label {int(labels.max())}, {self.display_name} has {self.num_classes} "
                "classes: stage the matching labels file"
            )
        return images.unsqueeze(1), labels.to(torch.int64)

    @override
    def download_files(self) -> None:
        import torchvision.datasets  # slow to import, and only a download needs it

        dataset_class = getattr(torchvision.datasets, self.torchvision_name)
        # Downloads all four files into data_dir/<Name>/raw, then reads the training split (cheap).
        dataset_class(root=str(self.data_dir), train=True, download=True)


class MNISTDataModule(_IDXDataModule):
    """MNIST handwritten digits: 60,000 training and 10,000 test 28x28 grayscale images, 10 classes.

    See :class:`~plkit.data.ImageDataModule` for the arguments and the batch format.

    Example:
        >>> dm = MNISTDataModule(data_dir="/data/mnist", batch_size=64, val_size=0.1)
        >>> dm.data_dir, dm.image_shape, dm.num_classes
        (PosixPath('/data/mnist'), (1, 28, 28), 10)
    """

    display_name: ClassVar[str] = "MNIST"
    torchvision_name: ClassVar[str] = "MNIST"
    mean: ClassVar[tuple[float, ...]] = (0.1307,)
    std: ClassVar[tuple[float, ...]] = (0.3081,)


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST (Zalando): 60,000 training and 10,000 test 28x28 grayscale clothing images, 10 classes.

    On Debian/Ubuntu, ``apt-get install dataset-fashion-mnist`` stages the files in
    ``/usr/share/datasets/fashion-mnist``: pass that folder as ``data_dir``.

    See :class:`~plkit.data.ImageDataModule` for the arguments and the batch format.
    """

    display_name: ClassVar[str] = "Fashion-MNIST"
    torchvision_name: ClassVar[str] = "FashionMNIST"
    mean: ClassVar[tuple[float, ...]] = (0.2860,)
    std: ClassVar[tuple[float, ...]] = (0.3530,)

    @override
    def staging_hint(self) -> str:
        return (
            f"{super().staging_hint()}. On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` stages them in "
            "/usr/share/datasets/fashion-mnist"
        )


class KMNISTDataModule(_IDXDataModule):
    """Kuzushiji-MNIST: 60,000 training and 10,000 test 28x28 grayscale cursive Japanese characters, 10 classes.

    See :class:`~plkit.data.ImageDataModule` for the arguments and the batch format.
    """

    display_name: ClassVar[str] = "KMNIST"
    torchvision_name: ClassVar[str] = "KMNIST"
    mean: ClassVar[tuple[float, ...]] = (0.1918,)
    std: ClassVar[tuple[float, ...]] = (0.3483,)
