"""Comparison 5: GPU training images/s of the fashion_mnist network, lever by lever, plkit against a hand loop.

The levers: precision (``32-true`` or ``bf16-mixed``), channels-last (the model's weights and the data module's
batches), and ``torch.compile`` of the network; each variant adds one. ``plkit fit --config fashion_mnist
--config overlays/gpu`` sets each with its own options (``--trainer.precision``, ``--model.init_args.channels_last``,
``--data.init_args.channels_last``, ``--model.init_args.compile``); the hand-written loop trains the same network
with the same optimizer and schedule, from the same CPU batches copied to the device each step, with
``torch.autocast``, ``.to(memory_format=...)`` and ``torch.compile``.

Runs only where ``torch.cuda.is_available()``; elsewhere it reports that it was skipped. Each variant and runner
is a fresh process running a fixed number of optimizer steps (no validation): the clock starts after the warm-up
steps (cuDNN autotuning, allocator growth, compilation) and the device is synchronised before each reading.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from benchmarks._data import REAL_DIR, stage
from benchmarks._table import Table, ratio
from benchmarks.training import QUICK_IMAGES, QUICK_VAL, REPO

SKIPPED = "no GPU: GPU variants skipped"
RECIPE = "fashion_mnist"


@dataclass(frozen=True)
class Variant:
    """The levers of one variant."""

    precision: str
    channels_last: bool
    compile: bool


VARIANTS = {
    "fp32": Variant("32-true", channels_last=False, compile=False),
    "fp32, channels-last": Variant("32-true", channels_last=True, compile=False),
    "bf16-mixed": Variant("bf16-mixed", channels_last=False, compile=False),
    "bf16-mixed, channels-last": Variant("bf16-mixed", channels_last=True, compile=False),
    "bf16-mixed, channels-last, compile": Variant("bf16-mixed", channels_last=True, compile=True),
}
MONITORED = "bf16-mixed, channels-last"  # also run with Lightning's ThroughputMonitor attached, to price it


class Throughput(Callback):
    """Count training images per second from the end of step ``warmup_steps`` to the end of training.

    Not Lightning's ``ThroughputMonitor``: that one synchronises the device after every batch (its rolling
    window needs each step's time), which stalls the queue of kernels a small model lives on; the table's
    ``+ ThroughputMonitor`` row measures what that costs. This one synchronises twice: when its clock starts
    and when it stops.

    Args:
        result_file: where to write ``{"images": ..., "seconds": ..., "images_per_s": ...}`` as JSON.
        warmup_steps: optimizer steps left out of the timing.
    """

    def __init__(self, result_file: str, warmup_steps: int) -> None:
        self.result_file = Path(result_file)
        self.warmup_steps = warmup_steps
        self._start: float | None = None
        self._images = 0

    def _now(self, trainer: pl.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is not None:
            self._images += len(batch["target"])
        elif trainer.global_step >= self.warmup_steps:
            self._start = self._now(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is None:
            raise RuntimeError(f"the run ended within the {self.warmup_steps} warm-up steps: give it more steps")
        seconds = self._now(trainer) - self._start
        result = {"images": self._images, "seconds": seconds, "images_per_s": self._images / seconds}
        self.result_file.write_text(json.dumps(result))


def batch_images(batch: dict[str, torch.Tensor]) -> int:
    """How many images a batch holds (``ThroughputMonitor``'s ``batch_size_fn``)."""
    return len(batch["target"])


def _plkit(args: argparse.Namespace, variant: Variant) -> None:
    from plkit.cli import main

    throughput = {"class_path": f"{__name__}.Throughput", "init_args": {"result_file": str(args.result)}}
    throughput["init_args"]["warmup_steps"] = args.warmup
    command = ["fit", f"--config={RECIPE}", "--config=overlays/gpu", f"--data.data_dir={args.data_root}"]
    command += [f"--data.val_size={args.val_size}", f"--trainer.max_steps={args.warmup + args.steps}"]
    command += ["--trainer.max_epochs=-1", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"]
    command += [f"--trainer.default_root_dir={args.result.parent}", f"--trainer.accelerator={args.accelerator}"]
    layout = str(variant.channels_last).lower()
    command += [f"--trainer.precision={variant.precision}", f"--model.init_args.compile={str(variant.compile).lower()}"]
    command += [f"--model.init_args.channels_last={layout}", f"--data.init_args.channels_last={layout}"]
    command += [f"--trainer.callbacks+={json.dumps(throughput)}"]
    if args.throughput_monitor:
        monitor = {"class_path": "lightning.pytorch.callbacks.ThroughputMonitor"}
        monitor["init_args"] = {"batch_size_fn": f"{__name__}.batch_images"}
        command.append(f"--trainer.callbacks+={json.dumps(monitor)}")
    main(command)


def _hand(args: argparse.Namespace, variant: Variant) -> None:
    from benchmarks._accuracy_runs import Settings, build_network, build_optimizer, decode
    from benchmarks._contenders import split_ids

    settings = Settings.from_configs((RECIPE,), seed=42, val_size=args.val_size, epochs=None)
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    torch.manual_seed(settings.seed)
    images, labels = decode(args.data_root, "train")
    train_ids, _ = split_ids(len(images), args.val_size)
    images, labels = images[train_ids], labels[train_ids]
    network = build_network(settings, channels_last=variant.channels_last).to(device)
    forward = torch.compile(network) if variant.compile else network
    optimizer, schedule = build_optimizer(settings, network, args.warmup + args.steps)
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
    batches = torch.randperm(len(images)).split(settings.batch_size)

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    start, done = 0.0, 0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = now()
        index = batches[step % len(batches)]
        x = images[index].to(device, memory_format=memory_format)
        y = labels[index].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.precision == "bf16-mixed"):
            loss = torch.nn.functional.cross_entropy(forward(x), y, label_smoothing=settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            loss.item()  # what a hand-written loop prints now and then (and plkit's logger reads every 50 steps)
        done += len(index) if step >= args.warmup else 0
    seconds = now() - start
    args.result.write_text(json.dumps({"images": done, "seconds": seconds, "images_per_s": done / seconds}))


def _rate(name: str, runner: str, staged_root: Path, val_size: int, steps: tuple[int, int], **options: Any) -> float:
    out = Path(tempfile.mkdtemp(dir=staged_root.parent)) / "result.json"
    command = [sys.executable, "-m", "benchmarks.gpu", "--variant", name, "--runner", runner]
    command += ["--data-root", str(staged_root), "--val-size", str(val_size), "--result", str(out)]
    command += ["--warmup", str(steps[0]), "--steps", str(steps[1]), "--accelerator", options["accelerator"]]
    if options.get("throughput_monitor"):
        command.append("--throughput-monitor")
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"the GPU variant {name} ({runner}) failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())["images_per_s"]


def run(
    quick: bool,
    data: str = "auto",
    steps: int | None = None,
    accelerator: str = "gpu",
    variants: tuple[str, ...] = tuple(VARIANTS),
    data_dir: Path = REAL_DIR,
) -> dict[str, Any]:
    """Measure every variant with both runners; ``accelerator="cpu"`` rehearses it without a GPU."""
    if accelerator == "gpu" and not torch.cuda.is_available():
        return {"available": False, "message": SKIPPED}
    warmup, steps = (10, steps or 30) if quick else (30, steps or 300)
    results: dict[str, Any] = {"available": True, "device": _device_name(accelerator), "steps": steps}
    results.update(warmup=warmup, batch_size=128, images_per_s={}, hand_images_per_s={})
    with tempfile.TemporaryDirectory(prefix="plkit-bench-gpu-") as tmp:
        val = QUICK_VAL if quick else 5_000
        staged = stage(Path(tmp) / "data", data, QUICK_IMAGES if quick else None, val, data_dir)
        results["data"] = staged.describe()
        for name in variants:
            for runner, key in (("plkit", "images_per_s"), ("hand", "hand_images_per_s")):
                rate = _rate(name, runner, staged.root, val, (warmup, steps), accelerator=accelerator)
                results[key][name] = rate
        if MONITORED in variants:
            monitored = _rate(
                MONITORED, "plkit", staged.root, val, (warmup, steps), accelerator=accelerator, throughput_monitor=True
            )
            results["throughput_monitor_images_per_s"] = monitored
    return results


def _device_name(accelerator: str) -> str:
    return torch.cuda.get_device_name(0) if accelerator == "gpu" else "cpu (a rehearsal of the GPU variants)"


def tables(results: dict[str, Any]) -> list[Table]:
    if not results["available"]:
        return [Table("5. GPU variants", ["variant", "images/s"], [], [results["message"]])]
    rates, hand = results["images_per_s"], results["hand_images_per_s"]
    base = next(iter(rates.values()))
    rows = []
    for name, rate in rates.items():
        rows.append([name, f"{rate:,.0f}", ratio(rate / base), f"{hand[name]:,.0f}", ratio(hand[name] / rate)])
    if "throughput_monitor_images_per_s" in results:
        monitored = results["throughput_monitor_images_per_s"]
        rows.append([f"{MONITORED} + ThroughputMonitor", f"{monitored:,.0f}", ratio(monitored / base), "", ""])
    title = (
        f"5. GPU: plkit fit --config fashion_mnist --config overlays/gpu on {results['device']}, "
        f"{results['steps']} steps of batch {results['batch_size']} after {results['warmup']} warm-up steps"
    )
    notes = [
        f"Data: {results['data']}.",
        "plkit time over hand loop: the hand-written loop's images/s over plkit's (above 1.00x: plkit is slower). "
        "Each cell is one fresh process; compile's warm-up is outside the clock here (the time-to-accuracy table "
        "counts it).",
    ]
    header = ["variant", "plkit images/s", "vs first row", "hand loop images/s", "plkit time over hand loop"]
    return [Table(title, header, rows, notes)]


def child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One GPU variant, by plkit or a hand loop (a child of benchmarks).")
    parser.add_argument("--variant", choices=list(VARIANTS), required=True)
    parser.add_argument("--runner", choices=("plkit", "hand"), required=True)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--val-size", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--accelerator", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--throughput-monitor", action="store_true", help="plkit: attach Lightning's monitor too")
    args = parser.parse_args(argv)
    (_plkit if args.runner == "plkit" else _hand)(args, VARIANTS[args.variant])


if __name__ == "__main__":
    child_main()
