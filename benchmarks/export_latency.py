"""Comparison 6: what each ``plkit export`` format costs at inference on this CPU, against the eager model.

The model is the ``fashion_mnist`` recipe's ``ImageClassifier`` (its ``SmallCNN`` and width, 1x28x28 inputs; its
weights are random: latency does not depend on them). Each format is written by ``plkit export``'s own code
(``plkit.cli._export_formats.save``) and run back by its deployment runtime, as the command verifies it:
``onnxruntime`` (as many intra-op threads as torch has), ``torch.jit.load``, ``torch.export.load(...).module()``.
Eager is the same module in ``eval`` mode. Everything runs under ``torch.inference_mode``.

Per batch size (1 and 256), every contender first makes a few warm-up calls (TorchScript's profiling
executor optimises its graph over the first calls); then the contenders take turns over many short rounds,
in an order that rotates from round to round, each timing a block of calls. The table gives the median time
per call over the rounds, and the median over rounds of the ratio to eager's time in the same round: short
interleaved rounds keep a burst of load on a shared machine from landing on one contender only.
Run ``python -m benchmarks --only latency`` (or ``python -m benchmarks.export_latency [--quick]``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from benchmarks._table import Table, ratio
from plkit.cli._export_formats import FILENAMES, FORMATS, RUNTIMES, load, save
from plkit.cli.recipes import recipe_path
from plkit.models import ImageClassifier

RECIPE = "fashion_mnist"
BATCHES = (1, 256)
#: timed calls per contender and round: a block lasts well above the timer's resolution, and well below a second.
CALLS = {1: 20, 256: 2}
WARMUP_CALLS = 5


def build_model() -> ImageClassifier:
    """The recipe's classifier, in eval mode, with a fixed seed."""
    args = yaml.safe_load(recipe_path(RECIPE).read_text())["model"]["init_args"]
    keep = ("backbone", "width", "num_classes", "in_channels", "dropout")
    torch.manual_seed(0)
    return ImageClassifier(**{key: args[key] for key in keep if key in args}).eval()


def _seconds_per_call(run: Callable[[Tensor], Tensor], batch: Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run(batch)
    return (time.perf_counter() - start) / calls


def run(quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Time eager and every available format at batch 1 and 256; ``quick`` does fewer calls and rounds."""
    rounds = rounds or (2 if quick else 15)
    warmup = 2 if quick else WARMUP_CALLS
    model = build_model()
    formats = [fmt for fmt in FORMATS if fmt != "onnx" or importlib.util.find_spec("onnxruntime") is not None]
    example = torch.randn(2, 1, 28, 28)
    with tempfile.TemporaryDirectory() as folder:
        runners: dict[str, Callable[[Tensor], Tensor]] = {"eager": model}
        sizes = {}
        for fmt in formats:
            path = Path(folder) / FILENAMES[fmt]
            save(model, example, fmt, path)
            runners[fmt] = load(path, fmt, threads=torch.get_num_threads())
            sizes[fmt] = path.stat().st_size
        times: dict[int, dict[str, list[float]]] = {size: {name: [] for name in runners} for size in BATCHES}
        max_abs_diff: dict[str, float] = {}
        with torch.inference_mode():
            for size in BATCHES:
                batch = torch.randn(size, 1, 28, 28, generator=torch.Generator().manual_seed(size))
                expected = model(batch)
                for name, runner in runners.items():
                    diff = (runner(batch) - expected).abs().max()
                    max_abs_diff[name] = max(max_abs_diff.get(name, 0.0), float(diff))
                for runner in runners.values():
                    for _ in range(warmup):
                        runner(batch)
                names = list(runners)
                for round_ in range(rounds):
                    for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                        times[size][name].append(_seconds_per_call(runners[name], batch, CALLS[size]))
    ms = {size: {name: statistics.median(t) * 1e3 for name, t in by_name.items()} for size, by_name in times.items()}
    ratios = {
        size: {
            name: statistics.median(t / e for t, e in zip(by_name[name], by_name["eager"], strict=True))
            for name in by_name
        }
        for size, by_name in times.items()
    }
    return {
        "model": f"{RECIPE} ImageClassifier",
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "calls_per_round": {str(size): n for size, n in CALLS.items()},
        "formats": formats,
        "skipped": [fmt for fmt in FORMATS if fmt not in formats],
        "ms_per_call": {str(size): by_name for size, by_name in ms.items()},
        "ratio_vs_eager": {str(size): by_name for size, by_name in ratios.items()},
        "max_abs_diff_vs_eager": max_abs_diff,
        "file_bytes": sizes,
        "runs_ms": {
            str(size): {n: [t * 1e3 for t in ts] for n, ts in by_name.items()} for size, by_name in times.items()
        },
    }


def tables(results: dict[str, Any]) -> list[Table]:
    """Comparison 6 of ``python -m benchmarks`` as a table."""
    ms, ratios = results["ms_per_call"], results["ratio_vs_eager"]
    runtimes = {"eager": "the module itself", **RUNTIMES}
    rows = []
    for name in ["eager", *results["formats"]]:
        per_image_us = ms["256"][name] / 256 * 1e3
        size = f"{results['file_bytes'][name] / 1024:,.0f}" if name in results["file_bytes"] else ""
        rows.append(
            [
                name if name == "eager" else f"--format {name}",
                runtimes[name],
                f"{ms['1'][name]:.3f}",
                ratio(ratios["1"][name]),
                f"{ms['256'][name]:.2f}",
                ratio(ratios["256"][name]),
                f"{per_image_us:.1f}",
                size,
                f"{results['max_abs_diff_vs_eager'][name]:.1e}",
            ]
        )
    title = (
        f"6. Inference latency of plkit export's formats: the {results['model']} ({results['parameters']:,} "
        f"parameters), CPU, {results['threads']} thread{'s' if results['threads'] != 1 else ''}, "
        f"median of {results['rounds']} rounds"
    )
    header = ["format", "runs with", "batch 1 ms", "vs eager", "batch 256 ms", "vs eager", "us/image at 256"]
    header += ["file KiB", "max abs diff"]
    notes = [
        "The ratios are medians over rounds of each format's time over eager's in the same round (lower is faster)."
    ]
    if results["skipped"]:
        notes.append(f'Skipped (not installed): {", ".join(results["skipped"])}; pip install "plkit[export]".')
    return [Table(title, header, rows, notes)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch (and onnxruntime) threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for table in tables(run(args.quick)):
        print(table.text(), end="\n\n")


if __name__ == "__main__":
    main()
