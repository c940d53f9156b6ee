"""Lightning's verbs through ``plkit``: the mnist recipe on tiny generated IDX files, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from cli_helpers import run, scalars


def runs_of(tmp_path: Path, name: str = "mnist") -> list[Path]:
    return sorted((tmp_path / "runs" / name).glob("version_*"))


def test_fit_makes_one_folder_per_run_with_config_checkpoints_and_logs(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["fit", "--config", "mnist", "--config", str(tiny)], capsys)
    assert code == 0, err
    (run_dir,) = runs_of(tmp_path)
    assert run_dir.name == "version_0"
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["seed_everything"] == 42
    assert saved["trainer"]["logger"]["init_args"]["name"] == "mnist"
    assert saved["checkpoint"]["monitor"] == "val/acc"
    metrics = scalars(run_dir)
    assert {"train/loss", "train/loss_epoch", "val/loss", "val/acc"} <= set(metrics)
    assert any(tag.startswith("lr-") for tag in metrics), "LearningRateMonitor logs by default"

    # The checkpoint alone can rebuild the model and the data module.
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["_class_path"] == "plkit.models.ImageClassifier"
    assert ckpt["datamodule_hyper_parameters"]["_class_path"].endswith("MNISTDataModule")

    # A second run of the same recipe never fails on the existing config: it opens the next folder.
    code, _, err = run(["fit", "--config", "mnist", "--config", str(tiny)], capsys)
    assert code == 0, err
    assert [p.name for p in runs_of(tmp_path)] == ["version_0", "version_1"]
    assert (runs_of(tmp_path)[1] / "config.yaml").is_file()


def test_a_fixed_logger_folder_is_reused_without_failing(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixed = ["--trainer.logger.class_path", "TensorBoardLogger", "--trainer.logger.init_args.save_dir", str(tmp_path)]
    fixed += ["--trainer.logger.init_args.name", "same", "--trainer.logger.init_args.version", "fixed"]
    for _ in range(2):
        code, _, err = run(["fit", "--config", "mnist", "--config", str(tiny), *fixed], capsys)
        assert code == 0, err
    assert (tmp_path / "same" / "fixed" / "config.yaml").is_file()


def test_validate_test_predict_from_a_checkpoint_without_config(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["fit", "--config", "mnist", "--config", str(tiny)], capsys)[0] == 0
    (run_dir,) = runs_of(tmp_path)
    best = str(run_dir / "checkpoints" / "best.ckpt")

    for verb in ("validate", "test", "predict"):
        code, out, err = run([verb, "--ckpt_path", best], capsys)
        assert code == 0, err
        assert (run_dir / f"{verb}_config.yaml").is_file(), "logs of a checkpoint's verb go to its own run folder"
    assert runs_of(tmp_path) == [run_dir]
    assert "test/acc" in scalars(run_dir)

    # Without the run's config.yaml, the checkpoint's hyperparameters still name the classes.
    (run_dir / "config.yaml").unlink()
    code, out, err = run(["test", "--ckpt_path", best], capsys)
    assert code == 0, err
    assert "test/acc" in out


def test_fit_with_run_test_tests_the_best_checkpoint(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    code, out, err = run(["fit", "--config", "mnist", "--config", str(tiny), "--run_test", "true"], capsys)
    assert code == 0, err
    assert "test/acc" in out
    (run_dir,) = runs_of(tmp_path)
    assert f"checkpoint path at {run_dir / 'checkpoints' / 'best.ckpt'}" in caplog.text
    assert "test/acc" in scalars(run_dir)


def test_ckpt_path_last_resumes_the_latest_run_in_its_folder(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["fit", "--config", "mnist", "--config", str(tiny)], capsys)[0] == 0
    code, _, err = run(
        ["fit", "--config", "mnist", "--config", str(tiny), "--ckpt_path", "last", "--trainer.max_epochs", "2"], capsys
    )
    assert code == 0, err
    (run_dir,) = runs_of(tmp_path)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1
    assert last["global_step"] == 6, "3 steps of epoch 0 restored, 3 more in epoch 1"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_epochs"] == 2


def test_argument_order_config_before_the_verb(tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--config", "mnist", "--config", str(tiny), "fit"], capsys)
    assert code == 0, err
    assert len(runs_of(tmp_path)) == 1


def test_configs_merge_in_order_and_flags_override_them(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    later = tmp_path / "later.yaml"
    later.write_text("trainer:\n  max_epochs: 7\nmodel:\n  init_args:\n    label_smoothing: 0.1\n")
    args = ["fit", "--config", "mnist", "--config", str(tiny), "--config", str(later)]
    code, out, _ = run([*args, "--print_config"], capsys)
    assert code == 0
    config = yaml.safe_load(out)
    assert config["trainer"]["max_epochs"] == 7
    assert config["trainer"]["limit_train_batches"] == 3
    assert config["model"]["init_args"]["label_smoothing"] == 0.1
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.002

    overrides = ["--trainer.max_epochs", "3", "--model.init_args.optimizer.init_args.lr", "0.01"]
    code, out, _ = run([*args, *overrides, "--data.batch_size", "16", "--print_config"], capsys)
    config = yaml.safe_load(out)
    assert config["trainer"]["max_epochs"] == 3
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.01
    assert config["data"]["init_args"]["batch_size"] == 16


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--trainer.max_epochz", "3"], "--trainer.max_epochz"),
        (["--trainer.max_epochs", "three"], "three"),
        (["--model.class_path", "nowhere.Model"], "nowhere.Model"),
        (["--data.init_args.batch_size", "many"], "many"),
    ],
)
def test_bad_values_exit_with_one_clear_message(
    extra: list[str], expected: str, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["fit", "--config", "mnist", "--config", str(tiny), *extra], capsys)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert len(err.splitlines()) < 20


def test_unknown_key_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epohcs: 2\n")
    code, _, err = run(["fit", "--config", "mnist", "--config", str(bad)], capsys)
    assert code == 2
    assert "max_epohcs" in err


def test_missing_data_is_one_message_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["fit", "--config", "mnist", "--data.data_dir", str(empty), "--data.download", "false"], capsys)
    assert code == 1
    assert str(empty) in err
    assert "Traceback" not in err


def test_check_runs_one_batch_and_summarises(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", "--config", "mnist", "--config", str(tiny)], capsys)
    assert code == 0, err
    assert "ImageClassifier" in out
    assert "MNISTDataModule" in out
    assert "[32, 1, 28, 28]" in out
    assert "train/loss=" in out
    assert "OK:" in out


def test_check_turns_a_channel_mismatch_into_a_hint(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["check", "--config", "mnist", "--config", str(tiny), "--model.init_args.in_channels", "3"], capsys
    )
    assert code == 1
    assert "in_channels: 1" in err
    assert "[32, 1, 28, 28]" in out


def test_help_lists_the_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for verb in ("fit", "validate", "test", "predict", "check", "recipes"):
        assert f"  {verb} " in out
    code, _, err = run(["train"], capsys)
    assert code == 2
    assert "'train'" in err
