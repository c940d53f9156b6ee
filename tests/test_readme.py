"""Every shell command in README.md runs, so the README cannot rot.

The commands of the ```bash blocks run in order in one folder (a later ``plkit test`` uses the run an
earlier ``plkit fit`` made), on tiny generated MNIST files standing in for the real datasets and with
a few batches per epoch. Each command must match a handler below: a new kind of command in the
README fails this test until someone decides how to exercise it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plkit.cli import main

from fakedata import make_mnist

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
REAL_DATA = ("/usr/share/datasets/fashion-mnist", "/path/to/mnist")


def bash_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def setup_commands() -> tuple[str, str]:
    (main_job,) = [c for c in bash_commands() if "python3 -m venv" in c and "dataset-fashion-mnist" in c]
    (tests,) = [c for c in bash_commands() if "python3 -m venv" in c and ".[dev]" in c]
    return main_job, tests


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    setups = [c for c in bash_commands() if "python3 -m venv" in c]
    assert len(setups) == 2
    _, tests = setup_commands()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci, ".ci/run must run the README's test command word for word"
    assert tests.endswith(".venv/bin/pytest")


def test_no_placeholders_are_left() -> None:
    assert not re.search(r"\b[A-Z]{4,}_[A-Z]+\b\n", README), "a template placeholder is still in the README"
    for placeholder in ("RECIPES_TABLE", "PERFORMANCE"):
        assert placeholder not in README


@pytest.fixture
def tiny_overlay(tmp_path: Path) -> Path:
    overlay = {
        "trainer": {
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "limit_test_batches": 1,
            "limit_predict_batches": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "data": {"init_args": {"val_size": 32, "batch_size": 16}},
    }
    path = tmp_path / "readme_tiny.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


def shrink(words: list[str], data_dir: Path, overlay: Path) -> list[str]:
    """Point a README command at the tiny data, and add the tiny overlay where the command names a config."""
    words = [str(data_dir) if w in REAL_DATA else w for w in words]
    if "--config" in words:
        words += ["--config", str(overlay)]
    return words


def run_plkit(words: list[str]) -> None:
    try:
        main(words)
        code = 0
    except SystemExit as exit:
        code = int(exit.code or 0)
    assert code == 0, f"plkit {shlex.join(words)} exited with {code}"


@pytest.mark.integration  # every command, DDP and torchrun ones in their own processes
def test_every_readme_command_runs(
    tmp_path: Path, tiny_overlay: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = make_mnist(tmp_path / "data", n_train=160, n_test=32)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    main_job, tests = setup_commands()
    ran = []
    for command in bash_commands():
        if command == tests:
            continue  # .ci/run runs it (test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one)
        if command == main_job:
            command = command.rsplit("&& .venv/bin/", 1)[1]  # the install part is what CI does
        words = shlex.split(command, comments=True)
        assert "$(" not in command, "a README command that needs the shell to expand it"
        if words[0] == "plkit" and "overlays/ddp_cpu" in words:
            # Lightning starts the other ranks by re-running this process's command line: a fresh plkit, not pytest.
            args = shrink(words[1:], data_dir, tiny_overlay)
            proc = subprocess.run([sys.executable, "-m", "plkit", *args], capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
        elif words[0] == "plkit":
            run_plkit(shrink(words[1:], data_dir, tiny_overlay))
        elif words[0] == "torchrun":
            args = shrink(words[1:], data_dir, tiny_overlay)
            proc = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", *args], capture_output=True, text=True, timeout=300
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
        elif words[0] == ".venv/bin/ruff":
            for part in command.split(" && "):
                ruff = [sys.executable, "-m", "ruff", *shlex.split(part, comments=True)[1:]]
                assert subprocess.run(ruff, cwd=REPO, capture_output=True, check=False).returncode == 0, part
        elif words[:3] == [".venv/bin/pytest", "-m", "slow"]:
            collect = [sys.executable, "-m", "pytest", "-m", "slow", "--collect-only", "-q", "-p", "no:cacheprovider"]
            proc = subprocess.run(collect, cwd=REPO, capture_output=True, text=True, check=False)
            assert re.search(r"\b[1-9]\d* tests? collected", proc.stdout), proc.stdout[-2000:]
        elif words[:3] == ["python", "-m", "benchmarks"]:
            # The quick benchmark runs in .ci/run; here: the entry point exists and takes --quick.
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True, text=True, check=False
            )
            assert proc.returncode == 0
            assert "--quick" in proc.stdout
        else:
            pytest.fail(f"no handler for the README command {command!r}: add one to {__file__}")
        ran.append(command)
    capsys.readouterr()

    assert len(ran) >= 10
    assert (work / "my.yaml").is_file()
    # The main job made version_0; the Quickstart's fit, test and report all concern its own run, version_1.
    quickstart = work / "runs" / "fashion_mnist" / "version_1"
    assert (quickstart / "report.png").is_file()
    assert (quickstart / "test_config.yaml").is_file()
    assert not (work / "runs" / "fashion_mnist" / "version_0" / "test_config.yaml").exists()
