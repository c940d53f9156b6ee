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


def test_warn_above_counts_every_step(tmp_path: Path) -> None:
    threshold = 1.3  # norms here range from 0.4 to 2.6
    with pytest.warns(UserWarning, match=r"exceeded warn_above=1.3 on \d+ step\(s\)"):
        hand, recorder = run(tmp_path, GradNormLogger(warn_above=threshold))
    counts = recorder.series("grad_norm/above_threshold")
    assert [s for s, _ in counts] == [2, 5, 8]
    for step, count in counts:
        assert count == sum(v > threshold for s, v in hand.total.items() if s <= step)
    assert 0 < counts[-1][1] < 9  # the threshold splits the run
    assert [c for _, c in recorder.series("grad_norm/nonfinite")] == [0, 0, 0]


def test_nonfinite_reported_on_logged_step(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"not finite on 1 step\(s\) up to step 5"):
        _, recorder = run(tmp_path, GradNormLogger(), Sabotage(5), Repair())
    assert math.isnan(dict(recorder.series("grad_norm/total"))[5])


def test_nonfinite_between_logged_steps_counted_with_warn_above(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"not finite on 1 step\(s\) up to step 5"):
        _, recorder = run(tmp_path, GradNormLogger(warn_above=1e9), Sabotage(4), Repair())
    assert recorder.series("grad_norm/nonfinite") == [(2, 0), (5, 1), (8, 1)]


class Forbidden(Exception):
    pass


def test_no_host_sync_on_steps_not_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    model = TinyModel()
    model._loss({"x": torch.ones(2, 4), "y": torch.ones(2, 1)}).backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logged: list[str] = []
    model.log = lambda name, value, **kw: logged.append(name)  # type: ignore[method-assign]
    trainer = SimpleNamespace(global_step=0, log_every_n_steps=50, should_stop=False, fast_dev_run=False)
    trainer.optimizers, trainer.loggers = [optimizer], []
    callback = GradNormLogger(per_layer=True, warn_above=1e-9)

    def forbidden(*args: Any) -> None:
        raise Forbidden

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for step in range(49):
        trainer.global_step = step
        callback.on_before_optimizer_step(trainer, model, optimizer)  # type: ignore[arg-type]
    assert logged == []
    trainer.global_step = 49
    with pytest.raises(Forbidden):  # the logged step is where the one sync happens
        callback.on_before_optimizer_step(trainer, model, optimizer)  # type: ignore[arg-type]
    monkeypatch.undo()
    assert int(callback._above) == 50  # every step was counted on the device


class TwoOptimizers(TinyModel):
    def __init__(self) -> None:
        super().__init__(n=40)
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.manual_backward(self._loss(batch))
        for optimizer in self.optimizers():
            optimizer.step()
            optimizer.zero_grad()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.encoder.parameters(), lr=0.1), torch.optim.SGD(self.head.parameters(), lr=0.1)]


def test_one_norm_per_optimizer(tmp_path: Path) -> None:
    _, recorder = run(tmp_path, GradNormLogger(), model=TwoOptimizers(), log_every_n_steps=1)
    keys = {k for _, m in recorder.calls for k in m if k.startswith("grad_norm/")}
    assert keys == {"grad_norm/total_optimizer0", "grad_norm/total_optimizer1"}


def test_counts_survive_a_checkpoint(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callback = GradNormLogger(warn_above=1.3)
    with pytest.warns(UserWarning, match="exceeded"):
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
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        model = TinyModel(n=40, batch_size=8)
        pl.Trainer(callbacks=callbacks, **args).fit(model, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert sorted(hand.total) == [10, 11, 12, 13, 14]  # the third epoch only
    new = {step: sum(v > 1.3 for s, v in hand.total.items() if s <= step) for step in (11, 14)}
    assert recorder.series("grad_norm/above_threshold") == [(11, above + new[11]), (14, above + new[14])]
    # Only exceedances since the restored count are reported.
    reports = [str(w.message) for w in warned if "exceeded" in str(w.message)]
    expected = [n for n in (new[11], new[14] - new[11]) if n]
    assert [int(r.split(" on ")[1].split(" ")[0]) for r in reports] == expected


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
