"""Benchmarks for ``plkit.callbacks``: EmbeddingWriter against ``numpy.save`` and the notes' writer, and
GradNormLogger against Lightning's ``grad_norm`` utility.

Run ``python benchmarks/callbacks.py [--quick] [--json OUT]``; ``run(quick)`` returns the same numbers as a dict.
Each figure is the median of a few repeats. Absolute times move with the machine's load: read the ratios, which
compare measurements taken side by side in one run.

How each is measured, and why:

- **EmbeddingWriter** is driven through its own hooks (``setup``, ``write_on_batch_end`` per batch of 1,024 rows,
  ``on_predict_epoch_end``) with a real, unattached ``Trainer`` and batches already made as CPU tensors. That
  times exactly the writer's work (per-batch streaming plus the final assembly and manifest), which a full
  ``trainer.predict`` run would bury under the model and the data loading. The baseline is one ``numpy.save`` of
  the same rows, already assembled in memory (the best case for it: no per-batch work, no ids, no manifest).
- **The notes' writer** is the sketch's loop, ``f.write(f"{id}\\t{vector.tolist()}\\n")`` once per row.
- **Peak memory** of the writer is taken with ``tracemalloc`` (it sees numpy's buffers, not the page cache or
  torch's allocator) at two sizes, 4x apart: flat means the writer holds a batch, not the whole result.
- **GradNormLogger** is timed per call of ``on_before_optimizer_step`` on a 64-layer MLP whose gradients are
  filled, with a stub trainer (so nothing else is timed), on a step that is logged, a step that is not, and a
  step that is not logged with ``warn_above`` set (the norm is computed, no host sync). The baseline is
  ``lightning.pytorch.utilities.grad_norm(module, 2)``, which the Lightning docs call every step. On a GPU the
  gap is wider than on a CPU: ``grad_norm`` copies each parameter's norm to the host one by one.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import grad_norm

from plkit.callbacks import EmbeddingWriter, GradNormLogger

DIM = 128
BATCH = 1024


def _median_seconds(fn: Callable[[], Any], repeats: int, reset: Callable[[], Any] | None = None) -> float:
    """Median wall time of ``fn()``; ``reset()`` runs before each repeat, outside the timing."""
    times = []
    for _ in range(repeats):
        if reset is not None:
            reset()
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _Idle(pl.LightningModule):
    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return batch


_TRAINER: list[pl.Trainer] = []


def _write_with_callback(folder: Path, batches: list[torch.Tensor], fmt: str) -> None:
    """What EmbeddingWriter does during ``trainer.predict``, without the model or the data loader."""
    if not _TRAINER:  # built once: constructing a Trainer is not the writer's cost
        _TRAINER.append(pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False))
    trainer = _TRAINER[0]
    module = _Idle()
    writer = EmbeddingWriter(folder, format=fmt)
    writer.setup(trainer, module, "predict")
    start = 0
    for i, batch in enumerate(batches):
        indices = list(range(start, start + len(batch)))
        writer.write_on_batch_end(trainer, module, batch, indices, None, i, 0)
        start += len(batch)
    writer.on_predict_epoch_end(trainer, module)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)


def _notes_writer(path: Path, rows: np.ndarray) -> None:
    """The sketch from the notes: one ``write`` of a Python list repr per row."""
    with open(path, "w") as f:
        for i, vector in enumerate(rows):
            f.write(f"{i}\t{vector.tolist()}\n")


def _batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return list(torch.randn(n, DIM, generator=g).split(BATCH))


def bench_writer(n: int, repeats: int, baseline_repeats: int) -> dict[str, Any]:
    batches = _batches(n)
    rows = torch.cat(batches).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # The previous repeat's output is deleted outside the timing: neither side pays for replacing a file.
        save, npy, tsv, notes = root / "save.npy", root / "npy", root / "tsv", root / "notes.tsv"
        t_save = _median_seconds(lambda: np.save(save, rows), repeats, lambda: _remove(save))
        t_npy = _median_seconds(lambda: _write_with_callback(npy, batches, "npy"), repeats, lambda: _remove(npy))
        t_tsv = _median_seconds(lambda: _write_with_callback(tsv, batches, "tsv"), repeats, lambda: _remove(tsv))
        t_notes = _median_seconds(lambda: _notes_writer(notes, rows), baseline_repeats, lambda: _remove(notes))
        assert np.array_equal(np.load(root / "npy" / "embeddings.npy"), rows)
    return {
        "rows": n,
        "dim": DIM,
        "rows_per_s": {"numpy_save": n / t_save, "npy": n / t_npy, "tsv": n / t_tsv, "notes_tsv": n / t_notes},
        "npy_time_vs_numpy_save": t_npy / t_save,
        "tsv_speedup_vs_notes": t_notes / t_tsv,
        "tsv_time_vs_numpy_save": t_tsv / t_save,
    }


def bench_writer_memory(sizes: tuple[int, int]) -> dict[str, Any]:
    peaks = {}
    for n in sizes:
        batches = _batches(n, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in ("npy", "tsv"):
                gc.collect()
                tracemalloc.start()
                _write_with_callback(Path(tmp) / fmt, batches, fmt)
                peaks[f"{fmt}_{n}"] = tracemalloc.get_traced_memory()[1] / 2**20
                tracemalloc.stop()
    small, large = sizes
    return {
        "peak_mib": peaks,
        "result_mib": {n: n * DIM * 4 / 2**20 for n in sizes},
        "npy_growth": peaks[f"npy_{large}"] / peaks[f"npy_{small}"],
        "tsv_growth": peaks[f"tsv_{large}"] / peaks[f"tsv_{small}"],
    }


class _MLP(torch.nn.Module):
    def __init__(self, layers: int, width: int) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])

    def log(self, *args: Any, **kwargs: Any) -> None:  # stands in for LightningModule.log
        pass


def bench_grad_norm(layers: int, width: int, calls: int, repeats: int) -> dict[str, Any]:
    model = _MLP(layers, width)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleNamespace(log_every_n_steps=50, should_stop=False, fast_dev_run=False, optimizers=[optimizer])
    trainer.loggers = []

    def hook(callback: GradNormLogger, step: int) -> Callable[[], None]:
        def call() -> None:
            trainer.global_step = step
            for _ in range(calls):
                callback.on_before_optimizer_step(trainer, model, optimizer)  # type: ignore[arg-type]

        return call

    def lightning() -> None:
        for _ in range(calls):
            grad_norm(model, norm_type=2)

    us = {
        "lightning_grad_norm": _median_seconds(lightning, repeats),
        "logged_step": _median_seconds(hook(GradNormLogger(), 49), repeats),
        "logged_step_per_layer": _median_seconds(hook(GradNormLogger(per_layer=True), 49), repeats),
        "other_step": _median_seconds(hook(GradNormLogger(), 0), repeats),
        "other_step_warn_above": _median_seconds(hook(GradNormLogger(warn_above=1e3), 0), repeats),
    }
    us = {k: v / calls * 1e6 for k, v in us.items()}
    base = us["lightning_grad_norm"]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "tensors": len(list(model.parameters())),
        "us_per_step": us,
        "speedup_vs_lightning": {k: base / v for k, v in us.items() if k != "lightning_grad_norm"},
    }


def run(quick: bool = False) -> dict[str, Any]:
    """All the callback benchmarks; ``quick`` uses smaller sizes and fewer repeats."""
    n = 20_000 if quick else 100_000
    return {
        "embedding_writer": bench_writer(n, repeats=3 if quick else 5, baseline_repeats=1 if quick else 3),
        "embedding_writer_memory": bench_writer_memory((n, n * 4)),
        "grad_norm_logger": bench_grad_norm(layers=64, width=256, calls=20 if quick else 50, repeats=3),
    }


def _report(results: dict[str, Any]) -> str:
    w = results["embedding_writer"]
    rate = w["rows_per_s"]
    m = results["embedding_writer_memory"]
    g = results["grad_norm_logger"]
    lines = [
        f"EmbeddingWriter, {w['rows']:,} x {w['dim']} float32 (median rows/s)",
        f"  numpy.save (one array, in memory) {rate['numpy_save']:>14,.0f}",
        f"  EmbeddingWriter npy               {rate['npy']:>14,.0f}"
        f"   takes {w['npy_time_vs_numpy_save']:.2f}x the time of numpy.save",
        f"  EmbeddingWriter tsv               {rate['tsv']:>14,.0f}"
        f"   {w['tsv_speedup_vs_notes']:.1f}x faster than the notes' writer",
        f"  notes' row-by-row tsv             {rate['notes_tsv']:>14,.0f}",
        "EmbeddingWriter peak traced memory (MiB)",
    ]
    for key, mib in m["peak_mib"].items():
        fmt, n = key.split("_")
        lines.append(f"  {fmt} {int(n):>9,} rows: {mib:7.1f}   (the result is {m['result_mib'][int(n)]:.0f} MiB)")
    lines += [
        f"  growth for 4x the rows: npy {m['npy_growth']:.2f}x, tsv {m['tsv_growth']:.2f}x",
        f"GradNormLogger, {g['tensors']} tensors, {g['parameters']:,} parameters (median us per step, CPU)",
    ]
    for name, us in g["us_per_step"].items():
        speed = g["speedup_vs_lightning"].get(name)
        lines.append(f"  {name:24s} {us:10.1f}" + ("" if speed is None else f"   {speed:.1f}x faster than grad_norm"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    results = run(args.quick)
    print(_report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
