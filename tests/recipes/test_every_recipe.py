"""Every shipped recipe, alone and under every overlay a CPU can run, trains on tiny generated data.

The recipes and overlays are discovered from the recipes folder, so a new one is tested without
anyone writing a test for it. GPU overlays are parsed and validated (``--print_config``) only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from plkit.cli import main
from plkit.cli.recipes import list_recipes

from fakedata import make_cifar10, make_mnist

RECIPES = [r for r in list_recipes() if not r.is_overlay]
OVERLAYS = [r for r in list_recipes() if r.is_overlay]
GPU_OVERLAYS = {"overlays/gpu", "overlays/multi_gpu"}
CPU_OVERLAYS = [o.name for o in OVERLAYS if o.name not in GPU_OVERLAYS]


def recipe_config(name: str) -> dict:
    return yaml.safe_load(next(r.path for r in RECIPES if r.name == name).read_text())


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipe_data")
    return {"mnist": make_mnist(root / "mnist", n_train=160, n_test=48), "cifar10": make_cifar10(root / "cifar10")}


def tiny_overlay(name: str, data_dirs: dict[str, Path], root: Path) -> Path:
    """Shrink a recipe to a few batches of the generated files that match its data module."""
    data_class = recipe_config(name)["data"]["class_path"]
    data_dir = data_dirs["cifar10" if "CIFAR" in data_class else "mnist"]
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


@pytest.mark.parametrize("recipe", [r.name for r in RECIPES])
def test_recipe_fits_then_predicts_from_its_checkpoint(recipe: str, data_dirs: dict[str, Path], tmp_path: Path) -> None:
    fit(["--config", recipe, "--config", str(tiny_overlay(recipe, data_dirs, tmp_path))])
    (run_dir,) = (tmp_path / "runs" / recipe).glob("version_*")
    assert (run_dir / "config.yaml").is_file()
    (last,) = (run_dir / "checkpoints").glob("last.ckpt")

    assert plkit(["predict", "--ckpt_path", str(last)]) == 0
    writers = [
        cb for cb in recipe_config(recipe)["trainer"].get("callbacks") or [] if cb["class_path"] == "EmbeddingWriter"
    ]
    if writers:
        # The recipe's writer puts one row per test image into the run folder.
        embeddings = np.load(run_dir / "predictions" / "embeddings.npy")
        ids = np.load(run_dir / "predictions" / "ids.npy")
        assert embeddings.shape[0] == 48
        assert ids.tolist() == list(range(48))
        assert (run_dir / "predictions" / "manifest.json").is_file()


@pytest.mark.parametrize("overlay", [o for o in CPU_OVERLAYS if o != "overlays/ddp_cpu"])
@pytest.mark.parametrize("recipe", [r.name for r in RECIPES])
def test_recipe_with_cpu_overlay(recipe: str, overlay: str, data_dirs: dict[str, Path], tmp_path: Path) -> None:
    fit(["--config", recipe, "--config", overlay, "--config", str(tiny_overlay(recipe, data_dirs, tmp_path))])
    runs = list((tmp_path / "runs" / recipe).glob("version_*"))
    if overlay == "overlays/debug":
        assert not any(run.glob("checkpoints/*.ckpt") for run in runs), "fast_dev_run keeps no checkpoint"
    else:
        assert len(runs) == 1
        assert (runs[0] / "checkpoints" / "last.ckpt").is_file() or list(runs[0].glob("checkpoints/*.ckpt"))
    if overlay == "overlays/profile":
        assert (runs[0] / "fit-profile.txt").is_file()
    if overlay == "overlays/deterministic":
        assert yaml.safe_load((runs[0] / "config.yaml").read_text())["seed_everything"] == 1234


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
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["devices"] == 2


@pytest.mark.parametrize("overlay", sorted(GPU_OVERLAYS))
@pytest.mark.parametrize("recipe", [r.name for r in RECIPES])
def test_gpu_overlays_parse_and_validate(recipe: str, overlay: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert plkit(["fit", "--config", recipe, "--config", overlay, "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["accelerator"] == "gpu"
    assert config["trainer"]["precision"] == "bf16-mixed"
