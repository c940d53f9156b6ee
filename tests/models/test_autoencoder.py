"""AutoEncoder: training lowers the reconstruction loss, embeddings and ids reach EmbeddingWriter, checkpoints."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from plkit.callbacks import EmbeddingWriter
from plkit.data import MNISTDataModule, NpyDataModule
from plkit.models import AutoEncoder

from fakedata import make_npy


def test_fit_lowers_the_validation_loss_and_test_logs_it(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule
) -> None:
    pl.seed_everything(0)
    adam = functools.partial(torch.optim.Adam, lr=5e-3)
    model = AutoEncoder(input_shape=(1, 28, 28), latent_dim=8, hidden_dims=(64,), optimizer=adam)
    trainer = make_trainer(max_epochs=3)
    (before,) = trainer.validate(model, datamodule=mnist_dm, verbose=False)
    trainer.fit(model, datamodule=mnist_dm)
    assert {"train/loss", "val/loss"} <= set(trainer.callback_metrics)
    (after,) = trainer.validate(model, datamodule=mnist_dm, verbose=False)
    assert after["val/loss"] < 0.75 * before["val/loss"]
    (tested,) = trainer.test(model, datamodule=mnist_dm, verbose=False)
    assert set(tested) == {"test/loss"}


def test_predict_writes_embeddings_with_their_ids(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule, tmp_path: Path
) -> None:
    pl.seed_everything(0)
    model = AutoEncoder(latent_dim=5).eval()
    writer = EmbeddingWriter(tmp_path / "emb", id_key="id")
    trainer = make_trainer(callbacks=[writer])
    trainer.predict(model, datamodule=mnist_dm, return_predictions=False)
    embeddings = np.load(tmp_path / "emb" / "embeddings.npy")
    assert embeddings.shape == (64, 5)
    assert np.load(tmp_path / "emb" / "ids.npy").tolist() == list(range(64))
    with torch.no_grad():
        expected = model(mnist_dm.dataset("test").__getitems__(list(range(64)))["input"])
    np.testing.assert_allclose(embeddings, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_predict_step_returns_ids_only_when_the_batch_has_them() -> None:
    model = AutoEncoder(input_shape=(4,), latent_dim=2, hidden_dims=())
    with_ids = model.predict_step({"input": torch.zeros(3, 4), "id": ["a", "b", "c"]}, 0)
    assert with_ids["embeddings"].shape == (3, 2)
    assert with_ids["id"] == ["a", "b", "c"]
    assert set(model.predict_step((torch.zeros(3, 4),), 0)) == {"embeddings"}


def test_npy_arrays_with_string_ids_end_to_end(make_trainer: Callable[..., pl.Trainer], tmp_path: Path) -> None:
    pl.seed_everything(0)
    files = make_npy(tmp_path / "data", n=40, dim=8, string_ids=True)
    dm = NpyDataModule(files["features"], ids=files["ids"], val_fraction=0.25, batch_size=8)
    model = AutoEncoder(input_shape=(8,), latent_dim=2, hidden_dims=(16,))
    make_trainer(max_epochs=1).fit(model, datamodule=dm)
    writer = EmbeddingWriter(tmp_path / "out", id_key="id")
    make_trainer(callbacks=[writer]).predict(model, datamodule=dm, return_predictions=False)
    assert np.load(tmp_path / "out" / "embeddings.npy").shape == (40, 2)
    assert (tmp_path / "out" / "ids.txt").read_text().split() == [f"s{i:04d}" for i in range(40)]


def test_checkpoint_round_trip(make_trainer: Callable[..., pl.Trainer], tmp_path: Path) -> None:
    pl.seed_everything(0)
    loader = DataLoader(TensorDataset(torch.randn(16, 2, 3)), batch_size=8)
    model = AutoEncoder(input_shape=(2, 3), latent_dim=2, hidden_dims=(4, 3))
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, loader)
    trainer.save_checkpoint(tmp_path / "ae.ckpt")
    loaded = AutoEncoder.load_from_checkpoint(tmp_path / "ae.ckpt").eval()
    assert loaded.input_shape == (2, 3)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_one_number_per_sample_gets_advice_the_next_run_accepts(
    make_trainer: Callable[..., pl.Trainer], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.linspace(0, 1, 16, dtype=np.float32))
    model = AutoEncoder(input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"features\.reshape\(-1, 1\)\) and set input_shape to \[1\]$"):
        make_trainer(max_epochs=1).fit(model, datamodule=NpyDataModule(tmp_path / "x.npy", val_fraction=0.0))
    # The advice, followed: a feature axis in the file and input_shape [1].
    np.save(tmp_path / "x.npy", np.linspace(0, 1, 16, dtype=np.float32).reshape(-1, 1))
    trainer = make_trainer(max_epochs=1)
    dm = NpyDataModule(tmp_path / "x.npy", val_fraction=0.0, batch_size=8)
    trainer.fit(AutoEncoder(input_shape=[1], latent_dim=1, hidden_dims=(4,)), datamodule=dm)
    assert trainer.global_step == 2


def test_wrong_input_shape_says_what_to_set() -> None:
    model = AutoEncoder(input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"got inputs of shape \[3, 32, 32\]: set input_shape to \[3, 32, 32\]"):
        model.training_step({"input": torch.zeros(2, 3, 32, 32)}, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": ()}, "input_shape=()"),
        ({"latent_dim": 0}, "latent_dim=0"),
        ({"hidden_dims": (8, 0)}, r"hidden_dims=\(8, 0\)"),
        ({"scheduler_interval": "always"}, "scheduler_interval='always'"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AutoEncoder(**kwargs)


def test_forward_exports_with_torch_export() -> None:
    model = AutoEncoder(latent_dim=4).eval()
    x = torch.randn(2, 1, 28, 28)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))
