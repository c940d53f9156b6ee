"""``NpyDataModule``: a user's own arrays from ``.npy`` files, memory-mapped, with ids that reach the batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from typing_extensions import override

from plkit.data.batches import ID, INPUT, TARGET, BatchDataModule, DatasetFormatError, DatasetNotFoundError

__all__ = ["NpyDataModule", "NpyRows", "NpySplit", "open_npy"]

#: numpy dtype kinds a model can take: booleans, integers, floats.
_NUMBERS = "biuf"
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
            if key != ID and array.dtype.kind not in _NUMBERS:
                role = "features" if key == INPUT else "targets"
                raise DatasetFormatError(
                    f"{self.paths[key]} ({role}) holds {array.dtype} values, not numbers: save numbers "
                    "(e.g. array.astype('float32'); class labels as integers 0..K-1), and pass string ids as ids="
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


class NpyDataModule(BatchDataModule):
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

    display_name: ClassVar[str] = "NpyDataModule"

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
        super().__init__(batch_size, num_workers)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r}: give a fraction in [0, 1), e.g. 0.1 (0: no validation)")
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
        self.seed = seed
        self.dtype = dtype

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
    def dataset(self, split: str) -> NpyRows:
        """The rows of ``split`` (``"train"``, ``"val"``, ``"test"`` or ``"predict"``), after :meth:`setup`."""
        return super().dataset(split)
