"""ProgressNotifier: one line per reported epoch, and a status file that ends finished, failed or interrupted."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from plkit.callbacks import ProgressNotifier

from callback_helpers import TinyModel, quiet


@pytest.fixture
def lines() -> Iterator[list[str]]:
    """The messages ``rank_zero_info`` logs during the test."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)


class Poll(Callback):
    """Placed after the notifier: reads the status file the way an outside tool would, at every epoch end."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.seen.append(json.loads(self.path.read_text()))


def fit(tmp_path: Path, model: Any, *callbacks: Callback, **kw: Any) -> pl.Trainer:
    trainer = pl.Trainer(callbacks=list(callbacks), **quiet(tmp_path, **{"limit_val_batches": 2, **kw}))
    trainer.fit(model)
    return trainer


def test_lines_and_status_file_reach_finished(tmp_path: Path, lines: list[str]) -> None:
    status = tmp_path / "run" / "status.json"
    poll = Poll(status)
    fit(tmp_path, TinyModel(n=32), ProgressNotifier(status_file=status), poll, max_epochs=3)
    progress = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(" | ")[0] for line in progress] == ["epoch 1/3 (33%)", "epoch 2/3 (67%)", "epoch 3/3 (100%)"]
    assert all("elapsed 0:00:0" in line and "train_loss=" in line and "val_loss=" in line for line in progress)
    assert "eta 0:00:0" in progress[0]
    assert [(s["state"], s["epoch"], s["step"]) for s in poll.seen] == [("running", e, 4 * e) for e in (1, 2, 3)]
    final = json.loads(status.read_text())
    assert final["state"] == "finished"
    assert (final["epoch"], final["max_epochs"], final["step"], final["percent"], final["eta_s"]) == (
        3,
        3,
        12,
        100.0,
        0,
    )
    assert set(final["metrics"]) >= {"train_loss", "val_loss"}
    assert isinstance(final["metrics"]["val_loss"], float)
    assert final["error"] is None
    assert os.listdir(status.parent) == ["status.json"]  # no temporary file left behind


def test_every_n_epochs_and_the_last(tmp_path: Path, lines: list[str]) -> None:
    fit(tmp_path, TinyModel(n=16), ProgressNotifier(every_n_epochs=2), max_epochs=5)
    assert [line.split(" ")[1] for line in lines if line.startswith("epoch ")] == ["2/5", "4/5", "5/5"]
    assert not list(tmp_path.rglob("*.json"))


def test_step_bounded_run(tmp_path: Path, lines: list[str]) -> None:
    status = tmp_path / "status.json"
    fit(tmp_path, TinyModel(n=16), ProgressNotifier(status_file=status), max_epochs=-1, max_steps=10)
    progress = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(" | eta")[0].split(" | elapsed")[0] for line in progress] == [
        f"epoch {e} | step {2 * e}/10 ({20 * e}%)" for e in range(1, 6)
    ]
    final = json.loads(status.read_text())
    assert (final["state"], final["max_epochs"], final["max_steps"], final["step"]) == ("finished", None, 10, 10)


class Failing(TinyModel):
    """Calls ``stop()`` at the third batch of the second epoch."""

    def __init__(self, stop: Any) -> None:
        super().__init__(n=32)
        self.stop = stop

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 1 and batch_idx == 2:
            self.stop()
        return super().training_step(batch, batch_idx)


def raise_value_error() -> None:
    raise ValueError("stop here")


def test_exception_marks_failed(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    with pytest.raises(ValueError, match="stop here"):
        fit(tmp_path, Failing(raise_value_error), ProgressNotifier(status_file=status), max_epochs=3)
    final = json.loads(status.read_text())
    assert (final["state"], final["epoch"], final["step"]) == ("failed", 1, 6)
    assert final["error"] == "ValueError: stop here"


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    """Python's own Ctrl+C handler for the test; Lightning ignores further Ctrl+C after the first, so put the
    handlers back for the next tests. (A shell starts a background job with SIGINT ignored, and Python then
    keeps it ignored: the test must not depend on how pytest was started.)"""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("restore_signal_handlers")
def test_ctrl_c_marks_interrupted(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    with pytest.raises(SystemExit) as stopped:  # Lightning handles KeyboardInterrupt, then exits with status 1
        fit(tmp_path, Failing(lambda: os.kill(os.getpid(), signal.SIGINT)), ProgressNotifier(status_file=status))
    assert stopped.value.code == 1
    final = json.loads(status.read_text())
    assert (final["state"], final["epoch"], final["error"]) == ("interrupted", 1, None)


@pytest.mark.usefixtures("restore_signal_handlers")
def test_sigterm_marks_interrupted(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    # Lightning's handler notes the signal; the loop raises SIGTERMException (a SystemExit) at the end of the batch.
    with pytest.raises(SIGTERMException):
        fit(tmp_path, Failing(lambda: os.kill(os.getpid(), signal.SIGTERM)), ProgressNotifier(status_file=status))
    final = json.loads(status.read_text())
    assert (final["state"], final["epoch"], final["step"], final["error"]) == ("interrupted", 1, 7, None)


class BadLearningRate(TinyModel):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=-0.1)


class FailsAtFitEnd(Callback):
    """Placed after the notifier, whose on_fit_end has already written "finished"."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        raise RuntimeError("upload failed")


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("bad learning rate", ValueError, "Invalid learning rate: -0.1"),
        ("missing checkpoint", FileNotFoundError, "missing.ckpt"),
        # torch's message for a file that is no pickle differs between versions
        ("unreadable checkpoint", pickle.UnpicklingError, "Weights only load failed|invalid load key"),
        ("failure after finished", RuntimeError, "upload failed"),
    ],
)
def test_failure_before_or_after_training_marks_failed(tmp_path: Path, case: str, error: type, match: str) -> None:
    status = tmp_path / "status.json"
    model = BadLearningRate(n=16) if case == "bad learning rate" else TinyModel(n=16)
    ckpt = {"missing checkpoint": tmp_path / "missing.ckpt", "unreadable checkpoint": tmp_path / "bad.ckpt"}.get(case)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    callbacks = [ProgressNotifier(status_file=status), *([FailsAtFitEnd()] if case == "failure after finished" else [])]
    trainer = pl.Trainer(callbacks=callbacks, **quiet(tmp_path, max_epochs=1, limit_val_batches=1))
    with pytest.raises(error, match=match) as raised:
        trainer.fit(model, ckpt_path=ckpt)
    final = json.loads(status.read_text())
    assert final["state"] == "failed"
    assert final["error"] == f"{type(raised.value).__name__}: {raised.value}"
    assert final["epoch"] == (1 if case == "failure after finished" else 0)


def test_failure_outside_fit_leaves_status_alone(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    notifier = ProgressNotifier(status_file=status)
    trainer = fit(tmp_path, TinyModel(n=16), notifier, max_epochs=1)

    class BadTest(TinyModel):
        def test_step(self, batch: Any, batch_idx: int) -> None:
            raise RuntimeError("test broke")

    with pytest.raises(RuntimeError, match="test broke"):
        trainer.test(BadTest(n=16))
    assert json.loads(status.read_text())["state"] == "finished"


class NanLoss(TinyModel):
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val_loss", torch.tensor(math.nan), batch_size=1)


def test_non_finite_metric_written_as_string(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    fit(tmp_path, NanLoss(n=16), ProgressNotifier(status_file=status), max_epochs=1)
    assert json.loads(status.read_text())["metrics"]["val_loss"] == "nan"


def test_unwritable_status_file(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PermissionError, match=r"cannot write status_file='.*a_file/status.json'.*writable"):
        fit(tmp_path, TinyModel(n=16), ProgressNotifier(status_file=tmp_path / "a_file" / "status.json"), max_epochs=1)


@pytest.mark.parametrize("every_n_epochs", [0, -1, 1.5, True])
def test_bad_arguments(every_n_epochs: Any) -> None:
    with pytest.raises(ValueError, match=f"every_n_epochs={every_n_epochs!r}.*>= 1"):
        ProgressNotifier(every_n_epochs=every_n_epochs)
