"""``plkit report``: curves and a summary from a run made here, and the errors for what is not a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_helpers import run, scalars

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def finished_run(tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A two-epoch fit of the mnist recipe on tiny data, then a test of its best checkpoint."""
    code, _, err = run(["fit", "--config", "mnist", "--config", str(tiny), "--trainer.max_epochs", "2"], capsys)
    assert code == 0, err
    (run_dir,) = sorted((tmp_path / "runs" / "mnist").glob("version_*"))
    code, _, err = run(["test", "--ckpt_path", str(run_dir / "checkpoints" / "best.ckpt")], capsys)
    assert code == 0, err
    return run_dir


def test_report_draws_the_curves_and_summarises_the_run(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["report", str(finished_run)], capsys)
    assert code == 0, err

    png = (finished_run / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 20_000, "four drawn panels, not an empty image"
    assert not list(finished_run.glob(".report.*")), "no temporary file is left behind"

    logged = scalars(finished_run)
    summary = (finished_run / "report.txt").read_text().splitlines()
    assert summary == out.splitlines()[: len(summary)]
    fields = {line[:13].strip(): line[13:].strip() for line in summary}
    assert fields["checkpoint"] == str(finished_run / "checkpoints" / "best.ckpt")
    monitor = yaml.safe_load((finished_run / "config.yaml").read_text())["checkpoint"]["monitor"]
    assert monitor == "val/acc"
    assert fields["best val/acc"] == f"{max(logged['val/acc']):.4f} (max)"
    assert fields["test/acc"] == f"{logged['test/acc'][-1]:.4f}"
    assert fields["epochs"] == "2"
    assert fields["steps"] == "6", "3 batches x 2 epochs"
    assert fields["wall time"].endswith("(training: first to last logged value)")


def test_report_needs_no_torch(finished_run: Path) -> None:
    code = (
        "import sys; from plkit.cli import main; main(['report', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'report imported torch'"
    )
    done = subprocess.run([sys.executable, "-c", code, str(finished_run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "absent", "is not a folder"),
        (lambda tmp: tmp, "holds no TensorBoard event files"),
    ],
)
def test_report_on_what_is_not_a_run(
    tmp_path: Path, make: object, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["report", str(make(tmp_path))], capsys)
    assert code != 0
    assert message in err
    assert "runs/mnist/version_0" in err, "the message shows what a run folder looks like"
