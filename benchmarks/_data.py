"""Stage a benchmark's data once, outside every timing: real Fashion-MNIST, or generated images.

The files are written uncompressed in torchvision's layout, ``ROOT/FashionMNIST/raw/<four IDX files>``:
``torchvision.datasets.FashionMNIST(ROOT, download=False)`` reads only that (it never opens the ``.gz``
files of the Debian package), and ``FashionMNISTDataModule(data_dir=ROOT)`` finds the same files there. So every
contender decodes the very same bytes, and none pays for decompression.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SOURCES = ("auto", "real", "generated")


@dataclass(frozen=True)
class StagedData:
    """Where the staged files are and what they hold."""

    root: Path
    kind: str
    train_file_images: int
    val_size: int
    test_images: int
    source_dir: Path = REAL_DIR

    @property
    def raw(self) -> Path:
        return self.root / "FashionMNIST" / "raw"

    def describe(self) -> str:
        where = (
            f"real Fashion-MNIST from {self.source_dir}"
            if self.kind == "real"
            else "generated Fashion-MNIST-like images"
        )
        train = self.train_file_images - self.val_size
        return f"{where}: {train:,} training + {self.val_size:,} validation images of 28x28"


def real_available(real_dir: Path = REAL_DIR) -> bool:
    return all((real_dir / f"{name}.gz").is_file() for pair in FILES.values() for name in pair)


def read_idx(path: Path) -> np.ndarray:
    """Decode an uncompressed IDX file of unsigned bytes (what a hand-written loader does in four lines)."""
    raw = path.read_bytes()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _real(real_dir: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name in FILES[split]:
        raw = gzip.decompress((real_dir / f"{name}.gz").read_bytes())
        ndim = raw[3]
        shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        arrays.append(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)[:limit])
    return arrays[0], arrays[1]


def _generated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose bright patch says the class: learnable, so accuracies still mean something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for k in range(10):
        row, col = divmod(k, 4)
        images[labels == k, row * 7 : row * 7 + 7, col * 7 : col * 7 + 7] = 230
    return images, labels


def stage(
    root: Path, source: str, train_file_images: int | None, val_size: int, real_dir: Path = REAL_DIR
) -> StagedData:
    """Write the four IDX files under ``root`` and describe them.

    Args:
        root: an empty folder.
        source: ``"real"`` (the Debian package), ``"generated"``, or ``"auto"`` (real when installed).
        train_file_images: images in the training file (validation included); ``None`` is all of the real file,
            or 60,000 generated ones.
        val_size: how many of them are held out for validation.
        real_dir: the folder of the four ``.gz`` files of real Fashion-MNIST.

    Raises:
        ValueError: an unknown ``source``, or ``"real"`` without the files in ``real_dir``.
    """
    if source not in SOURCES:
        raise ValueError(f"data source {source!r}: choose one of {', '.join(SOURCES)}")
    kind = "real" if source == "real" or (source == "auto" and real_available(real_dir)) else "generated"
    if kind == "real" and not real_available(real_dir):
        raise ValueError(
            f"--data real: no Fashion-MNIST .gz files in {real_dir}: apt-get install dataset-fashion-mnist, "
            "or pass the folder that holds them with --data-dir"
        )
    n_test = 10_000 if train_file_images is None else max(1, train_file_images // 6)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, limit, seed in (("train", train_file_images, 0), ("test", n_test, 1)):
        images, labels = _real(real_dir, split, limit) if kind == "real" else _generated(limit or 60_000, seed)
        _write_idx(raw / FILES[split][0], images)
        _write_idx(raw / FILES[split][1], labels)
        counts[split] = len(images)
    return StagedData(root, kind, counts["train"], val_size, counts["test"], real_dir)
