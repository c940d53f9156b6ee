"""Two real CPU processes (``strategy="ddp"``, gloo): one launch of ``ddp_script.py``, checked several ways."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
from torch.utils.data import DataLoader

from plkit.callbacks import EmbeddingWriter

from callback_helpers import PointDataset, TinyModel, quiet

SCRIPT = Path(__file__).with_name("ddp_script.py")

pytestmark = pytest.mark.integration  # starts two processes


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    # Lightning's DDP launcher re-runs sys.argv in the second process: that must be a script, not pytest.
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same predictions from one process."""
    out = tmp_path_factory.mktemp("single")
    loader = DataLoader(PointDataset(1001, seed=3), batch_size=50)
    for fmt, id_key in (("npy", "sku"), ("tsv", "name")):
        writer = EmbeddingWriter(out / fmt, id_key=id_key, format=fmt)
        pl.Trainer(callbacks=[writer], **quiet(out)).predict(TinyModel(), loader, return_predictions=False)
    return out


def test_npy_equals_single_process(ddp_out: Path, single: Path) -> None:
    for name in ("ddp_npy", "ddp_padded"):
        manifest = json.loads((ddp_out / name / "manifest.json").read_text())
        assert (manifest["rows"], manifest["world_size"]) == (1001, 2)
        assert manifest["duplicates_dropped"] == (1 if name == "ddp_padded" else 0)
        np.testing.assert_array_equal(
            np.load(ddp_out / name / "embeddings.npy"), np.load(single / "npy" / "embeddings.npy")
        )
        np.testing.assert_array_equal(np.load(ddp_out / name / "ids.npy"), 1000 + 7 * np.arange(1001))
    assert sorted(p.name for p in (ddp_out / "ddp_npy").iterdir()) == [
        "embeddings.npy",
        "ids.npy",
        "labels.txt",
        "manifest.json",
    ]
    assert (ddp_out / "ddp_npy" / "labels.txt").read_text().splitlines() == [f"item-{i}" for i in range(1001)]
    assert sorted(p.name for p in (ddp_out / "ddp_padded").iterdir()) == ["embeddings.npy", "ids.npy", "manifest.json"]


def test_projector_written_once_by_rank_zero(ddp_out: Path, single: Path) -> None:
    folder = ddp_out / "projector" / "embeddings"
    tensor = np.loadtxt(folder / "tensor.tsv", dtype=np.float32)
    np.testing.assert_array_equal(tensor, np.load(single / "npy" / "embeddings.npy"))
    metadata = (folder / "metadata.tsv").read_text().splitlines()
    assert metadata == ["sku\tname"] + [f"{1000 + 7 * i}\titem-{i}" for i in range(1001)]
    assert "tensor_shape: 1001\n  tensor_shape: 3\n" in (ddp_out / "projector_config.pbtxt").read_text()


def test_tsv_equals_single_process(ddp_out: Path, single: Path) -> None:
    ddp_text = (ddp_out / "ddp_tsv" / "embeddings.tsv").read_text()
    assert ddp_text == (single / "tsv" / "embeddings.tsv").read_text()
    assert [line.split("\t", 1)[0] for line in ddp_text.splitlines()] == [f"item-{i}" for i in range(1001)]


def test_only_rank_zero_touches_shared_files(ddp_out: Path) -> None:
    touched = [json.loads((ddp_out / f"touched_rank{r}.json").read_text()) for r in range(2)]
    # Every exported callback writes something on rank zero here, so the recording is not vacuous.
    assert any(e.endswith("EmbeddingWriter-output_dir/manifest.json") for e in touched[0])
    assert any(e.endswith("ProgressNotifier-status_file") for e in touched[0])
    assert any("/.shards/rank1/" in e for e in touched[1])
    per_rank = re.compile(r"(^|/)[^/]*rank1(/|$)")
    shared = [e for e in touched[1] if not per_rank.search(e.split(" ", 1)[1])]
    assert shared == []
    result = ddp_out / "contract" / "EmbeddingWriter-output_dir"
    assert sorted(p.name for p in result.iterdir()) == ["embeddings.npy", "ids.npy", "manifest.json"]
    assert json.loads((ddp_out / "contract" / "ProgressNotifier-status_file").read_text())["state"] == "finished"
