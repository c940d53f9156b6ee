"""Two CPU processes (DDP over gloo), run by ``test_ddp_models.py`` as ``python ddp_models_script.py DATA OUT``.

Each rank fits the tiny MNIST for two steps, validates, and writes what it saw to ``OUT/rank{N}.json``:
its validation split, the ids of its training batches and the validation metrics; rank 0 also saves the
checkpoint, so the test can recompute the metrics in one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from plkit.data import MNISTDataModule
from plkit.models import ImageClassifier


class SeenIds(Callback):
    def __init__(self) -> None:
        self.ids: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.ids.extend(batch["id"].tolist())


def main(data: Path, out: Path) -> None:
    pl.seed_everything(0)
    dm = MNISTDataModule(data_dir=data, batch_size=16, val_size=64, download=False)
    seen = SeenIds()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        default_root_dir=out,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        max_epochs=1,
        limit_train_batches=2,
        callbacks=[seen],
    )
    model = ImageClassifier()
    trainer.fit(model, datamodule=dm)
    (metrics,) = trainer.validate(model, datamodule=dm, verbose=False)
    trainer.save_checkpoint(out / "ddp.ckpt")
    record = {"val_ids": dm.dataset("val").ids.tolist(), "train_ids": seen.ids, "metrics": metrics}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
