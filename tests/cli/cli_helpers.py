"""Run ``plkit`` in-process the way the shell would, and read what a run logged."""

from __future__ import annotations

from pathlib import Path

import pytest

from plkit.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``plkit ARGS`` in this process: its exit code, stdout and stderr."""
    try:
        main(args)
        code = 0
    except SystemExit as exit:
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar a run's TensorBoard event files hold, by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
