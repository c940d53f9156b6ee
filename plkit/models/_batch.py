"""Read a batch the way plkit's data modules build it (a dict) or the way most loaders do (a tuple)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["unpack_batch"]

INPUT, TARGET, ID = "input", "target", "id"


def unpack_batch(batch: Any) -> tuple[Tensor, Tensor | None, Any]:
    """Split a batch into ``(inputs, targets or None, ids or None)``.

    Accepts a dict with ``"input"`` and optional ``"target"`` / ``"id"`` (what ``plkit.data`` yields),
    a tuple or list ``(inputs,)``, ``(inputs, targets)`` or ``(inputs, targets, ids)``, or a bare tensor.

    Raises:
        TypeError: the batch is none of these.

    Example:
        >>> import torch
        >>> x, y, ids = unpack_batch({"input": torch.zeros(2, 3), "target": torch.tensor([1, 0])})
        >>> x.shape, y.tolist(), ids
        (torch.Size([2, 3]), [1, 0], None)
        >>> unpack_batch((torch.zeros(2, 3), torch.tensor([1, 0])))[1].tolist()
        [1, 0]
    """
    if isinstance(batch, Tensor):
        return batch, None, None
    if isinstance(batch, Mapping):
        if INPUT not in batch:
            raise TypeError(
                f"the batch is a dict with keys {sorted(batch)}, without {INPUT!r}: plkit's modules read the inputs "
                f"from {INPUT!r}, the targets from {TARGET!r} and the ids from {ID!r}; rename the keys in your dataset"
            )
        return batch[INPUT], batch.get(TARGET), batch.get(ID)
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 3 and isinstance(batch[0], Tensor):
        padded = (*batch, None, None)
        return padded[0], padded[1], padded[2]
    raise TypeError(
        f"cannot read a batch of type {type(batch).__name__}: give a dict with {INPUT!r} (and {TARGET!r}, {ID!r}), "
        "or a tuple (inputs, targets[, ids])"
    )
