"""The two ways the time-to-accuracy benchmark trains a configuration: ``plkit fit``, and a hand-written loop.

Both read the same recipe files. The hand-written loop is what a PyTorch user writes for the recipe's settings:
normalise the decoded images once, slice batches from a ``randperm``, ``torch.autocast`` for ``bf16-mixed``,
``torch.compile`` when the recipe compiles, a validation pass every epoch, and a test pass at the end.

Everything is imported here, at the top, for both alike: the timing starts after the imports.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

import plkit.cli.lightning_cli  # noqa: F401  (imported by `plkit fit`: outside the timing, as torch is for the loop)
from benchmarks._contenders import split_ids
from benchmarks._data import FILES, read_idx
from plkit.cli import main
from plkit.cli.recipes import recipe_path
from plkit.data import FashionMNISTDataModule
from plkit.models import WarmupCosineLR, build_backbone, parameter_groups


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, dicts merged key by key (how ``plkit fit`` stacks several ``--config`` files)."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def load_config(configs: tuple[str, ...]) -> dict[str, Any]:
    """The recipe files (names or paths) merged in order."""
    merged: dict[str, Any] = {}
    for config in configs:
        path = Path(config) if config.endswith(".yaml") else recipe_path(config)
        merged = _merge(merged, yaml.safe_load(path.read_text()))
    return merged


@dataclass(frozen=True)
class Settings:
    """What both runners train: a configuration's hyperparameters and levers, a seed, and the validation size."""

    seed: int
    val_size: int
    epochs: int
    batch_size: int
    width: int | None
    dropout: float
    label_smoothing: float
    lr: float
    weight_decay: float
    warmup_steps: float
    min_lr_ratio: float
    augment: bool
    precision: str
    channels_last: bool
    compile: bool

    @classmethod
    def from_configs(cls, configs: tuple[str, ...], seed: int, val_size: int, epochs: int | None) -> Settings:
        config = load_config(configs)
        trainer, model, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
        optimizer, scheduler = model["optimizer"], model["scheduler"]
        # What the hand-written loop hard-wires; a recipe that changes them must change the loop too.
        assert model.get("backbone") == "cnn", model.get("backbone")
        assert model.get("no_decay_bias_norm"), "the loop puts biases and norm weights in a no-decay group"
        assert optimizer["class_path"].endswith("AdamW"), optimizer["class_path"]
        assert scheduler["class_path"].endswith("WarmupCosineLR"), scheduler["class_path"]
        assert model.get("scheduler_interval") == "step", model.get("scheduler_interval")
        assert model.get("channels_last", True), "the loop keeps the convolution weights channels-last"
        return cls(
            seed=seed,
            val_size=val_size,
            epochs=epochs or trainer["max_epochs"],
            batch_size=data["batch_size"],
            width=model.get("width"),
            dropout=model.get("dropout", 0.0),
            label_smoothing=model.get("label_smoothing", 0.0),
            lr=optimizer["init_args"]["lr"],
            weight_decay=optimizer["init_args"]["weight_decay"],
            warmup_steps=scheduler["init_args"]["warmup_steps"],
            min_lr_ratio=scheduler["init_args"]["min_lr_ratio"],
            augment=data.get("augment", False),
            precision=str(trainer.get("precision", "32-true")),
            channels_last=data.get("channels_last", False),
            compile=model.get("compile", False),
        )

    def describe(self) -> str:
        """``width 20, batch 128, 6 epochs, bf16-mixed, compile``: what sets the time and the accuracy."""
        epochs = f"{self.epochs} epoch" + ("s" if self.epochs != 1 else "")
        parts = [f"width {self.width}", f"batch {self.batch_size}", epochs, self.precision]
        if self.channels_last:
            parts.append("channels-last batches")
        if self.compile:
            parts.append("compile")
        if self.augment:
            parts.append("random shifts")
        return ", ".join(parts)


# plkit: the recipe through `plkit fit --run_test true`.


class TestResult(Callback):
    """Write the test metrics to ``result_file`` when testing ends."""

    def __init__(self, result_file: str) -> None:
        self.result_file = Path(result_file)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("test/")}
        self.result_file.write_text(json.dumps({"metrics": metrics}))


def plkit_fit(
    configs: tuple[str, ...], settings: Settings, data_root: Path, work_dir: Path, profile: bool = False
) -> dict[str, Any]:
    result_file = work_dir / "test.json"
    args = ["fit", *(f"--config={config}" for config in configs), f"--data.data_dir={data_root}"]
    args += [f"--data.val_size={settings.val_size}", f"--seed_everything={settings.seed}", "--run_test=true"]
    args += [f"--trainer.max_epochs={settings.epochs}", f"--trainer.default_root_dir={work_dir}"]
    # Appended after the recipe's own callbacks (a --config with trainer.callbacks would replace them).
    callback = {"class_path": f"{__name__}.TestResult", "init_args": {"result_file": str(result_file)}}
    args += ["--trainer.enable_progress_bar=false", f"--trainer.callbacks+={json.dumps(callback)}"]
    if profile:
        profiler = {"class_path": "lightning.pytorch.profilers.SimpleProfiler", "init_args": {"filename": "profile"}}
        profiler["init_args"]["dirpath"] = str(work_dir)
        args.append(f"--trainer.profiler={json.dumps(profiler)}")
    main(args)
    return {"test_acc": json.loads(result_file.read_text())["metrics"]["test/acc"]}


# The hand-written loop.


def decode(data_root: Path, split: str) -> tuple[Tensor, Tensor]:
    """The staged ``train`` or ``test`` files as normalised float32 images ``[N, 1, 28, 28]`` and int64 labels."""
    raw = data_root / "FashionMNIST" / "raw"
    images = torch.from_numpy(read_idx(raw / FILES[split][0]).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(raw / FILES[split][1]).copy()).long()
    mean, std = FashionMNISTDataModule.mean[0], FashionMNISTDataModule.std[0]
    return images.float().div_(255).sub_(mean).div_(std), labels


def _shift(images: Tensor, max_shift: int = 2) -> Tensor:
    """Shift each image by up to ``max_shift`` pixels, zero-filled (torchvision's ``RandomCrop(28, padding=2)``)."""
    b, _, h, w = images.shape
    black = -FashionMNISTDataModule.mean[0] / FashionMNISTDataModule.std[0]  # a zero pixel, normalised
    padded = F.pad(images, (max_shift,) * 4, value=black)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1))
    rows = (dy + torch.arange(h))[:, :, None]
    cols = (dx + torch.arange(w))[:, None, :]
    return padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def build_network(settings: Settings, channels_last: bool = True) -> nn.Module:
    """``ImageClassifier(backbone="cnn", width=..., dropout=...)``'s network as a plain ``nn.Module``."""
    backbone = build_backbone("cnn", in_channels=1, width=settings.width, channels_last=channels_last)
    return nn.Sequential(backbone, nn.Dropout(settings.dropout), nn.Linear(backbone.out_features, 10))


def build_optimizer(
    settings: Settings, network: nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, WarmupCosineLR]:
    """The recipe's AdamW (biases and norm weights without decay) and its per-step warmup-cosine schedule."""
    optimizer = torch.optim.AdamW(parameter_groups(network, True), lr=settings.lr, weight_decay=settings.weight_decay)
    return optimizer, WarmupCosineLR(optimizer, settings.warmup_steps, total_steps, settings.min_lr_ratio)


def hand_loop(settings: Settings, data_root: Path) -> dict[str, Any]:
    torch.manual_seed(settings.seed)
    images, labels = decode(data_root, "train")
    train_ids, val_ids = split_ids(len(images), settings.val_size)
    x, y, x_val, y_val = images[train_ids], labels[train_ids], images[val_ids], labels[val_ids]
    x_test, y_test = decode(data_root, "test")
    network = build_network(settings)
    forward = torch.compile(network) if settings.compile else network
    optimizer, schedule = build_optimizer(settings, network, settings.epochs * -(-len(x) // settings.batch_size))

    def autocast() -> contextlib.AbstractContextManager:
        bf16 = settings.precision == "bf16-mixed"
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def batches(images: Tensor) -> Iterator[Tensor]:
        for batch in images.split(settings.batch_size):
            yield batch.contiguous(memory_format=torch.channels_last) if settings.channels_last else batch

    def accuracy(images: Tensor, targets: Tensor) -> float:
        network.eval()
        correct = torch.zeros((), dtype=torch.long)
        with torch.no_grad(), autocast():
            for batch, target in zip(batches(images), targets.split(settings.batch_size), strict=True):
                correct += (forward(batch).argmax(1) == target).sum()
        network.train()
        return correct.item() / len(targets)

    for _ in range(settings.epochs):
        for index in torch.randperm(len(x)).split(settings.batch_size):
            batch = _shift(x[index]) if settings.augment else x[index]
            if settings.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast():
                loss = F.cross_entropy(forward(batch), y[index], label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy(x_val, y_val)  # what plkit's validation does every epoch; a hand-written loop prints it
    return {"test_acc": accuracy(x_test, y_test)}
