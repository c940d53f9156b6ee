"""Benchmarks for ``plkit.callbacks``: EmbeddingWriter against ``numpy.save``, ``numpy.savetxt`` and a row-by-row
writer, and GradNormLogger against Lightning's ``grad_norm`` utility.

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
- **Two npy rows** measure the writer's two ways to its result: one rank's rows arriving in dataset order (a
  plain predict: the shard's files are renamed into the result), and the same batches arriving in reverse order
  (as from a shuffled sampler, or several ranks: the shard is sorted and merged, every row copied once more).
- **TSV** is compared with ``numpy.savetxt`` of the assembled array with an id column (what a short TSV writer
  would call; the writer's table-lookup float formatter exists to beat it) and with a row-by-row loop,
  ``f.write(f"{id}\\t{vector.tolist()}\\n")``, the usual hand-written export.
- **Peak memory** of the writer is taken with ``tracemalloc`` (it sees numpy's buffers, not the page cache or
  torch's allocator) at two sizes, 4x apart: flat means the writer holds a block, not the whole result.
- **GradNormLogger** is timed per call of ``on_before_optimizer_step`` on a 64-layer MLP whose gradients are
  filled, with a stub trainer (so nothing else is timed), on a step that is logged, a step that is not, and a
  step that is not logged with ``warn_above`` set (the norm is computed, no host sync). The baseline is
  ``lightning.pytorch.utilities.grad_norm(module, 2)``, which the Lightning docs call every step. On a GPU the
  gap is wider than on a CPU: ``grad_norm`` copies each parameter's norm to the host one by one. Two more rows
  time the per-layer norms alone, computed as ``per_layer`` does (one fused per-tensor call, grouped by module
  afterwards) and with public API only (one ``torch.nn.utils.get_total_norm`` call per module).
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
from torch.nn.utils import get_total_norm

from benchmarks._table import Table, ratio, verdict
from plkit.callbacks import EmbeddingWriter, GradNormLogger

DIM = 128
BATCH = 1024


def _alternating(
    contenders: dict[str, Callable[[], Any]], rounds: dict[str, int], reset: dict[str, Any]
) -> dict[str, float]:
    """Median wall time of each contender, run in turn round after round (so that a change in the machine's load
    hits all of them alike); ``rounds[name]`` caps a slow contender's rounds; ``reset[name]()`` runs untimed."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_no in range(max(rounds.values())):
        for name, fn in contenders.items():
            if round_no >= rounds[name]:
                continue
            if name in reset:
                reset[name]()
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


class _Idle(pl.LightningModule):
    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return batch


_TRAINER: list[pl.Trainer] = []


def _write_with_callback(folder: Path, batches: list[torch.Tensor], fmt: str, reverse: bool = False) -> None:
    """What EmbeddingWriter does during ``trainer.predict``, without the model or the data loader; ``reverse``
    feeds the batches last first, as a shuffled sampler or several ranks would leave them: out of order."""
    if not _TRAINER:  # built once: constructing a Trainer is not the writer's cost
        _TRAINER.append(pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False))
    trainer = _TRAINER[0]
    module = _Idle()
    writer = EmbeddingWriter(folder, format=fmt)
    writer.setup(trainer, module, "predict")
    starts = np.cumsum([0] + [len(b) for b in batches[:-1]]).tolist()
    order = range(len(batches) - 1, -1, -1) if reverse else range(len(batches))
    for i in order:
        indices = list(range(starts[i], starts[i] + len(batches[i])))
        writer.write_on_batch_end(trainer, module, batches[i], indices, None, i, 0)
    writer.on_predict_epoch_end(trainer, module)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)


def _row_by_row(path: Path, rows: np.ndarray) -> None:
    """The usual hand-written export: one ``write`` of a Python list repr per row."""
    with open(path, "w") as f:
        for i, vector in enumerate(rows):
            f.write(f"{i}\t{vector.tolist()}\n")


def _savetxt(path: Path, rows: np.ndarray) -> None:
    """``numpy.savetxt`` of the ids and the rows, with as many digits as the writer (9 significant)."""
    table = np.column_stack([np.arange(len(rows)), rows])
    np.savetxt(path, table, fmt=["%d"] + ["%+.8e"] * rows.shape[1], delimiter="\t")


def _batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return list(torch.randn(n, DIM, generator=g).split(BATCH))


def bench_writer(n: int, repeats: int, baseline_repeats: int) -> dict[str, Any]:
    batches = _batches(n)
    rows = torch.cat(batches).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # The previous repeat's output is deleted outside the timing: neither side pays for replacing a file.
        paths = {name: root / name for name in ("save.npy", "npy", "merged", "tsv", "savetxt.tsv", "rows.tsv")}
        contenders: dict[str, Callable[[], Any]] = {
            "numpy_save": lambda: np.save(paths["save.npy"], rows),
            "npy": lambda: _write_with_callback(paths["npy"], batches, "npy"),
            "npy_merged": lambda: _write_with_callback(paths["merged"], batches, "npy", reverse=True),
            "tsv": lambda: _write_with_callback(paths["tsv"], batches, "tsv"),
            "numpy_savetxt": lambda: _savetxt(paths["savetxt.tsv"], rows),
            "row_by_row": lambda: _row_by_row(paths["rows.tsv"], rows),
        }
        rounds = {name: baseline_repeats if name in ("numpy_savetxt", "row_by_row") else repeats for name in contenders}
        reset = {name: (lambda p=path: _remove(p)) for name, path in zip(contenders, paths.values(), strict=True)}
        seconds = _alternating(contenders, rounds, reset)
        assert np.array_equal(np.load(paths["npy"] / "embeddings.npy"), rows)
        assert np.array_equal(np.load(paths["merged"] / "embeddings.npy"), rows)
        written = np.loadtxt(paths["tsv"] / "embeddings.tsv", max_rows=100, dtype=np.float64)
        assert np.array_equal(written[:, 1:].astype(np.float32), rows[:100])
    return {
        "rows": n,
        "dim": DIM,
        "rows_per_s": {name: n / t for name, t in seconds.items()},
        "time_vs_numpy_save": {name: t / seconds["numpy_save"] for name, t in seconds.items()},
        "npy_renamed_speedup_vs_merged": seconds["npy_merged"] / seconds["npy"],
        "tsv_speedup_vs_savetxt": seconds["numpy_savetxt"] / seconds["tsv"],
        "tsv_speedup_vs_row_by_row": seconds["row_by_row"] / seconds["tsv"],
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

    automatic_optimization = True  # what GradNormLogger reads of a LightningModule, besides log()

    def log(self, *args: Any, **kwargs: Any) -> None:  # stands in for LightningModule.log
        pass


def bench_grad_norm(layers: int, width: int, calls: int, repeats: int) -> dict[str, Any]:
    model = _MLP(layers, width)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    # A tiny rate: the gradients stay fixed, so the weights only drift, and a few hundred steps stay finite.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    trainer = SimpleNamespace(log_every_n_steps=50, should_stop=False, fast_dev_run=False, optimizers=[optimizer])
    trainer.loggers, trainer.is_global_zero, trainer.current_epoch = [], True, 0

    def hook(callback: GradNormLogger, step: int) -> Callable[[], None]:
        def call() -> None:
            trainer.global_step = step
            callback.on_before_optimizer_step(trainer, model, optimizer)  # type: ignore[arg-type]

        return call

    def lightning() -> None:
        grad_norm(model, norm_type=2)

    modules = [name.rpartition(".")[0] for name, _ in model.named_parameters()]

    def per_layer_fused() -> None:
        """What per_layer computes: one fused per-tensor call, grouped by module afterwards."""
        grouped: dict[str, list[torch.Tensor]] = {}
        for name, norm in zip(modules, torch._foreach_norm([p.grad for p in model.parameters()], 2.0), strict=True):
            grouped.setdefault(name, []).append(norm)
        layers = [torch.linalg.vector_norm(torch.stack(norms), 2.0) for norms in grouped.values()]
        torch.linalg.vector_norm(torch.stack(layers), 2.0)

    def per_layer_by_module() -> None:
        """The public-API alternative: one get_total_norm call per module, then the total from their norms."""
        grouped: dict[str, list[torch.Tensor]] = {}
        for name, p in zip(modules, model.parameters(), strict=True):
            grouped.setdefault(name, []).append(p.grad)
        layers = [get_total_norm(grads, 2.0) for grads in grouped.values()]
        torch.linalg.vector_norm(torch.stack(layers), 2.0)

    hooks: dict[str, Callable[[], None] | None] = {
        "none": None,
        "other_step": hook(GradNormLogger(), 0),
        "other_step_warn_above": hook(GradNormLogger(warn_above=1e3), 0),
        "logged_step": hook(GradNormLogger(), 49),
        "logged_step_per_layer": hook(GradNormLogger(per_layer=True), 49),
        "per_layer_fused": per_layer_fused,
        "per_layer_by_module": per_layer_by_module,
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
    alone = {k: calls_of(fn) for k, fn in hooks.items() if fn is not None}
    with_step = {f"{k}+step": steps_with(fn) for k, fn in hooks.items()}
    seconds = _alternating({**alone, **with_step}, dict.fromkeys([*alone, *with_step], repeats), {})
    us = {k: seconds[k] / calls * 1e6 for k in alone}
    step_us = {k: seconds[f"{k}+step"] / calls * 1e6 for k in hooks}
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


WRITER_LABELS = {
    "numpy_save": "numpy.save of the assembled array",
    "npy": "EmbeddingWriter npy, one rank in order (files renamed)",
    "npy_merged": "EmbeddingWriter npy, batches out of order (merged)",
    "tsv": "EmbeddingWriter tsv",
    "numpy_savetxt": "numpy.savetxt of the assembled array (tsv)",
    "row_by_row": "row-by-row tsv, f.write per row",
}
GRAD_NORM_LABELS = {
    "none": "no logging",
    "other_step": "GradNormLogger, unlogged step",
    "other_step_warn_above": "GradNormLogger, unlogged step, warn_above",
    "logged_step": "GradNormLogger, logged step",
    "logged_step_per_layer": "GradNormLogger, logged step, per_layer",
    "per_layer_fused": "per-layer norms alone: one fused per-tensor call (as per_layer)",
    "per_layer_by_module": "per-layer norms alone: one get_total_norm per module",
    "lightning_grad_norm": "Lightning grad_norm (every step)",
}
MEMORY_GROWTH_GOAL = 1.25  # peak memory at 4x the rows over the peak at 1x: "flat"


def export_tables(results: dict[str, Any]) -> list[Table]:
    """Comparison 2 of ``python -m benchmarks`` as a table."""
    w, m = results["embedding_writer"], results["embedding_writer_memory"]
    rate, vs_save = w["rows_per_s"], w["time_vs_numpy_save"]
    small, large = sorted(m["result_mib"], key=int)
    rows = []
    for name, label in WRITER_LABELS.items():
        cells = ["", "", "", ""]
        if name in ("npy", "tsv"):
            growth = m[f"{name}_growth"]
            cells = [f"{m['peak_mib'][f'{name}_{n}']:.1f}" for n in (small, large)]
            cells += [ratio(growth), f"<= {MEMORY_GROWTH_GOAL:.2f}x: {verdict(growth <= MEMORY_GROWTH_GOAL)}"]
        rows.append([label, f"{rate[name]:,.0f}", ratio(vs_save[name]), *cells])
    header = ["writer", "rows/s", "time vs numpy.save", f"peak MiB, {int(small):,} rows", f"{int(large):,} rows"]
    header += ["growth", "goal: flat memory"]
    title = f"2. Prediction export: {w['rows']:,} x {w['dim']} float32 rows, CPU"
    sizes = " and ".join(f"{float(m['result_mib'][n]):.0f}" for n in (small, large))
    notes = [
        f"EmbeddingWriter tsv is {w['tsv_speedup_vs_savetxt']:.1f}x faster than numpy.savetxt (goal: faster, or "
        f"its float formatter goes: {verdict(w['tsv_speedup_vs_savetxt'] > 1)}) and "
        f"{w['tsv_speedup_vs_row_by_row']:.1f}x faster than the row-by-row writer.",
        f"Renaming one in-order rank's files is {w['npy_renamed_speedup_vs_merged']:.1f}x faster than sorting and "
        f"merging them (goal: faster, or the rename goes: {verdict(w['npy_renamed_speedup_vs_merged'] > 1)}).",
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
    fused = results["us_per_step"]["per_layer_by_module"] / results["us_per_step"]["per_layer_fused"]
    notes = [
        "GradNormLogger computes and syncs only on logged steps (every log_every_n_steps); grad_norm, called every "
        "step as the Lightning docs show, copies each tensor's norm to the host (its log_dict call is not timed).",
        f"per_layer's one fused per-tensor norm call is {fused:.1f}x faster than one get_total_norm call per module "
        f"(goal: faster, or get_total_norm replaces it: {verdict(fused > 1)}).",
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
