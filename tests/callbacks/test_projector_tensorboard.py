"""EmbeddingWriter(projector=True) read by a real TensorBoard process: its projector plugin lists the run and serves
the tensor and the metadata that were written (loopback only, bounded waits, the process always stopped)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from plkit.callbacks import EmbeddingWriter

from callback_helpers import TinyModel, quiet

pytestmark = pytest.mark.integration

N = 45
DEADLINE_S = 60


@contextlib.contextmanager
def tensorboard(logdir: Path, log: Path) -> Iterator[str]:
    """Start ``tensorboard --logdir LOGDIR --port 0 --host 127.0.0.1``; yield its URL once it says which port."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", "0"]
    command += ["--host", "127.0.0.1", "--load_fast", "false"]  # no second (data server) process
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not (found := re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())):
            assert process.poll() is None, f"tensorboard exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"tensorboard did not report its port:\n{log.read_text()}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_tensorboard_projector_shows_the_written_embeddings(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path / "runs", name="demo")
    out = tmp_path / "predictions"
    writer = EmbeddingWriter(out, id_key="name", label_key="sku", projector=True)
    pl.Trainer(callbacks=[writer], **quiet(tmp_path, logger=logger)).predict(TinyModel(n=N), return_predictions=False)
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.shape == (N, 3)

    projector = "/data/plugin/projector"
    with tensorboard(tmp_path / "runs", tmp_path / "tensorboard.log") as url:
        deadline = time.monotonic() + DEADLINE_S
        while (runs := json.loads(get(f"{url}{projector}/runs"))) != ["demo/version_0"]:
            assert time.monotonic() < deadline, f"the projector lists {runs}"
            time.sleep(0.5)
        run = f"run={urllib.request.quote('demo/version_0')}"
        info = json.loads(get(f"{url}{projector}/info?{run}"))
        (embedding,) = info["embeddings"]
        assert (embedding["tensorName"], embedding["tensorShape"]) == ("embeddings", [N, 3])
        tensor = np.frombuffer(get(f"{url}{projector}/tensor?{run}&name=embeddings"), dtype=np.float32)
        np.testing.assert_array_equal(tensor.reshape(N, 3), embeddings)
        metadata = get(f"{url}{projector}/metadata?{run}&name=embeddings").decode().splitlines()
    assert metadata == ["name\tsku"] + [f"item-{i}\t{1000 + 7 * i}" for i in range(N)]
