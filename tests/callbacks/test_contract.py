"""The contract every callback exported by ``plkit.callbacks`` keeps; a new export is covered automatically.

Built from a recipe entry, it pickles, its state survives a real checkpoint, it runs through every stage, and the
same instance serves a second ``fit``. (Two CPU processes: see ``test_ddp.py``.)
"""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from callback_helpers import TinyModel, build_from_recipes, exported_callbacks, quiet, recipe_for

CALLBACKS = exported_callbacks()


def test_all_four_are_exported() -> None:
    names = {c.__name__ for c in CALLBACKS}
    assert names >= {"EmbeddingWriter", "LRDecay", "GradNormLogger", "ProgressNotifier"}


def build(cls: type[Callback], tmp_path: Path) -> Callback:
    recipe = yaml.safe_dump({"trainer": {"callbacks": [recipe_for(cls, tmp_path)]}})
    (callback,) = build_from_recipes(yaml.safe_load(recipe)["trainer"]["callbacks"])
    return callback


def trainer(tmp_path: Path, callback: Callback, **kw: object) -> pl.Trainer:
    return pl.Trainer(callbacks=[callback], **quiet(tmp_path, limit_val_batches=2, limit_test_batches=2, **kw))


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda c: c.__name__)
def test_built_from_recipe(cls: type[Callback], tmp_path: Path) -> None:
    callback = build(cls, tmp_path)
    assert type(callback) is cls
    for name, value in recipe_for(cls, tmp_path)["init_args"].items():
        assert str(getattr(callback, name)) == value
    doc = cls.__doc__ or ""
    assert "Example::" in doc
    assert "Args:" in doc


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda c: c.__name__)
def test_pickles_before_and_after_a_run(cls: type[Callback], tmp_path: Path) -> None:
    callback = build(cls, tmp_path)
    assert type(pickle.loads(pickle.dumps(callback))) is cls
    trainer(tmp_path, callback, max_epochs=1).fit(TinyModel(n=16))
    copy = pickle.loads(pickle.dumps(callback))
    assert copy.state_dict() == callback.state_dict()


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda c: c.__name__)
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_state_survives_a_checkpoint(cls: type[Callback], tmp_path: Path) -> None:
    callback = build(cls, tmp_path)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    t = trainer(tmp_path, callback, max_epochs=2, enable_checkpointing=True)
    t.callbacks.append(checkpoint)
    t.fit(TinyModel(n=16))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    state = callback.state_dict()
    assert saved.get(callback.state_key, {}) == state

    restored = build(cls, tmp_path)
    restored.load_state_dict(saved.get(callback.state_key, {}))
    assert restored.state_dict() == state
    # And through the trainer: resuming loads it before training goes on, for one more epoch.
    resumed, probe = build(cls, tmp_path), StateAtTrainStart()
    t = trainer(tmp_path, resumed, max_epochs=3)
    t.callbacks.append(probe)
    probe.watched = resumed
    t.fit(TinyModel(n=16), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert probe.state == state
    assert (t.current_epoch, t.global_step) == (3, 6)  # 2 steps an epoch


class StateAtTrainStart(Callback):
    """Records another callback's state when training (re)starts, after Lightning restored the checkpoint."""

    watched: Callback
    state: dict | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = self.watched.state_dict()


def expected_loss(seed: int, model: TinyModel) -> float:
    """The mean MSE of ``model`` over its two loader batches of 8 (of 16 samples), computed directly."""
    with torch.no_grad():
        return sum(model._loss(batch).item() for batch in model._loader(seed)) / 2


@pytest.mark.parametrize("cls", CALLBACKS, ids=lambda c: c.__name__)
def test_every_stage_then_a_second_fit(cls: type[Callback], tmp_path: Path) -> None:
    callback = build(cls, tmp_path)
    model = TinyModel(n=16)
    t = trainer(tmp_path, callback, max_epochs=2)
    t.fit(model)
    assert t.validate(model, verbose=False)[0]["val_loss"] == pytest.approx(expected_loss(1, model), rel=1e-5)
    assert t.test(model, verbose=False)[0]["test_loss"] == pytest.approx(expected_loss(2, model), rel=1e-5)
    assert t.predict(model, return_predictions=False) is None
    second = trainer(tmp_path / "second", callback, max_epochs=2)
    second.fit(TinyModel(n=16))
    assert second.current_epoch == 2
