"""Ctrl+C and SIGTERM during ``plkit fit``: the exit code says so, the status file says so, and the run resumes.

The fit runs in a process of its own, signalled once its status file shows two finished epochs; the resume
runs in the test's process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cli_helpers import run

STEPS_PER_EPOCH = 5


def overlay(tmp_path: Path, mnist_dir: Path) -> Path:
    config = {
        "trainer": {
            "max_epochs": 1000,
            "limit_train_batches": STEPS_PER_EPOCH,
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {"class_path": "ProgressNotifier", "init_args": {"status_file": str(tmp_path / "status.json")}}
            ],
        },
        "data": {"init_args": {"data_dir": str(mnist_dir), "val_size": 64, "batch_size": 32}},
    }
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_for_epochs(status_file: Path, epochs: int, proc: subprocess.Popen, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("epoch", 0) >= epochs:
            return status
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no {epochs} epochs within {timeout} s")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_fit_exits_with_its_code_saves_a_clean_last_ckpt_and_resumes(
    signum: int,
    code: int,
    tmp_path: Path,
    mnist_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    command = [sys.executable, "-m", "plkit", "fit", "--config", "mnist", "--config", str(overlay(tmp_path, mnist_dir))]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished = wait_for_epochs(tmp_path / "status.json", 2, proc)["epoch"]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "interrupted"
    last_path = tmp_path / "runs" / "mnist" / "version_0" / "checkpoints" / "last.ckpt"
    name = signal.Signals(signum).name
    assert f"plkit fit: stopped by {name} at epoch" in out
    assert f"resume with --ckpt_path last ({Path('runs') / 'mnist' / 'version_0' / 'checkpoints' / 'last.ckpt'})" in out
    last = torch.load(last_path, weights_only=True)
    assert last["global_step"] >= finished * STEPS_PER_EPOCH, "last.ckpt holds at least the last finished epoch"
    progress = last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert progress["ready"] == progress["completed"], "stopped at a batch boundary, not inside a step"

    epochs = last["epoch"] + 2  # finish the interrupted epoch, then one more
    # The resume runs in this process (the signal needed a process of its own; resuming does not).
    monkeypatch.chdir(tmp_path)
    resume = [*command[3:], "--ckpt_path", "last", "--trainer.max_epochs", str(epochs)]
    returncode, _, err = run(resume, capsys)
    assert returncode == 0, err[-3000:]
    resumed = torch.load(last_path, weights_only=True)
    assert resumed["global_step"] == epochs * STEPS_PER_EPOCH, "no finished epoch repeated or dropped"
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "finished"
