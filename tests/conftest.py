"""Shared fixtures: tiny data on disk, a quiet environment, and the ``gpu`` marker's skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch  # noqa: F401  (see below)
import pytest
import yaml

from fakedata import make_mnist

# Importing Lightning here binds its log handler to the session's stdout; imported first inside a test,
# it would bind to that test's capsys stream, closed once the test ends ("--- Logging error ---").


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_torch_flags() -> Iterator[None]:
    """``Trainer(deterministic=True)`` and ``benchmark=True`` set process-wide flags; undo them after each test."""
    import torch

    deterministic, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding four tiny gzipped MNIST IDX files (320 train, 64 test images)."""
    return make_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def tiny(tmp_path: Path, mnist_dir: Path) -> Path:
    """A recipe overlay that shrinks the mnist recipe to a few batches of the generated data, runs under tmp_path."""
    overlay = {
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 3,
            "limit_val_batches": 2,
            "limit_test_batches": 2,
            "limit_predict_batches": 2,
            "log_every_n_steps": 1,
            "default_root_dir": str(tmp_path),
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "data": {"init_args": {"data_dir": str(mnist_dir), "val_size": 64, "batch_size": 32}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path
