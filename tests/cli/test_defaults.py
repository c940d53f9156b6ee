"""plkit's defaults that need no training to check: bf16 on CPUs without it, checkpoints beside a recipe's own,
a run named after its SLURM job."""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

import plkit.cli._precision as precision
from plkit.cli import PlkitCLI

from cli_helpers import run

BF16_ON_CPU = ["--trainer.precision=bf16-mixed", "--trainer.accelerator=cpu", "--trainer.logger=false"]


@pytest.mark.parametrize("native", [False, True], ids=["no native bf16", "native bf16"])
def test_bf16_on_a_cpu_without_it_falls_back_to_32_true_with_one_warning(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cli = PlkitCLI(BoringModel, run=False, args=BF16_ON_CPU)
    ours = [str(w.message) for w in record if str(w.message).startswith("trainer.precision")]
    if native:
        assert ours == []
        assert cli.trainer.precision == "bf16-mixed"
    else:
        (message,) = ours
        assert message.startswith("trainer.precision bf16-mixed: this CPU has no native bf16")
        assert "using 32-true instead" in message
        assert cli.trainer.precision == "32-true"


def test_the_bf16_fallback_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    cli = PlkitCLI(BoringModel, run=False, args=BF16_ON_CPU, bf16_fallback=False)
    assert cli.trainer.precision == "bf16-mixed"


def test_a_checkpoint_path_is_checked_unless_switched_off(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.ckpt")
    with pytest.raises(SystemExit) as exit:
        PlkitCLI(BoringModel, args=["test", f"--ckpt_path={missing}", "--trainer.logger=false"])
    assert exit.value.code == 2
    with mock.patch("lightning.pytorch.Trainer.test", autospec=True) as test:
        PlkitCLI(BoringModel, args=["test", f"--ckpt_path={missing}", "--trainer.logger=false"], check_ckpt_path=False)
    assert test.call_args.kwargs["ckpt_path"] == missing  # left for Lightning to judge


SRUN_TASK = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0"}
SRUN_TASK |= {"SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def test_a_fit_under_srun_runs_in_a_folder_named_after_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A requeued job runs the same command again with the same id: its run, and Lightning's requeue
    checkpoint (saved into default_root_dir), must be found in that run's folder, not the working directory."""
    for key, value in SRUN_TASK.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    with mock.patch("lightning.pytorch.Trainer.fit", autospec=True):
        cli = PlkitCLI(BoringModel, args=["fit", "--trainer.enable_progress_bar=false"])
    run_dir = (tmp_path / "runs" / "boring_model" / "slurm_4242").resolve()
    assert Path(cli.trainer.log_dir).resolve() == run_dir
    assert Path(cli.trainer.default_root_dir).resolve() == run_dir
    # Resuming an earlier run with --ckpt_path is the user's choice: the usual rules, nothing named after the job.
    with mock.patch("lightning.pytorch.Trainer.fit", autospec=True):
        cli = PlkitCLI(BoringModel, args=["fit", "--ckpt_path=last", "--trainer.enable_progress_bar=false"])
    assert Path(cli.trainer.log_dir).name == "version_0"
    assert Path(cli.trainer.default_root_dir).resolve() == tmp_path.resolve()
    # Outside srun: the usual numbered folder.
    monkeypatch.delenv("SLURM_NTASKS")
    cli = PlkitCLI(BoringModel, run=False, args=["--trainer.enable_progress_bar=false"])
    assert Path(cli.trainer.log_dir).name == "version_0"


@pytest.mark.integration  # a two-epoch fit
def test_a_recipes_own_model_checkpoint_keeps_its_files_and_plkit_keeps_last(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        ["fit", "--config", "mnist_callbacks", "--config", str(tiny), "--trainer.max_epochs", "2"], capsys
    )
    assert code == 0, err
    checkpoints = tmp_path / "runs" / "mnist_callbacks" / "version_0" / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names[-1] == "last.ckpt"
    assert len([n for n in names if n.startswith("epoch")]) == 2, names  # its top-3 of 2 epochs: both
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 6
