"""Fixtures of tests/models: a quiet CPU trainer and the tiny MNIST data module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

from plkit.data import MNISTDataModule


@pytest.fixture
def make_trainer(tmp_path: Path) -> Callable[..., pl.Trainer]:
    """``Trainer`` factory: CPU, one device, no logger, no progress bar; keyword arguments override."""

    def make(**kwargs: Any) -> pl.Trainer:
        options: dict[str, Any] = {
            "default_root_dir": tmp_path,
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            **kwargs,
        }
        return pl.Trainer(**options)

    return make


@pytest.fixture
def mnist_dm(mnist_dir: Path) -> MNISTDataModule:
    """The tiny MNIST (256 train, 64 validation, 64 test images) in batches of 32."""
    return MNISTDataModule(data_dir=mnist_dir, batch_size=32, val_size=64, download=False)
