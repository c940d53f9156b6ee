"""``plkit report RUN [RUN ...]``: plot runs' curves and summarise them, from their TensorBoard event files.

Each run folder gets ``report.png`` (loss, accuracy, learning rate and gradient norm against step) and
``report.txt`` (checkpoints, best monitored value, test metrics, epochs, steps, training wall time). With
several runs the summaries are printed side by side; ``--output FILE.png`` also writes that comparison,
with every run overlaid in one picture, to ``FILE.png`` and ``FILE.txt``. Nothing is written outside the run
folders unless ``--output`` names the place. A recipe's folder (``runs/mnist``) means its newest run, the one
whose ``config.yaml`` a fit wrote last. It needs matplotlib but not torch.

A run folder holds one event file per session: the fit, a ``--ckpt_path last`` resume (which appends a new
session to the same folder), and each later ``plkit test`` or ``plkit validate``. The report reads them so:

- a session that logged anything besides ``val*``/``test*`` metrics and ``epoch`` is a fit; the others are
  evaluations, drawn as single points and never counted as training;
- a resumed fit overwrites the run's history from its first logged step on, so every curve has one value per
  step, the latest; epochs and steps are read from that history (``epoch`` + 1, last step + 1);
- training wall time is summed over the fit sessions, each from the moment its logger opened to its last
  training value: a later test is not training, and neither is the pause before a resume;
- an evaluation is drawn at the last training step of the checkpoint it evaluated, when the run says which
  checkpoint that was (``--run_test`` tests the best one; ``test_config.yaml`` names the latest ``plkit
  test``'s); otherwise at the last training step logged before it, and the summary says which.
"""

from __future__ import annotations

import argparse
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from plkit.cli._errors import UsageError
from plkit.cli._files import write_atomically

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Evaluation", "Point", "Run", "Session", "draw", "load_run", "make_report", "run_report_command"]

# One panel per question a reader asks of a run, each with the tag prefixes that answer it.
PANELS = (
    ("Loss", ("train/loss", "val/loss", "test/loss")),
    ("Accuracy", ("train/acc", "val/acc", "test/acc")),
    ("Learning rate", ("lr-",)),
    ("Gradient norm", ("grad_norm/total",)),
)
EVALUATION_PREFIXES = ("val", "test", "predict")
# Lightning adds ``epoch`` to every set of logged metrics; TensorBoardLogger may add ``hp_metric``.
BOOKKEEPING_TAGS = ("epoch", "hp_metric")
RUN_EXAMPLE = "runs/mnist/version_0"


@dataclass(frozen=True)
class Point:
    """One logged value: the step it was logged at, the value, and the wall-clock time it was written."""

    step: int
    value: float
    time: float


@dataclass
class Session:
    """What one trainer run (``fit``, ``test`` or ``validate``) logged into a run folder.

    ``start`` is when its logger opened the event file, before the first step; ``kind`` is ``"fit"``,
    ``"test"``, ``"validate"`` or ``None`` (nothing but bookkeeping, as after ``plkit predict``).
    """

    path: Path
    start: float
    scalars: dict[str, list[Point]]

    @property
    def kind(self) -> str | None:
        tags = [tag for tag in self.scalars if tag not in BOOKKEEPING_TAGS]
        if any(not tag.startswith(EVALUATION_PREFIXES) for tag in tags):
            return "fit"
        if any(tag.startswith("test") for tag in tags):
            return "test"
        return "validate" if tags else None

    @property
    def points(self) -> list[Point]:
        return [p for points in self.scalars.values() for p in points]


@dataclass(frozen=True)
class Evaluation:
    """A test or validation session's metrics, placed at the training step of the weights it evaluated."""

    verb: str
    values: dict[str, float]
    step: int
    where: str


@dataclass
class Run:
    """One run folder, read: its training curves (one value per step), evaluations and summary."""

    path: Path
    curves: dict[str, list[Point]]
    evaluations: list[Evaluation]
    summary: dict[str, str] = field(default_factory=dict)
    label: str = ""  # how pictures and tables name it: <recipe>/<version>, unless two runs share that

    def __post_init__(self) -> None:
        self.label = self.label or f"{self.path.parent.name}/{self.path.name}"


def read_sessions(run_dir: Path) -> list[Session]:
    """Read every event file in ``run_dir`` into sessions, oldest first.

    A file that holds a fit and then its ``--run_test`` (one logger kept open for both) is split at the first
    ``test*`` value.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sessions = []
    for file in sorted(run_dir.glob("events.out.tfevents.*")):
        # Each file is one session; the history across sessions is merged below, so TensorBoard's own purging
        # of "orphaned" steps inside a file is switched off.
        events = EventAccumulator(str(file), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        events.Reload()
        try:
            start = events.FirstEventTimestamp()
        except ValueError:  # an empty file: a logger that opened and never wrote
            continue
        scalars = {
            tag: [Point(e.step, e.value, e.wall_time) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
        }
        sessions.extend(_split_run_test(Session(file, start, scalars)))
    return sorted(sessions, key=lambda s: s.start)


def _split_run_test(session: Session) -> list[Session]:
    test_times = [p.time for tag, points in session.scalars.items() if tag.startswith("test") for p in points]
    if session.kind != "fit" or not test_times:
        return [session]
    split = min(test_times)
    fit = {tag: [p for p in points if p.time < split] for tag, points in session.scalars.items()}
    test = {tag: [p for p in points if p.time >= split] for tag, points in session.scalars.items()}
    return [
        Session(session.path, session.start, {tag: points for tag, points in fit.items() if points}),
        Session(session.path, split, {tag: points for tag, points in test.items() if points}),
    ]


def training_curves(fits: Sequence[Session]) -> dict[str, list[Point]]:
    """Merge fit sessions (oldest first) into one history with one value per step.

    A later session replaces everything at or after its first logged step: a resume from an older checkpoint
    retrains those steps, and the values logged the first time belong to weights the run no longer has.

    Example:
        >>> first = Session(Path("a"), 0.0, {"train/loss": [Point(s, 1.0, s) for s in range(6)]})
        >>> resumed = Session(Path("b"), 10.0, {"train/loss": [Point(s, 2.0, 10 + s) for s in range(4, 8)]})
        >>> [(p.step, p.value) for p in training_curves([first, resumed])["train/loss"]][3:]
        [(3, 1.0), (4, 2.0), (5, 2.0), (6, 2.0), (7, 2.0)]
    """
    history: dict[str, dict[int, Point]] = {}
    for fit in fits:
        first = min((p.step for p in fit.points), default=None)
        if first is None:
            continue
        for by_step in history.values():
            for step in [s for s in by_step if s >= first]:
                del by_step[step]
        for tag, points in fit.scalars.items():
            by_step = history.setdefault(tag, {})
            for point in points:  # in the order written: the latest value at a step wins
                by_step[point.step] = point
    return {tag: sorted(by_step.values(), key=lambda p: p.step) for tag, by_step in history.items() if by_step}


@dataclass(frozen=True)
class Checkpointing:
    """What the run's ``ModelCheckpoint`` kept: the metric it ranked by, its mode and the best file's name."""

    monitor: str | None
    mode: str
    best_name: str | None
    kept: bool = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Checkpointing:
        """Read a recipe's own ``ModelCheckpoint`` in ``trainer.callbacks`` if it lists one, else plkit's default."""
        trainer = config.get("trainer") or {}
        kept = trainer.get("enable_checkpointing") is not False
        callbacks = trainer.get("callbacks") or []
        for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
            if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
                args = callback.get("init_args") or {}
                return cls(args.get("monitor"), args.get("mode") or "min", None, kept)
        args = config.get("checkpoint") or {}
        name = args.get("filename")
        return cls(args.get("monitor"), args.get("mode") or "min", f"{name}.ckpt" if name else None, kept)


def place(session: Session, fits: Sequence[Session], checkpointing: Checkpointing, ckpt_path: str | None) -> Evaluation:
    """Put an evaluation session at the last training step of the weights it evaluated.

    Lightning restores a checkpoint's loop state (its step counter) only to continue a fit, so a separate
    ``plkit test`` logs at step 0 and its checkpoint comes from ``ckpt_path`` (the verb's saved config), while a
    test logged past step 0 ran inside the fit (``--run_test``), which tests the best checkpoint. When neither
    says which checkpoint it was, the evaluation goes at the last training step logged before it.
    """
    values = {tag: points[-1].value for tag, points in session.scalars.items() if tag not in BOOKKEEPING_TAGS}
    logged_step = max(p.step for p in session.points)
    if logged_step > 0 and not checkpointing.kept:
        # --run_test without checkpoints tests the weights the fit ended with, and logs at its step count.
        return Evaluation(str(session.kind), values, logged_step - 1, "the fit's final weights")
    if logged_step > 0:
        name: str | None = checkpointing.best_name or "best"
    else:
        name = Path(ckpt_path).name if ckpt_path else None
    before: dict[str, list[Point]] = {}
    for fit in fits:
        for tag, points in fit.scalars.items():
            before.setdefault(tag, []).extend(p for p in points if p.time < session.start)
    step, where = _checkpoint_step(name, before, checkpointing)
    if step is None:
        step = max((p for points in before.values() for p in points), key=lambda p: p.time, default=Point(0, 0, 0)).step
    return Evaluation(str(session.kind), values, step, where)


def _checkpoint_step(
    name: str | None, before: dict[str, list[Point]], checkpointing: Checkpointing
) -> tuple[int | None, str]:
    """The last training step of checkpoint file ``name``, from what the fits logged before it was evaluated.

    ``None`` means the last training step logged before it: right for ``last.ckpt``, a guess for other names.
    """
    if name is None:
        return None, "its checkpoint is not recorded: the last training step before it"
    if found := re.search(r"step=(\d+)", name):  # Lightning's default name, epoch=E-step=N: N steps taken
        return max(int(found[1]) - 1, 0), f"{name}, the step in its name"
    if found := re.search(r"epoch=?(\d+)", name):
        epoch = int(found[1])
        ends = [p.step for p in before.get("epoch", []) if p.value == epoch]
        if ends:
            return max(ends), f"{name}, the end of epoch {epoch}"
    if name in ("best", checkpointing.best_name) and checkpointing.monitor:
        monitored = [p for p in before.get(checkpointing.monitor, []) if math.isfinite(p.value)]
        if monitored:
            sign = 1.0 if checkpointing.mode == "max" else -1.0
            # ModelCheckpoint replaces its best only on a strict improvement, so the first of equal values is kept.
            best = max(monitored, key=lambda p: (sign * p.value, -p.time))
            return best.step, f"{name}, best {checkpointing.monitor}"
    return None, f"{name}, the last training step before it"


def newest_run(folder: Path) -> Path | None:
    """The run inside a recipe's folder (``runs/mnist``) that a fit started or resumed last, or ``None``.

    Example:
        >>> import tempfile
        >>> recipe = Path(tempfile.mkdtemp())
        >>> for version in ("version_0", "version_1"):
        ...     _ = (recipe / version).mkdir(), (recipe / version / "config.yaml").write_text("{}")
        >>> newest_run(recipe).name
        'version_1'
    """
    configs = [p for p in folder.glob("*/config.yaml") if p.is_file()]
    newest = max(configs, key=lambda p: (p.stat().st_mtime_ns, p.parent.name), default=None)
    return None if newest is None else newest.parent


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder into a :class:`Run`, or raise :class:`UsageError` naming what is missing.

    Raises:
        UsageError: When ``run_dir`` is not a folder, holds no event files or no fit, or has no readable
            ``config.yaml``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a folder: give a run folder such as {RUN_EXAMPLE}")
    if not any(run_dir.glob("events.out.tfevents.*")):
        versions = sorted(p.name for p in run_dir.glob("version_*") if p.is_dir())
        hint = f"its runs: {', '.join(versions)}" if versions else f"give a run folder such as {RUN_EXAMPLE}"
        raise UsageError(f"{run_dir} holds no TensorBoard event files: {hint}")
    config = _read_config(run_dir)
    sessions = read_sessions(run_dir)
    fits = [s for s in sessions if s.kind == "fit"]
    if not fits:
        raise UsageError(f"{run_dir} holds no training, only test or validation logs: give the folder `plkit fit` made")
    checkpointing = Checkpointing.from_config(config)
    evaluations = []
    for verb in ("test", "validate"):
        done = [s for s in sessions if s.kind == verb]
        # Each `plkit test` rewrites test_config.yaml, so it names the checkpoint of the latest one only.
        latest_separate = max(
            (s for s in done if max(p.step for p in s.points) == 0), key=lambda s: s.start, default=None
        )
        for session in done:
            ckpt = _saved_ckpt_path(run_dir / f"{verb}_config.yaml") if session is latest_separate else None
            evaluations.append(place(session, fits, checkpointing, ckpt))
    run = Run(run_dir, training_curves(fits), evaluations)
    run.summary = summarise(run, fits, checkpointing)
    return run


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UsageError(
            f"{path} is missing, so this is not a run `plkit fit` made: give a run folder such as {RUN_EXAMPLE}"
        )
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"cannot read {path} ({type(err).__name__}): restore the config `plkit fit` saved") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} is not a YAML mapping: restore the config `plkit fit` saved")
    return config


def _saved_ckpt_path(path: Path) -> str | None:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    value = config.get("ckpt_path") if isinstance(config, dict) else None
    return str(value) if value else None


def summarise(run: Run, fits: Sequence[Session], checkpointing: Checkpointing) -> dict[str, str]:
    """The report's text, field by field: what a reader wants before looking at any curve."""
    summary = {"run": str(run.path)}
    kept = sorted(p.name for p in (run.path / "checkpoints").glob("*.ckpt"))
    summary["checkpoints"] = ", ".join(kept) if kept else "none kept"
    monitor = checkpointing.monitor
    if monitor and monitor in run.curves:
        finite = [p for p in run.curves[monitor] if math.isfinite(p.value)]
        if finite:
            sign = 1.0 if checkpointing.mode == "max" else -1.0
            best = max(finite, key=lambda p: (sign * p.value, -p.step))
            summary[f"best {monitor}"] = f"{best.value:.4f} ({checkpointing.mode}) at step {best.step}"
    for verb in ("test", "validate"):
        latest = [e for e in run.evaluations if e.verb == verb][-1:]
        for evaluation in latest:
            for tag, value in sorted(evaluation.values.items()):
                key = tag if verb == "test" else f"{tag} (validate)"
                summary[key] = f"{value:.4f} at step {evaluation.step} ({evaluation.where})"
    if "epoch" in run.curves:
        summary["epochs"] = str(int(max(p.value for p in run.curves["epoch"])) + 1)
    # Lightning logs at the 0-based index of the last optimizer step.
    summary["steps"] = str(max(p.step for points in run.curves.values() for p in points) + 1)
    seconds = sum(max(p.time for p in fit.points) - fit.start for fit in fits)
    sessions = f"{len(fits)} fit sessions summed" if len(fits) > 1 else "1 fit session"
    summary["wall time"] = f"{_duration(seconds)} (training only: {sessions})"
    return summary


def _duration(seconds: float) -> str:
    """``42.0 s`` or ``3 min 2 s``.

    Example:
        >>> _duration(182.4), _duration(3.21)
        ('3 min 2 s', '3.2 s')
    """
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def format_summary(summary: dict[str, str]) -> list[str]:
    """One ``key  value`` line per field, the values aligned."""
    width = max(13, *(len(key) + 1 for key in summary))
    return [f"{key:<{width}} {value}" for key, value in summary.items()]


def format_table(runs: Sequence[Run]) -> list[str]:
    """The runs' summaries side by side: one row per field, one column per run."""
    keys = list(dict.fromkeys(key for run in runs for key in run.summary if key != "run"))
    rows = [["run", *(run.label for run in runs)]]
    rows += [[key, *(run.summary.get(key, "-") for run in runs)] for key in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def draw(runs: Sequence[Run]) -> Figure:
    """Draw the four panels for one run, or for several overlaid (one colour per run, validation dashed).

    Training curves are lines against step; each test or validation session is a single diamond at the step
    of the weights it evaluated.
    """
    # The object API, not pyplot: no global backend switch, so it is safe inside a notebook.
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    several = len(runs) > 1
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    fig = Figure(figsize=(11, 7), layout="constrained")
    for ax, (name, prefixes) in zip(fig.subplots(2, 2).flat, PANELS, strict=True):
        for i, run in enumerate(runs):
            _draw_run(ax, run, prefixes, colours[i % len(colours)] if several else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7 if several else 8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        if name == "Learning rate" and ax.lines:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.suptitle(" vs ".join(run.label for run in runs))
    return fig


def _draw_run(ax: Any, run: Run, prefixes: tuple[str, ...], colour: str | None) -> None:
    """One run's tags that start with ``prefixes``; ``colour`` is the run's when several runs share the panel."""
    named = f"{run.label} " if colour else ""
    for tag, points in sorted(run.curves.items()):
        if not tag.startswith(prefixes):
            continue
        style = "-"
        if colour:  # the runs' curves share their run's colour: the line style tells them apart
            style = "--" if tag.startswith("val") else ":" if tag.endswith("_epoch") else "-"
        ax.plot(
            [p.step for p in points],
            [p.value for p in points],
            linestyle=style,
            marker="o" if len(points) < 30 else None,
            color=colour,
            label=f"{named}{tag}",
            markersize=3,
            linewidth=1.2,
        )
    tag_colours: dict[str, str] = {}  # a metric evaluated twice keeps one colour
    for evaluation in run.evaluations:
        for tag, value in sorted(evaluation.values.items()):
            if not tag.startswith(prefixes):
                continue
            key = tag if tag.startswith(evaluation.verb) else f"{tag} ({evaluation.verb})"
            label = f"{named}{key} {value:.4g} @ step {evaluation.step}"
            if label in ax.get_legend_handles_labels()[1]:
                label = "_repeated"  # the same value at the same step: one legend entry is enough
            (marker,) = ax.plot([evaluation.step], [value], "D", label=label, color=colour or tag_colours.get(key))
            tag_colours.setdefault(key, marker.get_color())


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    return buffer.getvalue()


def _write(files: dict[Path, bytes]) -> None:
    """Write every file whole (temporary name, then rename, mode 0644), or say which one could not be."""
    for target, data in files.items():
        try:
            write_atomically(target, lambda tmp, data=data: tmp.write_bytes(data))
        except OSError as err:
            raise UsageError(f"cannot write {target}: {err.strerror or err}; make its folder writable") from None


def _needs_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("plkit report needs matplotlib: pip install matplotlib") from None


def make_report(run_dir: str | Path) -> list[str]:
    """Write ``report.png`` and ``report.txt`` into ``run_dir`` and return the summary lines.

    Raises:
        UsageError: When ``run_dir`` is not a run folder (see :func:`load_run`) or cannot be written.
    """
    _needs_matplotlib()
    run = load_run(run_dir)
    _write(_run_files(run))
    return format_summary(run.summary)


def _run_files(run: Run) -> dict[Path, bytes]:
    """A run's own ``report.png`` and ``report.txt``."""
    return {
        run.path / "report.png": _png(draw([run])),
        run.path / "report.txt": "\n".join([*format_summary(run.summary), ""]).encode(),
    }


def run_report_command(argv: Sequence[str]) -> None:
    """Run ``plkit report RUN [RUN ...] [--output FILE.png]``."""
    parser = argparse.ArgumentParser(prog="plkit report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help=f"a run folder, e.g. {RUN_EXAMPLE}, or a recipe's (its newest run)"
    )
    parser.add_argument(
        "--output", type=Path, help="also write the runs overlaid in one picture to this .png, and their table to .txt"
    )
    args = parser.parse_args(list(argv))
    output: Path | None = args.output
    if output is not None and output.suffix != ".png":
        raise UsageError(f"--output {output} must end in .png (the table goes beside it, as .txt)")
    if output is not None and not output.parent.is_dir():
        raise UsageError(f"--output {output}: the folder {output.parent} does not exist; create it first")
    _needs_matplotlib()
    paths = []
    for given in map(Path, args.runs):
        newest = newest_run(given) if given.is_dir() and not any(given.glob("events.out.tfevents.*")) else None
        if newest is not None:
            print(f"plkit report: {given} holds runs; reporting the newest, {newest}")
        paths.append(newest or given)
    # Read every run before writing anything, so a bad folder in the list leaves no report half made.
    runs = [load_run(path) for path in dict.fromkeys(paths)]
    if len({run.label for run in runs}) < len(runs):
        for run in runs:
            run.label = str(run.path)
    files = {}
    for run in runs:
        files.update(_run_files(run))
    table = format_table(runs)
    if output is not None:
        files[output] = _png(draw(runs))
        files[output.with_suffix(".txt")] = "\n".join([*table, ""]).encode()
    _write(files)

    if len(runs) == 1:
        print("\n".join(format_summary(runs[0].summary)))
    else:
        print("\n".join(table))
    for run in runs:
        print(f"wrote {run.path / 'report.png'} and report.txt")
    if output is not None:
        print(f"wrote {output} and {output.with_suffix('.txt').name}")
    elif len(runs) > 1:
        print("(--output FILE.png also writes this table and the runs overlaid in one picture)")
