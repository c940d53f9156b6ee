"""Rows of memory-mapped ``.npy`` arrays, fetched a batch at a time, so arrays larger than RAM work."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from plkit.data._batches import ID, INPUT, TARGET
from plkit.data._errors import DatasetFormatError, DatasetNotFoundError

__all__ = ["NpyRows", "open_npy"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def open_npy(path: str | Path, role: str) -> np.ndarray:
    """Memory-map a ``.npy`` file (only its header is read now).

    Args:
        path: the file.
        role: what the file holds (``"features"``, ``"targets"``, ``"ids"``), for messages.

    Raises:
        DatasetNotFoundError: there is no such file.
        DatasetFormatError: it is not a ``.npy`` file, or it holds Python objects (which cannot be memory-mapped).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"the {role} file {path} does not exist: check the path (it is read as given)")
    with path.open("rb") as file:
        if file.read(6) != b"\x93NUMPY":
            raise DatasetFormatError(f"{path} ({role}) is not a .npy file (no NUMPY magic): save it with numpy.save")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise DatasetFormatError(
            f"{path} ({role}) cannot be memory-mapped ({err}). Save it with numpy.save as a numeric array, "
            "or as fixed-width strings (array.astype(str)) for ids; object arrays are not supported"
        ) from err
    if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise DatasetFormatError(f"{path} ({role}) is not an array with one row per sample: save one with numpy.save")
    return array


class NpyRows(Dataset):
    """Selected rows of memory-mapped features, with optional targets and ids.

    A batch is a dict: ``"input"`` (features, as ``dtype``), ``"target"`` (if there are targets: int64
    for integer targets, float32 otherwise) and ``"id"`` (int64 tensor for integer ids, a list of
    str for string ids, the row number when there are no ids).

    Args:
        features: path of the features ``.npy`` (``[N, ...]``).
        targets: path of the targets ``.npy`` (``[N, ...]``) or ``None``.
        ids: path of the ids ``.npy`` (``[N]``) or ``None``.
        rows: the rows this dataset serves, in order; ``None`` for all.
        dtype: the floating dtype features are cast to; ``None`` keeps the stored dtype.

    Raises:
        DatasetFormatError: the files do not have the same number of rows.
    """

    def __init__(
        self,
        features: Path,
        targets: Path | None,
        ids: Path | None,
        rows: np.ndarray | None = None,
        dtype: str | None = "float32",
    ) -> None:
        self.paths = {INPUT: features, TARGET: targets, ID: ids}
        self.dtype = dtype
        arrays = self._open()
        n = len(arrays[INPUT])
        for key, array in arrays.items():
            if len(array) != n:
                raise DatasetFormatError(
                    f"{self.paths[key]} has {len(array)} rows but the features {features} have {n}: "
                    "the features, targets and ids files must have one row per sample, in the same order"
                )
            if key == ID and (array.ndim != 1 or array.dtype.kind not in "iuUS"):
                raise DatasetFormatError(
                    f"{self.paths[key]} (ids) is {array.dtype} of shape {array.shape}: ids must be 1-d integers or "
                    "strings, one per row"
                )
        self.rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        self._arrays: dict[str, np.ndarray] | None = arrays

    def _open(self) -> dict[str, np.ndarray]:
        roles = {INPUT: "features", TARGET: "targets", ID: "ids"}
        return {key: open_npy(path, roles[key]) for key, path in self.paths.items() if path is not None}

    def __getstate__(self) -> dict[str, Any]:
        # A memory map pickles as a full in-memory copy: worker processes re-open the files instead.
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = self._open()
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        # Read in file order (sequential I/O on a memory map), then put the rows back in batch order.
        order = np.argsort(rows, kind="stable")
        restore = np.empty_like(order)
        restore[order] = np.arange(len(order))
        sorted_rows = rows[order]
        batch: dict[str, Any] = {}
        for key, array in self._arrays.items():
            values = np.ascontiguousarray(array[sorted_rows][restore])
            batch[key] = self._to_batch(key, values)
        if ID not in batch:
            batch[ID] = torch.from_numpy(rows.copy())
        return batch

    def _to_batch(self, key: str, values: np.ndarray) -> Any:
        if key == ID and values.dtype.kind in "US":
            return [str(v) for v in values.astype(str)]
        tensor = torch.from_numpy(values)
        if key == INPUT:
            return tensor.to(DTYPES[self.dtype]) if self.dtype else tensor
        # Integer targets are class indices (int64 for cross-entropy); anything else is a float target.
        return tensor.to(torch.int64) if values.dtype.kind in "iub" else tensor.to(torch.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}
