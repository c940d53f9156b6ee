"""Each model's ``prediction_writer``: the rows it writes equal a direct forward pass, with the samples' ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from plkit.data import MNISTDataModule
from plkit.models import AutoEncoder, ImageClassifier


def forward(module: pl.LightningModule, dm: MNISTDataModule, split: str) -> tuple[dict, torch.Tensor]:
    data = dm.dataset(split)
    batch = data.__getitems__(list(range(len(data))))
    with torch.no_grad():
        return batch, module(batch["input"])


@pytest.mark.parametrize("split", ["test", "val"])
def test_classifier_writes_probabilities_labels_and_ids(
    split: str, make_trainer: Callable[..., pl.Trainer], mnist_dir: Path, tmp_path: Path
) -> None:
    pl.seed_everything(0)
    model = ImageClassifier(width=4).eval()
    dm = MNISTDataModule(data_dir=mnist_dir, batch_size=24, val_size=64, download=False, predict_split=split)
    out = tmp_path / "predictions"
    make_trainer(callbacks=[model.prediction_writer(out)]).predict(model, datamodule=dm, return_predictions=False)
    batch, logits = forward(model, dm, split)
    probabilities = logits.softmax(dim=1).numpy()
    np.testing.assert_allclose(np.load(out / "probabilities.npy"), probabilities, rtol=1e-5, atol=1e-6)
    (labels,) = out.glob("label*.npy")
    assert np.load(labels).tolist() == probabilities.argmax(1).tolist()
    # The ids are the images' rows in the original file: for the validation split, not the dataset index.
    assert np.load(out / "ids.npy").tolist() == batch["id"].tolist()


def test_classifier_embeddings_and_autoencoder_write_embeddings_with_ids(
    make_trainer: Callable[..., pl.Trainer], mnist_dm: MNISTDataModule, tmp_path: Path
) -> None:
    pl.seed_everything(0)
    for name, model in (
        ("classifier", ImageClassifier(width=4, return_embeddings=True).eval()),
        ("autoencoder", AutoEncoder(latent_dim=5).eval()),
    ):
        out = tmp_path / name
        make_trainer(callbacks=[model.prediction_writer(out)]).predict(model, datamodule=mnist_dm)
        batch, _ = forward(model, mnist_dm, "test")
        with torch.no_grad():
            expected = model.embed(batch["input"]) if isinstance(model, ImageClassifier) else model(batch["input"])
        np.testing.assert_allclose(np.load(out / "embeddings.npy"), expected.numpy(), rtol=1e-5, atol=1e-6)
        assert np.load(out / "ids.npy").tolist() == list(range(64))


def test_batches_without_ids_are_named_by_their_index(make_trainer: Callable[..., pl.Trainer], tmp_path: Path) -> None:
    model = AutoEncoder(input_shape=(3,), latent_dim=2, hidden_dims=()).eval()
    inputs = torch.randn(10, 3)
    out = tmp_path / "rows"
    writer = model.prediction_writer(out, id_key=None)
    make_trainer(callbacks=[writer]).predict(model, DataLoader(TensorDataset(inputs), batch_size=4))
    with torch.no_grad():
        np.testing.assert_allclose(np.load(out / "embeddings.npy"), model(inputs).numpy(), rtol=1e-5, atol=1e-6)
    assert np.load(out / "ids.npy").tolist() == list(range(10))
    # A second predict replaces the first result (the CLI writes into the same run folder again).
    make_trainer(callbacks=[model.prediction_writer(out, id_key=None)]).predict(model, DataLoader(inputs[:4]))
    assert np.load(out / "embeddings.npy").shape == (4, 2)
