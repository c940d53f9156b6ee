"""Injected optimizers and schedules: parameter groups, WarmupCosineLR sized by the trainer, intervals, resume."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LRSchedulerCallable

from plkit.data import MNISTDataModule
from plkit.models import AutoEncoder, ImageClassifier, WarmupCosineLR, parameter_groups


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
        width=4,
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
            width=4,
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


def test_a_schedule_with_total_steps_unset_needs_a_trainer_with_an_end(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule
) -> None:
    model = ImageClassifier(width=4, scheduler=WarmupCosineLR)
    trainer = make_trainer(max_epochs=-1, limit_val_batches=0)
    with pytest.raises(ValueError, match=r"set trainer\.max_epochs or trainer\.max_steps, or give the scheduler"):
        trainer.fit(model, datamodule=mnist_dm)


def cli_scheduler(class_path: str, **init_args: Any) -> Any:
    """The scheduler callable ``LightningCLI`` builds from a recipe's ``class_path`` and ``init_args``."""
    parser = ArgumentParser()
    parser.add_argument("--scheduler", type=LRSchedulerCallable)
    config = parser.parse_object({"scheduler": {"class_path": class_path, "init_args": init_args}})
    return parser.instantiate(config).scheduler


@pytest.mark.parametrize(
    "scheduler",
    [
        functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1),
        "cli:torch.optim.lr_scheduler.OneCycleLR",
        WarmupCosineLR,
        "cli:plkit.models.WarmupCosineLR",
    ],
    ids=["OneCycleLR", "OneCycleLR-from-a-recipe", "WarmupCosineLR", "WarmupCosineLR-from-a-recipe"],
)
def test_every_schedule_with_total_steps_unset_learns_the_runs_length(
    scheduler: Any, make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule
) -> None:
    if isinstance(scheduler, str):
        class_path = scheduler.removeprefix("cli:")
        scheduler = cli_scheduler(class_path, **({"max_lr": 0.1} if "OneCycle" in class_path else {}))
    model = ImageClassifier(width=4, scheduler=scheduler)
    trainer = make_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(model, datamodule=mnist_dm)
    config = trainer.lr_scheduler_configs[0]
    assert config.scheduler.total_steps == 6
    assert config.interval == "step"


def test_a_schedule_stepped_per_epoch_is_as_long_as_the_run_in_epochs(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule
) -> None:
    model = ImageClassifier(width=4, scheduler=WarmupCosineLR, scheduler_interval="epoch")
    trainer = make_trainer(max_epochs=3, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model, datamodule=mnist_dm)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 3


def test_a_recipes_total_steps_is_kept() -> None:
    scheduler = cli_scheduler("plkit.models.WarmupCosineLR", total_steps=50)
    config = ImageClassifier(scheduler=scheduler).configure_optimizers()  # no trainer needed
    assert config["lr_scheduler"]["scheduler"].total_steps == 50
    assert config["lr_scheduler"]["interval"] == "step"


def test_python_callables_are_left_out_of_the_checkpoint_and_a_recipes_config_is_kept() -> None:
    from_python = ImageClassifier(
        optimizer=torch.optim.AdamW, scheduler=functools.partial(WarmupCosineLR, total_steps=9)
    )
    assert "optimizer" not in from_python.hparams
    assert "scheduler" not in from_python.hparams
    recipe = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}
    assert AutoEncoder(optimizer=recipe).hparams["optimizer"] == recipe  # type: ignore[arg-type]


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


def test_warmup_fraction_is_a_fraction_of_total_steps() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    WarmupCosineLR(optimizer, warmup_steps=0.1, total_steps=100)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # step 0 of a 10-step warmup
    without_length = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosineLR(without_length, warmup_steps=0.1)
    assert without_length.param_groups[0]["lr"] == 1.0  # no length: no warmup, no decay
    assert scheduler.state_dict()["total_steps"] is None
