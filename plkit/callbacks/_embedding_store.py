"""EmbeddingWriter's storage: one shard per rank, merged in dataset-index order into ``.npy``, ``.txt`` or ``.tsv``.

A shard is a folder of append-only files: ``values.npy`` (the rows), ``keys.npy`` (each row's dataset index, the
merge's sort key), and per column (ids, labels) either ``<name>.npy`` (int64) or ``<name>.txt`` (one string a
line) with ``<name>.ends.npy`` (where each line ends, to read any row's string). Each ``.npy`` file is written
rows first; its fixed-size header, which holds the row count, last. ``meta.json`` closes the shard.

The result is written under ``.<name>.partial`` names and renamed into place at the end. This module imports
only numpy (and the standard library): it is the second file to copy with ``embedding_writer.py``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

CHUNK_ROWS = 16384  # rows per merge step and shard: the merge holds a few such blocks per rank
# Values formatted at once: the formatter's temporaries stay in cache (256-row slices of 128 values format 1.5x
# faster than a whole 16,384-row block).
TSV_VALUES = 32768
HEADER = 128  # bytes of every .npy header written here (a multiple of 64, as numpy's own)
PROJECTOR_CONFIG = "projector_config.pbtxt"
PROJECTOR_MARK = "# Written by EmbeddingWriter from the embeddings in projector/; rewritten by each predict run.\n"

Column = np.ndarray | list[str]  # one id or label per row: int64 values, or strings


class NpyFile:
    """A ``.npy`` file appended block by block; its header, which holds the row count, is written at ``close``."""

    def __init__(self, path: Path, dtype: Any, dim: int | None = None) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.file.write(bytes(HEADER))
        self.dtype, self.dim, self.rows = np.dtype(dtype), dim, 0

    def append(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, self.dtype).data)
        self.rows += len(block)

    def close(self) -> None:
        shape = (self.rows,) if self.dim is None else (self.rows, self.dim)
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape})
        self.file.seek(0)  # version 1.0: magic, version, header length, then the header padded to the length
        self.file.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", HEADER - 10) + header.encode().ljust(HEADER - 11))
        self.file.write(b"\n")
        self.file.close()


class ShardWriter:
    """One rank's shard, appended batch by batch."""

    def __init__(self, folder: Path, dtype: Any, dim: int, kinds: dict[str, str]) -> None:
        self.folder, self.dim, self.kinds = folder, dim, kinds
        self.rows = 0
        self.in_order = True  # keys never decrease: rank zero can merge the shard without sorting it
        self.contiguous = True  # keys are exactly 0, 1, 2, ...: the shard's files already are the result
        self.files = {"values": NpyFile(folder / "values.npy", dtype, dim), "keys": NpyFile(folder / "keys.npy", "i8")}
        self.text: dict[str, Any] = {}
        self.text_bytes: dict[str, int] = {}
        for name, kind in kinds.items():
            if kind == "int":
                self.files[name] = NpyFile(folder / f"{name}.npy", "i8")
            else:
                self.text[name] = open(folder / f"{name}.txt", "wb")  # noqa: SIM115 (closed by close())
                self.files[f"{name}.ends"] = NpyFile(folder / f"{name}.ends.npy", "i8")
                self.text_bytes[name] = 0

    def append(self, rows: np.ndarray, keys: np.ndarray, columns: dict[str, Column]) -> None:
        if len(keys):
            expected = np.arange(self.rows, self.rows + len(keys))
            self.contiguous = self.contiguous and bool(np.array_equal(keys, expected))
            previous = self.last if self.rows else keys[0]
            self.in_order = self.in_order and bool(keys[0] >= previous) and bool(np.all(np.diff(keys) >= 0))
            self.last = int(keys[-1])
        self.files["values"].append(rows)
        self.files["keys"].append(keys)
        for name, values in columns.items():
            if isinstance(values, np.ndarray):
                self.files[name].append(values)
                continue
            lines = [s.encode() + b"\n" for s in values]
            self.text[name].write(b"".join(lines))
            lengths = np.fromiter(map(len, lines), np.int64, len(lines))
            self.files[f"{name}.ends"].append(self.text_bytes[name] + np.cumsum(lengths))
            self.text_bytes[name] += int(lengths.sum())
        self.rows += len(rows)

    def close(self, sources: dict[str, str]) -> None:
        for f in [*self.files.values(), *self.text.values()]:
            f.close()
        meta = {"rows": self.rows, "dim": self.dim, "kinds": self.kinds, "sources": sources}
        write_json(self.folder / "meta.json", {**meta, "in_order": self.in_order, "contiguous": self.contiguous})


class ShardReader:
    """Memory-mapped view of one rank's shard, with its keys in merge order."""

    def __init__(self, folder: Path) -> None:
        if not (folder / "meta.json").is_file():
            raise RuntimeError(f"EmbeddingWriter: shard {str(folder)!r} is missing; did every rank finish predict?")
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.rows = int(self.meta["rows"])
        if not self.rows:
            return
        self.dim, self.kinds = self.meta["dim"], self.meta["kinds"]
        self.values = np.load(folder / "values.npy", mmap_mode="r")
        self.dtype = self.values.dtype
        keys = np.load(folder / "keys.npy", mmap_mode="r")
        # Out-of-order keys (a shuffled sampler) are sorted here, at 16 bytes per row of this shard.
        self.order = None if self.meta["in_order"] else np.argsort(keys, kind="stable")
        self.keys = keys if self.order is None else keys[self.order]

    def take(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The value rows at the given merge positions (into ``out``, when given, without a temporary copy)."""
        rows = positions if self.order is None else self.order[positions]
        return np.take(self.values, rows, axis=0, out=out, mode="clip")  # "raise" would buffer ``out``

    def column(self, name: str, positions: np.ndarray) -> Column:
        """The ids or labels at the given merge positions."""
        rows = positions if self.order is None else self.order[positions]
        if self.kinds[name] == "int":
            return np.asarray(np.load(self.folder / f"{name}.npy", mmap_mode="r")[rows])
        ends = np.load(self.folder / f"{name}.ends.npy", mmap_mode="r")
        starts, stops = np.where(rows > 0, ends[np.maximum(rows - 1, 0)], 0), ends[rows]
        lo, hi = int(starts.min()), int(stops.max())
        span = np.memmap(self.folder / f"{name}.txt", np.uint8, "r")[lo:hi].tobytes()
        return [span[a - lo : b - lo - 1].decode() for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]


def read_shards(root: Path, world_size: int) -> list[ShardReader]:
    """The shards of ranks that produced rows; they must agree on the rows' width, dtype and columns."""
    shards = [s for s in (ShardReader(root / f"rank{r}") for r in range(world_size)) if s.rows]
    for shard in shards[1:]:
        for field in ("dim", "dtype", "kinds"):
            if getattr(shard, field) != getattr(shards[0], field):
                raise ValueError(
                    f"EmbeddingWriter: ranks disagree on {field} ({getattr(shards[0], field)} in "
                    f"{shards[0].folder.name}, {getattr(shard, field)} in {shard.folder.name}); every rank must "
                    "return the same kind of rows."
                )
    return shards


def merged(shards: list[ShardReader]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield blocks of ``(key, shard number, merge position)`` in key order, each key once.

    A k-way merge of sorted shards, a chunk of each at a time: every key up to the smallest last buffered key
    among the shards with more rows to read is final, so it is sorted, deduplicated and emitted.
    """
    pos = [0] * len(shards)
    last = np.iinfo(np.int64).min
    while any(p < s.rows for p, s in zip(pos, shards, strict=True)):
        live = [i for i, s in enumerate(shards) if pos[i] < s.rows]
        bufs = {i: np.asarray(shards[i].keys[pos[i] : pos[i] + CHUNK_ROWS]) for i in live}
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


def blocks(shards: list[ShardReader], indexed: bool) -> Iterator[tuple[np.ndarray, dict[str, Column]]]:
    """The result in blocks of rows, in order, each with its columns; ``ids`` are the keys when none were given
    (the dataset indices, or the rows' positions when there are no indices)."""
    first, done = shards[0], 0
    for keys, shard_no, position in merged(shards):
        values = np.empty((len(keys), first.dim), first.dtype)
        columns: dict[str, Any] = {
            n: np.empty(len(keys), np.int64) if k == "int" else [""] * len(keys) for n, k in first.kinds.items()
        }
        for i, shard in enumerate(shards):
            where = np.flatnonzero(shard_no == i)
            if not len(where):
                continue
            if len(where) == len(keys):  # the whole block from one shard (always, with one rank)
                shard.take(position, out=values)
            else:
                values[where] = shard.take(position[where])
            for name, column in columns.items():
                part = shard.column(name, position[where])
                if isinstance(column, np.ndarray):
                    column[where] = part
                else:
                    for j, text in zip(where.tolist(), part, strict=True):
                        column[j] = text
        if "ids" not in columns:
            columns["ids"] = keys if indexed else np.arange(done, done + len(keys), dtype=np.int64)
        done += len(keys)
        yield values, columns
        del values, columns  # before the next block is made: memory holds one block at a time


def write_result(folder: Path, shards: list[ShardReader], files: dict[str, str], indexed: bool) -> int:
    """Write ``files`` (``values``: ``<name>.npy`` or ``.tsv``; ``ids``, ``labels``: ``.npy`` or ``.txt``) into
    ``folder``, renamed into place at the end; return the row count. A ``.tsv`` holds the ids as first column."""
    first = shards[0]
    if len(shards) == 1 and first.meta["contiguous"] and files["values"].endswith(".npy"):
        # One rank's rows 0..n-1 in order: its files are the result, renamed rather than copied (the
        # "one rank, in order" row of python -m benchmarks, against "merged").
        rows = _adopt(first, folder, files)
    else:
        with contextlib.ExitStack() as stack:
            out: dict[str, Any] = {}
            for role, name in files.items():
                path = folder / f".{name}.partial"
                if name.endswith(".npy"):
                    out[role] = NpyFile(
                        path, first.dtype if role == "values" else "i8", first.dim if role == "values" else None
                    )
                else:
                    out[role] = open(path, "wb")  # noqa: SIM115 (closed with the stack)
                stack.callback(out[role].close)
            rows = 0
            for values, columns in blocks(shards, indexed):
                if isinstance(out["values"], NpyFile):
                    out["values"].append(values)
                else:
                    out["values"].writelines(tsv(values, text(columns["ids"])))
                for role in out.keys() & {"ids", "labels"}:
                    if isinstance(out[role], NpyFile):
                        out[role].append(columns[role])
                    else:
                        out[role].write(b"".join(t + b"\n" for t in text(columns[role])))
                rows += len(values)
                del values, columns  # see blocks()
    for name in files.values():
        os.replace(folder / f".{name}.partial", folder / name)
    return rows


def _adopt(shard: ShardReader, folder: Path, files: dict[str, str]) -> int:
    n, src = shard.rows, shard.folder
    del shard.values, shard.keys  # drop the memory maps before the files move
    for role, name in files.items():
        if role == "values" or role in shard.kinds:
            os.replace(src / ("values.npy" if role == "values" else name), folder / f".{name}.partial")
        else:  # no id_key: the ids are the dataset indices
            indices = NpyFile(folder / f".{name}.partial", "i8")
            for start in range(0, n, CHUNK_ROWS):
                indices.append(np.arange(start, min(n, start + CHUNK_ROWS), dtype=np.int64))
            indices.close()
    return n


def write_projector(
    log_dir: Path, key: str, shards: list[ShardReader], indexed: bool, header: list[str]
) -> Callable[[], None]:
    """TensorBoard's projector files for one embedding, in ``log_dir/projector/<key>/``: ``tensor.tsv`` (the values
    as float32, no ids), ``metadata.tsv`` (the ids, and the labels when ``header`` names two columns) and
    ``embedding.pbtxt``. They are written under temporary names; the function returned renames them into place
    and lists the embedding in ``log_dir/projector_config.pbtxt``: call it once the result itself is in place."""
    folder = log_dir / "projector" / key
    folder.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(folder / ".tensor.tsv.partial", "wb") as tensor, open(folder / ".metadata.tsv.partial", "wb") as meta:
        if len(header) > 1:  # the projector reads a first line as a header only with several columns
            meta.write("\t".join(header).encode() + b"\n")
        for values, columns in blocks(shards, indexed):
            tensor.writelines(tsv(values.astype(np.float32, copy=False)))
            cells = [text(columns[name]) for name in ("ids", "labels")[: len(header)]]
            meta.write(b"".join(b"\t".join(row) + b"\n" for row in zip(*cells, strict=True)))
            rows += len(values)
            del values, columns  # see blocks()
    path = f"projector/{key}"
    entry = (
        f'embeddings {{\n  tensor_name: "{key}"\n  tensor_path: "{path}/tensor.tsv"\n'
        f'  metadata_path: "{path}/metadata.tsv"\n  tensor_shape: {rows}\n  tensor_shape: {shards[0].dim}\n}}\n'
    )

    def publish() -> None:
        for name in ("tensor.tsv", "metadata.tsv"):
            os.replace(folder / f".{name}.partial", folder / name)
        write_text(folder / "embedding.pbtxt", entry)
        write_projector_config(log_dir)

    return publish


def write_projector_config(log_dir: Path) -> None:
    """``projector_config.pbtxt``: the entries of every embedding under ``log_dir/projector/``."""
    entries = sorted((log_dir / "projector").glob("*/embedding.pbtxt"))
    if entries or (log_dir / PROJECTOR_CONFIG).exists():
        write_text(log_dir / PROJECTOR_CONFIG, PROJECTOR_MARK + "".join(e.read_text() for e in entries))


def text(column: Column) -> list[bytes]:
    """A column's values as bytes, for text files."""
    return [b"%d" % v for v in column.tolist()] if isinstance(column, np.ndarray) else [s.encode() for s in column]


def tsv(rows: np.ndarray, prefixes: list[bytes] | None = None) -> Iterator[bytes]:
    """``[prefix\\t]v1\\t...\\tvD\\n`` lines, formatted and joined about ``TSV_VALUES`` values at a time."""
    step = max(1, TSV_VALUES // max(1, rows.shape[1]))
    for start in range(0, len(rows), step):
        lines = _format(rows[start : start + step])
        if prefixes is None:
            yield b"".join(lines)
        else:
            heads = prefixes[start : start + len(lines)]
            yield b"".join(part for p, line in zip(heads, lines, strict=True) for part in (p, b"\t", line))


@functools.lru_cache(maxsize=2)
def _tables(digits: int) -> dict[str, np.ndarray]:
    """Lookup tables of 4-byte words for the float formatter (built on first use, not on import)."""

    def words(texts: list[str]) -> np.ndarray:
        return np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint32).copy()

    return {
        "head": words([f"{sign}{i // 10}.{i % 10}" for sign in "+-" for i in range(100)]),
        "mid": words([f"{i:04d}" for i in range(10000)]),
        "tail": words([f"{i:03d}e" for i in range(1000)]),
        "exp": words([f"{e:+03d}{end}" for end in "\t\n" for e in range(-99, 100)]).reshape(2, 199),
        "scale": 10.0 ** np.arange(-99 - digits, 100, dtype=np.float64),
    }


def _format(rows: np.ndarray) -> list[Any]:
    """Each row as a line of fixed-width values (``+1.25730220e-01``, enough digits to read back exactly), built
    from table look-ups rather than per-value string formatting (``numpy.savetxt`` of the same rows is the
    "tsv formatting" row of python -m benchmarks)."""
    if rows.dtype == np.float64 or not len(rows):  # 17 exact digits need more than float64 arithmetic: use repr
        return [("\t".join(map(repr, r)) + "\n").encode() for r in rows.tolist()]
    digits = 9 if rows.dtype == np.float32 else 5  # enough significant digits to read each value back exactly
    t = _tables(digits)
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
    flat, width = memoryview(cells).cast("B"), cells[0].nbytes
    lines: list[Any] = [flat[i : i + width] for i in range(0, len(flat), width)]  # views: no copy until joined
    for i in np.flatnonzero(~finite.all(axis=1)).tolist():  # nan and inf do not fit the fixed-width cells
        lines[i] = ("\t".join(map(repr, rows[i].tolist())) + "\n").encode()
    return lines


# Each copyable callback keeps its own few lines of write-to-a-temporary-name-then-rename rather than share a
# helper (plkit's CLI has one) that a copy of these files alone would lack.
def write_text(path: Path, content: str) -> None:
    """Write ``content`` to a temporary name, then rename it: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(content)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def remove(path: Path) -> None:
    """Delete a file or folder if it is there; best effort, so that cleanup never hides the error that called it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
