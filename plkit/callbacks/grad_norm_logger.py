"""GradNormLogger: log the gradient norm where it is exact, with one fused kernel and no per-step host sync.

The norm is taken in ``on_before_optimizer_step``: after the backward pass and AMP's unscaling, before gradient
clipping and the step. Per-tensor norms come from one ``torch._foreach_norm`` call per (device, dtype) group and
stay on the device; nothing is copied to the host except on the steps that are logged.

This file imports nothing from plkit: copy it into any Lightning project.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override


class GradNormLogger(Callback):
    """Log the total gradient norm (``grad_norm/total``) of what each optimizer is about to step.

    With ``log_every_n_steps=None`` it logs through ``pl_module.log`` on exactly the steps the trainer writes to
    its loggers (``Trainer(log_every_n_steps=...)``), so the norm lines up with ``train_loss`` and is also in
    ``trainer.callback_metrics``. With another interval it writes to ``trainer.loggers`` directly at the
    trainer's step numbers (as ``LearningRateMonitor`` does), because values handed to ``pl_module.log`` between
    the trainer's own logging steps would be written late, at the next one.

    With ``per_layer=True`` it also logs ``grad_norm/<module path>`` for each module that owns parameters (the
    norm over its weight, bias, ...). With several optimizers the names end in ``_optimizer<i>``.

    ``warn_above`` replaces the notes' ``GradientWarningCallback(threshold=...)``: the norm is then computed on every
    step and compared on the device (no sync), and on each logged step rank zero warns about the steps that
    exceeded it since the last report, and ``grad_norm/above_threshold`` and ``grad_norm/nonfinite`` (cumulative
    counts over all optimizers, kept in checkpoints) are logged. A non-finite norm on a logged step is always
    reported; with ``precision="16-mixed"`` an occasional one is expected (the gradient scaler skips those steps).

    With FSDP or other sharded strategies each rank only holds a shard of the gradients, so the norm is that
    shard's; under DDP all ranks hold the full, reduced gradients and log the same value.

    Args:
        norm_type: The p of the p-norm; ``"inf"`` for the largest absolute value.
        log_every_n_steps: Log every this many optimizer steps; ``None`` follows the trainer.
        per_layer: Also log one norm per module that owns parameters.
        warn_above: Warn (and count) when the total norm exceeds this value; ``None`` disables it.

    Raises:
        ValueError: When ``norm_type`` is not a positive number or ``"inf"``, ``log_every_n_steps < 1`` or
            ``warn_above <= 0``.

    Example::

        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from plkit.callbacks import GradNormLogger
        >>> trainer = pl.Trainer(max_steps=4, log_every_n_steps=2, limit_val_batches=0, logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      callbacks=[GradNormLogger(warn_above=1e6)])
        >>> trainer.fit(BoringModel())
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("grad_norm/"))
        ['grad_norm/above_threshold', 'grad_norm/nonfinite', 'grad_norm/total']
    """

    def __init__(
        self,
        norm_type: float | str = 2.0,
        log_every_n_steps: int | None = None,
        per_layer: bool = False,
        warn_above: float | None = None,
    ) -> None:
        try:
            p = float(norm_type)
        except (TypeError, ValueError):
            p = math.nan
        if not p > 0:
            raise ValueError(f"GradNormLogger(norm_type={norm_type!r}) must be a positive number or 'inf'.")
        if log_every_n_steps is not None and (isinstance(log_every_n_steps, bool) or log_every_n_steps < 1):
            raise ValueError(
                f"GradNormLogger(log_every_n_steps={log_every_n_steps!r}) must be an integer >= 1, or None to log "
                "on the trainer's logging steps."
            )
        if warn_above is not None and not warn_above > 0:
            raise ValueError(f"GradNormLogger(warn_above={warn_above!r}) must be a positive number, or None.")
        self.norm_type = p
        self.log_every_n_steps = log_every_n_steps
        self.per_layer = per_layer
        self.warn_above = warn_above
        self._reset()

    def _reset(self) -> None:
        # Cumulative counts: host ints until the first step moves them to the gradients' device.
        self._above: torch.Tensor | int = 0
        self._nonfinite: torch.Tensor | int = 0
        self._reported = (0, 0)
        self._layers: dict[int, str] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(norm_type=self.norm_type, warn_above=self.warn_above)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # a checkpoint's counts, if any, are loaded after this
            self._reset()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        interval = self.log_every_n_steps or trainer.log_every_n_steps
        if not interval:  # Trainer(log_every_n_steps=0) turns logging off
            return
        step = trainer.global_step  # optimizer steps done before this one: the step Lightning logs this batch as
        # Lightning writes step metrics when (steps that stepped + 1) % n == 0, when stopping, and in fast_dev_run.
        logged = (step + 1) % interval == 0 or trainer.should_stop or bool(trainer.fast_dev_run)
        if not logged and self.warn_above is None:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norms = _norms([p.grad for p in params], self.norm_type)
        total = torch.linalg.vector_norm(torch.stack(norms), self.norm_type)
        if self.warn_above is not None:
            self._count(total)
        if not logged:
            return
        suffix = _optimizer_suffix(trainer, optimizer)
        values = {f"grad_norm/total{suffix}": total}
        if self.per_layer:
            values.update(self._layer_norms(pl_module, params, norms, suffix))
        if self.warn_above is not None:
            # The counts cover every optimizer's steps together.
            values["grad_norm/above_threshold"] = self._above.float()
            values["grad_norm/nonfinite"] = self._nonfinite.float()
        self._report(total, step)  # the one host sync, on a logged step
        if self.log_every_n_steps in (None, trainer.log_every_n_steps):
            for name, value in values.items():
                pl_module.log(name, value, on_step=True, on_epoch=False)
        else:
            host = dict(zip(values, torch.stack(list(values.values())).tolist(), strict=True))
            for logger in trainer.loggers:
                logger.log_metrics(host, step=step)

    def _count(self, total: torch.Tensor) -> None:
        if not isinstance(self._above, torch.Tensor):
            self._above = torch.tensor(self._above, device=total.device)
            self._nonfinite = torch.tensor(self._nonfinite, device=total.device)
        self._above.add_(total > self.warn_above)
        self._nonfinite.add_(~torch.isfinite(total))

    def _report(self, total: torch.Tensor, step: int) -> None:
        if self.warn_above is None:
            latest = total.item()
            new_above, new_nonfinite = 0, int(not math.isfinite(latest))
        else:
            counts = torch.stack([total.float(), self._above.float(), self._nonfinite.float()]).tolist()
            latest, above, nonfinite = counts[0], int(counts[1]), int(counts[2])
            new_above, new_nonfinite = above - self._reported[0], nonfinite - self._reported[1]
            self._reported = (above, nonfinite)
        p = "inf" if math.isinf(self.norm_type) else f"{self.norm_type:g}"
        if new_above > 0:
            rank_zero_warn(
                f"GradNormLogger: the gradient {p}-norm exceeded warn_above={self.warn_above} on {new_above} "
                f"step(s) up to step {step} (latest norm {latest:.4g})."
            )
        if new_nonfinite > 0:
            rank_zero_warn(
                f"GradNormLogger: the gradient {p}-norm was not finite on {new_nonfinite} step(s) up to step {step} "
                f"(latest norm {latest}); check the loss and learning rate, or expect it now and then with fp16 AMP."
            )

    def _layer_norms(
        self, pl_module: pl.LightningModule, params: list[torch.Tensor], norms: list[torch.Tensor], suffix: str
    ) -> dict[str, torch.Tensor]:
        if any(id(p) not in self._layers for p in params):
            self._layers = {id(p): name.rpartition(".")[0] or name for name, p in pl_module.named_parameters()}
        grouped: dict[str, list[torch.Tensor]] = {}
        for param, norm in zip(params, norms, strict=True):
            grouped.setdefault(self._layers.get(id(param), "unnamed"), []).append(norm)
        return {
            f"grad_norm/{layer}{suffix}": torch.linalg.vector_norm(torch.stack(group), self.norm_type)
            for layer, group in grouped.items()
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.warn_above is None:
            return {}
        # int() of a device tensor syncs, which is fine once per checkpoint.
        return {"above_threshold": int(self._above), "nonfinite": int(self._nonfinite)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._above = int(state_dict.get("above_threshold", 0))
        self._nonfinite = int(state_dict.get("nonfinite", 0))
        self._reported = (self._above, self._nonfinite)


def _norms(grads: list[torch.Tensor], norm_type: float) -> list[torch.Tensor]:
    """Each gradient's norm as a float32 scalar on the first gradient's device: one fused kernel per
    (device, dtype) group instead of one kernel (and, in ``lightning``'s ``grad_norm``, one host copy) per tensor."""
    device = grads[0].device
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, grad in enumerate(grads):
        groups.setdefault((grad.device, grad.dtype), []).append(i)
    out: list[torch.Tensor] = [grads[0]] * len(grads)
    for (_, dtype), members in groups.items():
        tensors = [grads[i].coalesce().values() if grads[i].is_sparse else grads[i] for i in members]
        # Half-precision gradients are accumulated in float32 rather than summed in their own precision.
        accumulate = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
        for i, norm in zip(members, torch._foreach_norm(tensors, norm_type, dtype=accumulate), strict=True):
            out[i] = norm.to(device=device, dtype=torch.float32)
    return out


def _optimizer_suffix(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> str:
    optimizers = trainer.optimizers
    if len(optimizers) < 2:
        return ""
    raw = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
    return next((f"_optimizer{i}" for i, o in enumerate(optimizers) if o is raw), "_optimizer")
