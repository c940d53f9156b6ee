"""EmbeddingWriter: stream ``trainer.predict`` outputs to one ``.npy`` (or ``.tsv``) file in dataset order.

How it works:

1. While predicting, each rank appends every batch to its own shard, ``output_dir/.shards/rank{r}/``: the rows,
   the dataset index of each row, and its id and label. Memory holds one batch.
2. At the end of the predict epoch rank zero merges the shards in dataset-index order, keeping each index once
   (a ``DistributedSampler`` repeats samples to even out the ranks), and writes the result under temporary names.
   One rank whose rows arrived in dataset order (a plain single-process predict) needs no merge: its shard files
   already are the result and are renamed, not copied.
3. The files are renamed into place, ``manifest.json`` last: a folder without a manifest is visibly incomplete.

This file holds the Lightning side; the files (shards, merge, ``.npy``/``.tsv`` writing) are in
``_embedding_store.py`` next to it, which imports only numpy. Neither imports anything else from plkit: copy
the two files into one package of any Lightning project.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import lightning
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from . import _embedding_store as store
from ._embedding_store import Column

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}
_FORMATS = ("npy", "tsv")
_MANIFEST = "manifest.json"
_SHARDS = ".shards"
_RESERVED = ("ids", "labels", "manifest")  # file names the result uses besides the values'


class EmbeddingWriter(BasePredictionWriter):
    """Write every prediction row once, in dataset order, to ``output_dir`` under any strategy (DDP included).

    After ``trainer.predict`` the folder holds ``<prediction_key>.npy`` (rows x dim; by default
    ``embeddings.npy``; row ``i`` is dataset sample ``i`` among those predicted), ``ids.npy`` (integer ids) or
    ``ids.txt`` (string ids, one per line), with ``label_key`` also ``labels.npy`` or ``labels.txt``, and
    ``manifest.json`` (rows, dim, dtype, files, where ids and labels came from, versions), written last. With
    ``format="tsv"`` it holds ``<prediction_key>.tsv`` instead of the ``.npy`` and the ids: no header, the id,
    then one value per column, tab-separated, read back by ``numpy.loadtxt(path)`` or
    ``pandas.read_csv(path, sep="\\t", header=None)``. Floats are written in scientific notation with enough
    digits to read back exactly (``+1.25730220e-01``).

    Ids come from ``id_key`` (an integer tensor, or a list of strings), read from the dict ``predict_step``
    returns, else from the batch; without ``id_key`` they are the dataset indices. Labels (``label_key``) are
    read the same way. Rows are ordered by dataset index (Lightning records it per batch); a sample that a
    sampler yields twice (``DistributedSampler`` pads uneven splits by repeating samples) is kept once. For an
    ``IterableDataset`` there is no index: rows keep their arrival order (rank by rank under DDP).

    With ``projector=True`` it also writes what TensorBoard's embedding projector reads into the run's log folder
    (``trainer.log_dir``): ``projector/<prediction_key>/tensor.tsv`` (the values), ``metadata.tsv`` (the ids and,
    with ``label_key``, the labels) and ``projector_config.pbtxt`` listing every embedding under ``projector/``,
    so ``tensorboard --logdir <the logger's save_dir>`` shows them in its Projector tab. The log folder must be
    one TensorBoard lists as a run (Lightning's ``TensorBoardLogger`` writes an event file there) or the
    ``--logdir`` itself.

    Only ``write_interval="batch"`` is accepted: with ``"epoch"`` Lightning keeps every prediction in memory until
    the end of the epoch (the cost this writer exists to avoid) and the batches, which hold the ids, are gone by
    then. Pass ``return_predictions=False`` to ``trainer.predict`` so Lightning does not keep them either.

    Under DDP each rank writes only ``output_dir/.shards/rank{r}/``; rank zero reads them all, so with several
    machines ``output_dir`` must be on a shared filesystem. While merging, memory holds a few blocks of
    ``16384 x world_size`` rows, plus 16 bytes per row of a rank whose indices arrived out of order (a shuffled
    sampler), to sort them.

    Args:
        output_dir: Folder for the result; ``None`` means ``<trainer.log_dir>/predictions``. It must be empty or
            missing unless ``overwrite`` is set.
        write_interval: Must be ``"batch"`` (see above); kept for the ``BasePredictionWriter`` signature.
        id_key: Key of the ids in the prediction dict or the batch (``"sku"``), or ``None`` for dataset indices.
        prediction_key: Key of the rows when ``predict_step`` returns a dict; also names the result file
            (``probabilities`` writes ``probabilities.npy``). Letters, digits, ``_``, ``-`` and ``.``.
        label_key: Key of one label per row (an integer tensor, or a list of strings) in the prediction dict or
            the batch, written as ``labels.npy`` or ``labels.txt``; ``None`` for none.
        format: ``"npy"`` or ``"tsv"``.
        dtype: Storage dtype of the values: ``"float32"``, ``"float16"`` or ``"float64"``.
        projector: Also write the files TensorBoard's projector reads into ``trainer.log_dir`` (see above).
        overwrite: Replace a previous result in ``output_dir`` (and in the projector folder). Only the files this
            writer creates are removed; anything else in the folder is left alone.

    Raises:
        ValueError: At construction for a bad argument; at setup for a non-empty ``output_dir`` without
            ``overwrite``; at the first bad batch for a prediction that is not a 2-D tensor, or ids or labels
            that are missing, of the wrong type or count; at the end when no rank produced a row.
        TypeError: At the first batch whose prediction is not a tensor, or whose ids or labels are neither
            integers nor strings.
        PermissionError: At setup when ``output_dir`` cannot be written.

    Example::

        >>> import tempfile, numpy as np, torch
        >>> import lightning.pytorch as pl
        >>> from torch.utils.data import DataLoader
        >>> from plkit.callbacks import EmbeddingWriter
        >>> class Encoder(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(3, 2)
        ...     def predict_step(self, batch, batch_idx):
        ...         return {"embeddings": self.net(batch["x"]), "label": (batch["x"][:, 0] > 4).long()}
        >>> data = [{"x": torch.ones(3) * i, "sku": 100 + i} for i in range(10)]
        >>> out = tempfile.mkdtemp()
        >>> writer = EmbeddingWriter(out, id_key="sku", label_key="label")
        >>> trainer = pl.Trainer(callbacks=[writer], logger=False, enable_progress_bar=False)
        >>> trainer.predict(Encoder(), DataLoader(data, batch_size=4), return_predictions=False)
        >>> np.load(f"{out}/embeddings.npy").shape, np.load(f"{out}/ids.npy")[:3].tolist()
        ((10, 2), [100, 101, 102])
        >>> np.load(f"{out}/labels.npy").tolist()
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        write_interval: Literal["batch", "epoch", "batch_and_epoch"] = "batch",
        id_key: str | None = None,
        prediction_key: str = "embeddings",
        label_key: str | None = None,
        format: Literal["npy", "tsv"] = "npy",
        dtype: Literal["float32", "float16", "float64"] = "float32",
        projector: bool = False,
        overwrite: bool = False,
    ) -> None:
        if write_interval != "batch":
            raise ValueError(
                f"EmbeddingWriter(write_interval={write_interval!r}) is not supported: use 'batch'. It streams each "
                "batch to disk and writes the same files; 'epoch' would make Lightning hold every prediction in "
                "memory, and the batches (which hold the ids) are gone by the end of the epoch."
            )
        if format not in _FORMATS:
            raise ValueError(f"EmbeddingWriter(format={format!r}) is not supported: use one of {list(_FORMATS)}.")
        if dtype not in _DTYPES:
            raise ValueError(f"EmbeddingWriter(dtype={dtype!r}) is not supported: use one of {list(_DTYPES)}.")
        if not re.fullmatch(r"\w[\w.-]*", prediction_key) or prediction_key in _RESERVED:
            raise ValueError(
                f"EmbeddingWriter(prediction_key={prediction_key!r}) also names the result file: use letters, "
                "digits, '_', '-' or '.' (not first), and not 'ids', 'labels' or 'manifest'."
            )
        super().__init__(write_interval)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.id_key = id_key
        self.prediction_key = prediction_key
        self.label_key = label_key
        self.format = format
        self.dtype = dtype
        self.projector = projector
        self.overwrite = overwrite
        self._resolved_dir: Path | None = None
        self._log_dir: Path | None = None
        self._shard: store.ShardWriter | None = None
        self._sources: dict[str, str] = {}  # "ids"/"labels" -> where the first batch had them
        self._has_indices = True
        self._rank = 0

    @property
    def resolved_dir(self) -> Path | None:
        """The folder the last (or current) predict run writes to, once ``setup`` has resolved it."""
        return self._resolved_dir

    @property
    def _columns(self) -> dict[str, str]:
        """The per-row columns besides the values: file stem -> key."""
        keys = {"ids": self.id_key, "labels": self.label_key}
        return {name: key for name, key in keys.items() if key is not None}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        self._shard, self._resolved_dir, self._sources = None, None, {}
        self._rank = trainer.global_rank
        log_dir = Path(trainer.log_dir or trainer.default_root_dir).expanduser().absolute()  # on every rank
        folder = (self.output_dir or log_dir / "predictions").expanduser().absolute()
        self._log_dir = log_dir if self.projector else None
        _agree(trainer, lambda: self._prepare(folder) if trainer.is_global_zero else None)
        self._resolved_dir = trainer.strategy.broadcast(folder)
        shard_dir = self._resolved_dir / _SHARDS / f"rank{trainer.global_rank}"
        _agree(trainer, lambda: shard_dir.mkdir(exist_ok=True), all_ranks=True)

    def _prepare(self, folder: Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"EmbeddingWriter output_dir={str(folder)!r} is a file; choose a folder.")
        if self._log_dir is not None:
            self._prepare_projector(self._log_dir)
        if folder.is_dir() and any(folder.iterdir()):
            if not self.overwrite:
                raise ValueError(
                    f"EmbeddingWriter output_dir={str(folder)!r} is not empty; choose a new folder or pass "
                    "overwrite=True to replace the previous result."
                )
            # The manifest goes first so that the old result stops looking complete at once.
            stems = [self.prediction_key, "ids", "labels"]
            for name in [_MANIFEST, *(f"{s}.{x}" for s in stems for x in ("npy", "tsv", "txt")), _SHARDS]:
                store.remove(folder / name)
            for stale in folder.glob(".*.partial"):
                store.remove(stale)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe")
            os.close(fd)
            os.remove(probe)
            (folder / _SHARDS).mkdir()  # here, so that the other ranks only create their own folder in it
        except OSError as exc:
            raise PermissionError(
                f"EmbeddingWriter cannot write to output_dir={str(folder)!r} ({exc}); choose a writable folder."
            ) from exc

    def _prepare_projector(self, log_dir: Path) -> None:
        config, own = log_dir / store.PROJECTOR_CONFIG, log_dir / "projector" / self.prediction_key
        if config.is_file() and not config.read_text().startswith(store.PROJECTOR_MARK):
            raise ValueError(
                f"EmbeddingWriter(projector=True): {str(config)!r} was not written by EmbeddingWriter; log to "
                "another folder, or remove that file."
            )
        if own.exists():
            if not self.overwrite:
                raise ValueError(
                    f"EmbeddingWriter(projector=True): {str(own)!r} holds a previous projector result; pass "
                    "overwrite=True to replace it, or log to a new folder."
                )
            store.remove(own)
            store.write_projector_config(log_dir)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.num_predict_batches) > 1:
            raise ValueError(
                f"EmbeddingWriter writes one result per trainer.predict call, but {len(trainer.num_predict_batches)} "
                "predict dataloaders were given; call trainer.predict once per dataloader, each with its own writer."
            )
        if trainer.predict_loop.return_predictions:
            rank_zero_warn(
                "EmbeddingWriter streams the predictions to disk, but trainer.predict also keeps them all in memory; "
                "pass trainer.predict(..., return_predictions=False)."
            )
        loader = trainer.predict_dataloaders
        # Lightning records dataset indices only for map-style DataLoaders; elsewhere rows keep arrival order.
        self._has_indices = isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        indices = trainer.predict_loop.current_batch_indices if self._has_indices else None
        self.write_on_batch_end(trainer, pl_module, outputs, indices, batch, batch_idx, dataloader_idx)

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        rows = self._rows(prediction)
        columns = {name: self._column(name, key, prediction, batch, len(rows)) for name, key in self._columns.items()}
        if self._shard is None:
            assert self._resolved_dir is not None, "EmbeddingWriter.setup did not run"
            folder = self._resolved_dir / _SHARDS / f"rank{trainer.global_rank}"
            kinds = {name: _kind(values) for name, values in columns.items()}
            self._shard = store.ShardWriter(folder, rows.dtype, rows.shape[1], kinds)
        if batch_indices is None:  # arrival order, rank by rank
            keys = self._shard.rows + np.arange(len(rows), dtype=np.int64) + (trainer.global_rank << 40)
        else:
            keys = np.asarray(batch_indices, dtype=np.int64).reshape(-1)
            if len(keys) != len(rows):
                raise ValueError(
                    f"EmbeddingWriter: predict_step returned {len(rows)} rows for a batch of {len(keys)} samples; "
                    "return one row per sample."
                )
        self._shard.append(rows, keys, columns)

    def _rows(self, prediction: Any) -> np.ndarray:
        value = prediction
        if isinstance(prediction, Mapping):
            if self.prediction_key not in prediction:
                raise ValueError(
                    f"EmbeddingWriter: predict_step returned a dict without the key {self.prediction_key!r} "
                    f"(keys: {list(prediction)}); set EmbeddingWriter(prediction_key=...) to the rows' key."
                )
            value = prediction[self.prediction_key]
        if not isinstance(value, torch.Tensor) or value.is_complex():
            raise TypeError(
                f"EmbeddingWriter expects predict_step to return a real tensor (rows x dim) or a dict holding one "
                f"under {self.prediction_key!r}; got {type(value).__name__}."
            )
        if value.ndim != 2:
            raise ValueError(
                f"EmbeddingWriter expects a 2-D prediction (rows x dim); got shape {tuple(value.shape)}. "
                "Return `x.flatten(1)` or `x.unsqueeze(1)` from predict_step."
            )
        rows = value.detach().to(device="cpu", dtype=_DTYPES[self.dtype]).contiguous().numpy()
        if self._shard is not None and rows.shape[1] != self._shard.dim:
            raise ValueError(f"EmbeddingWriter: row width changed from {self._shard.dim} to {rows.shape[1]}.")
        return rows

    def _column(self, name: str, key: str, prediction: Any, batch: Any, n: int) -> Column:
        """The ids or labels of a batch: from the prediction dict if it has ``key``, else from the batch."""
        in_prediction = isinstance(prediction, Mapping) and key in prediction
        source, where = (prediction, "prediction") if in_prediction else (batch, "batch")
        arg = "id_key" if name == "ids" else "label_key"
        if not isinstance(source, Mapping) or key not in source:
            found = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(
                f"EmbeddingWriter({arg}={key!r}): neither the prediction nor the batch has this key (batch: "
                f"{found}); return it from predict_step, use a dict batch holding it, or set {arg}=None."
            )
        self._sources.setdefault(name, f"{where}[{key!r}]")
        values = _as_column(source[key], f"{where}[{key!r}]")
        if len(values) != n:
            raise ValueError(
                f"EmbeddingWriter: {where}[{key!r}] holds {len(values)} values for {n} prediction rows; "
                "they must match one to one."
            )
        # One value a line in .txt files; TSV files (the result, the projector's metadata) also split on tabs.
        tsv = self.projector or (self.format == "tsv" and name == "ids")
        if isinstance(values, list) and any(c in s for s in values for c in ("\n\r\t" if tsv else "\n\r")):
            raise ValueError(
                f"EmbeddingWriter: a string in {where}[{key!r}] holds a line break{' or a tab' if tsv else ''}, "
                "which cannot be written one value per line."
            )
        if self._shard is not None and _kind(values) != self._shard.kinds[name]:
            raise TypeError(
                f"EmbeddingWriter: {where}[{key!r}] changed from {self._shard.kinds[name]} to {_kind(values)} values."
            )
        return values

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._resolved_dir is not None
        folder = self._resolved_dir
        if self._shard is not None:
            self._shard.close(self._sources)
        else:  # a rank that received no batch still reports, so rank zero knows it has nothing
            store.write_json(folder / _SHARDS / f"rank{trainer.global_rank}" / "meta.json", {"rows": 0})
        self._shard = None
        trainer.strategy.barrier("EmbeddingWriter.shards")
        _agree(trainer, lambda: self._assemble(folder, trainer.world_size) if trainer.is_global_zero else None)

    def _assemble(self, folder: Path, world_size: int) -> None:
        try:
            shards = store.read_shards(folder / _SHARDS, world_size)
            if not shards:
                raise ValueError("EmbeddingWriter: predict produced no rows; nothing was written.")
            store.write_json(folder / _MANIFEST, self._write_result(folder, shards, world_size))
        finally:
            self._cleanup(folder, everything=True)

    def _write_result(self, folder: Path, shards: list[store.ShardReader], world_size: int) -> dict[str, Any]:
        first, indexed = shards[0], self._has_indices
        projector, publish = None, None
        if self._log_dir is not None:  # before the result: a single rank's result takes over the shard's files
            header = [self.id_key or "index", *([self.label_key] if self.label_key else [])]
            publish = store.write_projector(self._log_dir, self.prediction_key, shards, indexed, header)
            tensor = self._log_dir / "projector" / self.prediction_key / "tensor.tsv"
            projector = {"config": str(self._log_dir / store.PROJECTOR_CONFIG), "tensor": str(tensor)}
        files = {"values": f"{self.prediction_key}.{self.format}"}
        if self.format == "npy":  # a .tsv holds the ids in its first column
            files["ids"] = "ids.txt" if first.kinds.get("ids") == "str" else "ids.npy"
        if "labels" in first.kinds:
            files["labels"] = "labels.txt" if first.kinds["labels"] == "str" else "labels.npy"
        rows = store.write_result(folder, shards, files, indexed)
        if publish is not None:
            publish()
        sources = first.meta["sources"]
        return {
            "format": self.format,
            "rows": rows,
            "dim": first.dim,
            "dtype": first.dtype.name,
            "prediction_key": self.prediction_key,
            "files": files,
            "id_source": sources.get("ids") or ("dataset_index" if indexed else "arrival"),
            "id_type": first.kinds.get("ids", "int"),
            "label_source": sources.get("labels"),
            "label_type": first.kinds.get("labels"),
            "order": "dataset_index" if indexed else "arrival (rank by rank)",
            "duplicates_dropped": sum(s.rows for s in shards) - rows,
            "world_size": world_size,
            "projector": projector,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"lightning": lightning.__version__, "torch": torch.__version__, "numpy": np.__version__},
        }

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._shard is not None:
            self._shard.close(self._sources)
            self._shard = None
        if self._resolved_dir is not None and trainer.state.fn == "predict":
            self._cleanup(self._resolved_dir, everything=trainer.is_global_zero)

    def _cleanup(self, folder: Path, everything: bool) -> None:
        store.remove(folder / _SHARDS / f"rank{self._rank}")
        if everything:
            store.remove(folder / _SHARDS)
            projector = [] if self._log_dir is None else [self._log_dir / "projector" / self.prediction_key]
            for partial in [p for f in [folder, *projector] for p in f.glob(".*.partial")]:
                store.remove(partial)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._shard is not None:
            self._shard.close(self._sources)
            self._shard = None
        # A predict run with no batches at all (limit_predict_batches=0) never reaches the epoch end.
        if stage == "predict" and self._resolved_dir is not None and (self._resolved_dir / _SHARDS).exists():
            self._cleanup(self._resolved_dir, everything=trainer.is_global_zero)


def _agree(trainer: pl.Trainer, action: Any, all_ranks: bool = False) -> None:
    """Run ``action`` (on every rank or on rank zero) and raise its error on every rank, so that none hangs."""
    error: BaseException | None = None
    try:
        action()
    except Exception as exc:
        error = exc
    if all_ranks:
        failed = not trainer.strategy.reduce_boolean_decision(error is None, all=True)
        message = "EmbeddingWriter failed on another rank; see that rank's error."
    else:
        message = trainer.strategy.broadcast(None if error is None else f"{type(error).__name__}: {error}")
        failed = message is not None
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(message)


def _as_column(raw: Any, where: str) -> Column:
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind in "iu":
            return raw.reshape(-1).astype(np.int64)
        if raw.dtype.kind in "US":
            raw = raw.reshape(-1).tolist()
    if isinstance(raw, (list, tuple)):
        if all(isinstance(v, str) for v in raw):
            return list(raw)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw):
            return np.asarray(raw, dtype=np.int64)
    raise TypeError(
        f"EmbeddingWriter: {where} must hold integers or strings (an int tensor or a list of str); "
        f"got {type(raw).__name__}{f' of {raw.dtype}' if isinstance(raw, np.ndarray) else ''}."
    )


def _kind(values: Column) -> str:
    return "int" if isinstance(values, np.ndarray) else "str"
