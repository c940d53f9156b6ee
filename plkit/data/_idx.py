"""Decode the IDX files of the MNIST family (``.gz`` or plain) into uint8 tensors, checking what can go wrong."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from plkit.data._errors import DatasetFormatError

__all__ = ["read_idx"]

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
