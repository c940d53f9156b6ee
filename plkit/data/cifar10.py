"""CIFAR-10: the python batches of ``cifar-10-batches-py``, read from a staged folder or downloaded.

The batches are pickled dicts; they are read with an unpickler that builds numpy arrays and nothing else
(torchvision's ``CIFAR10`` calls ``pickle.load``, which runs whatever code a file holds).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from plkit.data.batches import DatasetFormatError
from plkit.data.image import ImageDataModule

__all__ = ["CIFAR10DataModule", "read_cifar_batch"]

# The only globals a batch file needs: numpy's array and dtype reconstructors (numpy 1 and 2 names), and the
# codec Python 3 uses to pickle bytes at protocol 2 (it can only encode a string).
_ALLOWED = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays")
        return super().find_class(module, name)


def _get(entry: dict, key: str) -> Any:
    # Python 2 pickles read with encoding="latin1" give str keys; files written as bytes keys give bytes.
    return entry[key] if key in entry else entry.get(key.encode())


def read_cifar_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """Decode one CIFAR-10 python batch into uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``.

    Args:
        path: a ``data_batch_*`` or ``test_batch`` file of ``cifar-10-batches-py``.

    Raises:
        DatasetFormatError: the file is truncated, not a batch, or its image and label counts differ.
    """
    path = Path(path)
    restage = "copy or extract cifar-10-python.tar.gz again (an interrupted download or copy leaves a file like this)"
    try:
        entry = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DatasetFormatError(f"{path} is not a readable CIFAR-10 python batch ({err}): {restage}") from err
    data = _get(entry, "data") if isinstance(entry, dict) else None
    labels = _get(entry, "labels") if isinstance(entry, dict) else None
    if not isinstance(data, np.ndarray) or labels is None:
        raise DatasetFormatError(f"{path} is not a CIFAR-10 python batch (no 'data' array and 'labels'): {restage}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DatasetFormatError(
            f"{path} holds a {data.dtype} array of shape {data.shape}, CIFAR-10 batches hold uint8 (N, 3072): {restage}"
        )
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if len(labels_t) != len(data):
        raise DatasetFormatError(
            f"{path} holds {len(data)} images but {len(labels_t)} labels: the file is damaged; {restage}"
        )
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), labels_t


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
    class_names: ClassVar[tuple[str, ...] | None] = (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
    )  # fmt: skip
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
