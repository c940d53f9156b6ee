"""Read CIFAR-10's python batches (pickled dicts) without letting a pickle run arbitrary code."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from plkit.data._errors import DatasetFormatError

__all__ = ["read_cifar_batch"]

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
