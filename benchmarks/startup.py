"""Comparison 4: how long the ``plkit`` command takes to answer, against importing Lightning at all.

Each command is a fresh ``python`` process, timed from its launch to its exit (median of 5, ``--quick`` 2),
the commands taking turns. ``python -c pass`` is the interpreter's own start, the floor under every row.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks._table import Table, verdict
from benchmarks.training import REPO

COMMANDS = {
    "plkit --help": ["-m", "plkit", "--help"],
    "plkit recipes list": ["-m", "plkit", "recipes", "list"],
    "plkit fit --help": ["-m", "plkit", "fit", "--help"],
    'python -c "import lightning.pytorch"': ["-c", "import lightning.pytorch"],
    'python -c "pass"': ["-c", "pass"],
}
GOAL_S = 0.5
WITH_GOAL = ("plkit --help", "plkit recipes list")


def _seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, check=True)
    return time.perf_counter() - start


def run(quick: bool, repeats: int | None = None) -> dict[str, Any]:
    repeats = repeats or (2 if quick else 5)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, args in COMMANDS.items():
            times[name].append(_seconds(args))
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {
        "repeats": repeats,
        "seconds": seconds,
        "runs": times,
        "goal": {"max_seconds": GOAL_S, "met": all(seconds[name] < GOAL_S for name in WITH_GOAL)},
    }


def tables(results: dict[str, Any]) -> list[Table]:
    lightning = results["seconds"]['python -c "import lightning.pytorch"']
    rows = []
    for name, seconds in results["seconds"].items():
        goal = f"< {GOAL_S} s: {verdict(seconds < GOAL_S)}" if name in WITH_GOAL else ""
        rows.append([name, f"{seconds:.2f}", f"{seconds / lightning:.2f}x", goal])
    title = f"4. Start-up: wall time of a fresh process, median of {results['repeats']}"
    return [Table(title, ["command", "seconds", "vs import lightning", "goal"], rows)]
