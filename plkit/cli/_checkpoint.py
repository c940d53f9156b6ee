"""``RunCheckpoint``: Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the newest state.

Lightning's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only when it also saves a top-k file, so
with ``save_top_k=1`` on a metric that stopped improving, ``last.ckpt`` falls epochs behind and
``--ckpt_path last`` trains those epochs again. ``RunCheckpoint`` keeps Lightning's top-k logic (``best.ckpt``)
and writes ``last.ckpt`` itself, with ``trainer.save_checkpoint`` (Lightning's own format):

- at the end of every training epoch, whatever the monitored metric did;
- when SIGTERM stops the run (plkit sends Ctrl+C down the same path): Lightning raises ``SIGTERMException`` at
  a batch boundary, after the optimizer step and the loop counters, so the state saved is a clean one.
  An error that ends the run leaves the last good ``last.ckpt`` alone.

Each write goes to a temporary name and is renamed, so ``last.ckpt`` is never half written.

A ``monitor`` the model never logs does not end the run (Lightning raises ``MisconfigurationException``): the
callback warns once, keeps ``last.ckpt`` only, and ``ckpt_path="best"`` then means ``last.ckpt``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from typing_extensions import override

from plkit.cli._errors import did_you_mean

__all__ = ["RunCheckpoint", "checkpoint_callbacks"]


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with a ``last.ckpt`` written every epoch and on SIGTERM, and a missing monitor tolerated.

    It takes ``ModelCheckpoint``'s arguments; ``save_last`` means plkit's ``last.ckpt`` (described in the
    module docstring) rather than Lightning's.

    Example:
        >>> import tempfile
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> folder = tempfile.mkdtemp()
        >>> trainer = pl.Trainer(default_root_dir=folder, max_epochs=2, limit_train_batches=2, limit_val_batches=1,
        ...                      logger=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      callbacks=[RunCheckpoint(monitor="val/acc", save_last=True)])
        >>> trainer.fit(BoringModel())  # BoringModel logs no val/acc: a warning, not a crash
        >>> sorted(p.name for p in Path(folder, "checkpoints").iterdir())
        ['last.ckpt']
    """

    @override
    def __init__(self, *args: Any, save_last: bool | None = True, **kwargs: Any) -> None:
        super().__init__(*args, save_last=False, **kwargs)
        self.keep_last = bool(save_last)
        self.monitor_missing = False
        self._last_saved_step: int | None = None

    @property
    def last_path(self) -> str:
        """Where ``last.ckpt`` goes (known once ``setup`` has resolved the folder)."""
        return os.path.join(str(self.dirpath), f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tolerating_missing_monitor(super().on_train_epoch_end, trainer, pl_module)
        self._save_last(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tolerating_missing_monitor(super().on_validation_end, trainer, pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, SIGTERMException) and not trainer.sanity_checking:
            self._save_last(trainer)

    def _tolerating_missing_monitor(self, hook: Any, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            hook(trainer, pl_module)
        except MisconfigurationException:
            if self.monitor is None or self.monitor in trainer.callback_metrics:
                raise
            self.monitor_missing = True
            self.save_top_k = 0  # Lightning's top-k logic returns at once from now on
            logged = sorted(k for k in trainer.callback_metrics if k not in ("epoch", "step"))
            rank_zero_warn(
                f"checkpoint.monitor {self.monitor!r} is never logged by {type(pl_module).__name__} "
                f"(it logs: {', '.join(logged) or 'nothing'}){did_you_mean(self.monitor, logged)}: keeping "
                f"last.ckpt only, so ckpt_path='best' means last.ckpt. Set --checkpoint.monitor to a logged key."
            )

    def _save_last(self, trainer: pl.Trainer) -> None:
        if (
            not self.keep_last
            or trainer.fast_dev_run
            or trainer.sanity_checking
            or trainer.state.fn != "fit"
            or self._last_saved_step == trainer.global_step
        ):
            return
        target = self.last_path
        # Set before saving: the checkpoint carries this callback's state, and a later load restores it.
        self.last_model_path = target
        if self.monitor_missing or (self.monitor is None and self.save_top_k == 0):
            self.best_model_path = target
        partial = str(Path(target).with_name(f".{Path(target).name}.partial"))
        trainer.save_checkpoint(partial, self.save_weights_only)  # collective: every rank calls it
        if trainer.is_global_zero:
            os.replace(partial, target)
        trainer.strategy.barrier("plkit_last_checkpoint")
        self._last_saved_step = trainer.global_step


def checkpoint_callbacks(settings: dict[str, Any], present: Sequence[Callback]) -> list[Callback]:
    """plkit's ``RunCheckpoint`` from the ``checkpoint:`` settings, or a last-only one beside a recipe's own.

    A recipe's own ``ModelCheckpoint`` keeps its top-k files; its ``save_last`` (which Lightning refreshes
    only with a top-k save) hands ``last.ckpt`` in the run's ``checkpoints/`` over to plkit's.
    """
    theirs = [c for c in present if isinstance(c, ModelCheckpoint)]
    if not theirs:
        if settings.get("monitor") is None:
            settings = {**settings, "save_top_k": 0}
        return [RunCheckpoint(**settings)]
    if not settings.get("save_last") or any(isinstance(c, RunCheckpoint) for c in theirs):
        return []
    for callback in theirs:
        if callback.save_last and callback.dirpath is None:
            callback.save_last = False
    return [RunCheckpoint(monitor=None, save_top_k=0, save_last=True)]
