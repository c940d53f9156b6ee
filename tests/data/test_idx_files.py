"""IDX decoding: the exact bytes back, ``.gz`` or plain, and a clear error for every damaged file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from plkit.data import DatasetFormatError
from plkit.data.mnist import read_idx

from fakedata import write_idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_returns_the_written_array(tmp_path: Path, gz: bool) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    path = write_idx(tmp_path / "images-idx3-ubyte", array, gz=gz)
    assert path.suffix == (".gz" if gz else "")
    decoded = read_idx(path, ndim=3)
    assert decoded.dtype == torch.uint8
    assert np.array_equal(decoded.numpy(), array)


def test_wrong_magic_number_names_file_and_expected_value(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((4, 2, 2), np.uint8), gz=False)
    with pytest.raises(DatasetFormatError, match="magic number 0x00000803, expected 0x00000801") as info:
        read_idx(path, ndim=1)
    assert str(path) in str(info.value)


def test_float_idx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "floats-idx1-ubyte"
    path.write_bytes(struct.pack(">II", 0x0D01, 2) + struct.pack(">ff", 1.0, 2.0))
    with pytest.raises(DatasetFormatError, match="0x00000D01"):
        read_idx(path, ndim=1)


def test_gzip_file_without_gz_suffix_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(struct.pack(">II", 0x0801, 1) + b"\x03"))
    with pytest.raises(DatasetFormatError, match=r"compressed file without the \.gz suffix"):
        read_idx(path, ndim=1)


def test_truncated_plain_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.ones((10, 4, 4), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetFormatError, match=r"truncated: its header announces 160 bytes .* only 155 follow"):
        read_idx(path, ndim=3)


@pytest.mark.parametrize("keep", [2, 9])
def test_file_ending_inside_the_header(tmp_path: Path, keep: int) -> None:
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.ones((10, 4, 4), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DatasetFormatError, match=r"too short for an IDX header|ends inside its IDX header"):
        read_idx(path, ndim=3)


def test_truncated_gzip_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (50, 8, 8), dtype=np.uint8), gz=True)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DatasetFormatError, match="not a complete gzip file") as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value)
