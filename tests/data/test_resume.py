"""Exact resume: 2 epochs, then a resume from the checkpoint to 4, equal a straight 4-epoch fit bit for bit.

The runs augment their batches and use dropout, so both the sample order and the global random stream must
continue exactly. Checkpoints come from one 2-epoch run: saved at the end of the training epoch, at the end
of validation (ModelCheckpoint's default when validation runs at the epoch's end), in the middle of an
epoch (after a batch, where an interrupted run saves ``last.ckpt``) and with a batch drawn but not yet trained on
(where SLURM's requeue signal can find a run).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from plkit.data import MNISTDataModule
from plkit.models import ImageClassifier

BATCHES = 4  # training batches per epoch
MID_EPOCH_STEP = 6  # global step of the mid-epoch checkpoint: 2 batches into epoch 1


class RecordIds(Callback):
    """The ids of every training batch, in order."""

    def __init__(self) -> None:
        self.ids: list[list[int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.ids.append(batch["id"].tolist())


class SaveAtBatchStart(Callback):
    """Save a checkpoint when the batch after ``step`` has been drawn but not trained on, as SLURM's requeue
    signal does when it comes while the ranks wait at a batch."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


class SaveMidEpoch(Callback):
    """Save a checkpoint after the batch that brings the run to ``step``, as an interrupt at a batch boundary would."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def fit(
    data: Path,
    root: Path,
    max_epochs: int,
    deterministic: bool,
    ckpt_path: Path | None = None,
    callbacks: tuple[Callback, ...] = (),
    accelerator: str = "cpu",
) -> tuple[ImageClassifier, pl.Trainer, RecordIds]:
    pl.seed_everything(7)
    dm = MNISTDataModule(data_dir=data, batch_size=16, val_size=64, download=False, augment=True)
    model = ImageClassifier(width=4, dropout=0.3, optimizer=functools.partial(torch.optim.AdamW, lr=3e-3))
    ids = RecordIds()
    trainer = pl.Trainer(
        default_root_dir=root,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=max_epochs,
        limit_train_batches=BATCHES,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        deterministic=deterministic,
        callbacks=[ids, *callbacks],
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, trainer, ids


def assert_same_training_state(one: tuple[ImageClassifier, pl.Trainer, Any], other: tuple[Any, ...]) -> None:
    weights, other_weights = one[0].state_dict(), other[0].state_dict()
    assert weights.keys() == other_weights.keys()
    for key in weights:
        assert torch.equal(weights[key], other_weights[key]), key
    state, other_state = one[1].optimizers[0].state_dict(), other[1].optimizers[0].state_dict()
    assert state["param_groups"] == other_state["param_groups"]
    assert state["state"].keys() == other_state["state"].keys()
    for index, moments in state["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, other_state["state"][index][name]), (index, name)


_RUNS: dict[bool, dict] = {}


def make_runs(deterministic: bool, mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A straight 4-epoch fit, and a 2-epoch fit that saved the four kinds of checkpoint (made once per module)."""
    if deterministic not in _RUNS:
        _RUNS[deterministic] = _fit_runs(deterministic, mnist_dir, tmp_path_factory)
    return _RUNS[deterministic]


@pytest.fixture(scope="module", params=[False, True], ids=["default", "deterministic"])
def runs(request: pytest.FixtureRequest, mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_runs(request.param, mnist_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def default_runs(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_runs(False, mnist_dir, tmp_path_factory)


def _fit_runs(deterministic: bool, mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("resume")
    at_train_end = ModelCheckpoint(root / "train_end", filename="{epoch}", save_top_k=-1, save_on_train_epoch_end=True)
    # A monitor gives the second ModelCheckpoint its own state key (it keeps every epoch all the same).
    at_val_end = ModelCheckpoint(
        root / "val_end", filename="{epoch}", monitor="val/loss", save_top_k=-1, save_on_train_epoch_end=False
    )
    mid_epoch = SaveMidEpoch(MID_EPOCH_STEP, root / "mid_epoch.ckpt")
    mid_batch = SaveAtBatchStart(MID_EPOCH_STEP, root / "mid_batch.ckpt")
    fit(mnist_dir, root / "first", 2, deterministic, callbacks=(at_train_end, at_val_end, mid_epoch, mid_batch))
    return {
        "deterministic": deterministic,
        "root": root,
        "straight": fit(mnist_dir, root / "straight", 4, deterministic),
        "checkpoints": {
            "train_epoch_end": root / "train_end" / "epoch=1.ckpt",
            "validation_end": root / "val_end" / "epoch=1.ckpt",
            "mid_epoch": root / "mid_epoch.ckpt",
            "batch_under_way": root / "mid_batch.ckpt",
        },
    }


@pytest.mark.parametrize("saved_at", ["train_epoch_end", "validation_end", "mid_epoch", "batch_under_way"])
def test_two_plus_two_epochs_equal_four_bitwise(runs: dict, saved_at: str, mnist_dir: Path) -> None:
    checkpoint = runs["checkpoints"][saved_at]
    resumed = fit(mnist_dir, runs["root"] / f"resumed_{saved_at}", 4, runs["deterministic"], ckpt_path=checkpoint)
    straight = runs["straight"]
    # A batch under way when the checkpoint was saved is trained again: the resume starts before it.
    done = MID_EPOCH_STEP if saved_at in ("mid_epoch", "batch_under_way") else 2 * BATCHES
    # The resumed run trained on exactly the batches the straight run had left, in the same order...
    assert resumed[2].ids == straight[2].ids[done:]
    assert resumed[1].global_step == straight[1].global_step == 4 * BATCHES
    # ...with the same random stream (augmentation, dropout): the same weights and optimizer state, bit for bit.
    assert_same_training_state(straight, resumed)


def test_the_checkpoint_carries_the_random_states_and_the_loader_position(default_runs: dict) -> None:
    runs = default_runs
    checkpoint = torch.load(runs["checkpoints"]["mid_epoch"], weights_only=True)
    states = checkpoint["MNISTDataModule"]["rng_states"]
    assert {"torch", "numpy", "python"} <= set(states)
    [loader] = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (loader["epoch"], loader["batches"]) == (1, 2)
    assert loader["rng_before_batch"].dtype == torch.uint8  # torch's random state before batch 2 was drawn
    under_way = torch.load(runs["checkpoints"]["batch_under_way"], weights_only=True)
    [loader] = under_way["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (loader["epoch"], loader["batches"]) == (1, 3)  # batch 3 drawn, not trained on
    assert under_way["global_step"] == MID_EPOCH_STEP


def test_a_checkpoint_without_random_states_still_resumes(default_runs: dict, mnist_dir: Path, tmp_path: Path) -> None:
    runs = default_runs
    checkpoint = torch.load(runs["checkpoints"]["train_epoch_end"], weights_only=True)
    del checkpoint["MNISTDataModule"]  # what a checkpoint written before the states were saved holds
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    model, trainer, ids = fit(mnist_dir, tmp_path / "run", 4, runs["deterministic"], ckpt_path=old)
    straight = runs["straight"]
    # The order is a function of (seed, epoch), so the same batches come; the random stream is the current one.
    assert ids.ids == straight[2].ids[2 * BATCHES :]
    assert trainer.global_step == 4 * BATCHES
    assert not torch.equal(model.head.weight, straight[0].head.weight)


@pytest.mark.gpu
@pytest.mark.parametrize("saved_at", ["mid_epoch", "batch_under_way"])
def test_resume_on_a_gpu_is_bitwise_exact(saved_at: str, mnist_dir: Path, tmp_path: Path) -> None:
    # Dropout draws from the CUDA generator, which the checkpoint carries too; deterministic kernels.
    save = SaveMidEpoch if saved_at == "mid_epoch" else SaveAtBatchStart
    checkpoint = tmp_path / "saved.ckpt"
    fit(mnist_dir, tmp_path / "first", 2, True, callbacks=(save(MID_EPOCH_STEP, checkpoint),), accelerator="gpu")
    straight = fit(mnist_dir, tmp_path / "straight", 4, True, accelerator="gpu")
    resumed = fit(mnist_dir, tmp_path / "resumed", 4, True, ckpt_path=checkpoint, accelerator="gpu")
    assert "cuda" in torch.load(checkpoint, weights_only=True)["MNISTDataModule"]["rng_states"]
    assert resumed[2].ids == straight[2].ids[MID_EPOCH_STEP:]
    assert resumed[1].global_step == 4 * BATCHES
    assert_same_training_state(straight, resumed)
