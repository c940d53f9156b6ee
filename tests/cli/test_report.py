"""``plkit report``: numbers checked against the event files after fit, test and resume; several runs; bad input.

Most tests write event files directly, with wall times chosen by the test, so each rule (which session is
training, which value a resume keeps, where a test point goes, how wall time adds up) is checked on exact
numbers; one test runs the real ``plkit fit`` / ``test`` / resume on tiny data and checks against what
Lightning logged and what its checkpoints hold.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from plkit.cli.report import draw, load_run

from cli_helpers import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000.0
_files = itertools.count()


def write_session(run_dir: Path, start: float, points: list[tuple[str, int, float, float]]) -> Path:
    """One logger session: an event file opened at ``start`` holding ``(tag, step, value, seconds after start)``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"events.out.tfevents.{int(start)}.host.{next(_files)}"
    with path.open("wb") as file:
        writer = RecordWriter(file)
        writer.write(Event(wall_time=start, file_version="brain.Event:2").SerializeToString())
        for tag, step, value, offset in points:
            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
            writer.write(Event(wall_time=start + offset, step=step, summary=summary).SerializeToString())
    return path


def fit_session(
    run_dir: Path, start: float, steps: range, steps_per_epoch: int, loss: float, accs: list[float]
) -> None:
    """A fit as Lightning logs it: train/loss and epoch every step, val/acc at each epoch's last step, 1 s per step."""
    points = []
    for i, step in enumerate(steps):
        epoch = step // steps_per_epoch
        points += [
            ("train/loss", step, loss, i + 1.0),
            ("lr-AdamW", step, 0.01, i + 1.0),
            ("epoch", step, epoch, i + 1),
        ]
        if (step + 1) % steps_per_epoch == 0:
            points += [("val/acc", step, accs[epoch], i + 1.5), ("epoch", step, epoch, i + 1.5)]
    write_session(run_dir, start, points)


def write_config(run_dir: Path, **checkpoint: object) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"checkpoint": {"monitor": "val/acc", "mode": "max", "filename": "best", **checkpoint}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def write_test(run_dir: Path, start: float, acc: float, step: int = 0, ckpt: str | None = None) -> None:
    """A test session; a separate ``plkit test`` logs at step 0 and saves its ``ckpt_path`` in test_config.yaml."""
    write_session(run_dir, start, [("test/acc", step, acc, 0.5), ("epoch", step, 0, 0.5)])
    if ckpt is not None:
        (run_dir / "test_config.yaml").write_text(yaml.safe_dump({"ckpt_path": str(run_dir / "checkpoints" / ckpt)}))


@pytest.fixture
def resumed_run(tmp_path: Path) -> Path:
    """Two epochs of 4 steps, resumed at step 4 from a checkpoint one epoch old, on to 3 epochs; then a test.

    The first session logged steps 0-7 (8.5 s); the resume retrained 4-11 with other values (8.5 s) after a
    pause of 100 s; the test came 500 s later and logged at step 0 with its own ``epoch`` 0.
    """
    run_dir = tmp_path / "runs" / "demo" / "version_0"
    write_config(run_dir)
    fit_session(run_dir, T0, range(8), 4, loss=1.0, accs=[0.5, 0.875])
    fit_session(run_dir, T0 + 108, range(4, 12), 4, loss=2.0, accs=[0.0, 0.75, 0.8125])
    write_test(run_dir, T0 + 600, acc=0.75, ckpt="best.ckpt")
    return run_dir


def fields(lines: list[str]) -> dict[str, str]:
    return {key: value.strip() for key, _, value in (line.partition("  ") for line in lines)}


def test_resume_keeps_the_latest_value_per_step_and_training_time_is_summed(
    resumed_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = load_run(resumed_run)
    loss = report.curves["train/loss"]
    assert [p.step for p in loss] == list(range(12)), "one value per step"
    assert [p.value for p in loss] == [1.0] * 4 + [2.0] * 8, "from step 4 on, the resumed session's"
    # The first session's epoch-1 validation (0.875 at step 7) was retrained: the resume's 0.75 replaces it.
    assert [(p.step, p.value) for p in report.curves["val/acc"]] == [(3, 0.5), (7, 0.75), (11, 0.8125)]

    code, out, err = run(["report", str(resumed_run)], capsys)
    assert code == 0, err
    summary = fields((resumed_run / "report.txt").read_text().splitlines())
    assert summary["epochs"] == "3", "the test's own epoch 0 and step 0 are not training"
    assert summary["steps"] == "12"
    assert summary["wall time"] == "17.0 s (training only: 2 fit sessions summed)", "8.5 s + 8.5 s: no pause, no test"
    assert summary["best val/acc"] == "0.8125 (max) at step 11"
    # best.ckpt still held the first session's best, 0.875 at step 7: the resume never beat it.
    assert summary["test/acc"] == "0.7500 at step 7 (best.ckpt, best val/acc)"
    assert out.splitlines()[: len(summary)] == (resumed_run / "report.txt").read_text().splitlines()


@pytest.mark.parametrize(
    ("ckpt", "logged_at", "step", "where"),
    [
        ("best.ckpt", 0, 7, "best.ckpt, best val/acc"),  # 0.875 at step 7 beats 0.5 and the later, equal 0.875
        ("last.ckpt", 0, 11, "last.ckpt, the last training step before it"),
        ("epoch=0-step=4.ckpt", 0, 3, "epoch=0-step=4.ckpt, the step in its name"),  # Lightning's default name
        ("epoch01-acc0.9000.ckpt", 0, 7, "epoch01-acc0.9000.ckpt, the end of epoch 1"),
        (None, 0, 11, "its checkpoint is not recorded: the last training step before it"),
        (None, 12, 7, "best.ckpt, best val/acc"),  # logged past step 0: the fit's own --run_test, of best.ckpt
    ],
)
def test_a_test_is_drawn_at_the_step_of_the_checkpoint_it_tested(
    tmp_path: Path, ckpt: str | None, logged_at: int, step: int, where: str
) -> None:
    run_dir = tmp_path / "version_0"
    write_config(run_dir)
    fit_session(run_dir, T0, range(12), 4, loss=1.0, accs=[0.5, 0.875, 0.875])
    write_test(run_dir, T0 + 100, acc=0.6, step=logged_at, ckpt=ckpt)

    (test,) = load_run(run_dir).evaluations
    assert (test.verb, test.values, test.step, test.where) == ("test", {"test/acc": pytest.approx(0.6)}, step, where)
    accuracy = draw([load_run(run_dir)]).axes[1]
    (point,) = [line for line in accuracy.lines if line.get_label().startswith("test/acc")]
    assert list(point.get_xdata()) == [step], "a point at its step, not a line across the run"


def test_only_the_latest_plkit_test_takes_the_checkpoint_from_test_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "version_0"
    write_config(run_dir)
    fit_session(run_dir, T0, range(12), 4, loss=1.0, accs=[0.5, 0.875, 0.625])
    write_test(run_dir, T0 + 100, acc=0.1)
    write_test(run_dir, T0 + 200, acc=0.2, ckpt="best.ckpt")  # test_config.yaml now names this one's checkpoint

    earlier, latest = load_run(run_dir).evaluations
    assert (earlier.step, earlier.where) == (11, "its checkpoint is not recorded: the last training step before it")
    assert (latest.step, latest.where) == (7, "best.ckpt, best val/acc")


def test_a_validate_session_is_an_evaluation_not_training(tmp_path: Path) -> None:
    run_dir = tmp_path / "version_0"
    write_config(run_dir)
    fit_session(run_dir, T0, range(8), 4, loss=1.0, accs=[0.5, 0.875])
    write_session(run_dir, T0 + 50, [("val/acc", 0, 0.375, 0.1), ("epoch", 0, 0, 0.1)])

    report = load_run(run_dir)
    assert [p.value for p in report.curves["val/acc"]] == [0.5, 0.875]
    (validation,) = report.evaluations
    assert (validation.verb, validation.step) == ("validate", 7)
    assert report.summary["val/acc (validate)"].startswith("0.3750 at step 7")
    assert report.summary["wall time"] == "8.5 s (training only: 1 fit session)"


def test_a_file_holding_a_fit_then_its_test_is_split_at_the_test(tmp_path: Path) -> None:
    run_dir = tmp_path / "version_0"
    write_config(run_dir)
    points = [("train/loss", s, 1.0, s + 1.0) for s in range(4)] + [("epoch", s, 0, s + 1.0) for s in range(4)]
    points += [("test/acc", 4, 0.8, 30.0), ("epoch", 4, 1, 30.0)]  # --run_test logs at the fit's step count
    write_session(run_dir, T0, points)

    report = load_run(run_dir)
    assert (report.summary["epochs"], report.summary["steps"]) == ("1", "4")
    assert report.summary["wall time"] == "4.0 s (training only: 1 fit session)"
    assert report.evaluations[0].step == 3


def test_run_test_without_checkpoints_is_drawn_at_the_final_weights(tmp_path: Path) -> None:
    run_dir = tmp_path / "version_0"
    (run_dir / "config.yaml").parent.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"trainer": {"enable_checkpointing": False}}))
    fit_session(run_dir, T0, range(8), 4, loss=1.0, accs=[0.875, 0.5])
    write_test(run_dir, T0 + 100, acc=0.5, step=8)

    (test,) = load_run(run_dir).evaluations
    assert (test.step, test.where) == (7, "the fit's final weights")


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    runs = [tmp_path / "runs" / name / "version_0" for name in ("small", "large")]
    for run_dir, loss in zip(runs, (1.0, 0.5), strict=True):
        write_config(run_dir)
        fit_session(run_dir, T0, range(8), 4, loss=loss, accs=[0.25, 0.5 + loss / 4])
        write_test(run_dir, T0 + 100, acc=loss, ckpt="best.ckpt")
    return runs


def test_several_runs_are_overlaid_and_tabled_with_files_only_where_named(
    tmp_path: Path, two_runs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p for p in tmp_path.rglob("*")}
    code, out, err = run(["report", *map(str, two_runs)], capsys)
    assert code == 0, err
    written = {p for p in tmp_path.rglob("*")} - before
    assert written == {r / name for r in two_runs for name in ("report.png", "report.txt")}, "nothing elsewhere"
    header, *rows = out.splitlines()[: out.splitlines().index("") if "" in out.splitlines() else None]
    assert header.split() == ["run", "small/version_0", "large/version_0"]
    table = {row.split("  ")[0]: row for row in rows}
    assert "0.5000 at step 7" in table["test/acc"]
    assert "1.0000 at step 7" in table["test/acc"]
    assert "--output" in out

    output = tmp_path / "compare" / "recipes.png"
    output.parent.mkdir()
    code, out, err = run(["report", *map(str, two_runs), "--output", str(output)], capsys)
    assert code == 0, err
    assert output.read_bytes().startswith(PNG_MAGIC)
    assert output.with_suffix(".txt").read_text().splitlines()[0].split() == header.split()
    for path in [output, output.with_suffix(".txt"), *(r / n for r in two_runs for n in ("report.png", "report.txt"))]:
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert not list(tmp_path.rglob("*.partial")), "no temporary file is left behind"

    loss = draw([load_run(r) for r in two_runs]).axes[0]
    labels = [line.get_label() for line in loss.lines]
    assert {"small/version_0 train/loss", "large/version_0 train/loss"} <= set(labels)
    colours = {line.get_label().split()[0]: line.get_color() for line in loss.lines}
    assert colours["small/version_0"] != colours["large/version_0"], "one colour per run"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "absent", "is not a folder: give a run folder such as runs/mnist/version_0"),
        (lambda tmp: tmp, "holds no TensorBoard event files: give a run folder such as runs/mnist/version_0"),
        (
            lambda tmp: (tmp / "runs" / "other" / "version_0").mkdir(parents=True) or tmp / "runs" / "other",
            "holds no TensorBoard event files: its runs: version_0",
        ),
        (lambda tmp: (tmp / "runs" / "demo" / "version_0" / "config.yaml").unlink(), "config.yaml is missing"),
        (lambda tmp: (tmp / "runs" / "demo" / "version_0" / "config.yaml").write_text("[1, 2"), "cannot read"),
    ],
)
def test_report_on_what_is_not_a_run(
    tmp_path: Path, resumed_run: Path, make: object, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = make(tmp_path) or resumed_run  # type: ignore[operator]
    code, _, err = run(["report", str(resumed_run), str(target)], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert message in line
    assert not list(resumed_run.glob("report*")), "a good run given first gets no report when a later one is bad"


def test_a_recipes_folder_means_its_newest_run(
    tmp_path: Path, resumed_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older = tmp_path / "runs" / "demo" / "version_1"
    write_config(older)
    fit_session(older, T0, range(4), 4, loss=3.0, accs=[0.25])
    os.utime(older / "config.yaml", (T0, T0))  # version_1's fit started before version_0's resume
    code, out, err = run(["report", str(tmp_path / "runs" / "demo")], capsys)
    assert code == 0, err
    assert f"reporting the newest, {resumed_run}" in out.splitlines()[0]
    assert (resumed_run / "report.png").is_file()
    assert not (older / "report.png").exists()


def test_report_refuses_a_folder_with_tests_only_and_a_bad_output(
    tmp_path: Path, resumed_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tested = tmp_path / "runs" / "demo" / "version_1"
    write_config(tested)
    write_test(tested, T0, acc=0.5)
    for args, message in [
        ([str(tested)], "holds no training, only test or validation logs"),
        ([str(resumed_run), "--output", str(tmp_path / "cmp.txt")], "must end in .png"),
        ([str(resumed_run), "--output", str(tmp_path / "absent" / "cmp.png")], "does not exist; create it first"),
    ]:
        code, _, err = run(["report", *args], capsys)
        assert code == 2
        assert message in err
    assert not list(tmp_path.rglob("report*"))
    assert not list(tmp_path.rglob("cmp*"))


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> tuple[Path, int]:
    """The mnist recipe on tiny data: 1 epoch of 3 steps, ``plkit test`` of best.ckpt, resume to 2 with --run_test.

    Returns the run folder and the step count best.ckpt held when ``plkit test`` tested it.
    """
    tmp = tmp_path_factory.mktemp("lightning_run")
    overlay = tmp / "tiny.yaml"
    trainer = {"limit_train_batches": 3, "limit_val_batches": 1, "limit_test_batches": 1, "log_every_n_steps": 1}
    trainer |= {"default_root_dir": str(tmp), "enable_progress_bar": False, "enable_model_summary": False}
    data = {"init_args": {"data_dir": str(mnist_dir), "val_size": 64, "batch_size": 32}}
    overlay.write_text(yaml.safe_dump({"trainer": trainer, "data": data}))
    fit = ["fit", "--config", "mnist", "--config", str(overlay)]
    assert _quiet([*fit, "--trainer.max_epochs", "1"]) == 0
    (run_dir,) = (tmp / "runs" / "mnist").glob("version_*")
    best = run_dir / "checkpoints" / "best.ckpt"
    tested_steps = torch.load(best, weights_only=True)["global_step"]
    assert _quiet(["test", "--ckpt_path", str(best)]) == 0
    assert _quiet([*fit, "--ckpt_path", "last", "--trainer.max_epochs", "2", "--run_test", "true"]) == 0
    return run_dir, tested_steps


def _quiet(args: list[str]) -> int:
    from plkit.cli import main

    try:
        main(args)
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def logged(run_dir: Path) -> list[tuple[float, dict[str, list[tuple[int, float, float]]]]]:
    """Each event file's opening time and scalars as ``(step, value, wall time)``, read straight from TensorBoard."""
    files = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        events.Reload()
        tags = events.Tags()["scalars"]
        files.append(
            (
                events.FirstEventTimestamp(),
                {t: [(e.step, e.value, e.wall_time) for e in events.Scalars(t)] for t in tags},
            )
        )
    return sorted(files, key=lambda f: f[0])


def test_report_after_fit_test_and_resume_matches_lightning(
    lightning_run: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, tested_steps = lightning_run
    code, _, err = run(["report", str(run_dir)], capsys)
    assert code == 0, err
    summary = fields((run_dir / "report.txt").read_text().splitlines())
    assert summary["epochs"] == "2"
    assert summary["steps"] == "6", "3 batches x 2 epochs, whatever the tests logged"
    final = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)

    files = logged(run_dir)
    fits = [(start, tags) for start, tags in files if "train/loss" in tags]
    tests = [(start, tags) for start, tags in files if "test/acc" in tags]
    assert len(fits) == 2, "the fit and its resume: one event file each"
    assert len(tests) == 2, "`plkit test` and the resume's --run_test: one event file each"
    seconds = sum(max(t for points in tags.values() for _, _, t in points) - start for start, tags in fits)
    assert summary["wall time"] == f"{seconds:.1f} s (training only: 2 fit sessions summed)"

    report = load_run(run_dir)
    separate, run_test = report.evaluations
    assert separate.step == tested_steps - 1, "the last training step of the checkpoint `plkit test` tested"
    assert run_test.step == final["global_step"] - 1, "--run_test tests the best checkpoint at the end"
    assert run_test.values["test/acc"] == pytest.approx(tests[-1][1]["test/acc"][-1][1])
    assert summary["test/acc"] == f"{run_test.values['test/acc']:.4f} at step {run_test.step} (best.ckpt, best val/acc)"

    for tag in ("train/loss", "val/acc", "grad_norm/total"):
        latest: dict[int, tuple[float, float]] = {}
        for _, tags in fits:
            for step, value, time in tags[tag]:
                if step not in latest or time >= latest[step][1]:
                    latest[step] = (value, time)
        curve = report.curves[tag]
        assert [p.step for p in curve] == sorted(latest), f"{tag}: one value per step"
        assert [p.value for p in curve] == [latest[p.step][0] for p in curve], f"{tag}: the latest value"

    grad_norm = draw([report]).axes[3]
    (line,) = grad_norm.lines
    assert line.get_label() == "grad_norm/total", "the mnist recipe logs the gradient norm, and the report draws it"
    assert list(line.get_ydata()) == [p.value for p in report.curves["grad_norm/total"]]
    assert (run_dir / "report.png").read_bytes().startswith(PNG_MAGIC)
    for name in ("report.png", "report.txt"):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o644


def test_report_needs_no_torch(resumed_run: Path) -> None:
    code = (
        "import sys; from plkit.cli import main; main(['report', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'report imported torch'"
    )
    done = subprocess.run([sys.executable, "-c", code, str(resumed_run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
