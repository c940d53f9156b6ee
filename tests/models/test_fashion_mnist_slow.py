"""The Fashion-MNIST recipe on the real data: ``plkit fit`` then ``plkit test`` reach 92% test accuracy.

Needs the Debian package ``dataset-fashion-mnist`` (the four IDX files in /usr/share/datasets/fashion-mnist)
and a few minutes of CPU: ``pytest -m slow tests/models/test_fashion_mnist_slow.py -s`` prints the times.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "fashion_mnist.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
        reason=f"real Fashion-MNIST is not staged in {FASHION_MNIST} (apt-get install dataset-fashion-mnist)",
    ),
]


def run_plkit(*args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(
        [sys.executable, "-m", "plkit", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"plkit {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_fashion_mnist_recipe_reaches_92_percent(tmp_path: Path) -> None:
    common = ["--config", str(RECIPE), "--data.data_dir", str(FASHION_MNIST), "--trainer.enable_progress_bar", "false"]
    start = time.perf_counter()
    run_plkit("fit", *common, cwd=tmp_path)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    out = run_plkit("test", *common, "--ckpt_path", "best", cwd=tmp_path)
    test_s = time.perf_counter() - start
    match = re.search(r"test/acc\W+([0-9.]+)", out)
    assert match, f"no test/acc in the output of plkit test:\n{out[-3000:]}"
    accuracy = float(match.group(1))
    load = os.getloadavg()[0]
    print(f"\nFashion-MNIST recipe: test/acc {accuracy:.4f}; fit {fit_s:.0f} s, test {test_s:.0f} s (load {load:.1f})")
    assert accuracy >= 0.92
