"""LRDecay: the schedule, its composition with schedulers, and an exact resume from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint

from plkit.callbacks import LRDecay

from callback_helpers import RecordingLogger, TinyModel, quiet


class RateRecorder(Callback):
    """The rate of every param group of every optimizer at each optimizer step."""

    def __init__(self) -> None:
        self.rates: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.rates.append([g["lr"] for o in trainer.optimizers for g in o.param_groups])


def fit(tmp_path: Path, model: pl.LightningModule, *callbacks: Callback, ckpt: Path | None = None, **kw: Any):
    trainer = pl.Trainer(callbacks=list(callbacks), **quiet(tmp_path, limit_val_batches=2, **kw))
    trainer.fit(model, ckpt_path=ckpt)
    return trainer


def test_epoch_schedule(tmp_path: Path) -> None:
    recorder = RateRecorder()
    fit(tmp_path, TinyModel(lr=0.1, n=32), LRDecay(gamma=0.5, every_n=2), recorder, max_epochs=5)
    per_epoch = [recorder.rates[4 * e][0] for e in range(5)]  # 4 steps per epoch
    assert per_epoch == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025], rel=1e-12)
    assert all(r == recorder.rates[4 * e] for e in range(5) for r in recorder.rates[4 * e : 4 * e + 4])


def test_step_schedule_counts_optimizer_steps(tmp_path: Path) -> None:
    recorder = RateRecorder()
    decay = LRDecay(gamma=0.5, interval="step", every_n=3)
    fit(tmp_path, TinyModel(lr=0.1, n=64), decay, recorder, max_epochs=1, accumulate_grad_batches=2)
    assert len(recorder.rates) == 4  # 8 batches, 4 optimizer steps
    assert [r[0] for r in recorder.rates] == pytest.approx([0.1, 0.1, 0.1, 0.05], rel=1e-12)
    assert decay.decays_applied == 1


class TwoGroups(TinyModel):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": self.encoder.parameters(), "lr": 0.1}, {"params": self.head.parameters(), "lr": 0.01}]
        return torch.optim.SGD(groups)


def test_all_groups_and_floor(tmp_path: Path) -> None:
    recorder = RateRecorder()
    fit(tmp_path, TwoGroups(n=32), LRDecay(gamma=0.5, min_lr=0.03), recorder, max_epochs=4)
    per_epoch = [recorder.rates[4 * e] for e in range(4)]
    # The floor stops the first group at 0.03 and never raises the second, which starts below it.
    assert per_epoch == [pytest.approx(r, rel=1e-12) for r in ([0.1, 0.01], [0.05, 0.01], [0.03, 0.01], [0.03, 0.01])]


class TwoOptimizers(TinyModel):
    def __init__(self) -> None:
        super().__init__(n=32)
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.manual_backward(loss)
        for optimizer in self.optimizers():
            optimizer.step()
            optimizer.zero_grad()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.encoder.parameters(), lr=0.2), torch.optim.Adam(self.head.parameters(), lr=0.02)]


def test_all_optimizers(tmp_path: Path) -> None:
    recorder = RateRecorder()
    trainer = fit(tmp_path, TwoOptimizers(), LRDecay(gamma=0.5), recorder, max_epochs=3)
    # Both optimizers step each batch: 8 hook calls per epoch, the rates of both in each.
    assert [recorder.rates[8 * e] for e in range(3)] == [pytest.approx([0.2 * 0.5**e, 0.02 * 0.5**e]) for e in range(3)]
    # After the last epoch the optimizers hold the rate of the next, as after a scheduler's step.
    assert [o.param_groups[0]["lr"] for o in trainer.optimizers] == pytest.approx([0.025, 0.0025], rel=1e-12)


@pytest.mark.parametrize("monitor_first", [True, False])
@pytest.mark.parametrize(("interval", "every_n"), [("epoch", 1), ("step", 3)])
def test_monitor_logs_the_rate_in_use_in_either_order(
    tmp_path: Path, monitor_first: bool, interval: str, every_n: int
) -> None:
    recorder, logger = RateRecorder(), RecordingLogger()
    monitor = LearningRateMonitor(logging_interval=interval)
    decay = LRDecay(gamma=0.5, interval=interval, every_n=every_n)
    callbacks = [monitor, decay] if monitor_first else [decay, monitor]
    fit(tmp_path, TinyModel(lr=0.1, n=32), *callbacks, recorder, max_epochs=3, logger=logger, log_every_n_steps=1)
    logged = logger.series("lr-SGD")
    used = [rates[0] for rates in recorder.rates]  # one per optimizer step; the logger's step counts them too
    if interval == "epoch":
        assert [step for step, _ in logged] == [0, 4, 8]
        assert [rate for _, rate in logged] == pytest.approx([0.1, 0.05, 0.025], rel=1e-12)
    else:
        assert [step for step, _ in logged] == list(range(12))
        assert used == pytest.approx([0.1 * 0.5 ** (s // 3) for s in range(12)], rel=1e-12)
    assert [rate for step, rate in logged] == [used[step] for step, _ in logged]


class WithScheduler(TinyModel):
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


def test_composes_with_a_multiplying_scheduler(tmp_path: Path) -> None:
    recorder = RateRecorder()
    fit(tmp_path, WithScheduler(n=32), LRDecay(gamma=0.9), recorder, max_epochs=3)
    per_epoch = [recorder.rates[4 * e][0] for e in range(3)]
    assert per_epoch == pytest.approx([0.1 * (0.5 * 0.9) ** e for e in range(3)], rel=1e-12)


@pytest.mark.parametrize("interval", ["epoch", "step"])
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_equals_straight_run(tmp_path: Path, interval: str) -> None:
    def decay() -> LRDecay:
        return LRDecay(gamma=0.7, interval=interval, every_n=1 if interval == "epoch" else 3)

    torch.manual_seed(0)
    straight, straight_rates = TinyModel(n=32), RateRecorder()
    trainer = fit(tmp_path / "a", straight, decay(), straight_rates, max_epochs=4)
    straight_lr = trainer.optimizers[0].param_groups[0]["lr"]

    # ModelCheckpoint saves after validation, before this epoch's decay: the resumed run must catch up at its start.
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    torch.manual_seed(0)
    fit(tmp_path / "b", TinyModel(n=32), decay(), ckpt_cb, max_epochs=2, enable_checkpointing=True)
    resumed, rates, logger = TinyModel(n=32), RateRecorder(), RecordingLogger()
    callbacks = [LearningRateMonitor(logging_interval=interval), decay(), rates]  # the monitor before the decay
    last = tmp_path / "ckpt" / "last.ckpt"
    trainer = fit(tmp_path / "b", resumed, *callbacks, max_epochs=4, ckpt=last, logger=logger, log_every_n_steps=1)

    assert trainer.optimizers[0].param_groups[0]["lr"] == straight_lr
    assert straight_lr == pytest.approx(0.05 * 0.7 ** (4 if interval == "epoch" else 16 // 3), rel=1e-12)
    assert rates.rates == straight_rates.rates[8:]  # epochs 2 and 3 ran at the same rates, step by step
    logged = logger.series("lr-SGD")
    assert logged[0] == (8, straight_rates.rates[8][0])  # the first resumed step logs the rate it uses
    assert [rate for _, rate in logged] == [straight_rates.rates[step][0] for step, _ in logged]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_second_fit_restarts_the_schedule(tmp_path: Path) -> None:
    decay, recorder = LRDecay(gamma=0.5), RateRecorder()
    fit(tmp_path, TinyModel(lr=0.1, n=32), decay, max_epochs=3)
    fit(tmp_path, TinyModel(lr=0.1, n=32), decay, recorder, max_epochs=2)
    assert [recorder.rates[4 * e][0] for e in range(2)] == pytest.approx([0.1, 0.05], rel=1e-12)


def test_state_dict_round_trip() -> None:
    decay = LRDecay(gamma=0.9, interval="step", every_n=5)
    assert decay.state_dict() == {}
    decay.load_state_dict({"decays_applied": 7})
    assert decay.state_dict() == {"decays_applied": 7}
    assert decay.state_key == "LRDecay{'gamma': 0.9, 'interval': 'step', 'every_n': 5, 'min_lr': 0.0}"
    assert LRDecay(gamma=0.9, min_lr=1e-5).state_key != LRDecay(gamma=0.9).state_key
    other = LRDecay(gamma=0.9, interval="step", every_n=5)
    other.load_state_dict({})  # an older checkpoint without the key
    assert other.state_dict() == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": 0.0}, r"gamma=0.0.*\(0, 1\]"),
        ({"gamma": 1.5}, r"gamma=1.5.*\(0, 1\]"),
        ({"gamma": -0.5}, r"gamma=-0.5.*\(0, 1\]"),
        ({"interval": "batch"}, r"interval='batch'.*\['epoch', 'step'\]"),
        ({"every_n": 0}, "every_n=0.*>= 1"),
        ({"min_lr": -1.0}, "min_lr=-1.0.*>= 0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LRDecay(**kwargs)
