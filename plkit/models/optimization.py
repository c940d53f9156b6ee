"""``InjectedOptimization``: a LightningModule whose optimizer and scheduler come from its constructor.

A recipe names them under the model's ``init_args`` (``class_path`` + ``init_args``, which the CLI turns into
``OptimizerCallable`` / ``LRSchedulerCallable``); Python code passes a class or a ``functools.partial``.
The module hands them to this base once, in ``super().__init__``, and gets ``configure_optimizers``.

A scheduler whose length is counted in optimizer steps takes a ``total_steps`` argument (``WarmupCosineLR``,
``OneCycleLR``). Left unset (``None``), it is filled in from the trainer when the optimizer is built: the run's
optimizer steps (``trainer.estimated_stepping_batches``), or its epochs when the scheduler steps per epoch.
Such a scheduler is also stepped every optimizer step unless ``scheduler_interval`` says otherwise.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from typing_extensions import override

__all__ = ["INTERVALS", "InjectedOptimization", "parameter_groups"]

INTERVALS = ("epoch", "step")
_UNSET = object()


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


def _total_steps_argument(scheduler: LRSchedulerCallable) -> Any:
    """The ``total_steps`` a scheduler callable will be built with: a value, ``None`` (unset), or ``_UNSET`` (none).

    The CLI's callables are ``functools.partial`` objects holding every argument of the class, defaults
    included; a class or a plain partial is read through its signature.
    """
    if isinstance(scheduler, functools.partial) and "total_steps" in scheduler.keywords:
        return scheduler.keywords["total_steps"]
    try:
        parameter = inspect.signature(scheduler).parameters.get("total_steps")
    except (TypeError, ValueError):  # a callable without a signature (a builtin): nothing to fill in
        return _UNSET
    return _UNSET if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


class InjectedOptimization(pl.LightningModule):
    """A LightningModule whose optimizer and learning-rate scheduler are injected through its constructor.

    Subclass it, pass the five arguments to ``super().__init__``, then call ``self.save_hyperparameters()`` as
    usual: an optimizer or scheduler given from Python as a class or ``functools.partial`` is left out of the
    saved hyperparameters, so checkpoints load with ``torch.load(weights_only=True)`` (a recipe's config is
    kept and rebuilt by ``load_from_checkpoint``).

    Args:
        optimizer: builds the optimizer from :meth:`parameter_groups`.
        scheduler: builds a learning-rate scheduler from the optimizer, or ``None`` for a constant rate.
        scheduler_interval: step the scheduler every ``"step"`` or every ``"epoch"``; ``None`` picks ``"step"``
            for a scheduler that takes ``total_steps`` (``WarmupCosineLR``, ``OneCycleLR``) and ``"epoch"``
            otherwise (a schedule counted in steps without that argument, such as ``CyclicLR``, needs ``"step"``).
        scheduler_monitor: the metric a ``ReduceLROnPlateau`` scheduler watches.
        no_decay_bias_norm: exempt biases and normalisation weights from weight decay (a second parameter
            group with ``weight_decay=0``).

    Raises:
        ValueError: a ``scheduler_interval`` other than ``"step"``, ``"epoch"`` or ``None``; when the optimizer
            is built, a scheduler with ``total_steps`` unset under a trainer that has no end.

    Example:
        >>> import functools
        >>> class Line(InjectedOptimization):
        ...     def __init__(self, optimizer=torch.optim.SGD, scheduler=None):
        ...         super().__init__(optimizer, scheduler)
        ...         self.save_hyperparameters()
        ...         self.net = nn.Linear(2, 1)
        >>> step_lr = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=10)
        >>> config = Line(functools.partial(torch.optim.SGD, lr=0.1), step_lr).configure_optimizers()
        >>> config["optimizer"].param_groups[0]["lr"], config["lr_scheduler"]["interval"]
        (0.1, 'epoch')
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] | None = None,
        scheduler_monitor: str = "val/loss",
        no_decay_bias_norm: bool = False,
    ) -> None:
        super().__init__()
        if scheduler_interval is not None and scheduler_interval not in INTERVALS:
            raise ValueError(f"scheduler_interval={scheduler_interval!r}: choose 'step', 'epoch' or None (automatic)")
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.no_decay_bias_norm = no_decay_bias_norm

    @override
    def save_hyperparameters(
        self,
        *args: Any,
        ignore: list[str] | str | None = None,
        frame: Any = None,
        logger: bool = True,
    ) -> None:
        """Lightning's ``save_hyperparameters``, less an optimizer or scheduler that is Python code, not data.

        Passed from Python, an optimizer is a class or a ``functools.partial``, which
        ``torch.load(weights_only=True)`` refuses; it is left out, and a loaded module gets the default
        (pass ``optimizer=`` to ``load_from_checkpoint`` to train on with another).
        """
        caller = frame if frame is not None else inspect.currentframe().f_back  # type: ignore[union-attr]
        super().save_hyperparameters(*args, ignore=ignore, frame=caller, logger=logger)
        for key in ("optimizer", "scheduler"):
            if self.hparams.get(key) is not None and not isinstance(self.hparams[key], (dict, str)):
                self.hparams.pop(key)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups; override for per-layer learning rates or other groupings.

        By default one group, or two with ``no_decay_bias_norm`` (the second with ``weight_decay=0``).
        Keys other than ``params`` override the injected optimizer's arguments for that group.

        Example:
            >>> from plkit.models import ImageClassifier
            >>> class FineTune(ImageClassifier):
            ...     def parameter_groups(self):
            ...         return [{"params": self.backbone.parameters(), "lr": 1e-4}, {"params": self.head.parameters()}]
            >>> optimizer = FineTune(optimizer=torch.optim.AdamW).configure_optimizers()
            >>> [group["lr"] for group in optimizer.param_groups]
            [0.0001, 0.001]
        """
        return parameter_groups(self, self.no_decay_bias_norm)

    @override
    def configure_optimizers(self) -> Any:
        """The injected optimizer over :meth:`parameter_groups`, and its scheduler's Lightning config if any."""
        optimizer = self.optimizer(self.parameter_groups())
        if self.scheduler is None:
            return optimizer
        total_steps = _total_steps_argument(self.scheduler)
        interval = self.scheduler_interval or ("epoch" if total_steps is _UNSET else "step")
        if total_steps is None:
            scheduler = self.scheduler(optimizer, total_steps=self._run_length(interval))  # type: ignore[call-arg]
        else:
            scheduler = self.scheduler(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _run_length(self, interval: str) -> int:
        trainer = self.trainer
        total = trainer.estimated_stepping_batches if interval == "step" else trainer.max_epochs
        if total is None or total < 0 or math.isinf(total):
            raise ValueError(
                "the scheduler's total_steps is unset, so it takes its length from the trainer, which has no end: "
                "set trainer.max_epochs or trainer.max_steps, or give the scheduler total_steps"
            )
        return int(total)
