"""MNIST, Fashion-MNIST and KMNIST: four IDX files each, read from a staged folder or downloaded.

The IDX reader checks what a damaged or wrong file looks like (magic number, header, length) and names the
file and the fix, instead of failing deep inside numpy.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from plkit.data.batches import DatasetFormatError
from plkit.data.image import ImageDataModule

__all__ = ["FashionMNISTDataModule", "KMNISTDataModule", "MNISTDataModule", "read_idx"]

# Not torchvision's reader (datasets.mnist.read_sn3_pascalvincent_tensor): it reads only uncompressed files and stops
# at a damaged one with a bare assert; importing torchvision would also add about 2 s to every start here.
_UNSIGNED_BYTE = 0x08
_RESTAGE = "copy or download the file again (an interrupted download or copy leaves a file like this)"


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:
                return file.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DatasetFormatError(f"{path} is not a complete gzip file ({err}): {_RESTAGE}") from err


def read_idx(path: str | Path, ndim: int) -> torch.Tensor:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions (3 for images, 1 for labels).

    Args:
        path: the file; a name ending in ``.gz`` is decompressed on the fly.
        ndim: the number of dimensions the file must have.

    Returns:
        A ``torch.uint8`` tensor of the shape the header gives.

    Raises:
        DatasetFormatError: the magic number is not ``0x0000080{ndim}``, or the file is truncated.

    Example:
        >>> import struct, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = path.write_bytes(struct.pack(">II", 0x0801, 3) + bytes([7, 2, 1]))
        >>> read_idx(path, ndim=1)
        tensor([7, 2, 1], dtype=torch.uint8)
    """
    path = Path(path)
    raw = _read_bytes(path)
    expected_magic = (_UNSIGNED_BYTE << 8) | ndim
    kind = "images" if ndim == 3 else "labels" if ndim == 1 else f"{ndim}-d arrays"
    if len(raw) < 4:
        raise DatasetFormatError(f"{path} is {len(raw)} bytes long, too short for an IDX header: {_RESTAGE}")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise DatasetFormatError(
            f"{path} has the IDX magic number 0x{magic:08X}, expected 0x{expected_magic:08X} ({kind} of unsigned "
            f"bytes): it is not the right MNIST-style IDX file, or it is a compressed file without the .gz suffix; "
            "stage the original file under its original name"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path} ends inside its IDX header: {_RESTAGE}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(shape)
    if len(raw) - header < count:
        raise DatasetFormatError(
            f"{path} is truncated: its header announces {count} bytes of {kind} {tuple(shape)}, "
            f"but only {len(raw) - header} follow; {_RESTAGE}"
        )
    array = np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(shape)
    # A copy: the decoded bytes object is read-only, and tensors over read-only memory are undefined to write.
    return torch.from_numpy(array.copy())


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
    class_names: ClassVar[tuple[str, ...] | None] = tuple("0123456789")


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
    class_names: ClassVar[tuple[str, ...] | None] = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
    )  # fmt: skip

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
    # The Kuzushiji (cursive Japanese) characters' romanised names, in label order.
    class_names: ClassVar[tuple[str, ...] | None] = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
