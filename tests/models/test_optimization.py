"""Injected optimizers and schedules: parameter groups, WarmupCosineLR sized by the trainer, intervals, resume."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from plkit.data import MNISTDataModule
from plkit.models import AutoEncoder, ImageClassifier, WarmupCosineLR
from plkit.models._optim import configure_optimization, parameter_groups


class RecordLR(Callback):
    """The learning rate of the first parameter group at every training step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def expected_lr(step: int, peak: float, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_no_decay_bias_norm_puts_1d_parameters_in_a_group_without_decay() -> None:
    model = ImageClassifier(
        backbone="resnet", no_decay_bias_norm=True, optimizer=functools.partial(torch.optim.AdamW, weight_decay=0.05)
    )
    optimizer = model.configure_optimizers()
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05
    assert no_decay["weight_decay"] == 0.0
    one_d = {id(p) for p in model.parameters() if p.ndim == 1}
    assert {id(p) for p in no_decay["params"]} == one_d
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    # Every BatchNorm weight and bias, and the head's bias, are among them.
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(m.weight) for m in bn} <= one_d
    assert id(model.head.bias) in one_d


def test_one_group_by_default_and_frozen_parameters_left_out() -> None:
    model = ImageClassifier()
    model.backbone.requires_grad_(False)
    (group,) = parameter_groups(model, no_decay_bias_norm=False)
    assert len(group["params"]) == 2  # the head's weight and bias


def test_injected_optimizer_and_plateau_scheduler() -> None:
    model = AutoEncoder(
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="min"),
        scheduler_monitor="val/loss",
    )
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["optimizer"].param_groups[0]["lr"] == 0.05
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    assert config["lr_scheduler"]["interval"] == "epoch"


@pytest.mark.parametrize(
    ("scheduler", "interval", "expected"),
    [
        (functools.partial(WarmupCosineLR, total_steps=10), None, "step"),
        (functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=10), None, "step"),
        (functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2), None, "epoch"),
        (functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2), "step", "step"),
    ],
)
def test_interval_follows_the_schedule_unless_given(scheduler: Any, interval: str | None, expected: str) -> None:
    config = ImageClassifier(scheduler=scheduler, scheduler_interval=interval).configure_optimizers()
    assert config["lr_scheduler"]["interval"] == expected


def test_warmup_cosine_is_sized_from_the_trainer_and_stepped_per_step(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule
) -> None:
    pl.seed_everything(0)
    model = ImageClassifier(
        optimizer=functools.partial(torch.optim.AdamW, lr=0.01),
        scheduler=functools.partial(WarmupCosineLR, warmup_steps=0.25, min_lr_ratio=0.1),
    )
    record = RecordLR()
    trainer = make_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, callbacks=[record])
    trainer.fit(model, datamodule=mnist_dm)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 8
    assert record.lrs == pytest.approx([expected_lr(s, 0.01, 2, 8, 0.1) for s in range(8)])


def test_resume_continues_the_schedule_exactly(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule, tmp_path: Path
) -> None:
    def run(max_epochs: int, ckpt_path: Path | None = None) -> tuple[RecordLR, pl.Trainer]:
        pl.seed_everything(0)
        model = ImageClassifier(
            optimizer=functools.partial(torch.optim.SGD, lr=0.1),
            scheduler=functools.partial(WarmupCosineLR, warmup_steps=2, total_steps=12),
        )
        record = RecordLR()
        trainer = make_trainer(max_epochs=max_epochs, limit_train_batches=4, limit_val_batches=0, callbacks=[record])
        trainer.fit(model, datamodule=mnist_dm, ckpt_path=ckpt_path)
        return record, trainer

    straight, _ = run(3)
    first, trainer = run(1)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed, _ = run(3, tmp_path / "epoch1.ckpt")
    assert first.lrs + resumed.lrs == pytest.approx(straight.lrs)
    assert len(straight.lrs) == 12


def test_warmup_cosine_needs_an_end() -> None:
    module = SimpleNamespace(trainer=SimpleNamespace(estimated_stepping_batches=float("inf"), max_epochs=-1))
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]}]
    with pytest.raises(ValueError, match=r"set trainer\.max_epochs or trainer\.max_steps, or give the scheduler"):
        configure_optimization(
            module, groups, functools.partial(torch.optim.SGD, lr=1.0), WarmupCosineLR, None, "val/loss"
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_steps": 1.5}, r"warmup_steps=1\.5: a fraction must be in \[0, 1\)"),
        ({"warmup_steps": -3}, "warmup_steps=-3"),
        ({"min_lr_ratio": 2.0}, r"min_lr_ratio=2\.0"),
        ({"total_steps": 0}, "total_steps=0"),
        ({"warmup_steps": 20, "total_steps": 10}, "warmup_steps=20 is longer than total_steps=10"),
    ],
)
def test_warmup_cosine_bad_arguments(kwargs: dict, message: str) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=message):
        WarmupCosineLR(optimizer, **kwargs)


def test_warmup_fraction_is_resolved_when_the_length_is_set() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, warmup_steps=0.1)
    assert optimizer.param_groups[0]["lr"] == 1.0  # length unknown: no warmup yet
    scheduler.set_total_steps(100)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert scheduler.get_last_lr() == pytest.approx([0.1])
    state = scheduler.state_dict()
    assert state["total_steps"] == 100
