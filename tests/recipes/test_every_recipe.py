"""Every shipped recipe, alone and under every overlay a CPU can run, trains on tiny generated data.

The recipes and overlays are discovered from the recipes folder, so a new one is tested without
anyone writing a test for it. The default run puts one batch of each loop through every recipe
(``overlays/debug``); the fits with predictions, every recipe x CPU overlay and 2-process DDP are
``integration`` tests. GPU overlays are parsed and validated (``--print_config``) only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from plkit.cli import main
from plkit.cli.recipes import list_recipes

from fakedata import make_cifar10, make_mnist

RECIPES = [r for r in list_recipes() if not r.is_overlay]
OVERLAYS = [r for r in list_recipes() if r.is_overlay]
GPU_OVERLAYS = {"overlays/gpu", "overlays/multi_gpu"}
CPU_OVERLAYS = [o.name for o in OVERLAYS if o.name not in GPU_OVERLAYS]
TEST_IMAGES = {"mnist": 48, "cifar10": 40}


def recipe_config(name: str) -> dict:
    return yaml.safe_load(next(r.path for r in RECIPES if r.name == name).read_text())


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe_data")
    return {
        "mnist": make_mnist(root / "mnist", n_train=160, n_test=TEST_IMAGES["mnist"]),
        "cifar10": make_cifar10(root / "cifar10", n_test=TEST_IMAGES["cifar10"]),
    }


def data_kind(recipe: str) -> str:
    return "cifar10" if "CIFAR" in recipe_config(recipe)["data"]["class_path"] else "mnist"


def tiny_overlay(name: str, data_dirs: dict[str, Path], root: Path) -> Path:
    """Shrink a recipe to a few batches of the generated files that match its data module."""
    data_dir = data_dirs[data_kind(name)]
    overlay = {
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "default_root_dir": str(root),
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "data": {"init_args": {"data_dir": str(data_dir), "val_size": 20, "batch_size": 16, "download": False}},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


def plkit(args: list[str]) -> int:
    """Run ``plkit ARGS`` in-process; return its exit status."""
    try:
        main(args)
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def fit(args: list[str]) -> None:
    assert plkit(["fit", *args]) == 0, f"plkit fit {' '.join(args)} failed"


def rows_of(folder: Path) -> int:
    return int(yaml.safe_load((folder / "manifest.json").read_text())["rows"])


@pytest.mark.parametrize("overlay", [o for o in CPU_OVERLAYS if o != "overlays/ddp_cpu"])
@pytest.mark.parametrize("recipe", [r.name for r in RECIPES])
def test_recipe_with_each_cpu_overlay_runs_one_batch_of_each_loop(
    recipe: str, overlay: str, data_dirs: dict[str, Path], tmp_path: Path
) -> None:
    # overlays/debug last: one batch of each loop (the integration tests below fit whole epochs).
    tiny = tiny_overlay(recipe, data_dirs, tmp_path)
    fit(["--config", recipe, "--config", overlay, "--config", "overlays/debug", "--config", str(tiny)])
    assert not (tmp_path / "runs").exists(), "fast_dev_run writes no run folder"


@pytest.mark.integration  # a fit and a predict per recipe
@pytest.mark.parametrize("recipe", [r.name for r in RECIPES])
def test_recipe_fits_then_predicts_from_its_checkpoint(recipe: str, data_dirs: dict[str, Path], tmp_path: Path) -> None:
    fit(["--config", recipe, "--config", str(tiny_overlay(recipe, data_dirs, tmp_path))])
    (run_dir,) = (tmp_path / "runs" / recipe).glob("version_*")
    assert (run_dir / "config.yaml").is_file()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2, "last.ckpt holds the end of the one epoch"

    assert plkit(["predict", "--ckpt_path", str(last)]) == 0
    predictions = run_dir / "predictions"
    writers = [
        cb for cb in recipe_config(recipe)["trainer"].get("callbacks") or [] if cb["class_path"] == "EmbeddingWriter"
    ]
    # The recipe's own writer (embeddings), else the model's (a classifier's probabilities and labels): one row
    # per test image, in the test file's order.
    values = np.load(predictions / ("embeddings.npy" if writers else "probabilities.npy"))
    n = TEST_IMAGES[data_kind(recipe)]
    assert values.shape[0] == rows_of(predictions) == n
    assert np.load(predictions / "ids.npy").tolist() == list(range(n))
    if not writers:
        assert np.load(predictions / "labels.npy").tolist() == values.argmax(axis=1).tolist()


@pytest.mark.integration  # a fit per recipe x overlay
@pytest.mark.parametrize("overlay", [o for o in CPU_OVERLAYS if o not in ("overlays/ddp_cpu", "overlays/debug")])
@pytest.mark.parametrize("recipe", [r.name for r in RECIPES])
def test_recipe_with_cpu_overlay(recipe: str, overlay: str, data_dirs: dict[str, Path], tmp_path: Path) -> None:
    fit(["--config", recipe, "--config", overlay, "--config", str(tiny_overlay(recipe, data_dirs, tmp_path))])
    (run_dir,) = (tmp_path / "runs" / recipe).glob("version_*")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    if overlay == "overlays/profile":
        assert "Profiler Report" in (run_dir / "fit-profile.txt").read_text()
    if overlay == "overlays/deterministic":
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed_everything"] == 1234


@pytest.mark.integration  # two processes per recipe
@pytest.mark.parametrize("recipe", [r.name for r in RECIPES])
def test_recipe_with_ddp_on_two_cpu_processes(recipe: str, data_dirs: dict[str, Path], tmp_path: Path) -> None:
    # Lightning's DDP launcher starts the second process by re-running the command line: a real `plkit`
    # command, not pytest.
    overlay = tiny_overlay(recipe, data_dirs, tmp_path)
    command = [sys.executable, "-m", "plkit", "fit", "--config", recipe, "--config", "overlays/ddp_cpu"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [*command, "--config", str(overlay)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run_dir,) = (tmp_path / "runs" / recipe).glob("version_*")
    # Each of the 2 ranks trains on its half of the 2 batches the tiny overlay allows: 1 step each.
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["devices"] == 2


@pytest.mark.parametrize("overlay", sorted(GPU_OVERLAYS))
@pytest.mark.parametrize("recipe", [r.name for r in RECIPES])
def test_gpu_overlays_parse_and_validate(recipe: str, overlay: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert plkit(["fit", "--config", recipe, "--config", overlay, "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["accelerator"] == "gpu"
    assert config["trainer"]["precision"] == "bf16-mixed"


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", [r.name for r in RECIPES])
def test_recipe_fits_then_predicts_on_one_gpu(recipe: str, data_dirs: dict[str, Path], tmp_path: Path) -> None:
    # bf16 autocast, cuDNN autotuning, channels-last on a CUDA device; predict reads the run's config (the GPU).
    fit(["--config", recipe, "--config", "overlays/gpu", "--config", str(tiny_overlay(recipe, data_dirs, tmp_path))])
    (run_dir,) = (tmp_path / "runs" / recipe).glob("version_*")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["accelerator"] == "gpu"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert plkit(["predict", "--ckpt_path", str(last)]) == 0
    predictions = run_dir / "predictions"
    n = TEST_IMAGES[data_kind(recipe)]
    assert rows_of(predictions) == n
    assert np.load(predictions / "ids.npy").tolist() == list(range(n))
