"""The four ways to train the fashion_mnist network for one fp32 epoch, each a function of the same ``Work``.

Every contender builds the same network (plkit's ``SmallCNN`` backbone, dropout, a linear head), the same AdamW
with the same parameter groups, the same per-step warmup-cosine schedule and label smoothing, all read from
``benchmarks/fashion_mnist_baseline.yaml`` (the recipe before its bf16 option); trains one epoch over the same
training images with the same batch size; then makes one validation pass over the same held-out images. Each
returns the steps it took and the validation accuracy, so a contender that silently did less work (or trained
nothing) shows.

Everything is imported here, at the top, for every contender alike: the timing starts after the imports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchvision
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision import transforms
from typing_extensions import override

import plkit.cli.lightning_cli  # noqa: F401  (imported by `plkit fit`: outside the timing, as torch is for the others)
from benchmarks._data import FILES, read_idx
from plkit.cli import main
from plkit.data import FashionMNISTDataModule
from plkit.models import WarmupCosineLR, build_backbone, parameter_groups

# The recipe as it shipped before its bf16 and compile options: one fp32 epoch of it measures plkit's overhead.
RECIPE = Path(__file__).with_name("fashion_mnist_baseline.yaml")


@dataclass(frozen=True)
class Work:
    """What every contender does, with the recipe's hyperparameters."""

    data_root: Path
    val_size: int
    work_dir: Path
    batch_size: int
    lr: float
    weight_decay: float
    width: int | None
    dropout: float
    label_smoothing: float
    warmup_steps: float
    min_lr_ratio: float
    seed: int
    log_every_n_steps: int

    @classmethod
    def from_recipe(cls, data_root: Path, val_size: int, work_dir: Path) -> Work:
        recipe = yaml.safe_load(RECIPE.read_text())
        model, data = recipe["model"]["init_args"], recipe["data"]["init_args"]
        optimizer, scheduler = model["optimizer"]["init_args"], model["scheduler"]["init_args"]
        # What the plain-code contenders hard-wire; a recipe that changes them must change them too.
        assert model["backbone"] == "cnn", model["backbone"]
        assert model["no_decay_bias_norm"], "the contenders put biases and norm weights in a no-decay group"
        assert model["scheduler_interval"] == "step", model["scheduler_interval"]
        return cls(
            data_root=data_root,
            val_size=val_size,
            work_dir=work_dir,
            batch_size=data["batch_size"],
            lr=optimizer["lr"],
            weight_decay=optimizer["weight_decay"],
            width=model.get("width"),
            dropout=model["dropout"],
            label_smoothing=model["label_smoothing"],
            warmup_steps=scheduler["warmup_steps"],
            min_lr_ratio=scheduler["min_lr_ratio"],
            seed=recipe["seed_everything"],
            log_every_n_steps=recipe["trainer"]["log_every_n_steps"],
        )


# Shared building blocks: the recipe's network, optimizer and schedule, and its train/validation split.


def build_network(work: Work) -> nn.Module:
    """``ImageClassifier(backbone="cnn", width=..., dropout=...)`` as a plain ``nn.Module``: backbone, dropout, head."""
    backbone = build_backbone("cnn", in_channels=1, width=work.width)
    return nn.Sequential(backbone, nn.Dropout(work.dropout), nn.Linear(backbone.out_features, 10))


def build_optimizer(work: Work, network: nn.Module, total_steps: int) -> tuple[torch.optim.Optimizer, WarmupCosineLR]:
    optimizer = torch.optim.AdamW(parameter_groups(network, True), lr=work.lr, weight_decay=work.weight_decay)
    schedule = WarmupCosineLR(optimizer, work.warmup_steps, total_steps, work.min_lr_ratio)
    return optimizer, schedule


def split_ids(n: int, val_size: int) -> tuple[Tensor, Tensor]:
    """The data module's split: the same seed-0 permutation, so every contender sees the same images."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return order[val_size:].sort().values, order[:val_size].sort().values


def load_normalised(work: Work) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Decode the training file and normalise it once: ``(train images, labels), (val images, labels)``."""
    raw = work.data_root / "FashionMNIST" / "raw"
    images = torch.from_numpy(read_idx(raw / FILES["train"][0]).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(raw / FILES["train"][1]).copy()).long()
    x = images.float().div_(255).sub_(FashionMNISTDataModule.mean[0]).div_(FashionMNISTDataModule.std[0])
    train, val = split_ids(len(x), work.val_size)
    return (x[train], labels[train]), (x[val], labels[val])


# 1. A hand-written loop: randperm and tensor slicing, no DataLoader, no Lightning.


def hand_loop(work: Work) -> dict[str, Any]:
    torch.manual_seed(work.seed)
    (x, y), (x_val, y_val) = load_normalised(work)
    network = build_network(work)
    batches = torch.randperm(len(x)).split(work.batch_size)
    optimizer, schedule = build_optimizer(work, network, len(batches))
    losses = []
    network.train()
    for step, index in enumerate(batches):
        loss = F.cross_entropy(network(x[index]), y[index], label_smoothing=work.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % work.log_every_n_steps == 0:
            losses.append(loss.item())  # what a hand-written loop prints now and then
    network.eval()
    correct = torch.zeros((), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(x_val), work.batch_size):
            logits = network(x_val[start : start + work.batch_size])
            correct += (logits.argmax(1) == y_val[start : start + work.batch_size]).sum()
    return {"train_steps": len(batches), "val_acc": correct.item() / len(x_val)}


# 2 and 3. Bare Lightning: a minimal LightningModule, fed in-memory tensors or torchvision's per-sample pipeline.


class MinimalClassifier(pl.LightningModule):
    """What a Lightning user writes by hand around the network."""

    def __init__(self, work: Work) -> None:
        super().__init__()
        self.work = work
        self.network = build_network(work)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self.network(x), y, label_smoothing=self.work.label_smoothing)
        self.log("train_loss", loss)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.network(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    @override
    def configure_optimizers(self) -> Any:
        optimizer, schedule = build_optimizer(self.work, self.network, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _fit_bare(work: Work, train: DataLoader, val: DataLoader) -> dict[str, Any]:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        log_every_n_steps=work.log_every_n_steps,
    )
    trainer.fit(MinimalClassifier(work), train, val)
    return {"train_steps": trainer.global_step, "val_acc": float(trainer.callback_metrics["val_acc"])}


def lightning_tensors(work: Work) -> dict[str, Any]:
    pl.seed_everything(work.seed, verbose=False)
    (x, y), (x_val, y_val) = load_normalised(work)
    train = DataLoader(TensorDataset(x, y), batch_size=work.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=work.batch_size)
    return _fit_bare(work, train, val)


def lightning_torchvision(work: Work) -> dict[str, Any]:
    """The usual tutorial pattern: torchvision's dataset, a PIL image and ``ToTensor`` + ``Normalize`` per sample."""
    pl.seed_everything(work.seed, verbose=False)
    mean, std = FashionMNISTDataModule.mean, FashionMNISTDataModule.std
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    dataset = torchvision.datasets.FashionMNIST(str(work.data_root), train=True, transform=transform, download=False)
    train_ids, val_ids = split_ids(len(dataset), work.val_size)
    train = DataLoader(Subset(dataset, train_ids.tolist()), batch_size=work.batch_size, shuffle=True)
    val = DataLoader(Subset(dataset, val_ids.tolist()), batch_size=work.batch_size)
    return _fit_bare(work, train, val)


# 4. plkit: the recipe through `plkit fit`, with every default callback and logger on.


def plkit_args(work: Work, profile: bool = False) -> list[str]:
    """``plkit fit`` of the baseline configuration for one epoch, plus GradNormLogger and ProgressNotifier.

    plkit adds its ``ModelCheckpoint``, ``LearningRateMonitor`` and ``TensorBoardLogger`` itself. The overlay's
    status file is how the benchmark reads back the steps and the accuracy.
    """
    trainer: dict[str, Any] = {
        "callbacks": [
            {"class_path": "GradNormLogger"},
            {"class_path": "ProgressNotifier", "init_args": {"status_file": str(work.work_dir / "status.json")}},
        ]
    }
    if profile:
        profiler = {"dirpath": str(work.work_dir), "filename": "profile"}
        trainer["profiler"] = {"class_path": "lightning.pytorch.profilers.SimpleProfiler", "init_args": profiler}
    overlay = work.work_dir / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": trainer}))
    return [
        "fit",
        f"--config={RECIPE}",
        f"--config={overlay}",
        f"--data.data_dir={work.data_root}",
        f"--data.val_size={work.val_size}",
        "--trainer.max_epochs=1",
        f"--trainer.default_root_dir={work.work_dir}",
        "--trainer.enable_progress_bar=false",
        "--trainer.num_sanity_val_steps=0",
    ]


def plkit_fit(work: Work) -> dict[str, Any]:
    main(plkit_args(work))
    status = json.loads((work.work_dir / "status.json").read_text())
    assert status["state"] == "finished", status
    return {"train_steps": status["step"], "val_acc": status["metrics"]["val/acc"]}


CONTENDERS: dict[str, Callable[[Work], dict[str, Any]]] = {
    "hand_loop": hand_loop,
    "lightning_tensors": lightning_tensors,
    "lightning_torchvision": lightning_torchvision,
    "plkit": plkit_fit,
}


def expected_steps(work: Work, train_file_images: int) -> int:
    return math.ceil((train_file_images - work.val_size) / work.batch_size)
