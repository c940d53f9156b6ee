"""``plkit check --config X``: build a recipe on the CPU, run one training and one validation batch, summarise.

It parses the config exactly as ``plkit fit`` does, instantiates the model, data module and trainer
(forced onto one CPU process at full precision, with no logger), runs ``fast_dev_run=1``, and prints
the classes, the parameter count, the batch shapes and the first losses. A failure is reported as
one message, with a hint for the mistakes recipes make most (channels, class count, image size).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from plkit.cli._errors import hint_for
from plkit.cli.lightning_cli import PlkitCLI, run_cli

# What a check may not change in the user's trainer: one CPU process, one batch of each, no files.
CHECK_TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "num_nodes": 1,
    "strategy": "auto",
    "precision": "32-true",
    "fast_dev_run": 1,
    "logger": True,  # fast_dev_run swaps it for a logger that writes nothing; callbacks that need one still work
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


class CheckCLI(PlkitCLI):
    """``PlkitCLI`` whose ``fit`` runs the check instead of a training, writing nothing outside a temporary folder."""

    def __init__(self, args: Sequence[str], **kwargs: Any) -> None:
        self.probe = _BatchProbe()
        with tempfile.TemporaryDirectory(prefix="plkit-check-") as scratch:
            self.scratch = scratch
            super().__init__(args=["fit", *args], **{"run_folder": False, **kwargs})

    @override
    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self.verb_parsers["fit"].prog = main_kwargs.get("prog", "plkit check")  # its errors are the check's

    @override
    def before_instantiate_classes(self) -> None:
        trainer = self.config.fit.trainer
        self.requested = {key: trainer.get(key) for key in ("accelerator", "devices", "precision")}
        # Whatever the recipe writes (a callback's last.ckpt, a profiler's report) lands in the scratch folder.
        check = {**CHECK_TRAINER, "default_root_dir": self.scratch, "callbacks": [*(trainer.get("callbacks") or [])]}
        self.config = self.parser.parse_object({"fit": {"trainer": check, "ckpt_path": None}}, self.config)

    @override
    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(self.probe)
        return trainer

    def fit(self, model: pl.LightningModule, datamodule: pl.LightningDataModule | None = None, **_: Any) -> None:
        """Run one training and one validation batch and print the summary."""
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        requested = ", ".join(f"{k}={v}" for k, v in self.requested.items())
        lines = [
            (
                "model",
                f"{type(model).__name__} ({type(model).__module__}), {total:,} parameters ({trainable:,} trainable)",
            ),
            ("data", f"{type(datamodule).__name__} ({type(datamodule).__module__})" if datamodule else "none"),
            ("trainer", f"{requested} (the check itself runs on 1 CPU, 32-true)"),
            ("precision", str(self.requested["precision"] or "32-true")),
            ("memory format", memory_format(model, datamodule)),
        ]
        try:
            self.trainer.fit(model, datamodule=datamodule)
        except Exception as error:  # the point of the command is to turn any failure into one message
            lines += [("train batch", self.probe.train or "-"), ("val batch", self.probe.val or "-")]
            _print(lines)
            hint = hint_for(error)
            print(f"FAILED: {type(error).__name__}: {' '.join(str(error).split())[:300]}", file=sys.stderr)
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


def memory_format(model: pl.LightningModule, datamodule: pl.LightningDataModule | None) -> str:
    """``channels_last`` or ``contiguous``, from the model's and the data module's ``channels_last`` settings.

    Example:
        >>> from plkit.models import ImageClassifier
        >>> memory_format(ImageClassifier(channels_last=True), None)
        'channels_last (model channels_last=True)'
    """
    settings = {"model": _setting(model)}
    if datamodule is not None:
        settings["data"] = _setting(datamodule)
    given = {k: v for k, v in settings.items() if v is not None}
    used = "channels_last" if any(given.values()) else "contiguous"
    detail = "; ".join(f"{k} channels_last={v}" for k, v in given.items())
    return f"{used} ({detail})" if detail else used


def _setting(module: Any) -> bool | None:
    hparams = getattr(module, "hparams", None) or {}
    value = hparams.get("channels_last") if hasattr(hparams, "get") else None
    return getattr(module, "channels_last", None) if value is None else bool(value)


def _print(lines: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")


def run_check(argv: Sequence[str]) -> None:
    """Run ``plkit check ARGV``."""
    run_cli(argv, CheckCLI, parser_kwargs={"prog": "plkit check"})
