"""``NpyDataModule``: a user's own arrays from ``.npy`` files, memory-mapped, with ids that reach the batch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from typing_extensions import override

from plkit.data._loaders import BatchLoaders
from plkit.data._npy_rows import DTYPES, NpyRows

__all__ = ["NpyDataModule", "NpySplit"]


@dataclass
class NpySplit:
    """The ``.npy`` files of one split: features, and optionally targets and ids, one row per sample.

    Args:
        features: path of an ``[N, ...]`` array.
        targets: path of an ``[N, ...]`` array (class indices, or float targets), or ``None``.
        ids: path of an ``[N]`` array of integer or string ids, or ``None`` (ids are then the row numbers).
    """

    features: str
    targets: str | None = None
    ids: str | None = None


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value).expanduser()


def _split(value: NpySplit | Mapping[str, str] | None, name: str) -> NpySplit | None:
    if value is None or isinstance(value, NpySplit):
        return value
    if isinstance(value, Mapping) and "features" in value and set(value) <= {"features", "targets", "ids"}:
        return NpySplit(**value)
    raise ValueError(f"{name}={value!r}: give NpySplit(features=..., targets=..., ids=...) or a dict with those keys")


class NpyDataModule(BatchLoaders):
    """Train, validate, test and predict on arrays saved with ``numpy.save``.

    The files are memory-mapped, so arrays larger than RAM work: a batch reads only its own rows.
    Batches are dicts: ``"input"`` (the features as ``dtype``), ``"target"`` (when there are targets)
    and ``"id"`` (the ids, or the row numbers when there are none). With
    ``EmbeddingWriter(id_key="id")`` the ids are written next to each prediction.

    Args:
        features: the ``[N, ...]`` features of the training data.
        targets: its ``[N, ...]`` targets, or ``None`` (e.g. for an autoencoder, or predict only).
        ids: its ``[N]`` ids (integers, or strings saved as a fixed-width string array), or ``None``.
        val_fraction: the fraction of rows held out for validation, drawn with ``seed`` (the same
            rows on every run and rank); 0 for no validation.
        test: the files of the test split (an :class:`NpySplit`, or a dict with its keys), or ``None``
            (``test`` then fails with a message).
        predict: the files ``predict`` runs on, likewise; ``None`` predicts on every row of ``features``, in order.
        batch_size: rows per batch.
        num_workers: ``DataLoader`` worker processes (each re-opens the memory maps).
        seed: the seed of the validation split.
        dtype: floating dtype the features are cast to; ``None`` keeps the stored dtype (e.g. int token ids).

    Raises:
        ValueError: a bad ``val_fraction``, ``batch_size``, ``num_workers``, ``dtype``, ``test`` or ``predict``.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> np.save(folder / "x.npy", np.random.default_rng(0).normal(size=(10, 3)))
        >>> np.save(folder / "ids.npy", np.array(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]))
        >>> dm = NpyDataModule(folder / "x.npy", ids=folder / "ids.npy", batch_size=4)
        >>> dm.setup("predict")
        >>> batch = next(iter(dm.predict_dataloader()))
        >>> batch["input"].shape, batch["id"]
        (torch.Size([4, 3]), ['a', 'b', 'c', 'd'])
    """

    def __init__(
        self,
        features: str | Path,
        targets: str | Path | None = None,
        ids: str | Path | None = None,
        val_fraction: float = 0.1,
        test: NpySplit | None = None,
        predict: NpySplit | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        dtype: Literal["float32", "float64", "float16", "bfloat16"] | None = "float32",
    ) -> None:
        super().__init__()
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r}: give a fraction in [0, 1), e.g. 0.1 (0: no validation)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: it must be a positive integer, e.g. 256")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers={num_workers!r}: it must be an integer >= 0")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(map(repr, DTYPES))} or None (keep)")
        self.test = _split(test, "test")
        self.predict = _split(predict, "predict")
        self.save_hyperparameters()
        # Plain data in the checkpoint, so load_from_checkpoint works with torch.load(weights_only=True).
        for key, value in (("features", features), ("targets", targets), ("ids", ids)):
            self.hparams[key] = None if value is None else str(value)
        for key, split in (("test", self.test), ("predict", self.predict)):
            self.hparams[key] = None if split is None else asdict(split)
        self.features, self.targets, self.ids = _path(features), _path(targets), _path(ids)
        self.val_fraction = float(val_fraction)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.dtype = dtype
        self._splits: dict[str, NpyRows] = {}

    def _split_rows(self) -> None:
        full = NpyRows(self.features, self.targets, self.ids, dtype=self.dtype)
        n = len(full)
        n_val = round(self.val_fraction * n)
        if n_val >= n:
            raise ValueError(
                f"val_fraction={self.val_fraction} holds out all {n} rows of {self.features}: give a smaller fraction"
            )
        # numpy's own generator with an explicit seed: the split must not depend on the global seed or the rank.
        order = np.random.default_rng(self.seed).permutation(n)
        for name, rows in (("train", order[n_val:]), ("val", order[:n_val])):
            self._splits[name] = NpyRows(self.features, self.targets, self.ids, np.sort(rows), self.dtype)

    @staticmethod
    def _from_split(split: NpySplit, dtype: str | None) -> NpyRows:
        return NpyRows(_path(split.features), _path(split.targets), _path(split.ids), dtype=dtype)

    @override
    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self._splits:
            self._split_rows()
        if stage == "test" and "test" not in self._splits:
            if self.test is None:
                raise ValueError(
                    "NpyDataModule has no test split: pass test={'features': ..., 'targets': ...} "
                    "(--data.test.features X.npy --data.test.targets Y.npy)"
                )
            self._splits["test"] = self._from_split(self.test, self.dtype)
        if stage == "predict" and "predict" not in self._splits:
            self._splits["predict"] = (
                NpyRows(self.features, self.targets, self.ids, dtype=self.dtype)
                if self.predict is None
                else self._from_split(self.predict, self.dtype)
            )

    @override
    def dataset(self, split: Literal["train", "val", "test", "predict"]) -> NpyRows:
        """The rows of ``split`` (after :meth:`setup`)."""
        if split not in self._splits:
            raise RuntimeError(f"the {split!r} split is not loaded: call setup() first")
        return self._splits[split]
