"""Benchmarks for ``plkit.callbacks``: EmbeddingWriter against ``numpy.save`` and the notes' writer, and
GradNormLogger against Lightning's ``grad_norm`` utility.

Run ``python -m benchmarks --only export,gradnorm`` (or ``python -m benchmarks.callbacks [--quick] [--json OUT]``);
``run_export(quick)`` and ``run_grad_norm(quick)`` return the numbers as dicts.
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
- **No logging** is the floor: each contender is also timed as the hook followed by the SGD step it precedes,
  against the SGD step alone, so the table says what logging adds to an optimizer step. On a CPU shared with
  other work, every multi-threaded kernel can wait for a descheduled thread: read these with the machine's load.
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

from benchmarks._table import Table, ratio, verdict
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
    # A tiny rate: the gradients stay fixed, so the weights only drift, and a few hundred steps stay finite.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    trainer = SimpleNamespace(log_every_n_steps=50, should_stop=False, fast_dev_run=False, optimizers=[optimizer])
    trainer.loggers = []

    def hook(callback: GradNormLogger, step: int) -> Callable[[], None]:
        def call() -> None:
            trainer.global_step = step
            callback.on_before_optimizer_step(trainer, model, optimizer)  # type: ignore[arg-type]

        return call

    def lightning() -> None:
        grad_norm(model, norm_type=2)

    hooks: dict[str, Callable[[], None] | None] = {
        "none": None,
        "other_step": hook(GradNormLogger(), 0),
        "other_step_warn_above": hook(GradNormLogger(warn_above=1e3), 0),
        "logged_step": hook(GradNormLogger(), 49),
        "logged_step_per_layer": hook(GradNormLogger(per_layer=True), 49),
        "lightning_grad_norm": lightning,
    }

    def calls_of(fn: Callable[[], None]) -> Callable[[], None]:
        def loop() -> None:
            for _ in range(calls):
                fn()

        return loop

    def steps_with(fn: Callable[[], None] | None) -> Callable[[], None]:
        def loop() -> None:
            for _ in range(calls):
                if fn is not None:
                    fn()
                optimizer.step()

        return loop

    # The hook alone, then the hook followed by the optimizer step it precedes (what a training step pays).
    us = {k: _median_seconds(calls_of(fn), repeats) / calls * 1e6 for k, fn in hooks.items() if fn is not None}
    step_us = {k: _median_seconds(steps_with(fn), repeats) / calls * 1e6 for k, fn in hooks.items()}
    base = us["lightning_grad_norm"]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "tensors": len(list(model.parameters())),
        "us_per_step": us,
        "speedup_vs_lightning": {k: base / v for k, v in us.items() if k != "lightning_grad_norm"},
        "us_per_optimizer_step": step_us,
        "optimizer_step_vs_none": {k: v / step_us["none"] for k, v in step_us.items()},
    }


def run_export(quick: bool = False) -> dict[str, Any]:
    """The EmbeddingWriter benchmarks (comparison 2 of ``python -m benchmarks``)."""
    n = 20_000 if quick else 100_000
    return {
        "embedding_writer": bench_writer(n, repeats=3 if quick else 5, baseline_repeats=1 if quick else 3),
        "embedding_writer_memory": bench_writer_memory((n, n * 4)),
    }


def run_grad_norm(quick: bool = False) -> dict[str, Any]:
    """The GradNormLogger benchmark (comparison 3 of ``python -m benchmarks``)."""
    # Quick: the same 128 tensors, narrower, so a kernel stays on one thread and a busy machine cannot stall it.
    return bench_grad_norm(layers=64, width=64 if quick else 256, calls=20 if quick else 50, repeats=3 if quick else 5)


def run(quick: bool = False) -> dict[str, Any]:
    """All the callback benchmarks; ``quick`` uses smaller sizes and fewer repeats."""
    return {**run_export(quick), "grad_norm_logger": run_grad_norm(quick)}


GRAD_NORM_LABELS = {
    "none": "no logging",
    "other_step": "GradNormLogger, unlogged step",
    "other_step_warn_above": "GradNormLogger, unlogged step, warn_above",
    "logged_step": "GradNormLogger, logged step",
    "logged_step_per_layer": "GradNormLogger, logged step, per_layer",
    "lightning_grad_norm": "Lightning grad_norm (every step)",
}
MEMORY_GROWTH_GOAL = 1.25  # peak memory at 4x the rows over the peak at 1x: "flat"


def export_tables(results: dict[str, Any]) -> list[Table]:
    """Comparison 2 of ``python -m benchmarks`` as a table."""
    w, m = results["embedding_writer"], results["embedding_writer_memory"]
    rate = w["rows_per_s"]
    small, large = sorted(m["result_mib"], key=int)
    rows = [["numpy.save of the assembled array", f"{rate['numpy_save']:,.0f}", "1.00x", "", "", "", ""]]
    for fmt in ("npy", "tsv"):
        growth = m[f"{fmt}_growth"]
        peaks = [f"{m['peak_mib'][f'{fmt}_{n}']:.1f}" for n in (small, large)]
        flat = f"<= {MEMORY_GROWTH_GOAL:.2f}x: {verdict(growth <= MEMORY_GROWTH_GOAL)}"
        time_vs_save = ratio(w[f"{fmt}_time_vs_numpy_save"])
        rows.append([f"EmbeddingWriter {fmt}", f"{rate[fmt]:,.0f}", time_vs_save, *peaks, ratio(growth), flat])
    notes_time = ratio(rate["numpy_save"] / rate["notes_tsv"])
    rows.append(["the notes' row-by-row tsv", f"{rate['notes_tsv']:,.0f}", notes_time, "", "", "", ""])
    header = ["writer", "rows/s", "time vs numpy.save", f"peak MiB, {int(small):,} rows", f"{int(large):,} rows"]
    header += ["growth", "goal: flat memory"]
    title = f"2. Prediction export: {w['rows']:,} x {w['dim']} float32 rows, CPU"
    sizes = " and ".join(f"{float(m['result_mib'][n]):.0f}" for n in (small, large))
    notes = [
        f"EmbeddingWriter tsv is {w['tsv_speedup_vs_notes']:.1f}x faster than the notes' writer "
        f"(goal: faster: {verdict(w['tsv_speedup_vs_notes'] > 1)}).",
        f"Peak memory is what tracemalloc sees while the writer runs; the results themselves are {sizes} MiB.",
    ]
    return [Table(title, header, rows, notes)]


def grad_norm_tables(results: dict[str, Any]) -> list[Table]:
    """Comparison 3 of ``python -m benchmarks`` as a table."""
    hook, step, vs_none = results["us_per_step"], results["us_per_optimizer_step"], results["optimizer_step_vs_none"]
    rows = []
    for name, label in GRAD_NORM_LABELS.items():
        speed = results["speedup_vs_lightning"].get(name)
        goal = ""
        if name == "logged_step":
            goal = f"faster than grad_norm: {verdict(speed > 1)}"
        cells = ["" if name == "none" else f"{hook[name]:,.1f}", f"{step[name]:,.0f}", ratio(vs_none[name])]
        rows.append([label, *cells, "" if speed is None else f"{speed:.1f}x", goal])
    title = (
        f"3. Gradient-norm logging: {results['tensors']} parameter tensors, {results['parameters']:,} parameters, "
        "CPU, microseconds per optimizer step"
    )
    header = ["contender", "hook us", "hook + SGD step us", "vs no logging", "hook faster than grad_norm", "goal"]
    notes = [
        "GradNormLogger computes and syncs only on logged steps (every log_every_n_steps); grad_norm, called every "
        "step as the Lightning docs show, copies each tensor's norm to the host (its log_dict call is not timed)."
    ]
    return [Table(title, header, rows, notes)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    results = run(args.quick)
    for table in [*export_tables(results), *grad_norm_tables(results["grad_norm_logger"])]:
        print(table.text(), end="\n\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
