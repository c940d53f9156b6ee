"""ProgressNotifier: one progress line per epoch, and a status file an outside tool can poll.

This file imports nothing from plkit: copy it into any Lightning project.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override


class ProgressNotifier(Callback):
    """Report training progress on rank zero at the end of every ``every_n_epochs`` epochs (and the last one).

    Each report is one line, logged with Lightning's ``rank_zero_info`` (the logger
    ``lightning.pytorch.utilities.rank_zero``, shown by default next to Lightning's own messages, silenced with
    ``logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)``)::

        epoch 3/10 (30%) | elapsed 0:00:42 | eta 0:01:38 | train_loss=0.3121 val_acc=0.8812

    The ETA extrapolates the time per epoch of this run (steps when ``max_epochs`` is unbounded and ``max_steps``
    is set; none when neither bounds the run). The metrics are the scalar entries of ``trainer.callback_metrics``.

    With ``status_file``, rank zero also keeps a small JSON file up to date, replaced atomically (written to a
    temporary file in the same folder, then renamed), so a reader never sees half of it::

        {"state": "running", "epoch": 3, "max_epochs": 10, "step": 300, "max_steps": null, "percent": 30.0,
         "elapsed_s": 42.0, "eta_s": 98.0, "metrics": {"train_loss": 0.3121}, "error": null, "updated": "..."}

    ``state`` is ``running`` from the setup of ``fit``, ``finished`` at its end, ``failed`` when an exception ends
    the fit at any point after that (a bad learning rate, a missing or unreadable ``ckpt_path``, an error in a
    step or another callback; ``error`` holds it), and ``interrupted`` on Ctrl+C (``KeyboardInterrupt``) or SIGTERM
    (Lightning's ``SIGTERMException``). ``epoch`` counts completed epochs.
    Non-finite metrics are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has no such numbers).

    Args:
        every_n_epochs: Report every this many epochs (``>= 1``); the last epoch is always reported.
        status_file: Path of the JSON status file, or ``None`` for none. Its folder is created if missing.

    Raises:
        ValueError: When ``every_n_epochs < 1``.
        PermissionError: At the setup of ``fit`` when ``status_file`` cannot be written.

    Example::

        >>> import json, tempfile
        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from plkit.callbacks import ProgressNotifier
        >>> status = f"{tempfile.mkdtemp()}/status.json"
        >>> trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      callbacks=[ProgressNotifier(status_file=status)])
        >>> trainer.fit(BoringModel())
        >>> report = json.load(open(status))
        >>> report["state"], report["epoch"], report["percent"]
        ('finished', 2, 100.0)
    """

    def __init__(self, every_n_epochs: int = 1, status_file: str | Path | None = None) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"ProgressNotifier(every_n_epochs={every_n_epochs!r}) must be an integer >= 1.")
        self.every_n_epochs = every_n_epochs
        self.status_file = None if status_file is None else Path(status_file)
        self._start = 0.0  # fit start, for "elapsed"
        self._eta_start = 0.0  # train start, after a checkpoint restored the progress, for the ETA
        self._start_fraction = 0.0
        self._active = False  # from writing "running" until the fit's teardown: a failure then is this fit's

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._active = False
        if stage != "fit" or self.status_file is None:
            return
        self._start = time.monotonic()
        error = None
        if trainer.is_global_zero:
            try:
                self.status_file.parent.mkdir(parents=True, exist_ok=True)
                self._write(trainer, "running", trainer.current_epoch)
            except OSError as exc:
                error = (
                    f"ProgressNotifier cannot write status_file={str(self.status_file)!r} ({exc}); "
                    "choose a writable path."
                )
        # Every rank raises, not only rank zero: the others would otherwise wait for it forever.
        error = trainer.strategy.broadcast(error)
        if error is not None:
            raise PermissionError(error)
        self._active = True

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._eta_start = time.monotonic()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run starts part-way: its ETA extrapolates only the progress made since this start.
        self._eta_start = time.monotonic()
        self._start_fraction = _fraction(trainer, trainer.current_epoch) or 0.0

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1  # the epoch counter moves on after this hook
        last = trainer.max_epochs is not None and done >= trainer.max_epochs
        if done % self.every_n_epochs and not last and not trainer.should_stop:
            return
        metrics = _metrics(trainer)  # on every rank: reading the epoch's metrics may sync them, once per report
        if not trainer.is_global_zero:
            return
        rank_zero_info(self._line(trainer, done, metrics))
        if self.status_file is not None:
            self._write(trainer, "running", done, metrics)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = _metrics(trainer)  # on every rank: reading the metrics may sync them
        if trainer.is_global_zero and self.status_file is not None:
            self._write(trainer, "finished", trainer.current_epoch, metrics, finished=True)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Still active after "finished" until here: a later callback's on_fit_end can fail the fit.
        self._active = False

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not self._active:  # no "running" written (not a fit, or no status file), or already recorded
            return
        self._active = False
        if trainer.is_global_zero and self.status_file is not None:
            stopped = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
            error = None if stopped else f"{type(exception).__name__}: {exception}"
            try:
                self._write(trainer, "interrupted" if stopped else "failed", trainer.current_epoch, error=error)
            except OSError as exc:  # raising here would hide the exception that ended the run
                rank_zero_warn(f"ProgressNotifier could not record the {type(exception).__name__}: {exc}")

    def _line(self, trainer: pl.Trainer, done: int, metrics: dict[str, Any]) -> str:
        bounded_epochs = trainer.max_epochs is not None and trainer.max_epochs > 0
        if bounded_epochs or trainer.max_steps < 0:
            head = f"epoch {done}/{trainer.max_epochs if bounded_epochs else '?'}"
        else:
            head = f"epoch {done} | step {trainer.global_step}/{trainer.max_steps}"
        fraction = _fraction(trainer, done)
        if fraction is not None:
            head += f" ({100 * fraction:.0f}%)"
        parts = [head, f"elapsed {_clock(time.monotonic() - self._start)}"]
        eta = self._eta(trainer, done)
        if eta is not None:
            parts.append(f"eta {_clock(eta)}")
        if metrics:
            parts.append(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        return " | ".join(parts)

    def _eta(self, trainer: pl.Trainer, epochs_done: int) -> float | None:
        fraction = _fraction(trainer, epochs_done)
        if fraction is None or fraction <= self._start_fraction:
            return None
        elapsed = time.monotonic() - self._eta_start
        return elapsed * (1.0 - fraction) / (fraction - self._start_fraction)

    def _write(
        self,
        trainer: pl.Trainer,
        state: str,
        epochs_done: int,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        finished: bool = False,
    ) -> None:
        assert self.status_file is not None
        fraction = 1.0 if finished else _fraction(trainer, epochs_done)
        eta = 0.0 if finished else self._eta(trainer, epochs_done)
        report = {
            "state": state,
            "epoch": epochs_done,
            "max_epochs": trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None,
            "step": trainer.global_step,
            "max_steps": trainer.max_steps if trainer.max_steps > 0 else None,
            "percent": None if fraction is None else round(100 * fraction, 2),
            "elapsed_s": round(time.monotonic() - self._start, 3),
            "eta_s": None if eta is None else round(eta, 3),
            "metrics": metrics or {},
            "error": error,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        folder = self.status_file.parent
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.status_file.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(report, f, indent=2)
            os.replace(tmp, self.status_file)
        except BaseException:
            os.unlink(tmp)
            raise


def _fraction(trainer: pl.Trainer, epochs_done: int) -> float | None:
    """How much of the run is done, by epochs or steps, whichever limit comes first; None when unbounded."""
    fractions = []
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        fractions.append(epochs_done / trainer.max_epochs)
    if trainer.max_steps > 0:
        fractions.append(trainer.global_step / trainer.max_steps)
    return min(1.0, max(fractions)) if fractions else None


def _metrics(trainer: pl.Trainer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in sorted(trainer.callback_metrics.items()):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            number = float(value)
            out[name] = number if math.isfinite(number) else str(number)
    return out


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
