"""Learning-rate schedules that are a function of the step count, so a resumed run is right by construction."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupCosineLR"]


class WarmupCosineLR(LRScheduler):
    """Linear warmup to each group's learning rate, then cosine decay to ``min_lr_ratio`` times it.

    Meant to be stepped every optimizer step (``scheduler_interval="step"``, what plkit's modules pick
    for it by default). Left at ``None`` in a recipe, ``total_steps`` is filled in by the module from
    ``trainer.estimated_stepping_batches`` when it builds the optimizer, so a recipe never has to
    count steps; the value is saved in the scheduler's state, so a resumed run keeps it.

    In a recipe, under the model's ``init_args`` (the optimizer is injected)::

        scheduler:
          class_path: plkit.models.WarmupCosineLR
          init_args: {warmup_steps: 0.05, min_lr_ratio: 0.01}

    Args:
        optimizer: the optimizer (injected).
        warmup_steps: steps of linear warmup, or a float in [0, 1): that fraction of ``total_steps``.
        total_steps: steps of the whole schedule (warmup included); ``None``: no decay (a plkit module passes
            the run's length instead).
        min_lr_ratio: the final learning rate as a fraction of the peak.
        last_epoch: the index of the last step, for resuming by hand (Lightning restores it itself).

    Raises:
        ValueError: a negative or out-of-range argument, or warmup longer than the schedule.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = WarmupCosineLR(opt, warmup_steps=2, total_steps=6)
        >>> lrs = []
        >>> for _ in range(7):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 3))
        ...     opt.step()
        ...     sched.step()
        >>> lrs
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int | float = 0,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if isinstance(warmup_steps, float) and not 0.0 <= warmup_steps < 1.0:
            raise ValueError(f"warmup_steps={warmup_steps}: a fraction must be in [0, 1); a count of steps is an int")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps}: it must be >= 0")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio={min_lr_ratio}: it must be in [0, 1] (a fraction of the peak rate)")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps={total_steps}: it must be >= 1")
        if total_steps is not None and isinstance(warmup_steps, int) and warmup_steps > total_steps:
            raise ValueError(
                f"warmup_steps={warmup_steps} is longer than total_steps={total_steps}: shorten the warmup, "
                "or give it as a fraction of the schedule (e.g. 0.05)"
            )
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.total_steps = total_steps
        super().__init__(optimizer, last_epoch)

    def _warmup(self) -> int:
        if isinstance(self.warmup_steps, float):
            return round(self.warmup_steps * self.total_steps) if self.total_steps else 0
        return self.warmup_steps

    def factor(self, step: int) -> float:
        """The learning rate at ``step`` as a fraction of the peak."""
        warmup = self._warmup()
        if step < warmup:
            return (step + 1) / warmup
        if self.total_steps is None:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]
