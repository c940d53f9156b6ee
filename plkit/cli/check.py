"""``plkit check --config X``: build a recipe on the CPU, run one training and one validation batch, summarise.

It parses the config exactly as ``plkit fit`` does, instantiates the model, data module and trainer
(forced onto one CPU process at full precision, with no logger), runs ``fast_dev_run=1``, and prints
the classes, the parameter count, the batch shapes and the first losses. A failure is reported as
one message, with a hint for the mistakes recipes make most (channels, class count, image size).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from plkit.cli.lightning_cli import PlkitCLI

# What a check may not change in the user's trainer: one CPU process, one batch of each, no files.
CHECK_TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "num_nodes": 1,
    "strategy": "auto",
    "precision": "32-true",
    "fast_dev_run": 1,
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def describe_batch(batch: Any) -> str:
    """``{image: float32[8, 1, 28, 28], label: int64[8]}``: the structure of a batch with tensor shapes."""
    if isinstance(batch, torch.Tensor):
        return f"{str(batch.dtype).removeprefix('torch.')}[{', '.join(map(str, batch.shape))}]"
    if isinstance(batch, dict):
        return "{" + ", ".join(f"{k}: {describe_batch(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, (list, tuple)):
        return "(" + ", ".join(describe_batch(v) for v in batch) + ")"
    return type(batch).__name__


class _BatchProbe(pl.Callback):
    """Remembers the first training and validation batch's structure."""

    def __init__(self) -> None:
        self.train: str | None = None
        self.val: str | None = None

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any) -> None:
        self.train = self.train or describe_batch(batch)

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any
    ) -> None:
        self.val = self.val or describe_batch(batch)


HINTS = (
    (
        re.compile(r"expected input\[.*\] to have (\d+) channels, but got (\d+) channels"),
        "the model expects {0} input channels but the data has {1}: set model.init_args.in_channels: {1}",
    ),
    (
        re.compile(r"Target (-?\d+) is out of bounds|index (\d+) is out of bounds"),
        "a label is not below model.init_args.num_classes: set num_classes to the number of classes in the data",
    ),
    (
        re.compile(r"mat1 and mat2 shapes cannot be multiplied"),
        "a layer's input size does not fit the data: check the image size and input_shape against the data module",
    ),
)


def hint_for(error: BaseException) -> str | None:
    """Return a one-line fix for a known config mistake, or ``None``."""
    text = str(error)
    for pattern, hint in HINTS:
        match = pattern.search(text)
        if match:
            return hint.format(*match.groups())
    return None


class CheckCLI(PlkitCLI):
    """``PlkitCLI`` whose ``fit`` runs the check instead of a training."""

    def __init__(self, args: Sequence[str]) -> None:
        self.probe = _BatchProbe()
        super().__init__(args=["fit", *args])

    @override
    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        self.requested = {key: self.config.fit.trainer.get(key) for key in ("accelerator", "devices", "precision")}
        self.config = self.parser.parse_object({"fit": {"trainer": CHECK_TRAINER, "ckpt_path": None}}, self.config)
        self.extra_callbacks.append(self.probe)

    def fit(self, model: pl.LightningModule, datamodule: pl.LightningDataModule | None = None, **_: Any) -> None:
        """Run one training and one validation batch and print the summary."""
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lines = [
            (
                "model",
                f"{type(model).__name__} ({type(model).__module__}), {total:,} parameters ({trainable:,} trainable)",
            ),
            ("data", f"{type(datamodule).__name__} ({type(datamodule).__module__})" if datamodule else "none"),
            (
                "trainer",
                ", ".join(f"{k}={v}" for k, v in self.requested.items()) + " (the check runs on 1 CPU, 32-true)",
            ),
        ]
        try:
            self.trainer.fit(model, datamodule=datamodule)
        except Exception as error:  # the point of the command is to turn any failure into one message
            lines += [("train batch", self.probe.train or "-"), ("val batch", self.probe.val or "-")]
            _print(lines)
            hint = hint_for(error)
            print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr)
            if hint:
                print(f"hint: {hint}", file=sys.stderr)
            raise SystemExit(1) from None
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        lines += [
            ("train batch", self.probe.train or "-"),
            ("val batch", self.probe.val or "no validation loop"),
            ("metrics", ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())) or "none logged"),
        ]
        _print(lines)
        print("OK: one training and one validation batch ran.")

    def after_fit(self) -> None:
        """A check never tests."""


def _print(lines: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")


def run_check(argv: Sequence[str]) -> None:
    """Run ``plkit check ARGV``."""
    CheckCLI(argv)
