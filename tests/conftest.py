"""Shared fixtures: tiny data on disk, a quiet environment, and the ``gpu`` marker's skip."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch  # noqa: F401  (see below)
import pytest

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


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding four tiny gzipped MNIST IDX files (320 train, 64 test images)."""
    return make_mnist(tmp_path_factory.mktemp("mnist"))
