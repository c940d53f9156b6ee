"""The demo notebooks in ``notebooks/``, executed top to bottom in a real kernel on tiny generated data.

Each notebook reads its parameters from environment variables (the kernel inherits the test's): the data
folder, a working folder in ``tmp_path`` and a quick mode of a few batches. After the last cell the test runs
one more cell of its own that reports, as JSON, what the notebook computed and drew.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from fakedata import make_mnist

pytestmark = [pytest.mark.notebook, pytest.mark.integration]  # each runs a Jupyter kernel process

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
N_TRAIN, N_TEST = 320, 64
KERNEL = "python3"
PROBE_MARK = "PROBE:"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny IDX files and a kernel of this interpreter; returns the notebooks' working folder."""
    data = make_mnist(tmp_path / "data", n_train=N_TRAIN, n_test=N_TEST, gz=True, seed=0)
    # A kernelspec of our own, first on JUPYTER_PATH: a user's or the system's "python3" kernel may run
    # another interpreter, without this checkout's plkit.
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "plkit tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = {
        "JUPYTER_PATH": str(tmp_path / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter" / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "MPLBACKEND": "Agg",
        "PLKIT_NB_DATA": str(data),
        "PLKIT_NB_WORKDIR": str(tmp_path / "work"),
        "PLKIT_NB_QUICK": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return tmp_path / "work"


def execute(name: str, probe: str, cwd: Path) -> dict[str, Any]:
    """Run every cell of ``notebooks/<name>`` in a fresh kernel started in ``cwd``, then ``probe``; return its JSON."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == KERNEL
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), f"clear {name}'s outputs"
    report = f"import json, sys\nprint({PROBE_MARK!r} + json.dumps({{'executable': sys.executable, {probe}}}))"
    nb.cells.append(nbformat.v4.new_code_cell(report))
    client = NotebookClient(
        nb, timeout=300, startup_timeout=120, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    text = "".join(out.get("text", "") for out in nb.cells[-1].outputs if out.output_type == "stream")
    line = next((line for line in text.splitlines() if line.startswith(PROBE_MARK)), None)
    assert line is not None, f"the probe cell printed no report: {nb.cells[-1].outputs}"
    result = json.loads(line.removeprefix(PROBE_MARK))
    assert result.pop("executable") == sys.executable, "the kernel must run the test's own interpreter"
    return result


def test_quickstart_trains_plots_and_tests_a_recipe(tmp_path: Path, workdir: Path) -> None:
    probe = """
        'run_dir': str(run_dir),
        'best': str(best),
        'points': {tag: len(steps) for tag, (steps, values) in curves.items()},
        'plotted': [{line.get_label(): len(line.get_xdata()) for line in ax.lines} for ax in fig.axes],
    """
    result = execute("quickstart.ipynb", probe, cwd=tmp_path)

    run_dir = workdir / "runs" / "fashion_mnist" / "version_0"
    assert Path(result["run_dir"]) == run_dir
    assert Path(result["best"]) == run_dir / "checkpoints" / "best.ckpt"
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "test_config.yaml").is_file(), "plkit test logs into the checkpoint's own run"
    # QUICK: 2 epochs of 4 training batches, every step logged; one validation per epoch.
    points = result["points"]
    assert points["train/loss"] == 8
    assert points["val/loss"] == points["val/acc"] == 2
    assert result["plotted"] == [{"train/loss": 8, "val/loss": 2}, {"val/acc": 2}]
    assert (run_dir / "report.png").stat().st_size > 0
    report = (run_dir / "report.txt").read_text()
    assert "test/acc" in report
    assert "best val/acc" in report
    assert not (tmp_path / "lightning_logs").exists()


def test_callbacks_notebook_writes_embeddings_and_shows_neighbours(tmp_path: Path, workdir: Path) -> None:
    probe = """
        'out': str(out),
        'lr': trainer.optimizers[0].param_groups[0]['lr'],
        'epochs': EPOCHS,
        'grad_norms': column('grad_norm/total')[1],
        'lrs': column('lr-AdamW')[1],
        'log_lines': [len(line.get_xdata()) for ax in fig_logs.axes for line in ax.lines],
        'agreement': float(agreement),
        'grid': [len(ax.images) for ax in fig.axes],
    """
    result = execute("callbacks_in_your_project.ipynb", probe, cwd=tmp_path)

    out = Path(result["out"])
    assert out == workdir / "runs" / "callbacks_demo" / "version_0" / "predictions"
    embeddings, ids = np.load(out / "embeddings.npy"), np.load(out / "ids.npy")
    assert embeddings.shape == (N_TEST, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(ids, np.arange(N_TEST))
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["rows"], manifest["dim"], manifest["id_source"]) == (N_TEST, 32, "batch['id']")

    # LRDecay(gamma=0.7): epoch e ran at 0.003 * 0.7**e, and LearningRateMonitor logged both rates; as with
    # Lightning's own epoch schedulers, the optimizer ends holding the rate a third epoch would use.
    assert result["epochs"] == 2
    assert result["lr"] == pytest.approx(0.003 * 0.7**2)
    assert sorted(set(result["lrs"])) == pytest.approx([0.003 * 0.7, 0.003])
    # QUICK: 2 epochs of 3 batches (320 images, 128 a batch), every step logged.
    assert len(result["grad_norms"]) == 6, "GradNormLogger logs grad_norm/total on every logged step"
    assert np.all(np.isfinite(result["grad_norms"]))
    assert min(result["grad_norms"]) > 0
    assert result["log_lines"] == [6, 6, 6], "train_loss, grad_norm/total and lr-AdamW against step"
    # Five queries, each with its six neighbours, every panel an image.
    assert result["grid"] == [1] * (5 * 7)
    # The generated classes are easy: their neighbours share them well above chance (10%).
    assert result["agreement"] > 0.3
