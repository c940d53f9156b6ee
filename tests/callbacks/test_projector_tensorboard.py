"""EmbeddingWriter(projector=True) read by a real TensorBoard process: its projector plugin lists the run and serves
the tensor and the metadata that were written (loopback only, bounded waits, the process always stopped)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from plkit.callbacks import EmbeddingWriter

from callback_helpers import TinyModel, quiet
from tensorboard_server import PROJECTOR, get, projector_info, projector_runs, tensorboard

pytestmark = pytest.mark.integration

N = 45


def test_tensorboard_projector_shows_the_written_embeddings(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "runs", name="demo")
    out = tmp_path / "predictions"
    writer = EmbeddingWriter(out, id_key="name", label_key="sku", projector=True)
    pl.Trainer(callbacks=[writer], **quiet(tmp_path, logger=logger)).predict(TinyModel(n=N), return_predictions=False)
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.shape == (N, 3)

    with tensorboard(tmp_path / "runs", tmp_path / "tensorboard.log") as url:
        projector_runs(url, ["demo/version_0"])
        run = f"run={urllib.parse.quote('demo/version_0')}"
        (embedding,) = projector_info(url, "demo/version_0")["embeddings"]
        assert (embedding["tensorName"], embedding["tensorShape"]) == ("embeddings", [N, 3])
        tensor = np.frombuffer(get(f"{url}{PROJECTOR}/tensor?{run}&name=embeddings"), dtype=np.float32)
        np.testing.assert_array_equal(tensor.reshape(N, 3), embeddings)
        metadata = get(f"{url}{PROJECTOR}/metadata?{run}&name=embeddings").decode().splitlines()
    assert metadata == ["name\tsku"] + [f"item-{i}\t{1000 + 7 * i}" for i in range(N)]
