"""Start real engines (torchrun, SLURM) from the tests, bound every wait, and leave no process behind.

Every process starts in a session of its own and is registered in :data:`STARTED`; :func:`stop_all` (run by the
fixtures' teardown) ends each one with its descendants, which torchrun starts in sessions of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml

from plkit.data import MNISTDataModule
from plkit.models import ImageClassifier

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
README = REPO / "README.md"
#: what the README's commands name, and what the tests put in its place.
README_DATA = "/path/to/mnist"
README_PORT = "29400"

#: the tiny runs: 320 generated images, 64 held out for validation, 2 ranks of 4 batches of 32 per epoch.
EPOCHS = 2
STEPS_PER_EPOCH = 4

STARTED: list[subprocess.Popen[str]] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_env(**extra: str) -> dict[str, str]:
    """The environment of a ``plkit`` started by an engine: this checkout's code, this virtualenv's commands.

    ``tests/distributed`` is on ``PYTHONPATH`` for :class:`rank_probe.RankProbe`; SLURM jobs inherit all of it
    (``sbatch`` exports the submitting environment).
    """
    env = dict(os.environ)
    paths = [str(REPO), str(HERE), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", **extra)
    return env


def start(argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Start ``argv`` in its own session, stdout and stderr to ``log``."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    STARTED.append(proc)
    return proc


def wait(procs: list[subprocess.Popen[str]], timeout: float) -> list[int]:
    """Wait for every process, ``timeout`` seconds in all; on timeout kill them all and fail."""
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            stop_all()
            raise AssertionError(f"{shlex.join(map(str, proc.args))} still ran after {timeout:.0f} s") from None
    return codes


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (2nd field) may hold spaces and parentheses: the parent pid follows the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid``."""
    out, todo = [], [pid]
    while todo:
        children = _children(todo.pop())
        out += children
        todo += children
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_all() -> None:
    """SIGTERM each started process and its descendants, SIGKILL whatever is left 10 s later."""
    procs = [p for p in STARTED if p.poll() is None]
    pids = {pid for p in procs for pid in (p.pid, *descendants(p.pid))}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=10)
    STARTED.clear()


def poll(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Call ``check`` until it returns something true, for at most ``timeout`` seconds; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def scale_out_commands() -> list[str]:
    """The commands of the README's ``Scale out`` section that start real engines (its ```shell blocks)."""
    text = README.read_text()
    section = text.split("### Scale out", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```shell\n(.*?)```", section, flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def readme_command(prefix: str, *contains: str) -> str:
    """The one Scale out command that starts with ``prefix`` and holds each of ``contains``."""
    found = [c for c in scale_out_commands() if c.startswith(prefix) and all(s in c for s in contains)]
    assert len(found) == 1, f"README's Scale out section should have one `{prefix} ... {' '.join(contains)}`: {found}"
    return found[0]


def as_run(command: str, data_dir: Path, port: int | None = None) -> list[str]:
    """A README command as the tests run it: the tiny data for ``/path/to/mnist``, a free port for 29400, and
    the repository's files by their absolute paths (the tests run in empty folders, to see what a run writes)."""
    words = shlex.split(command)
    words = [str(REPO / w) if (REPO / w).is_file() and "/" in w else w for w in words]
    words = [w.replace(README_DATA, str(data_dir)) for w in words]
    if port is not None:
        words = [w.replace(f":{README_PORT}", f":{port}") for w in words]
    return words


@dataclass
class TwoNodes:
    """A two-node torchrun fit and predict (the ``two_nodes`` fixture): where each of its outputs is."""

    work: Path  # the folder both nodes ran in
    run: Path
    status: Path
    probe: Path
    audit: Path


def run_on_two_nodes(words: list[str], env: dict[str, str], cwd: Path, logs: Path, timeout: float) -> float:
    """Start the same command twice, as two nodes, and wait for both; return the wall time."""
    began = time.monotonic()
    nodes = [start(words, logs / f"node{i}.log", env, cwd) for i in range(2)]
    codes = wait(nodes, timeout)
    for i, code in enumerate(codes):
        assert code == 0, f"node {i} exited with {code}:\n{tail(logs / f'node{i}.log')}"
    return time.monotonic() - began


def audited_env(root: Path, audit: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` plus ``audit/sitecustomize.py``: each rank records what it writes under ``root`` into ``audit``."""
    return {
        **env,
        "PYTHONPATH": f"{HERE / 'audit'}{os.pathsep}{env['PYTHONPATH']}",
        "PLKIT_AUDIT_ROOT": str(root),
        "PLKIT_AUDIT_OUT": str(audit),
    }


def write_yaml(path: Path, content: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def tiny_overlay(path: Path, callbacks: list[dict[str, Any]], max_epochs: int = EPOCHS) -> Path:
    """A config that shrinks the mnist recipe to the tiny data: 4 steps of 32 images per rank and epoch."""
    return write_yaml(
        path,
        {
            "trainer": {
                "max_epochs": max_epochs,
                "log_every_n_steps": 1,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "callbacks": callbacks,
            },
            "data": {"init_args": {"val_size": 64, "batch_size": 32}},
            # Slow enough that validation accuracy is still below 1 after two epochs, so comparing it means something.
            "model": {"init_args": {"optimizer": {"init_args": {"lr": 0.0003}}}},
        },
    )


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar in a run's TensorBoard event files: ``{tag: {step: value}}`` (a later write wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events_file in sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        events = EventAccumulator(str(events_file), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return out


def probe_records(out_dir: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """:class:`rank_probe.RankProbe`'s records, by (rank, start)."""
    records = {}
    for path in out_dir.glob("rank*-start*.json"):
        record = json.loads(path.read_text())
        records[(record["rank"], record["start"])] = record
    return records


def audit_records(out_dir: Path) -> dict[int, list[str]]:
    """What each rank wrote under the audited folder (``audit/sitecustomize.py``), by rank."""
    found: dict[int, list[str]] = {}
    for path in out_dir.glob("rank*-pid*.json"):
        rank = int(path.name[4:].split("-", 1)[0])
        found.setdefault(rank, []).extend(json.loads(path.read_text()))
    return found


def approx(value: float) -> Any:
    return pytest.approx(value, rel=1e-6)


def one_process_validation(ckpt: Path, data_dir: Path) -> dict[str, float]:
    """Validate a checkpoint in this process, on one device: what the ranks' logged values must equal."""
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (metrics,) = trainer.validate(model, MNISTDataModule(data_dir, batch_size=32, val_size=64), verbose=False)
    return metrics


def check_validation(run: Path, data_dir: Path, label: str, step_offset: int = 0) -> None:
    """The validation metrics a run logged for the weights in its last.ckpt equal one process validating them.

    ``step_offset``: how many steps late the run's logger writes (see :func:`check_reduced`).
    """
    ckpt = run / "checkpoints" / "last.ckpt"
    # The validation that ran on these weights was logged at the last step before the checkpoint.
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] - 1 + step_offset
    logged = scalars(run)
    single = one_process_validation(ckpt, data_dir)
    for key in ("val/loss", "val/acc"):
        difference = abs(logged[key][step] - single[key])
        print(f"{label} {key}: logged {logged[key][step]:.8f}, one process {single[key]:.8f}, diff {difference:.2e}")
        assert difference < 1e-6, key


def check_reduced(run: Path, steps: list[list[dict[str, Any]]], step_offset: int = 0) -> None:
    """Rank zero logged the all-rank values; ``steps[r]`` are rank ``r``'s :class:`rank_probe.RankProbe` steps.

    ``step_offset``: the logger writes optimizer step ``s`` at step ``s + step_offset``.
    """
    logged = scalars(run)
    for zero, one in zip(*steps, strict=True):
        # Each rank's loss is its own batch's; the gradient norm is the all-reduced gradient's, the same on both.
        assert zero["step"] == one["step"]
        assert zero["train/loss"] != one["train/loss"]
        assert zero["grad_norm/total"] == approx(one["grad_norm/total"])
        assert logged["grad_norm/total"][zero["step"] + step_offset] == approx(zero["grad_norm/total"])
        assert logged["train/loss"][zero["step"] + step_offset] == approx(zero["train/loss"])
    # train/loss_epoch: the mean over both ranks' batches of the epoch.
    for epoch in range(EPOCHS):
        losses = [s["train/loss"] for rank in steps for s in rank if s["epoch"] == epoch]
        if len(losses) == 2 * STEPS_PER_EPOCH:
            end = (epoch + 1) * STEPS_PER_EPOCH - 1 + step_offset
            assert logged["train/loss_epoch"][end] == approx(sum(losses) / len(losses))


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else f"({path} was not written)"
