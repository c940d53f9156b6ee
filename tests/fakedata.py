"""Tiny datasets written in the real on-disk formats, so tests never download anything.

Images are learnable on purpose: each class lights a different patch, so a few optimizer steps
move the accuracy well above chance and tests can assert on it.
"""

from __future__ import annotations

import gzip
import pickle
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


CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Pickle one CIFAR-10 python batch: ``data`` is uint8 ``(N, 3072)`` (channel-major rows), ``labels`` a list."""
    entry = {
        "batch_label": path.name,
        "labels": [int(label) for label in labels],
        "data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1),
        "filenames": [f"img_{i:05d}.png" for i in range(len(images))],
    }
    with path.open("wb") as file:
        pickle.dump(entry, file, protocol=2)
    return path


def make_cifar10(folder: Path, n_train: int = 100, n_test: int = 40, seed: int = 0) -> Path:
    """Write ``data_batch_1..5``, ``test_batch`` and ``batches.meta`` (``n_train`` split over five batches)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = (np.arange(n_train) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = class_images(labels, 32, 3, rng)
    for name, part in zip(CIFAR10_TRAIN_BATCHES, np.array_split(np.arange(n_train), 5), strict=True):
        write_cifar_batch(folder / name, images[part], labels[part])
    test_labels = (np.arange(n_test) % 10).astype(np.uint8)
    rng.shuffle(test_labels)
    write_cifar_batch(folder / "test_batch", class_images(test_labels, 32, 3, rng), test_labels)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with (folder / "batches.meta").open("wb") as file:
        pickle.dump({"label_names": classes, "num_cases_per_batch": n_train // 5, "num_vis": 3072}, file, protocol=2)
    return folder


def make_npy(
    folder: Path, n: int = 60, dim: int = 8, num_classes: int = 3, string_ids: bool = False, seed: int = 0
) -> dict[str, Path]:
    """Write ``features.npy`` (float64, class-separable), ``targets.npy`` (int) and ``ids.npy`` (int or str)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % num_classes
    features = rng.normal(size=(n, dim)) + 3.0 * np.eye(num_classes, dim)[targets]
    ids = np.array([f"s{i:04d}" for i in range(n)]) if string_ids else np.arange(1000, 1000 + n)
    paths = {"features": folder / "features.npy", "targets": folder / "targets.npy", "ids": folder / "ids.npy"}
    for key, array in (("features", features), ("targets", targets), ("ids", ids)):
        np.save(paths[key], array)
    return paths
