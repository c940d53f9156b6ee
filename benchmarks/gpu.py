"""GPU variants: ``plkit fit --config fashion_mnist --config overlays/gpu`` (bf16-mixed), in images per second.

Runs only where ``torch.cuda.is_available()``; elsewhere it reports that the GPU variants were skipped. Each
variant is a fresh process running a fixed number of optimizer steps (no validation); the :class:`Throughput`
callback starts its clock after the warm-up steps (cuDNN autotuning, allocator growth, compilation) and
synchronises the device before reading it. ``32-true`` is there as the reference. ``torch.compile`` is run
only if ``ImageClassifier`` offers a ``compile`` option; plkit does not invent one here.
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from benchmarks._data import stage
from benchmarks._table import Table
from benchmarks.training import QUICK_IMAGES, QUICK_VAL, REPO

SKIPPED = "no GPU: GPU variants skipped"
WARMUP_STEPS = 20


class Throughput(Callback):
    """Count training images per second from the end of step ``warmup_steps`` to the end of training.

    Args:
        result_file: where to write ``{"images": ..., "seconds": ..., "images_per_s": ...}`` as JSON.
        warmup_steps: optimizer steps left out of the timing.
    """

    def __init__(self, result_file: str, warmup_steps: int = WARMUP_STEPS) -> None:
        self.result_file = Path(result_file)
        self.warmup_steps = warmup_steps
        self._start: float | None = None
        self._images = 0

    def _now(self, trainer: pl.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the only sync: once at the start of the timing, once at its end
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


def compile_offered() -> bool:
    from plkit.models import ImageClassifier

    return "compile" in inspect.signature(ImageClassifier.__init__).parameters


def variants() -> dict[str, list[str]]:
    """The variants to run, as extra ``plkit fit`` arguments."""
    found = {"32-true": ["--trainer.precision=32-true"], "bf16-mixed": []}
    if compile_offered():
        found["bf16-mixed + torch.compile"] = ["--model.init_args.compile=true"]
    return found


def _child(args: argparse.Namespace, extra: list[str]) -> None:
    from plkit.cli import main

    throughput = {"class_path": "benchmarks.gpu.Throughput", "init_args": {"result_file": str(args.result)}}
    command = ["fit", "--config=fashion_mnist", "--config=overlays/gpu", f"--data.data_dir={args.data_root}"]
    command += [f"--data.val_size={args.val_size}", f"--trainer.max_steps={args.steps}", "--trainer.max_epochs=-1"]
    command += ["--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"]
    command += [f"--trainer.default_root_dir={args.result.parent}"]
    command += [f"--trainer.accelerator={args.accelerator}", f"--trainer.callbacks+={json.dumps(throughput)}"]
    main(command + extra)


def run(quick: bool, data: str = "auto", steps: int | None = None, accelerator: str = "gpu") -> dict[str, Any]:
    if accelerator == "gpu" and not torch.cuda.is_available():
        return {"available": False, "message": SKIPPED}
    steps = steps or (60 if quick else 400)
    results: dict[str, Any] = {"available": True, "device": _device_name(accelerator), "steps": steps}
    results["compile"] = "offered" if compile_offered() else "not offered by plkit.models.ImageClassifier"
    with tempfile.TemporaryDirectory(prefix="plkit-bench-gpu-") as tmp:
        staged = stage(Path(tmp) / "data", data, QUICK_IMAGES if quick else None, QUICK_VAL if quick else 5_000)
        results["data"] = staged.describe()
        results["images_per_s"] = {}
        for name, extra in variants().items():
            out = Path(tmp) / f"{name.replace(' ', '_')}.json"
            command = [sys.executable, "-m", "benchmarks.gpu", "--data-root", str(staged.root)]
            command += ["--val-size", str(staged.val_size), "--steps", str(steps), "--result", str(out)]
            command += ["--accelerator", accelerator, "--", *extra]
            proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not out.is_file():
                raise RuntimeError(f"the GPU variant {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            results["images_per_s"][name] = json.loads(out.read_text())["images_per_s"]
    return results


def _device_name(accelerator: str) -> str:
    return torch.cuda.get_device_name(0) if accelerator == "gpu" else "cpu (a rehearsal of the GPU variants)"


def tables(results: dict[str, Any]) -> list[Table]:
    if not results["available"]:
        return [Table("5. GPU variants", ["variant", "images/s"], [], [results["message"]])]
    rates = results["images_per_s"]
    base = rates["32-true"]
    rows = [[name, f"{rate:,.0f}", f"{rate / base:.2f}x"] for name, rate in rates.items()]
    title = f"5. GPU: plkit fit --config overlays/gpu on {results['device']}, {results['steps']} steps, batch 128"
    notes = [f"Data: {results['data']}.", f"torch.compile: {results['compile']}."]
    return [Table(title, ["variant", "images/s", "vs 32-true"], rows, notes)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="One GPU variant of plkit fit (the child of `python -m benchmarks`).")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--val-size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("extra", nargs="*", help="more plkit fit arguments, after --")
    child_args = parser.parse_args()
    _child(child_args, child_args.extra)
