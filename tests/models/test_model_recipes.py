"""The recipes of plkit's modules run through ``plkit`` on tiny data: fit, then predict with EmbeddingWriter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from plkit.cli import main

from fakedata import make_cifar10

REPO = Path(__file__).resolve().parents[2]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def plkit(*args: str) -> None:
    code: object = 0
    try:
        main(list(args))
    except SystemExit as exit:
        code = exit.code
    assert not code, f"plkit {' '.join(args)} exited with {code}"


@pytest.mark.parametrize("recipe", ["fashion_mnist", "mnist_autoencoder"])
def test_mnist_family_recipes_fast_dev_run(recipe: str, mnist_dir: Path, tmp_path: Path) -> None:
    plkit("fit", "--config", str(REPO / "recipes" / f"{recipe}.yaml"), "--data.data_dir", str(mnist_dir),
          "--data.val_size", "64", "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
          *QUIET)  # fmt: skip


def test_cifar10_recipe_fast_dev_run(tmp_path: Path) -> None:
    data = make_cifar10(tmp_path / "cifar", n_train=100, n_test=20)
    plkit("fit", "--config", str(REPO / "recipes" / "cifar10.yaml"), "--data.data_dir", str(data),
          "--data.val_size", "20", "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
          *QUIET)  # fmt: skip


def test_autoencoder_recipe_predict_writes_embeddings_with_ids(mnist_dir: Path, tmp_path: Path) -> None:
    recipe = str(REPO / "recipes" / "mnist_autoencoder.yaml")
    common = ["--config", recipe, "--data.data_dir", str(mnist_dir), "--data.val_size", "64",
              "--trainer.default_root_dir", str(tmp_path), *QUIET]  # fmt: skip
    plkit("fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2")
    (ckpt,) = tmp_path.glob("runs/*/version_0/checkpoints/last.ckpt")
    out = tmp_path / "embeddings"
    plkit("predict", *common, "--ckpt_path", str(ckpt), "--trainer.callbacks.init_args.output_dir", str(out))
    latent_dim = yaml.safe_load(Path(recipe).read_text())["model"]["init_args"]["latent_dim"]
    assert np.load(out / "embeddings.npy").shape == (64, latent_dim)
    assert np.load(out / "ids.npy").tolist() == list(range(64))
