"""EmbeddingWriter: stream ``trainer.predict`` outputs to one ``.npy`` (or ``.tsv``) file in dataset order.

Each rank appends its batches to its own shard files as they arrive (memory stays bounded by a batch), and at the
end of the predict epoch rank zero merges the shards in dataset-index order, drops the samples a distributed sampler
repeated, and writes the result under temporary names, renamed into place, with ``manifest.json`` written last: a
folder without a manifest is visibly incomplete.

This file imports nothing else from plkit: copy it into any Lightning project.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
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

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}
_FORMATS = ("npy", "tsv")
_MANIFEST = "manifest.json"
_SHARDS = ".shards"
_OUTPUTS = (_MANIFEST, "embeddings.npy", "embeddings.tsv", "ids.npy", "ids.txt", _SHARDS)
# A fixed-size .npy preamble lets a file be written rows first and its header (which holds the row count) last.
_PREAMBLE = 128
_CHUNK_ROWS = 16384
_TSV_VALUES = 32768


class EmbeddingWriter(BasePredictionWriter):
    """Write every prediction row once, in dataset order, to ``output_dir`` under any strategy (DDP included).

    After ``trainer.predict`` the folder holds ``embeddings.npy`` (rows x dim, row ``i`` is dataset sample ``i``
    among those predicted), ``ids.npy`` (integer ids) or ``ids.txt`` (string ids, one per line), and
    ``manifest.json`` (rows, dim, dtype, format, id source, versions), written last. With ``format="tsv"`` it holds
    ``embeddings.tsv`` instead: no header, the id, then one value per column, tab-separated, read back by
    ``numpy.loadtxt(path)`` or ``pandas.read_csv(path, sep="\\t", header=None)``. Floats are written in
    scientific notation with enough digits to read back exactly (``+1.25730220e-01``).

    Ids come from ``batch[id_key]`` (an integer tensor, or a list of strings) when ``id_key`` is set, else they
    are the dataset indices. Rows are ordered by dataset index (Lightning records it per batch); a sample
    that a sampler yields twice (``DistributedSampler`` pads uneven splits by repeating samples) is kept once.
    For an ``IterableDataset`` there is no index: rows keep their arrival order (rank by rank under DDP).

    Only ``write_interval="batch"`` is accepted: with ``"epoch"`` Lightning keeps every prediction in memory until
    the end of the epoch (the cost this writer exists to avoid) and the batches, which hold the ids, are gone by
    then. Pass ``return_predictions=False`` to ``trainer.predict`` so Lightning does not keep them either.

    Under DDP each rank writes only ``output_dir/.shards/rank{r}/``; rank zero reads them all, so with several
    machines ``output_dir`` must be on a shared filesystem. While predicting, memory holds one batch; while
    merging, a few blocks of ``16384 x world_size`` rows, plus 16 bytes per row of a rank whose indices arrived
    out of order (a shuffled sampler), to sort them.

    Args:
        output_dir: Folder for the result; ``None`` means ``<trainer.log_dir>/predictions``. It must be empty or
            missing unless ``overwrite`` is set.
        write_interval: Must be ``"batch"`` (see above); kept for the ``BasePredictionWriter`` signature.
        id_key: Key of the ids in a dict batch (``"query_pos_skuid"``), or ``None`` to use dataset indices.
        format: ``"npy"`` or ``"tsv"``.
        dtype: Storage dtype of the values: ``"float32"``, ``"float16"`` or ``"float64"``.
        prediction_key: Key of the embedding tensor when ``predict_step`` returns a dict.
        overwrite: Replace a previous result in ``output_dir``. Only the files this writer creates are removed;
            anything else in the folder is left alone.

    Raises:
        ValueError: At construction for a bad argument; at setup for a non-empty ``output_dir`` without
            ``overwrite``; at the first bad batch for a prediction that is not a 2-D tensor, or ids that are
            missing, of the wrong type or count; at the end when no rank produced a row.
        TypeError: At the first batch whose prediction is not a tensor, or whose ids are neither integers nor
            strings.
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
        ...         return {"embeddings": self.net(batch["x"])}
        >>> data = [{"x": torch.ones(3) * i, "sku": 100 + i} for i in range(10)]
        >>> out = tempfile.mkdtemp()
        >>> writer = EmbeddingWriter(out, id_key="sku")
        >>> trainer = pl.Trainer(callbacks=[writer], logger=False, enable_progress_bar=False)
        >>> trainer.predict(Encoder(), DataLoader(data, batch_size=4), return_predictions=False)
        >>> np.load(f"{out}/embeddings.npy").shape, np.load(f"{out}/ids.npy")[:3].tolist()
        ((10, 2), [100, 101, 102])
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        write_interval: Literal["batch", "epoch", "batch_and_epoch"] = "batch",
        id_key: str | None = None,
        format: Literal["npy", "tsv"] = "npy",
        dtype: Literal["float32", "float16", "float64"] = "float32",
        prediction_key: str = "embeddings",
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
        super().__init__(write_interval)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.id_key = id_key
        self.format = format
        self.dtype = dtype
        self.prediction_key = prediction_key
        self.overwrite = overwrite
        self._resolved_dir: Path | None = None
        self._shard: _ShardWriter | None = None
        self._has_indices = True
        self._rank = 0

    @property
    def resolved_dir(self) -> Path | None:
        """The folder the last (or current) predict run writes to, once ``setup`` has resolved it."""
        return self._resolved_dir

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        self._shard = None
        self._resolved_dir = None
        self._rank = trainer.global_rank
        default = Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
        folder = (self.output_dir or default).expanduser().absolute()
        _agree(trainer, lambda: self._prepare_output(folder) if trainer.is_global_zero else None)
        self._resolved_dir = trainer.strategy.broadcast(folder)
        shard_dir = self._resolved_dir / _SHARDS / f"rank{trainer.global_rank}"
        _agree(trainer, lambda: shard_dir.mkdir(exist_ok=True), all_ranks=True)

    def _prepare_output(self, folder: Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"EmbeddingWriter output_dir={str(folder)!r} is a file; choose a folder.")
        if folder.is_dir() and any(folder.iterdir()):
            if not self.overwrite:
                raise ValueError(
                    f"EmbeddingWriter output_dir={str(folder)!r} is not empty; choose a new folder or pass "
                    "overwrite=True to replace the previous result."
                )
            # The manifest goes first so that the old result stops looking complete at once.
            for name in _OUTPUTS:
                _remove(folder / name)
            for stale in folder.glob(".*.partial"):
                _remove(stale)
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
        ids = self._ids(batch, len(rows)) if self.id_key is not None else None
        if self._shard is None:
            assert self._resolved_dir is not None, "EmbeddingWriter.setup did not run"
            kind = None if ids is None else ("int" if isinstance(ids, np.ndarray) else "str")
            folder = self._resolved_dir / _SHARDS / f"rank{trainer.global_rank}"
            self._shard = _ShardWriter(folder, rows.dtype, rows.shape[1], kind)
        if batch_indices is None:
            keys = self._shard.rows + np.arange(len(rows), dtype=np.int64) + (trainer.global_rank << 40)
        else:
            keys = np.asarray(batch_indices, dtype=np.int64).reshape(-1)
            if len(keys) != len(rows):
                raise ValueError(
                    f"EmbeddingWriter: predict_step returned {len(rows)} rows for a batch of {len(keys)} samples; "
                    "return one row per sample."
                )
        self._shard.append(rows, keys, ids)

    def _rows(self, prediction: Any) -> np.ndarray:
        value = prediction
        if isinstance(prediction, Mapping):
            if self.prediction_key not in prediction:
                raise ValueError(
                    f"EmbeddingWriter: predict_step returned a dict without the key {self.prediction_key!r} "
                    f"(keys: {list(prediction)}); set EmbeddingWriter(prediction_key=...) to the embedding's key."
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

    def _ids(self, batch: Any, n: int) -> np.ndarray | list[str]:
        if not isinstance(batch, Mapping) or self.id_key not in batch:
            found = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(
                f"EmbeddingWriter(id_key={self.id_key!r}): the batch has no such key (found: {found}); "
                "use a dict batch holding the ids, or id_key=None for dataset indices."
            )
        ids = _as_ids(batch[self.id_key], self.id_key)
        if len(ids) != n:
            raise ValueError(
                f"EmbeddingWriter: batch[{self.id_key!r}] holds {len(ids)} ids for {n} prediction rows; "
                "they must match one to one."
            )
        if isinstance(ids, list):
            bad = "\n\r\t" if self.format == "tsv" else "\n\r"
            if any(c in s for s in ids for c in bad):
                raise ValueError(
                    f"EmbeddingWriter: a string id in batch[{self.id_key!r}] holds a line break"
                    f"{' or tab' if self.format == 'tsv' else ''}, which cannot be written one id per line."
                )
        kind = "int" if isinstance(ids, np.ndarray) else "str"
        if self._shard is not None and kind != self._shard.id_kind:
            raise TypeError(
                f"EmbeddingWriter: batch[{self.id_key!r}] changed from {self._shard.id_kind} to {kind} ids."
            )
        return ids

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._resolved_dir is not None
        folder = self._resolved_dir
        if self._shard is not None:
            self._shard.close()
        else:  # a rank that received no batch still reports, so rank zero knows it has nothing
            _write_json(folder / _SHARDS / f"rank{trainer.global_rank}" / "meta.json", {"rows": 0})
        self._shard = None
        trainer.strategy.barrier("EmbeddingWriter.shards")
        _agree(trainer, lambda: self._assemble(folder, trainer.world_size) if trainer.is_global_zero else None)

    def _assemble(self, folder: Path, world_size: int) -> None:
        try:
            shards = [_ShardReader(folder / _SHARDS / f"rank{r}") for r in range(world_size)]
            shards = [s for s in shards if s.rows]
            if not shards:
                raise ValueError("EmbeddingWriter: predict produced no rows; nothing was written.")
            _check_consistent(shards)
            manifest = _write_result(folder, shards, self.format, self.id_key, world_size, self._has_indices)
            _write_json(folder / _MANIFEST, manifest)
        finally:
            self._cleanup(folder, everything=True)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None
        if self._resolved_dir is not None and trainer.state.fn == "predict":
            self._cleanup(self._resolved_dir, everything=trainer.is_global_zero)

    def _cleanup(self, folder: Path, everything: bool) -> None:
        _remove(folder / _SHARDS / f"rank{self._rank}")
        if everything:
            _remove(folder / _SHARDS)
            for partial in folder.glob(".*.partial"):
                _remove(partial)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._shard is not None:
            self._shard.close()
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


def _as_ids(raw: Any, key: str) -> np.ndarray | list[str]:
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
        f"EmbeddingWriter: batch[{key!r}] must hold integer or string ids (an int tensor or a list of str); "
        f"got {type(raw).__name__}{f' of {raw.dtype}' if isinstance(raw, np.ndarray) else ''}."
    )


class _ShardWriter:
    """One rank's append-only files: raw rows, int64 sort keys, and ids."""

    def __init__(self, folder: Path, dtype: np.dtype, dim: int, id_kind: str | None) -> None:
        self.folder, self.dtype, self.dim, self.id_kind = folder, np.dtype(dtype), dim, id_kind
        self.rows = 0
        self.id_bytes = 0
        self.in_order = True  # keys never decrease: rank zero can merge the shard without sorting it
        self.contiguous = True  # keys are exactly 0, 1, 2, ...: the shard already is the result
        self._files = {"rows": open(folder / "rows.bin", "wb"), "keys": open(folder / "keys.bin", "wb")}  # noqa: SIM115
        self._files["rows"].write(bytes(_PREAMBLE))
        if id_kind == "int":
            self._files["ids"] = open(folder / "ids.bin", "wb")  # noqa: SIM115
            self._files["ids"].write(bytes(_PREAMBLE))
        elif id_kind == "str":
            self._files["ids"] = open(folder / "ids.txt", "wb")  # noqa: SIM115
            self._files["ends"] = open(folder / "id_ends.bin", "wb")  # noqa: SIM115

    def append(self, rows: np.ndarray, keys: np.ndarray, ids: np.ndarray | list[str] | None) -> None:
        if len(keys):
            expected = np.arange(self.rows, self.rows + len(keys))
            self.contiguous = self.contiguous and bool(np.array_equal(keys, expected))
            previous = self._last if self.rows else keys[0]
            self.in_order = self.in_order and bool(keys[0] >= previous) and bool(np.all(np.diff(keys) >= 0))
            self._last = int(keys[-1])
        self._files["rows"].write(rows.data)
        self._files["keys"].write(keys.data)
        if isinstance(ids, np.ndarray):
            self._files["ids"].write(ids.data)
        elif ids is not None:
            encoded = [s.encode() + b"\n" for s in ids]
            ends = self.id_bytes + np.cumsum([len(b) for b in encoded], dtype=np.int64)
            self._files["ids"].write(b"".join(encoded))
            self._files["ends"].write(ends.data)
            self.id_bytes = int(ends[-1]) if len(ends) else self.id_bytes
        self.rows += len(rows)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        meta = {"rows": self.rows, "dim": self.dim, "dtype": self.dtype.str, "id_kind": self.id_kind}
        _write_json(self.folder / "meta.json", {**meta, "in_order": self.in_order, "contiguous": self.contiguous})


class _ShardReader:
    """Memory-mapped view of one rank's shard, with its keys in merge order."""

    def __init__(self, folder: Path) -> None:
        if not (folder / "meta.json").is_file():
            raise RuntimeError(f"EmbeddingWriter: shard {str(folder)!r} is missing; did every rank finish predict?")
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.rows = int(self.meta["rows"])
        if not self.rows:
            return
        self.dim, self.dtype, self.id_kind = self.meta["dim"], np.dtype(self.meta["dtype"]), self.meta["id_kind"]
        self.values = np.memmap(folder / "rows.bin", self.dtype, "r", _PREAMBLE, (self.rows, self.dim))
        keys = np.memmap(folder / "keys.bin", np.int64, "r", 0, (self.rows,))
        # Out-of-order keys (a shuffled sampler) are sorted here, at 16 bytes per row of this shard.
        self.order = None if self.meta["in_order"] else np.argsort(keys, kind="stable")
        self.keys = keys if self.order is None else keys[self.order]
        if self.id_kind == "int":
            self.ids = np.memmap(folder / "ids.bin", np.int64, "r", _PREAMBLE, (self.rows,))
        elif self.id_kind == "str":
            self.text = np.memmap(folder / "ids.txt", np.uint8, "r")
            self.ends = np.memmap(folder / "id_ends.bin", np.int64, "r", 0, (self.rows,))

    def release(self) -> None:
        """Drop the memory maps (before the files are moved or deleted)."""
        for name in ("values", "keys", "order", "ids", "text", "ends"):
            self.__dict__.pop(name, None)

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """Storage row numbers of the given merge positions."""
        return positions if self.order is None else self.order[positions]

    def text_ids(self, rows: np.ndarray) -> list[bytes]:
        """The string ids of ``rows`` (ascending or not), each without its line break."""
        starts = np.where(rows > 0, self.ends[np.maximum(rows - 1, 0)], 0)
        ends = self.ends[rows]
        lo, hi = int(starts.min()), int(ends.max())
        span = self.text[lo:hi].tobytes()
        return [span[a - lo : b - lo - 1] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def _check_consistent(shards: list[_ShardReader]) -> None:
    first = shards[0]
    for shard in shards[1:]:
        for field in ("dim", "dtype", "id_kind"):
            if getattr(shard, field) != getattr(first, field):
                raise ValueError(
                    f"EmbeddingWriter: ranks disagree on {field} ({getattr(first, field)} in {first.folder.name}, "
                    f"{getattr(shard, field)} in {shard.folder.name}); every rank must return the same kind of rows."
                )


def _merged(shards: list[_ShardReader]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield blocks of ``(key, shard number, merge position)`` in key order, each key once.

    A k-way merge of already-sorted shards, vectorised one chunk per shard at a time: everything up to the
    smallest "last buffered key" among shards with more data is safe to emit.
    """
    pos = [0] * len(shards)
    last = np.iinfo(np.int64).min
    while any(p < s.rows for p, s in zip(pos, shards, strict=True)):
        live = [i for i, s in enumerate(shards) if pos[i] < s.rows]
        bufs = {i: np.asarray(shards[i].keys[pos[i] : pos[i] + _CHUNK_ROWS]) for i in live}
        more = [bufs[i][-1] for i in live if pos[i] + len(bufs[i]) < shards[i].rows]
        bound = min(more) if more else None
        take = {i: len(b) if bound is None else int(np.searchsorted(b, bound, side="right")) for i, b in bufs.items()}
        keys = np.concatenate([bufs[i][: take[i]] for i in live])
        shard_no = np.concatenate([np.full(take[i], i) for i in live])
        position = np.concatenate([np.arange(pos[i], pos[i] + take[i]) for i in live])
        order = np.argsort(keys, kind="stable")  # stable: of repeated samples the lowest rank's copy is kept
        keys, shard_no, position = keys[order], shard_no[order], position[order]
        keep = np.ones(len(keys), dtype=bool)
        keep[1:] = keys[1:] != keys[:-1]
        keep &= keys > last
        if len(keys):
            last = keys[-1]
        for i in live:
            pos[i] += take[i]
        yield keys[keep], shard_no[keep], position[keep]


def _write_result(
    folder: Path, shards: list[_ShardReader], fmt: str, id_key: str | None, world_size: int, indexed: bool
) -> dict[str, Any]:
    first = shards[0]
    kind = first.id_kind or "int"
    written: dict[str, str] = {}
    if fmt == "npy" and len(shards) == 1 and first.meta["contiguous"]:
        rows = _adopt_shard(first, folder, written)
    else:
        rows = _stream_merge(folder, shards, fmt, kind, indexed, written)
    for name in written.values():
        os.replace(folder / f".{name}.partial", folder / name)
    try:
        from plkit import __version__ as plkit_version
    except ImportError:  # the file was copied out of plkit
        plkit_version = None
    return {
        "format": fmt,
        "rows": rows,
        "dim": first.dim,
        "dtype": first.dtype.name,
        "files": written,
        "id_source": f"batch[{id_key!r}]" if id_key is not None else ("dataset_index" if indexed else "arrival"),
        "id_type": kind,
        "order": "dataset_index" if indexed else "arrival (rank by rank)",
        "duplicates_dropped": sum(s.rows for s in shards) - rows,
        "world_size": world_size,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"plkit": plkit_version, "lightning": lightning.__version__, "torch": torch.__version__},
    }


def _adopt_shard(shard: _ShardReader, folder: Path, written: dict[str, str]) -> int:
    """One rank, rows already in dataset order: the shard's files become the result without a copy."""
    n, src = shard.rows, shard.folder
    shard.release()  # drop the memory maps before the files move
    with open(src / "rows.bin", "r+b") as f:
        f.write(_npy_header((n, shard.dim), shard.dtype))
    os.replace(src / "rows.bin", folder / ".embeddings.npy.partial")
    written["embeddings"] = "embeddings.npy"
    if shard.id_kind == "str":
        os.replace(src / "ids.txt", folder / ".ids.txt.partial")
        written["ids"] = "ids.txt"
        return n
    if shard.id_kind == "int":
        with open(src / "ids.bin", "r+b") as f:
            f.write(_npy_header((n,), np.dtype(np.int64)))
        os.replace(src / "ids.bin", folder / ".ids.npy.partial")
    else:
        with open(folder / ".ids.npy.partial", "wb") as f:
            f.write(_npy_header((n,), np.dtype(np.int64)))
            for start in range(0, n, _CHUNK_ROWS):
                f.write(np.arange(start, min(n, start + _CHUNK_ROWS), dtype=np.int64).data)
    written["ids"] = "ids.npy"
    return n


def _stream_merge(
    folder: Path, shards: list[_ShardReader], fmt: str, kind: str, indexed: bool, written: dict[str, str]
) -> int:
    first = shards[0]
    if fmt == "tsv":
        written["embeddings"] = "embeddings.tsv"
    else:
        written["embeddings"] = "embeddings.npy"
        written["ids"] = "ids.txt" if kind == "str" else "ids.npy"
    with contextlib.ExitStack() as stack:
        files = {k: stack.enter_context(open(folder / f".{name}.partial", "wb")) for k, name in written.items()}
        if fmt == "npy":
            files["embeddings"].write(bytes(_PREAMBLE))
            if kind == "int":
                files["ids"].write(bytes(_PREAMBLE))
        total = 0
        for keys, shard_no, position in _merged(shards):
            block = np.empty((len(keys), first.dim), first.dtype)
            ids: Any = np.empty(len(keys), np.int64) if kind == "int" else None
            texts: list[bytes] = [b""] * len(keys) if kind == "str" else []
            for i, shard in enumerate(shards):
                mask = shard_no == i
                if not mask.all():
                    if not mask.any():
                        continue
                    block[mask] = _take(shard.values, shard.rows_at(position[mask]))
                    if first.id_kind == "int":
                        ids[mask] = _take(shard.ids, shard.rows_at(position[mask]))
                else:  # the whole block comes from one shard: often a plain slice of it, read without a copy
                    block = _take(shard.values, shard.rows_at(position))
                    if first.id_kind == "int":
                        ids = _take(shard.ids, shard.rows_at(position))
                if kind == "str":
                    where = np.flatnonzero(mask).tolist()
                    for j, text in zip(where, shard.text_ids(shard.rows_at(position[mask])), strict=True):
                        texts[j] = text
            if first.id_kind is None:  # ids are the dataset indices, or output positions for arrival order
                ids = keys if indexed else np.arange(total, total + len(keys), dtype=np.int64)
            if fmt == "tsv":
                prefixes = texts if kind == "str" else [b"%d" % v for v in ids.tolist()]
                # Small slices keep the formatter's temporaries in cache (and below malloc's mmap threshold):
                # 2,048-row slices run 3 times slower than 256-row ones at 128 columns.
                step = max(1, _TSV_VALUES // first.dim)
                for start in range(0, len(block), step):
                    end = start + step
                    files["embeddings"].write(_tsv_lines(block[start:end], prefixes[start:end]))
            else:
                files["embeddings"].write(block.data)
                files["ids"].write(b"".join(t + b"\n" for t in texts) if kind == "str" else ids.data)
            total += len(keys)
        if fmt == "npy":
            files["embeddings"].seek(0)
            files["embeddings"].write(_npy_header((total, first.dim), first.dtype))
            if kind == "int":
                files["ids"].seek(0)
                files["ids"].write(_npy_header((total,), np.dtype(np.int64)))
    return total


def _take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]``, as a slice when the rows are consecutive."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and bool(np.all(np.diff(rows) == 1)):
        return array[rows[0] : rows[-1] + 1]
    return array[rows]


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """A version-1.0 ``.npy`` header padded to exactly ``_PREAMBLE`` bytes."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}).encode()
    size = _PREAMBLE - 10
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", size) + text + b" " * (size - len(text) - 1) + b"\n"


@functools.lru_cache(maxsize=2)
def _tsv_tables(digits: int) -> dict[str, np.ndarray]:
    """Lookup tables of 4-byte words for the vectorised float formatter (built on first use, not on import)."""

    def words(texts: list[str]) -> np.ndarray:
        return np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint32).copy()

    return {
        "head": words([f"{sign}{i // 10}.{i % 10}" for sign in "+-" for i in range(100)]),
        "mid": words([f"{i:04d}" for i in range(10000)]),
        "tail": words([f"{i:03d}e" for i in range(1000)]),
        "exp": words([f"{e:+03d}{end}" for end in "\t\n" for e in range(-99, 100)]).reshape(2, 199),
        "scale": 10.0 ** np.arange(-99 - digits, 100, dtype=np.float64),
    }


def _tsv_lines(rows: np.ndarray, prefixes: list[bytes]) -> bytes:
    """Format ``id\\tv1\\t...\\tvD\\n`` lines, fixed-width values built with table look-ups instead of per-value
    string formatting (about 20 times faster than ``str(row.tolist())``)."""
    if rows.dtype == np.float64 or not len(rows):  # 17 exact digits need more than float64 arithmetic: use repr
        return b"".join(
            p + b"\t" + "\t".join(map(repr, r)).encode() + b"\n" for p, r in zip(prefixes, rows.tolist(), strict=True)
        )
    digits = 9 if rows.dtype == np.float32 else 5  # enough significant digits to read each value back exactly
    t = _tsv_tables(digits)
    magnitude = np.abs(rows.astype(np.float64))
    finite = np.isfinite(magnitude)
    usable = np.where(finite & (magnitude > 0), magnitude, 1.0)
    exp = np.floor(np.log10(usable)).astype(np.int32)
    mantissa = np.rint(usable / t["scale"][exp + 100]).astype(np.int32)  # `digits` digits: d.dddddddd
    for wrong, step in ((mantissa >= 10**digits, 1), (mantissa < 10 ** (digits - 1), -1)):  # log10 rounding
        if wrong.any():
            exp[wrong] += step
            mantissa[wrong] = np.rint(usable[wrong] / t["scale"][exp[wrong] + 100]).astype(np.int32)
    mantissa[magnitude == 0], exp[magnitude == 0] = 0, 0
    # Each value is 3 or 4 four-byte words: "+d.d", ["dddd",] "ddde", "+XX\t" (or "+XX\n" at the end of a line).
    cells = np.empty((*rows.shape, 4 if digits == 9 else 3), np.uint32)
    head = mantissa // 10 ** (digits - 2)
    cells[..., 0] = t["head"][np.signbit(rows) * 100 + head]
    rest = mantissa - head * 10 ** (digits - 2)
    if digits == 9:
        mid = rest // 1000
        cells[..., 1] = t["mid"][mid]
        rest -= mid * 1000
    cells[..., -2] = t["tail"][rest]
    cells[..., -1] = t["exp"][0][exp + 99]
    cells[:, -1, -1] = t["exp"][1][exp[:, -1] + 99]
    width = cells.shape[1] * cells.shape[2] * 4
    flat = memoryview(cells).cast("B")
    bad_rows = set(np.flatnonzero(~finite.all(axis=1)).tolist())
    parts = []
    for i, prefix in enumerate(prefixes):
        parts.append(prefix + b"\t")
        if i in bad_rows:  # nan and inf do not fit the fixed-width cells
            parts.append("\t".join(map(repr, rows[i].tolist())).encode() + b"\n")
        else:
            parts.append(flat[i * width : (i + 1) * width])
    return b"".join(parts)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # best effort: cleanup must not hide the error that called it
            path.unlink()
