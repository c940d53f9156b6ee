"""Under DDP (two CPU processes, gloo): the same split on every rank, Lightning's shard of the (seed, epoch)
permutation on each, synced metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from plkit.data import MNISTDataModule
from plkit.models import ImageClassifier

SCRIPT = Path(__file__).with_name("ddp_models_script.py")


@pytest.mark.integration
def test_two_ranks_share_the_split_and_report_global_metrics(mnist_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(mnist_dir), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["val_ids"] == ranks[1]["val_ids"]
    # The DistributedSampler Lightning put into plkit's DataLoader gives each rank its own images...
    assert len(ranks[0]["train_ids"]) == len(ranks[1]["train_ids"]) == 32
    assert not set(ranks[0]["train_ids"]) & set(ranks[1]["train_ids"])
    # ...its shard of the permutation a single process draws for (seed, epoch): seed_everything(0), epoch 0.
    dm = MNISTDataModule(data_dir=mnist_dir, val_size=64, download=False)
    dm.setup("fit")
    train_ids = dm.dataset("train").ids
    for rank in (0, 1):
        shard = list(DistributedSampler(range(len(train_ids)), num_replicas=2, rank=rank, seed=0))[:32]
        assert ranks[rank]["train_ids"] == train_ids[shard].tolist()
    assert ranks[0]["metrics"] == ranks[1]["metrics"]

    # The synced epoch metrics equal the accuracy and loss over all 64 validation images in one process.
    model = ImageClassifier.load_from_checkpoint(tmp_path / "ddp.ckpt").eval()
    batch = dm.dataset("val").__getitems__(list(range(64)))
    with torch.no_grad():
        logits = model(batch["input"])
    accuracy = (logits.argmax(1) == batch["target"]).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, batch["target"]).item()
    assert ranks[0]["metrics"]["val/acc"] == pytest.approx(accuracy)
    assert ranks[0]["metrics"]["val/loss"] == pytest.approx(loss, rel=1e-4)
