"""Build the optimizer and scheduler a recipe injects: parameter groups, per-step schedules, plateau monitors.

Both of plkit's modules call :func:`configure_optimization` from ``configure_optimizers``. Parameter
groups come from the module's ``parameter_groups()`` method: override it for per-layer learning rates
(e.g. a smaller rate for a pretrained backbone); each group is a dict as torch optimizers take them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau

from plkit.models.schedulers import WarmupCosineLR

__all__ = ["INTERVALS", "InjectedOptimization", "configure_optimization", "keep_data_hparams", "parameter_groups"]

INTERVALS = ("epoch", "step")
#: schedules whose length is counted in optimizer steps, stepped every step unless the recipe says otherwise.
PER_STEP_SCHEDULERS = (WarmupCosineLR, OneCycleLR, CyclicLR)


def keep_data_hparams(module: pl.LightningModule, keys: tuple[str, ...] = ("optimizer", "scheduler")) -> None:
    """Drop hyperparameters that are Python callables rather than data, so checkpoints load with ``weights_only``.

    Under the CLI an injected optimizer is saved as its config (``class_path`` + ``init_args``), which
    ``load_from_checkpoint`` rebuilds. Passed from Python it is a class or a ``functools.partial``, which
    ``torch.load(weights_only=True)`` refuses; it is left out, and a loaded module gets the default
    optimizer (pass ``optimizer=`` to ``load_from_checkpoint`` to train on with another).
    """
    for key in keys:
        if module.hparams.get(key) is not None and not isinstance(module.hparams[key], (dict, str)):
            module.hparams.pop(key)


def parameter_groups(module: nn.Module, no_decay_bias_norm: bool) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups.

    With ``no_decay_bias_norm``, biases and normalisation weights (every parameter with fewer than 2
    dimensions) go into a second group with ``weight_decay=0``; the first group keeps the optimizer's
    own weight decay.

    Example:
        >>> groups = parameter_groups(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), no_decay_bias_norm=True)
        >>> [len(g["params"]) for g in groups], groups[1]["weight_decay"]
        ([1, 3], 0.0)
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not no_decay_bias_norm:
        return [{"params": params}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def configure_optimization(
    module: pl.LightningModule,
    groups: list[dict[str, Any]],
    optimizer: OptimizerCallable,
    scheduler: LRSchedulerCallable | None,
    interval: Literal["epoch", "step"] | None,
    monitor: str,
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer, and the scheduler's Lightning config if there is one.

    Args:
        module: the module (its trainer sizes a ``WarmupCosineLR`` without ``total_steps``).
        groups: the parameter groups.
        optimizer: builds the optimizer from the groups.
        scheduler: builds the scheduler from the optimizer, or ``None``.
        interval: ``"step"`` or ``"epoch"``; ``None`` picks ``"step"`` for schedules counted in steps
            (``WarmupCosineLR``, ``OneCycleLR``, ``CyclicLR``) and ``"epoch"`` otherwise.
        monitor: the metric a ``ReduceLROnPlateau`` watches.

    Raises:
        ValueError: a ``WarmupCosineLR`` without ``total_steps`` and a trainer with no end.
    """
    opt = optimizer(groups)
    if scheduler is None:
        return opt
    sched = scheduler(opt)
    if interval is None:
        interval = "step" if isinstance(sched, PER_STEP_SCHEDULERS) else "epoch"
    if isinstance(sched, WarmupCosineLR) and sched.total_steps is None:
        trainer = module.trainer
        total = trainer.estimated_stepping_batches if interval == "step" else trainer.max_epochs
        if total is None or total < 0 or math.isinf(total):
            raise ValueError(
                "WarmupCosineLR(total_steps=None) takes its length from the trainer, which has no end: set "
                "trainer.max_epochs or trainer.max_steps, or give the scheduler total_steps"
            )
        sched.set_total_steps(int(total))
    config: dict[str, Any] = {"scheduler": sched, "interval": interval}
    if isinstance(sched, ReduceLROnPlateau):
        config["monitor"] = monitor
    return {"optimizer": opt, "lr_scheduler": config}


class InjectedOptimization:
    """``configure_optimizers`` for a LightningModule that stores its injected optimizer and scheduler.

    Put it before ``LightningModule`` in the bases. The module sets ``optimizer``, ``scheduler``,
    ``scheduler_interval``, ``scheduler_monitor`` and ``no_decay_bias_norm`` in ``__init__``; both of
    plkit's modules do.
    """

    optimizer: OptimizerCallable
    scheduler: LRSchedulerCallable | None
    scheduler_interval: Literal["epoch", "step"] | None
    scheduler_monitor: str
    no_decay_bias_norm: bool

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups; override for per-layer learning rates or other groupings.

        By default one group, or two with ``no_decay_bias_norm`` (the second with ``weight_decay=0``).
        Keys other than ``params`` override the injected optimizer's arguments for that group.

        Example:
            >>> import torch
            >>> from plkit.models import ImageClassifier
            >>> class FineTune(ImageClassifier):
            ...     def parameter_groups(self):
            ...         return [{"params": self.backbone.parameters(), "lr": 1e-4}, {"params": self.head.parameters()}]
            >>> optimizer = FineTune(optimizer=torch.optim.AdamW).configure_optimizers()
            >>> [group["lr"] for group in optimizer.param_groups]
            [0.0001, 0.001]
        """
        assert isinstance(self, nn.Module)
        return parameter_groups(self, self.no_decay_bias_norm)

    def configure_optimizers(self) -> Any:
        """The injected optimizer over :meth:`parameter_groups`, and its scheduler's Lightning config if any."""
        assert isinstance(self, pl.LightningModule)
        return configure_optimization(
            self,
            self.parameter_groups(),
            self.optimizer,
            self.scheduler,
            self.scheduler_interval,
            self.scheduler_monitor,
        )
