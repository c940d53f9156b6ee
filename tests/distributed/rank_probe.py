"""``RankProbe``: a test-only callback that records what each rank saw, and can hold training for a signal.

The distributed tests put it into ``plkit fit`` runs (``class_path: rank_probe.RankProbe``, with this folder on
``PYTHONPATH``). Each rank rewrites ``OUT/rank{r}-start{n}.json`` after every record (``n`` counts the starts of
the same SLURM job), so the file survives however the process ends. It records, per optimizer step, this rank's
``train/loss`` and the ``grad_norm/total`` it logged, and the state of ``ProgressNotifier``'s status file when
training starts and after each epoch. Rank zero saves the weights training ended with as ``OUT/final-start{n}.pt``.

With ``hold_after_epoch=k`` a first start stops once ``k`` epochs are done (before the next one's first batch) on
every rank, writes ``OUT/holding-rank{r}``, and sleeps until Lightning has received SIGTERM. A test sends SIGUSR1
then: every rank is idle in Python, so Lightning's requeue handler, which saves a checkpoint and waits on a barrier
from inside the signal handler, finds all ranks at the same point (sent at a random moment, it can meet a rank
inside a collective).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from plkit.callbacks import ProgressNotifier


class RankProbe(Callback):
    """Record per-rank values to ``out_dir``; optionally hold a first start after an epoch until SIGTERM.

    Args:
        out_dir: folder for the records (created if missing).
        hold_after_epoch: hold once this many epochs are done, in the first start of a job; ``None`` never.
        hold_timeout_s: fail the run if no SIGTERM came within this many seconds of holding.
        kill_rank: this rank kills itself (SIGKILL, no chance to clean up) after ``kill_after_step`` optimizer steps.
        kill_after_step: see ``kill_rank``.
    """

    def __init__(
        self,
        out_dir: str,
        hold_after_epoch: int | None = None,
        hold_timeout_s: float = 120.0,
        kill_rank: int | None = None,
        kill_after_step: int = 1,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.hold_after_epoch = hold_after_epoch
        self.hold_timeout_s = hold_timeout_s
        self.kill_rank = kill_rank
        self.kill_after_step = kill_after_step
        self.start = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        self.record: dict[str, Any] = {"steps": [], "status": [], "start": self.start}

    def _save(self, trainer: pl.Trainer) -> None:
        self.record["rank"] = trainer.global_rank
        self.record["pid"] = os.getpid()
        self.record["world_size"] = trainer.world_size
        self.record["environment"] = type(trainer.strategy.cluster_environment).__name__
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{trainer.global_rank}-start{self.start}.json"
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps(self.record, indent=1))
        os.replace(tmp, path)

    def _status(self, trainer: pl.Trainer, when: str) -> None:
        notifier = next((c for c in trainer.callbacks if isinstance(c, ProgressNotifier)), None)
        if notifier is None or notifier.status_file is None or not trainer.is_global_zero:
            return
        state = json.loads(notifier.status_file.read_text())["state"]
        self.record["status"].append({"when": when, "state": state})

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["resumed_at_step"] = trainer.global_step
        self.record["resumed_at_epoch"] = trainer.current_epoch
        # The run folder as this rank knows it: rank zero picks the version and broadcasts it (trainer.log_dir).
        self.record["trainer_log_dir"] = trainer.log_dir
        self._status(trainer, "train_start")
        self._save(trainer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        metrics = trainer.callback_metrics
        step = {"step": trainer.global_step - 1, "epoch": trainer.current_epoch}
        for key in ("train/loss", "grad_norm/total"):
            if key in metrics:
                step[key] = float(metrics[key])
        self.record["steps"].append(step)
        self._save(trainer)
        if trainer.global_rank == self.kill_rank and trainer.global_step >= self.kill_after_step:
            os.kill(os.getpid(), signal.SIGKILL)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # At the first batch, not at the end of the epoch before: ModelCheckpoint (always the last callback) has
        # saved that epoch's files by now, so the checkpoint Lightning saves on SIGUSR1 knows them. Nor in
        # on_train_epoch_start: a checkpoint saved there still holds the previous epoch's batch count, and the
        # resumed run skips the whole epoch.
        if self.start == 0 and batch_idx == 0 and trainer.current_epoch == self.hold_after_epoch:
            self._hold(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._status(trainer, f"epoch_end_{trainer.current_epoch + 1}")
        self._save(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The weights the run ended with, whatever checkpoints it kept: a resumed run must end with the same.
        if trainer.is_global_zero:
            torch.save(pl_module.state_dict(), self.out_dir / f"final-start{self.start}.pt")

    def _hold(self, trainer: pl.Trainer) -> None:
        (self.out_dir / f"holding-rank{trainer.global_rank}").write_text(str(os.getpid()))
        deadline = time.monotonic() + self.hold_timeout_s
        # Short sleeps: a signal's Python handler runs as soon as the sleep it interrupts returns.
        while not trainer.received_sigterm:
            if time.monotonic() > deadline:
                raise RuntimeError(f"RankProbe: no SIGTERM within {self.hold_timeout_s} s of holding")
            time.sleep(0.05)
        self.record["held_until_sigterm"] = True
        self._save(trainer)
