"""ProgressNotifier: one line per reported epoch, and a status file that ends finished, failed or interrupted."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

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
    def __init__(self, error: type[BaseException]) -> None:
        super().__init__(n=32)
        self.error = error

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 1 and batch_idx == 2:
            raise self.error("stop here")
        return super().training_step(batch, batch_idx)


def test_exception_marks_failed(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    with pytest.raises(ValueError, match="stop here"):
        fit(tmp_path, Failing(ValueError), ProgressNotifier(status_file=status), max_epochs=3)
    final = json.loads(status.read_text())
    assert (final["state"], final["epoch"], final["step"]) == ("failed", 1, 6)
    assert final["error"] == "ValueError: stop here"


def test_ctrl_c_marks_interrupted(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning handles KeyboardInterrupt, then exits with status 1
            fit(tmp_path, Failing(KeyboardInterrupt), ProgressNotifier(status_file=status), max_epochs=3)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl+C after the first
    final = json.loads(status.read_text())
    assert (final["state"], final["epoch"], final["error"]) == ("interrupted", 1, None)


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
