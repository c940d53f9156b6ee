"""Fixtures of the real-engine tests: a clean process table afterwards, and a one-node SLURM cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from dist_helpers import REPO, engine_env, stop_all

CLUSTER = REPO / "slurm" / "local_cluster.sh"


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """Whatever a test started ends with it, passed or failed."""
    yield
    stop_all()


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
    started = subprocess.run(
        [str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=60, check=False
    )
    try:
        assert started.returncode == 0, started.stderr
        env = engine_env(SLURM_CONF=str(state / "slurm.conf"))
        yield env
    finally:
        conf = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
        subprocess.run(["scancel", "--user", "root"], env=conf, capture_output=True, timeout=30, check=False)
        subprocess.run([str(CLUSTER), "stop", str(state)], capture_output=True, timeout=60, check=False)
