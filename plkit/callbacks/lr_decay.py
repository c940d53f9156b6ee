"""LRDecay: multiply every learning rate by ``gamma`` each epoch (or step), resumable exactly.

The callback keeps no copy of the rates. It multiplies what the optimizer holds now, and it remembers only how
many decays it has applied; the number that should have been applied is derived from ``trainer.current_epoch``
(or ``trainer.global_step``). A checkpoint stores the optimizer's rates and that count side by side, so
``fit(ckpt_path=...)`` continues exactly where the run stopped, whatever hook the checkpoint was taken in.

The next epoch's (or step's) rate is set at the end of the current one, as Lightning steps its own schedulers,
so a ``LearningRateMonitor`` logs the rate in use wherever it sits in the callback list.

This file imports nothing from plkit: copy it into any Lightning project.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

_INTERVALS = ("epoch", "step")


class LRDecay(Callback):
    """Multiply the learning rate of every param group of every optimizer by ``gamma`` every ``every_n`` epochs or
    optimizer steps, never below ``min_lr``.

    During epoch ``e`` (``interval="epoch"``) the rate is ``initial x gamma ** (e // every_n)``; during optimizer
    step ``s`` (``interval="step"``) it is ``initial x gamma ** (s // every_n)``, the same as
    ``torch.optim.lr_scheduler.StepLR(step_size=every_n)``. Because it multiplies the optimizer's current rate,
    it composes with schedulers that also multiply (``StepLR``, ``ExponentialLR``, warm-up factors applied to the
    current rate); a scheduler that sets absolute rates from its own base (``LambdaLR``, ``OneCycleLR``,
    ``CosineAnnealingLR``) overrides it, so use one or the other. It logs nothing: add
    ``LearningRateMonitor`` to see the rates.

    The rate for epoch ``e + 1`` (or step ``s + 1``) is set when epoch ``e`` (or step ``s``) ends, as Lightning
    steps its epoch- and step-interval schedulers, so ``LearningRateMonitor`` logs the rate each epoch or step
    uses, before or after this callback in the list. After ``fit`` the optimizer holds the rate the next epoch
    (or step) would use, as after a scheduler's last ``step()``.

    A rate already below ``min_lr`` when a decay happens is left as it is (the floor never raises a rate).
    When a run resumes from a checkpoint saved without this callback, decay starts from the restored rates.

    Args:
        gamma: Factor in ``(0, 1]`` applied at each decay (``1`` disables the decay).
        interval: ``"epoch"`` or ``"step"`` (optimizer steps, so gradient accumulation is accounted for).
        every_n: Decay once every this many epochs or steps (``>= 1``).
        min_lr: Floor for the decayed rates (``>= 0``).

    Raises:
        ValueError: When ``gamma`` is not in ``(0, 1]``, ``interval`` is unknown, ``every_n < 1`` or ``min_lr < 0``.

    Example::

        >>> import torch
        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from plkit.callbacks import LRDecay
        >>> class Model(BoringModel):
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=0, logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      callbacks=[LRDecay(gamma=0.5)])
        >>> trainer.fit(Model())
        >>> trainer.optimizers[0].param_groups[0]["lr"]  # epochs 0, 1, 2 ran at 0.1, 0.05, 0.025; next: 0.0125
        0.0125
    """

    def __init__(
        self,
        gamma: float = 0.98,
        interval: Literal["epoch", "step"] = "epoch",
        every_n: int = 1,
        min_lr: float = 0.0,
    ) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"LRDecay(gamma={gamma!r}) must be in (0, 1]: 0.98 shrinks the rate by 2% per decay.")
        if interval not in _INTERVALS:
            raise ValueError(f"LRDecay(interval={interval!r}) is not supported: use one of {list(_INTERVALS)}.")
        if isinstance(every_n, bool) or not isinstance(every_n, int) or every_n < 1:
            raise ValueError(f"LRDecay(every_n={every_n!r}) must be an integer >= 1.")
        if min_lr < 0:
            raise ValueError(f"LRDecay(min_lr={min_lr!r}) must be >= 0.")
        self.gamma = float(gamma)
        self.interval = interval
        self.every_n = every_n
        self.min_lr = float(min_lr)
        # Decays applied to the optimizers' current rates; None until the run's first hook (or a loaded state)
        # says where the count starts.
        self._applied: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            gamma=self.gamma, interval=self.interval, every_n=self.every_n, min_lr=self.min_lr
        )

    @property
    def decays_applied(self) -> int:
        """How many decays this run's optimizers have received (0 before training starts)."""
        return self._applied or 0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # a new fit starts from fresh optimizers; a checkpoint's state is loaded after this
            self._applied = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before the first epoch's hooks: a run resumed from a checkpoint taken before this callback's last
        # decay (e.g. after validation) catches up here, so the first epoch already runs (and logs) the right rate.
        self._catch_up(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self._catch_up(trainer, ahead=1)  # current_epoch still counts the epoch that is ending

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            self._catch_up(trainer)  # global_step already counts this batch's optimizer step

    def _catch_up(self, trainer: pl.Trainer, ahead: int = 0) -> None:
        progress = trainer.current_epoch + ahead if self.interval == "epoch" else trainer.global_step
        due = progress // self.every_n
        if self._applied is None:
            self._applied = due  # resumed from a checkpoint without our state: decay from the restored rates
        missing = due - self._applied
        if missing <= 0:
            return
        factor = self.gamma**missing
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                lr = group["lr"]
                if isinstance(lr, torch.Tensor):  # tensor rates (e.g. capturable Adam) are updated in place
                    lr.copy_(torch.maximum(lr * factor, lr.clamp(max=self.min_lr)))
                else:
                    group["lr"] = max(lr * factor, min(lr, self.min_lr))
        self._applied = due

    @override
    def state_dict(self) -> dict[str, Any]:
        return {} if self._applied is None else {"decays_applied": self._applied}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._applied = state_dict.get("decays_applied", self._applied)
