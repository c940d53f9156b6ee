"""GradNormLogger: logged values equal norms computed by hand, on the trainer's logging steps, without host syncs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from plkit.callbacks import GradNormLogger

from callback_helpers import RecordingLogger, TinyModel, quiet


class HandNorms(Callback):
    """Placed after GradNormLogger: the norms of the gradients it saw, computed the slow, obvious way."""

    def __init__(self, p: float) -> None:
        self.p = p
        self.total: dict[int, float] = {}
        self.layers: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        def norm(module: torch.nn.Module) -> float:
            grads = [p.grad.flatten().double() for p in module.parameters() if p.grad is not None]
            return torch.linalg.vector_norm(torch.cat(grads), self.p).item() if grads else math.nan

        step = trainer.global_step
        self.total[step] = norm(pl_module)
        self.layers[step] = {name: norm(child) for name, child in pl_module.named_children()}


class Sabotage(Callback):
    """Placed before GradNormLogger: a NaN in one gradient at ``step``; ``Repair`` after it removes the NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        if trainer.global_step == self.step:
            pl_module.encoder.weight.grad[0, 0] = math.nan


class Repair(Callback):
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        pl_module.encoder.weight.grad.nan_to_num_(0.0)


def run(tmp_path: Path, logger_cb: GradNormLogger, *extra: Callback, model: Any = None, **kw: Any):
    hand = HandNorms(logger_cb.norm_type)
    recorder = RecordingLogger()
    callbacks = [*extra[:1], logger_cb, hand, *extra[1:]]
    args = quiet(
        tmp_path, **{"logger": recorder, "max_epochs": 2, "limit_val_batches": 0, "log_every_n_steps": 3, **kw}
    )
    pl.Trainer(callbacks=callbacks, **args).fit(model or TinyModel(n=40, batch_size=8))  # 5 steps per epoch
    return hand, recorder


@pytest.mark.parametrize("norm_type", [2.0, 1.0, "inf"])
def test_logged_norm_equals_hand_norm_on_logging_steps(tmp_path: Path, norm_type: Any) -> None:
    hand, recorder = run(tmp_path, GradNormLogger(norm_type=norm_type))
    logged = recorder.series("grad_norm/total")
    assert [s for s, _ in logged] == [s for s, _ in recorder.series("train_loss")] == [2, 5, 8]
    for step, value in logged:
        assert value == pytest.approx(hand.total[step], rel=1e-6)


def test_per_layer(tmp_path: Path) -> None:
    hand, recorder = run(tmp_path, GradNormLogger(per_layer=True))
    for layer in ("encoder", "head"):
        logged = recorder.series(f"grad_norm/{layer}")
        assert [s for s, _ in logged] == [2, 5, 8]
        for step, value in logged:
            assert value == pytest.approx(hand.layers[step][layer], rel=1e-6)


def test_bf16_mixed(tmp_path: Path) -> None:
    hand, recorder = run(tmp_path, GradNormLogger(), precision="bf16-mixed")
    logged = recorder.series("grad_norm/total")
    assert [s for s, _ in logged] == [2, 5, 8]
    for step, value in logged:
        assert math.isfinite(value)
        assert value == pytest.approx(hand.total[step], rel=1e-6)


def test_own_interval_logs_directly_without_repeats(tmp_path: Path) -> None:
    hand, recorder = run(tmp_path, GradNormLogger(log_every_n_steps=4))
    logged = recorder.series("grad_norm/total")
    assert [s for s, _ in logged] == [3, 7]  # not re-logged stale at the trainer's steps 5 and 8
    for step, value in logged:
        assert value == pytest.approx(hand.total[step], rel=1e-6)


def warnings_of(recorded: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in recorded if str(w.message).startswith("GradNormLogger")]


NOTE = " At most one such warning an epoch, and a summary when training ends."


def expected_warnings(total: dict[int, float], threshold: float, logged: list[int], epoch_steps: int) -> list[str]:
    """One warning in an epoch at its first logged step after an exceedance, then this fit's summary."""
    head = f"GradNormLogger: the gradient 2-norm exceeded warn_above={threshold} on "
    out = []
    first = min(total)
    for start in range(first, max(total) + 1, epoch_steps):
        for step in [s for s in logged if start <= s < start + epoch_steps]:
            above = [v for s, v in total.items() if start <= s <= step and v > threshold]
            if above:
                where = f"of the {step - start + 1} optimizer steps so far in epoch {start // epoch_steps}"
                out.append(f"{head}{len(above)} {where} (largest: {max(above):.4g}).{NOTE}")
                break
    above = [v for v in total.values() if v > threshold]
    if above:
        out.append(f"{head}{len(above)} of the {len(total)} optimizer steps of this fit (largest: {max(above):.4g}).")
    return out


def test_warn_above_at_most_once_an_epoch_then_a_summary(tmp_path: Path) -> None:
    threshold = 1.3  # norms here range from 0.4 to 2.6
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        hand, recorder = run(tmp_path, GradNormLogger(warn_above=threshold), max_epochs=4)  # 20 steps
    counts = recorder.series("grad_norm/above_threshold")
    assert [s for s, _ in counts] == [2, 5, 8, 11, 14, 17]
    for step, count in counts:
        assert count == sum(v > threshold for s, v in hand.total.items() if s <= step)
    assert 0 < counts[-1][1] < 18  # the threshold splits the run
    assert [c for _, c in recorder.series("grad_norm/nonfinite")] == [0] * 6
    want = expected_warnings(hand.total, threshold, [s for s, _ in counts], epoch_steps=5)
    assert len(want) >= 3  # warnings in at least two epochs, and the summary
    assert warnings_of(recorded) == want


def test_nonfinite_reported_on_logged_step(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"not finite on 1 of the 1 logged optimizer steps so far in epoch 1\."):
        _, recorder = run(tmp_path, GradNormLogger(), Sabotage(5), Repair())
    assert math.isnan(dict(recorder.series("grad_norm/total"))[5])


def test_nonfinite_between_logged_steps_counted_with_warn_above(tmp_path: Path) -> None:
    # Step 4 ends epoch 0 after its last logged step (2): only the summary can report it.
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        _, recorder = run(tmp_path, GradNormLogger(warn_above=1e9), Sabotage(4), Repair())
    assert recorder.series("grad_norm/nonfinite") == [(2, 0), (5, 1), (8, 1)]
    assert warnings_of(recorded) == [
        "GradNormLogger: the gradient 2-norm was not finite on 1 of the 10 optimizer steps of this fit. "
        "Check the loss and the learning rate, or expect it now and then with fp16 AMP."
    ]


class Forbidden(Exception):
    pass


def test_no_norm_and_no_host_sync_on_steps_not_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    model = TinyModel()
    model._loss({"x": torch.ones(2, 4), "y": torch.ones(2, 1)}).backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logged: list[str] = []
    model.log = lambda name, value, **kw: logged.append(name)  # type: ignore[method-assign]
    trainer = SimpleNamespace(global_step=0, log_every_n_steps=50, should_stop=False, fast_dev_run=False)
    trainer.optimizers, trainer.loggers, trainer.is_global_zero, trainer.current_epoch = [optimizer], [], True, 0

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise Forbidden

    plain, counting = GradNormLogger(per_layer=True), GradNormLogger(per_layer=True, warn_above=1e-9)
    monkeypatch.setattr("plkit.callbacks.grad_norm_logger.get_total_norm", forbidden)
    for step in range(49):  # without warn_above, no norm at all on the steps not logged
        trainer.global_step = step
        plain.on_before_optimizer_step(trainer, model, optimizer)  # type: ignore[arg-type]
    monkeypatch.undo()
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for step in range(49):  # with it, a norm compared on the device
        trainer.global_step = step
        counting.on_before_optimizer_step(trainer, model, optimizer)  # type: ignore[arg-type]
    assert logged == []
    trainer.global_step = 49
    with pytest.raises(Forbidden):  # the logged step is where the one sync happens
        counting.on_before_optimizer_step(trainer, model, optimizer)  # type: ignore[arg-type]
    monkeypatch.undo()
    assert counting.state_dict()["above_threshold"] == 50  # every step was counted on the device


class TwoOptimizers(TinyModel):
    def __init__(self) -> None:
        super().__init__(n=40)
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("train_loss", loss, batch_size=len(batch["x"]))
        self.manual_backward(loss)
        for optimizer in self.optimizers():
            optimizer.step()
            optimizer.zero_grad()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.encoder.parameters(), lr=0.1), torch.optim.SGD(self.head.parameters(), lr=0.1)]


class OptimizerNorms(Callback):
    """Placed after GradNormLogger: each optimizer's norm, by batch, computed the slow, obvious way."""

    def __init__(self) -> None:
        self.norms: dict[tuple[int, int], float] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        index = [o is getattr(optimizer, "optimizer", optimizer) for o in trainer.optimizers].index(True)
        grads = [p.grad.flatten().double() for g in optimizer.param_groups for p in g["params"]]
        batch = trainer.fit_loop.epoch_loop.batch_progress.total.completed
        self.norms[batch, index] = torch.linalg.vector_norm(torch.cat(grads)).item()


@pytest.mark.parametrize("every", [1, 2, 3])
def test_two_optimizers_manual_optimization_log_with_train_loss(tmp_path: Path, every: int) -> None:
    hand = OptimizerNorms()
    _, recorder = run(tmp_path, GradNormLogger(), hand, model=TwoOptimizers(), log_every_n_steps=every)
    loss_steps = [s for s, _ in recorder.series("train_loss")]
    assert loss_steps == [s for s in range(10) if (s + 1) % every == 0]  # 10 batches, 20 optimizer steps
    for index in (0, 1):
        logged = recorder.series(f"grad_norm/total_optimizer{index}")
        assert [s for s, _ in logged] == loss_steps
        assert [v for _, v in logged] == pytest.approx([hand.norms[s, index] for s in loss_steps], rel=1e-6)


def test_gradient_accumulation_logs_with_train_loss(tmp_path: Path) -> None:
    hand, recorder = run(tmp_path, GradNormLogger(), log_every_n_steps=2, accumulate_grad_batches=2, max_epochs=3)
    loss_steps = [s for s, _ in recorder.series("train_loss")]
    assert loss_steps == [1, 3, 5, 7]  # 15 batches, 9 optimizer steps (each epoch's last batch steps too)
    logged = recorder.series("grad_norm/total")
    assert [s for s, _ in logged] == loss_steps
    assert [v for _, v in logged] == pytest.approx([hand.total[s] for s in loss_steps], rel=1e-6)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_counts_survive_a_checkpoint(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callback = GradNormLogger(warn_above=1.3)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        hand, _ = run(tmp_path, callback, checkpoint, enable_checkpointing=True)
    above = sum(v > 1.3 for v in hand.total.values())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][callback.state_key]
    assert saved == {"above_threshold": above, "nonfinite": 0} == callback.state_dict()

    resumed = GradNormLogger(warn_above=1.3)
    hand = HandNorms(2.0)
    recorder = RecordingLogger()
    args = quiet(tmp_path, logger=recorder, max_epochs=3, limit_val_batches=0, log_every_n_steps=3)
    args["enable_checkpointing"] = True
    callbacks = [resumed, hand, ModelCheckpoint(dirpath=tmp_path / "ckpt2")]
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        model = TinyModel(n=40, batch_size=8)
        pl.Trainer(callbacks=callbacks, **args).fit(model, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert sorted(hand.total) == [10, 11, 12, 13, 14]  # the third epoch only
    new = {step: sum(v > 1.3 for s, v in hand.total.items() if s <= step) for step in (11, 14)}
    assert recorder.series("grad_norm/above_threshold") == [(11, above + new[11]), (14, above + new[14])]
    # The warnings count this fit's steps only, not the restored ones.
    assert warnings_of(recorded) == expected_warnings(hand.total, 1.3, [11, 14], epoch_steps=5)


def test_counts_survive_state_dict() -> None:
    callback = GradNormLogger(warn_above=2.0)
    assert callback.state_dict() == {"above_threshold": 0, "nonfinite": 0}
    callback.load_state_dict({"above_threshold": 4, "nonfinite": 1})
    assert callback.state_dict() == {"above_threshold": 4, "nonfinite": 1}
    assert GradNormLogger().state_dict() == {}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"norm_type": 0}, "norm_type=0.*positive number or 'inf'"),
        ({"norm_type": "two"}, "norm_type='two'"),
        ({"log_every_n_steps": 0}, "log_every_n_steps=0.*>= 1, or None"),
        ({"warn_above": -1.0}, "warn_above=-1.0.*positive"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GradNormLogger(**kwargs)


class SyncDebug(Callback):
    """Around GradNormLogger on a GPU: any host-device synchronisation on a step it does not log raises."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        unlogged = (trainer.global_step + 1) % trainer.log_every_n_steps != 0
        torch.cuda.set_sync_debug_mode(self.mode if unlogged else "default")


@pytest.mark.gpu
def test_on_a_gpu_unlogged_steps_never_wait_for_the_device(tmp_path: Path) -> None:
    hand, recorder = HandNorms(2.0), RecordingLogger()
    callbacks = [SyncDebug("error"), GradNormLogger(), SyncDebug("default"), hand]
    args = quiet(tmp_path, accelerator="gpu", logger=recorder, max_epochs=2, limit_val_batches=0, log_every_n_steps=3)
    try:
        pl.Trainer(callbacks=callbacks, **args).fit(TinyModel(n=40, batch_size=8))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    logged = recorder.series("grad_norm/total")
    assert [s for s, _ in logged] == [2, 5, 8]
    for step, value in logged:
        assert value == pytest.approx(hand.total[step], rel=1e-5)
