"""Tiny datasets written in the real on-disk formats, so tests never download anything.

Images are learnable on purpose: each class lights a different patch, so a few optimizer steps
move the accuracy well above chance and tests can assert on it.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """Write a uint8 array in the IDX format MNIST uses (magic 0x0000080N, big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload, compresslevel=1))
    else:
        path.write_bytes(payload)
    return path


def class_images(labels: np.ndarray, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Noisy uint8 images whose bright patch position encodes the label."""
    n = len(labels)
    images = rng.integers(0, 60, size=(n, channels, size, size), dtype=np.uint8)
    cell = size // 4
    for k in range(10):
        row, col = divmod(k, 4)
        rows = slice(row * cell, row * cell + cell)
        cols = slice(col * cell, col * cell + cell)
        images[labels == k, :, rows, cols] = 230
    return images


def make_mnist(folder: Path, n_train: int = 320, n_test: int = 64, gz: bool = True, seed: int = 0) -> Path:
    """Write the four MNIST IDX files (``.gz`` or plain) into ``folder`` and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = class_images(labels, 28, 1, rng)[:, 0]
        write_idx(folder / MNIST_FILES[f"{split}_images"], images, gz)
        write_idx(folder / MNIST_FILES[f"{split}_labels"], labels, gz)
    return folder
