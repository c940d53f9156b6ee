"""Tiny deterministic models, data and a recording logger for the callback tests (and the DDP script)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, Dataset

import plkit.callbacks


class PointDataset(Dataset):
    """``n`` samples ``{"x", "y", "sku", "name"}``; features are multiples of 1/8, so float32 matmuls are exact."""

    def __init__(self, n: int, features: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(-8, 9, (n, features), generator=g).float() / 8
        self.y = self.x[:, :2].sum(dim=1, keepdim=True) * 0.1
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "sku": 1000 + 7 * i, "name": f"item-{i}"}


class TinyModel(pl.LightningModule):
    """Two linear layers; ``predict_step`` returns ``{"embeddings": hidden}``, exact in float32 (the initial weights
    are multiples of 1/4), whatever the batch composition."""

    def __init__(self, features: int = 4, hidden: int = 3, lr: float = 0.05, n: int = 64, batch_size: int = 8):
        super().__init__()
        self.save_hyperparameters()
        g = torch.Generator().manual_seed(1)
        self.encoder = torch.nn.Linear(features, hidden)
        self.head = torch.nn.Linear(hidden, 1)
        with torch.no_grad():
            self.encoder.weight.copy_(torch.randint(-3, 4, self.encoder.weight.shape, generator=g).float() / 4)
            self.encoder.bias.copy_(torch.randint(-3, 4, self.encoder.bias.shape, generator=g).float() / 4)
            self.head.weight.copy_(torch.randint(-3, 4, self.head.weight.shape, generator=g).float() / 4)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.head(torch.relu(self.encoder(batch["x"]))), batch["y"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, batch_size=len(batch["x"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), batch_size=len(batch["x"]))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("test_loss", self._loss(batch), batch_size=len(batch["x"]))

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"embeddings": self(batch["x"])}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    def _loader(self, seed: int) -> DataLoader:
        return DataLoader(PointDataset(self.hparams.n, self.hparams.features, seed), batch_size=self.hparams.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(3)


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((int(step or 0), dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(step, m[key]) for step, m in self.calls if key in m]


def quiet(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Trainer arguments for a fast, silent CPU run."""
    kwargs: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    kwargs.update(overrides)
    return kwargs


def exported_callbacks() -> list[type[Callback]]:
    """Every callback class ``plkit.callbacks`` exports: the contract tests run on each."""
    found = [getattr(plkit.callbacks, name) for name in plkit.callbacks.__all__]
    return [c for c in found if inspect.isclass(c) and issubclass(c, Callback)]


def recipe_for(cls: type[Callback], folder: Path) -> dict[str, Any]:
    """A recipe entry (``class_path``/``init_args``) for ``cls``: defaults, except that every argument naming an
    output path (``*_dir``, ``*_file``, ``*_path``) points inside ``folder``, so a run's files can be found."""
    init_args: dict[str, Any] = {}
    for name in inspect.signature(cls.__init__).parameters:
        if name.endswith(("_dir", "_file", "_path")):
            init_args[name] = str(folder / f"{cls.__name__}-{name}")
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def build_from_recipes(recipes: list[dict[str, Any]]) -> list[Callback]:
    """Instantiate callbacks the way LightningCLI does for ``trainer.callbacks`` in a YAML recipe."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callbacks", type=list[Callback])
    config = parser.parse_object({"callbacks": recipes})
    return parser.instantiate(config).callbacks
