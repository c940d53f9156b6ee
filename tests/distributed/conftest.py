"""Fixtures of the real-engine tests: a clean process table afterwards, a two-node torchrun run, a SLURM cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dist_helpers import (
    REPO,
    TwoNodes,
    as_run,
    audited_env,
    engine_env,
    free_port,
    readme_command,
    run_on_two_nodes,
    stop_all,
    tiny_overlay,
)

CLUSTER = REPO / "slurm" / "local_cluster.sh"


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """Whatever a test started ends with it, passed or failed."""
    yield
    stop_all()


@pytest.fixture(scope="session")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> TwoNodes:
    """The README's two torchrun commands, fit then predict, each started twice in one folder as two nodes.

    The fit runs with ``GradNormLogger``, ``ProgressNotifier`` and :class:`rank_probe.RankProbe`; every rank's
    writes are audited. The SLURM tests compare their requeued job with this run.
    """
    root = tmp_path_factory.mktemp("torchrun")
    runs = TwoNodes(
        root / "work", root / "work" / "runs" / "mnist" / "version_0", root / "status", root / "probe", root / "audit"
    )
    for folder in (runs.work, root / "fit_logs", root / "predict_logs"):
        folder.mkdir()
    overlay = tiny_overlay(
        root / "tiny.yaml",
        [
            {"class_path": "GradNormLogger"},
            {"class_path": "ProgressNotifier", "init_args": {"status_file": str(runs.status / "status.json")}},
            {"class_path": "rank_probe.RankProbe", "init_args": {"out_dir": str(runs.probe)}},
        ],
    )
    env = audited_env(root, runs.audit, engine_env())
    fit = [*as_run(readme_command("torchrun", " fit "), mnist_dir, free_port()), "--config", str(overlay)]
    fit_s = run_on_two_nodes(fit, env, runs.work, root / "fit_logs", timeout=240)
    predict = as_run(readme_command("torchrun", " predict "), mnist_dir, free_port())
    predict_s = run_on_two_nodes(predict, env, runs.work, root / "predict_logs", timeout=180)
    print(f"\ntwo-node torchrun: fit {fit_s:.1f} s, predict {predict_s:.1f} s")
    return runs


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A one-node cluster (``slurm/local_cluster.sh``) for the module; yields the environment to submit with.

    Fails, rather than skips, when SLURM is missing: ``pytest -m distributed`` asked for these tests.
    """
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.fail("the one-node SLURM cluster needs root (slurmd starts jobs as their submitter)")
    state = tmp_path_factory.mktemp("slurm")
    conf = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    try:
        started = subprocess.run(
            [str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=60, check=False
        )
        assert started.returncode == 0, started.stderr
        yield engine_env(SLURM_CONF=conf["SLURM_CONF"])
    finally:
        subprocess.run(["scancel", "--user", "root"], env=conf, capture_output=True, timeout=30, check=False)
        subprocess.run([str(CLUSTER), "stop", str(state)], capture_output=True, timeout=60, check=False)
