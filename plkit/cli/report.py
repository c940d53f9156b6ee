"""``plkit report RUN_DIR``: plot a finished run's curves and summarise it, from its TensorBoard event files.

Writes ``RUN_DIR/report.png`` (loss, accuracy, learning rate and gradient norm against step) and
``RUN_DIR/report.txt`` (best checkpoint, best monitored value, epochs, wall time), and prints the
summary. It needs matplotlib (``pip install "plkit[report]"``) but not torch.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from plkit.cli._errors import UsageError

# One panel per question a reader asks of a run, each with the tag prefixes that answer it.
PANELS = (
    ("Loss", ("train/loss", "val/loss", "test/loss")),
    ("Accuracy", ("train/acc", "val/acc", "test/acc")),
    ("Learning rate", ("lr-",)),
    ("Gradient norm", ("grad_norm/total",)),
)


@dataclass(frozen=True)
class Series:
    """One scalar tag: its steps, values and the wall-clock times they were written at."""

    tag: str
    steps: list[int]
    values: list[float]
    times: list[float]


def read_scalars(run_dir: Path) -> dict[str, Series]:
    """Read every scalar of every event file in ``run_dir`` (a fit's and a later test's alike)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not any(run_dir.glob("events.out.tfevents.*")):
        raise UsageError(f"{run_dir} holds no TensorBoard event files: give a run folder such as runs/mnist/version_0")
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    series = {}
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        series[tag] = Series(tag, [p.step for p in points], [p.value for p in points], [p.wall_time for p in points])
    return series


def summarise(run_dir: Path, series: dict[str, Series]) -> list[str]:
    """The report's text: what a reader wants before looking at any curve."""
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    checkpoint = (config or {}).get("checkpoint") or {}
    monitor, mode = checkpoint.get("monitor"), checkpoint.get("mode", "min")
    lines = [f"run           {run_dir}"]
    best_ckpt = run_dir / "checkpoints" / "best.ckpt"
    lines.append(f"checkpoint    {best_ckpt if best_ckpt.is_file() else 'none kept'}")
    if monitor and monitor in series:
        values = [v for v in series[monitor].values if math.isfinite(v)]
        best = (max if mode == "max" else min)(values) if values else float("nan")
        lines.append(f"best {monitor:<8} {best:.4f} ({mode})")
    for tag in ("test/acc", "test/loss"):
        if tag in series:
            lines.append(f"{tag:<13} {series[tag].values[-1]:.4f}")
    if "epoch" in series:
        lines.append(f"epochs        {int(max(series['epoch'].values)) + 1}")
    # Lightning logs at the 0-based index of the last optimizer step; a test run's values are not training.
    training = [ser for tag, ser in series.items() if not tag.startswith("test/")]
    steps = [s for ser in training for s in ser.steps]
    if steps:
        lines.append(f"steps         {max(steps) + 1}")
    times = [t for ser in training for t in ser.times]
    if times:
        lines.append(f"wall time     {_duration(max(times) - min(times))} (training: first to last logged value)")
    return lines


def plot(series: dict[str, Series], target: Path, title: str) -> None:
    """Draw the four panels into ``target`` (written to a temporary name, then renamed).

    A metric with a single value (``test/acc`` after a test run) is drawn as a marker and a dashed level
    at the last training step, where it belongs, rather than at whatever step the test run logged it.
    """
    try:
        # The object API, not pyplot: no global backend switch, so it is safe inside a notebook.
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError('plkit report needs matplotlib: pip install "plkit[report]"') from None

    last_step = max((step for s in series.values() for step in s.steps), default=0)
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    for ax, (name, prefixes) in zip(axes.flat, PANELS, strict=True):
        shown = [s for tag, s in sorted(series.items()) if tag.startswith(prefixes)]
        for s in shown:
            if len(s.values) == 1:
                line = ax.plot([last_step], s.values, "D", label=f"{s.tag} {s.values[0]:.4g}", markersize=6)[0]
                ax.axhline(s.values[0], color=line.get_color(), linestyle="--", linewidth=0.8)
                continue
            style = "o-" if len(s.steps) < 30 else "-"
            ax.plot(s.steps, s.values, style, label=s.tag, markersize=3, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        if name == "Learning rate" and shown:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.suptitle(title)
    _write_atomically(target, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def _write_atomically(target: Path, write: Callable[[str], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def make_report(run_dir: str | Path) -> list[str]:
    """Write ``report.png`` and ``report.txt`` into ``run_dir`` and return the summary lines."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a folder: give a run folder such as runs/mnist/version_0")
    series = read_scalars(run_dir)
    lines = summarise(run_dir, series)
    plot(series, run_dir / "report.png", f"{run_dir.parent.name}/{run_dir.name}")
    _write_atomically(run_dir / "report.txt", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return lines


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def run_report_command(argv: Sequence[str]) -> None:
    """Run ``plkit report RUN_DIR``."""
    parser = argparse.ArgumentParser(prog="plkit report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder, e.g. runs/mnist/version_0")
    args = parser.parse_args(list(argv))
    for line in make_report(args.run_dir):
        print(line)
    print(f"wrote {Path(args.run_dir) / 'report.png'} and report.txt")
