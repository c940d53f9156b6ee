"""Lightning's verbs through ``plkit``: the mnist recipe on tiny generated IDX files, in-process.

Each test checks one promise of a run's lifecycle: one folder per run, named at the start and summarised at
the end; ``last.ckpt`` holding the newest epoch; a checkpoint's run continued by the other verbs; predictions
kept on disk; nothing written outside ``runs/``; mistakes refused in one line before anything runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.demos.boring_classes import BoringDataModule
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from plkit.cli import PlkitCLI
from plkit.cli._main import USAGE
from plkit.models import ImageClassifier

from cli_helpers import run, scalars


def runs_of(tmp_path: Path, name: str = "mnist") -> list[Path]:
    return sorted((tmp_path / "runs" / name).glob("version_*"))


def test_fit_makes_one_folder_per_run_names_it_and_summarises(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["fit", "--config", "mnist", "--config", str(tiny)], capsys)
    assert code == 0, err
    (run_dir,) = runs_of(tmp_path)
    assert run_dir.name == "version_0"
    checkpoints = run_dir / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} == {"best.ckpt", "last.ckpt"}
    lines = out.splitlines()
    assert f"plkit fit: run folder {run_dir}" in lines
    (summary,) = [line for line in lines if line.startswith("plkit fit: 1 epoch")]
    assert summary.startswith("plkit fit: 1 epoch, 3 steps; best val/acc ")
    assert summary.endswith(f": {checkpoints / 'best.ckpt'}; last: {checkpoints / 'last.ckpt'}")

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["seed_everything"] == 42
    assert saved["trainer"]["logger"]["init_args"]["name"] == "mnist"
    assert saved["checkpoint"]["monitor"] == "val/acc"
    metrics = scalars(run_dir)
    assert {"train/loss", "train/loss_epoch", "val/loss", "val/acc"} <= set(metrics)
    assert any(tag.startswith("lr-") for tag in metrics), "LearningRateMonitor logs by default"

    # The checkpoint alone can rebuild the model and the data module.
    ckpt = torch.load(checkpoints / "best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["_class_path"] == "plkit.models.ImageClassifier"
    assert ckpt["datamodule_hyper_parameters"]["_class_path"].endswith("MNISTDataModule")

    # A second run of the same recipe never fails on the existing config: it opens the next folder.
    code, _, err = run(["fit", "--config", "mnist", "--config", str(tiny)], capsys)
    assert code == 0, err
    assert [p.name for p in runs_of(tmp_path)] == ["version_0", "version_1"]
    assert (runs_of(tmp_path)[1] / "config.yaml").is_file()


@pytest.mark.integration  # two fits
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

    for verb in ("test", "predict"):  # validate takes the same path
        code, out, err = run([verb, "--ckpt_path", best], capsys)
        assert code == 0, err
        assert f"plkit {verb}: run folder {run_dir}" in out.splitlines(), "a checkpoint's verb logs to its own run"
        assert (run_dir / f"{verb}_config.yaml").is_file()
    assert runs_of(tmp_path) == [run_dir]
    assert "test/acc" in scalars(run_dir)
    assert "plkit predict: 64 rows" in out, "two batches of 32 test images"
    assert (run_dir / "predictions").is_dir()

    # Without the run's config.yaml, the checkpoint's hyperparameters still name the classes.
    (run_dir / "config.yaml").unlink()
    code, out, err = run(["test", "--ckpt_path", best], capsys)
    assert code == 0, err
    (summary,) = [line for line in out.splitlines() if line.startswith("plkit test: test/")]
    assert summary.startswith("plkit test: test/acc=")


@pytest.mark.integration  # a fit and a test
def test_fit_with_run_test_tests_the_best_checkpoint(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    code, out, err = run(["fit", "--config", "mnist", "--config", str(tiny), "--run_test", "true"], capsys)
    assert code == 0, err
    assert "test/acc" in out
    (run_dir,) = runs_of(tmp_path)
    assert f"checkpoint path at {run_dir / 'checkpoints' / 'best.ckpt'}" in caplog.text
    assert "test/acc" in scalars(run_dir)


def _steps_of_newest_events(run_dir: Path) -> list[int]:
    newest = max(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    events = EventAccumulator(str(newest), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars("train/loss")]


def test_last_ckpt_is_the_last_epoch_when_the_best_is_an_earlier_one(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "Best" by the lowest accuracy: the first epoch, while training goes on to a third. Two steps an epoch.
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    worst_first = ["--checkpoint.mode", "min", "--trainer.max_epochs", "3", *short]
    code, _, err = run(["fit", "--config", "mnist", "--config", str(tiny), *worst_first], capsys)
    assert code == 0, err
    (run_dir,) = runs_of(tmp_path)
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (best["epoch"], best["global_step"]) == (0, 2), "setup: the best epoch is the first"
    assert (last["epoch"], last["global_step"]) == (2, 6), "last.ckpt is the last epoch, not the last best one"

    resume = ["--ckpt_path", "last", "--trainer.max_epochs", "4", *short]
    cli = PlkitCLI(args=["fit", "--config", "mnist", "--config", str(tiny), *resume])
    assert Path(cli.trainer.log_dir) == run_dir, "--ckpt_path last continues the run in its own folder"
    assert cli.trainer.logger.version == 0, "a number, so the progress bar shows v_num=0 (not 'on_0')"
    assert cli.trainer.global_step == 8
    assert min(_steps_of_newest_events(run_dir)) >= 6, "the resumed run starts after epoch 2: nothing repeated"
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (resumed["epoch"], resumed["global_step"]) == (3, 8)


@pytest.mark.integration  # three fits
def test_a_named_run_folder_resumes_its_own_last_checkpoint(
    tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A requeued job: the same command line resumes the run it named, or starts it the first time."""
    named = ["fit", "--config", "mnist", "--config", str(tiny), "--trainer.logger", "TensorBoardLogger"]
    named += ["--trainer.logger.version", "job_42", "--ckpt_path", "last"]
    assert run(named, capsys)[0] == 0
    folder = tmp_path / "runs" / "mnist" / "job_42"
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert run(["fit", "--config", "mnist", "--config", str(tiny)], capsys)[0] == 0  # a newer, unrelated run
    code, out, err = run([*named, "--trainer.max_epochs", "2"], capsys)
    assert code == 0, err
    assert f"plkit fit: run folder {folder}" in out.splitlines()
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


@pytest.mark.integration  # a fit
def test_argument_order_config_before_the_verb(tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--config", "mnist", "--config", str(tiny), "fit", "--trainer.max_epochs", "1"], capsys)
    assert code == 0, err
    (run_dir,) = runs_of(tmp_path)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["limit_train_batches"] == 3


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


def test_a_verb_as_an_options_value_stays_a_value(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--config", "mnist", "--config", str(tiny), "fit", "--trainer.logger.init_args.name", "test"]
    code, out, err = run([*args, "--print_config"], capsys)
    assert code == 0, err
    assert yaml.safe_load(out)["trainer"]["logger"]["init_args"]["name"] == "test"


def test_plkit_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from plkit.cli._errors import UsageError

    monkeypatch.setenv("PLKIT_DEBUG", "1")
    with pytest.raises(UsageError, match=r"trainer\.max_epochs"):
        run(["fit", "--config", "mnist", "--trainer.max_epochs", "abc"], capsys)
    with pytest.raises(UsageError, match="no recipe has that name"):
        run(["fit", "--config", "mnst"], capsys)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--trainer.max_epochz", "3"], "unknown option --trainer.max_epochz; did you mean '--trainer.max_epochs'?"),
        (["--trainer.max_epoch", "3"], "unknown option --trainer.max_epoch; did you mean '--trainer.max_epochs'?"),
        (["--trainer.max_epochs", "three"], "trainer.max_epochs: 'three' is not a valid int (or null)"),
        (["--model.class_path", "nowhere.Model"], "model.class_path: no class named 'nowhere.Model'"),
        (["--data.init_args.batch_size", "many"], "data.init_args.batch_size: 'many' is not a valid int"),
        (["--data.init_args.data_dri", "x"], "MNISTDataModule has no parameter 'data_dri'; did you mean 'data_dir'?"),
    ],
)
def test_bad_values_exit_with_one_line(
    extra: list[str], expected: str, tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["fit", "--config", "mnist", "--config", str(tiny), *extra], capsys)
    assert code == 2
    assert err.startswith("plkit fit: error: ")
    assert expected in err
    assert len(err.splitlines()) == 1


def test_unknown_key_in_a_config_file_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epohcs: 2\n")
    code, _, err = run(["fit", "--config", "mnist", "--config", str(bad)], capsys)
    assert code == 2
    assert err == f"plkit fit: error: {bad}: unknown key trainer.max_epohcs; did you mean 'trainer.max_epochs'?\n"


def test_a_checkpoint_of_another_model_class_is_refused(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "autoencoder.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "plkit.models.AutoEncoder"}}, other)
    code, _, err = run(["test", "--config", "mnist", "--config", str(tiny), "--ckpt_path", str(other)], capsys)
    assert code == 2
    assert err.startswith(f"plkit test: error: --ckpt_path {other} holds a AutoEncoder (plkit.models.AutoEncoder), ")
    assert "but the config builds a ImageClassifier" in err
    assert not (tmp_path / "runs").exists()


def test_missing_data_fails_in_one_line_and_leaves_no_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(tmp_path)
    code, out, err = run(
        ["fit", "--config", "mnist", "--data.data_dir", str(empty), "--data.download", "false"], capsys
    )
    assert code == 1
    assert str(empty) in err
    assert "Traceback" not in err
    assert f"plkit fit: run folder {Path('runs') / 'mnist' / 'version_0'}" in out
    assert not (tmp_path / "runs" / "mnist" / "version_0").exists(), "a run that never took a step leaves nothing"


def test_predict_without_a_writer_keeps_rows_equal_to_a_forward_pass(tmp_path: Path) -> None:
    args = ["predict", "--model=BoringModel", "--data=BoringDataModule", f"--trainer.default_root_dir={tmp_path}"]
    cli = PlkitCLI(args=[*args, "--trainer.enable_progress_bar=false"])
    saved = torch.load(tmp_path / "runs" / "boring_model" / "version_0" / "predictions" / "predictions.pt")
    datamodule: BoringDataModule = cli.datamodule
    with torch.no_grad():
        expected = torch.cat([cli.model(batch) for batch in datamodule.predict_dataloader()])
    assert torch.cat(saved).shape == (64, 2)
    assert torch.equal(torch.cat(saved), expected)


def test_predict_with_a_plkit_model_writes_probabilities_labels_and_ids(
    tmp_path: Path, tiny: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from plkit.data import MNISTDataModule

    assert run(["fit", "--config", "mnist", "--config", str(tiny)], capsys)[0] == 0
    (run_dir,) = runs_of(tmp_path)
    code, out, err = run(["predict", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")], capsys)
    assert code == 0, err
    predictions = run_dir / "predictions"
    assert f"plkit predict: 64 rows, written to {predictions}" in out
    probabilities = np.load(predictions / "probabilities.npy")
    ids = np.load(predictions / "ids.npy")
    labels = np.load(predictions / "labels.npy")
    assert probabilities.shape == (64, 10)
    assert ids.tolist() == list(range(64)), "dataset order"

    model = ImageClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    data = MNISTDataModule(data_dir=str(mnist_dir), batch_size=32, val_size=64)
    data.setup("predict")
    batches = list(data.predict_dataloader())[:2]
    with torch.no_grad():
        expected = torch.cat([model(batch["input"]).softmax(-1) for batch in batches])
    np.testing.assert_allclose(probabilities, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert labels.tolist() == expected.argmax(-1).tolist()


def test_nothing_is_written_outside_runs(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check``, ``fast_dev_run`` and the debug overlay once wrote ./checkpoints/last.ckpt; a run writes only runs/."""
    data = ["--data.data_dir", str(mnist_dir), "--data.val_size", "64", "--trainer.enable_progress_bar", "false"]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for command in (
        ["check", "--config", "mnist_callbacks"],
        ["fit", "--config", "mnist_callbacks", "--trainer.fast_dev_run", "true"],
        ["fit", "--config", "mnist", "--config", "overlays/debug"],
        ["fit", "--config", "mnist", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1"],
    ):
        code, _, err = run([*command, *data], capsys)
        assert code == 0, err
        assert set(os.listdir(work)) <= {"runs"}, command
    assert sorted(p.relative_to(work).as_posix() for p in work.glob("runs/*/*")) == ["runs/mnist/version_0"]


def test_check_runs_one_batch_and_summarises(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", "--config", "mnist", "--config", str(tiny)], capsys)
    assert code == 0, err
    assert "ImageClassifier" in out
    assert "MNISTDataModule" in out
    assert "[32, 1, 28, 28]" in out
    assert "train/loss=" in out
    lines = out.splitlines()
    assert "precision      32-true" in lines
    assert any(line.startswith("memory format  channels_last (model channels_last=True") for line in lines)
    assert "OK:" in out


def test_check_turns_a_channel_mismatch_into_a_hint(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["check", "--config", "mnist", "--config", str(tiny), "--model.init_args.in_channels", "3"], capsys
    )
    assert code == 1
    assert "in_channels: 1" in err
    assert "[32, 1, 28, 28]" in out


def test_fit_turns_a_channel_mismatch_into_the_same_hint(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["fit", "--config", "mnist", "--config", str(tiny), "--model.init_args.in_channels", "3"], capsys
    )
    assert code == 1
    assert (
        err.splitlines()[-1]
        == "hint: the model expects 3 input channels but the data has 1: set model.init_args.in_channels: 1"
    )
    assert "Traceback" not in err


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for verb in ("fit", "validate", "test", "predict", "check", "recipes", "report"):
        assert f"  {verb} " in out
    code, _, err = run(["tets"], capsys)
    assert code == 2
    assert err.startswith("plkit: error: unknown command 'tets'; did you mean 'test'?")


@pytest.mark.integration  # a fit and three verbs
def test_help_examples_run_as_written(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    examples = re.findall(r":\s+plkit ((?:fit|validate|test|predict) .*)$", USAGE, flags=re.M)
    assert [e.split()[0] for e in examples] == ["fit", "validate", "test", "predict"]
    for example in examples:
        words = example.split()
        at = words.index("--config") + 2  # the tiny data right after the recipe, so the example's own flags win
        code, _, err = run([*words[:at], "--config", str(tiny), *words[at:]], capsys)
        assert code == 0, f"plkit {example}: {err}"
    assert torch.load(runs_of(tmp_path)[0] / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 4
    # The flags the help text quotes.
    flags = re.findall(r"(--(?:trainer|model|data)\.\S+ \S+)", USAGE)
    assert len(flags) >= 2
    code, out, err = run(["fit", "--config", "mnist", *" ".join(flags).split(), "--print_config"], capsys)
    assert code == 0, err
    config = yaml.safe_load(out)
    assert config["trainer"]["max_epochs"] == 3
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.01
