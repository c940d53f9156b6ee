"""A real TensorBoard process for tests: loopback only, a port of its own choosing, bounded waits, always stopped."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEADLINE_S = 60
PROJECTOR = "/data/plugin/projector"


@contextlib.contextmanager
def tensorboard(logdir: Path, log: Path) -> Iterator[str]:
    """Start ``tensorboard --logdir LOGDIR --port 0 --host 127.0.0.1``; yield its URL once it says which port."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", "0"]
    command += ["--host", "127.0.0.1", "--load_fast", "false"]  # no second (data server) process
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not (found := re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())):
            assert process.poll() is None, f"tensorboard exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"tensorboard did not report its port:\n{log.read_text()}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def projector_runs(url: str, expected: list[str] | None = None) -> list[str]:
    """The runs the projector lists, once it lists ``expected`` (any runs when ``None``), within the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        runs = json.loads(get(f"{url}{PROJECTOR}/runs"))
        if (runs == expected) if expected is not None else runs:
            return runs
        assert time.monotonic() < deadline, f"the projector lists {runs}"
        time.sleep(0.5)


def projector_info(url: str, run: str) -> dict[str, Any]:
    """What the projector knows of ``run``: its embeddings' names and shapes."""
    return json.loads(get(f"{url}{PROJECTOR}/info?run={urllib.parse.quote(run)}"))
