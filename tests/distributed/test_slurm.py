"""The README's ``sbatch slurm/fit.sbatch ...`` on a one-node SLURM cluster (``slurm/local_cluster.sh``): 2 tasks.

Lightning must find ``SLURMEnvironment`` and start no processes itself, and both tasks train. The job also goes
through the time-limit path: SIGUSR1 makes Lightning save ``hpc_ckpt_1.ckpt`` into the run folder and requeue the
job, and the requeued job resumes from it to the end, with the weights of the two-node torchrun run of the same
recipe, which was never interrupted.

The test sends SIGUSR1 with ``scancel --signal=USR1`` rather than waiting for ``--signal=USR1@180``: SLURM delivers
that one to the same tasks, but only within a minute of the time asked for, and only minutes into a job.
:class:`rank_probe.RankProbe` holds every rank before the first batch of epoch 2 while the signal comes, so that
Lightning's handler, which saves and synchronises the ranks from inside the signal handler, meets them at one point.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dist_helpers import (
    EPOCHS,
    STEPS_PER_EPOCH,
    TwoNodes,
    as_run,
    audit_records,
    audited_env,
    check_reduced,
    check_validation,
    free_port,
    poll,
    probe_records,
    readme_command,
    tail,
    tiny_overlay,
)

pytestmark = pytest.mark.distributed

# Lightning logs a run resumed from a checkpoint saved before a batch one step late: its restart logic counts one
# more logged step, as for a checkpoint saved at a batch's end. Training itself resumes at the right step.
RESUMED_LOG_OFFSET = 1
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


@dataclass
class Job:
    id: str
    work: Path  # the folder it was submitted from
    run: Path
    probe: Path
    audit: Path
    submitted: float

    @property
    def log(self) -> Path:
        return self.work / f"slurm-{self.id}.out"


def slurm_cmd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=30, check=False)


def job_field(env: dict[str, str], job: Job, field: str) -> str:
    shown = slurm_cmd(env, "scontrol", "--oneliner", "show", "job", job.id).stdout
    found = re.search(rf"\b{field}=(\S+)", shown)
    return found.group(1) if found else ""


def wait_until_done(env: dict[str, str], job: Job, timeout: float) -> str:
    """Wait for the job to end; return its state (COMPLETED, FAILED, ...)."""
    return poll(
        lambda: (state := job_field(env, job, "JobState")) in DONE and state,
        timeout,
        f"job {job.id} to end\n{tail(job.log)}",
    )


def submit(env: dict[str, str], root: Path, data_dir: Path, probe: dict[str, object] | None = None, *extra: str) -> Job:
    """``sbatch`` the README's command from ``root/work`` with the tiny overlay, every rank's writes audited."""
    job = Job("", root / "work", Path(), root / "probe", root / "audit", time.monotonic())
    job.work.mkdir(parents=True)
    overlay = tiny_overlay(
        root / "tiny.yaml",
        [
            {"class_path": "GradNormLogger"},
            {"class_path": "rank_probe.RankProbe", "init_args": {"out_dir": str(job.probe), **(probe or {})}},
        ],
    )
    env = {**audited_env(root, job.audit, env), "MASTER_PORT": str(free_port())}
    words = [*as_run(readme_command("sbatch"), data_dir), "--config", str(overlay), *extra]
    words[1:1] = ["--parsable"]
    submitted = subprocess.run(words, cwd=job.work, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert submitted.returncode == 0, submitted.stderr
    job.id = submitted.stdout.strip()
    job.run = job.work / "runs" / "mnist" / f"slurm_{job.id}"
    return job


@pytest.fixture(scope="module")
def requeued(slurm: dict[str, str], tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Job:
    """The README's batch job, signalled with SIGUSR1 after epoch 1, requeued, and run to its end."""
    job = submit(slurm, tmp_path_factory.mktemp("requeue"), mnist_dir, {"hold_after_epoch": 1})
    poll(lambda: len(list(job.probe.glob("holding-rank*"))) == 2, 180, f"both tasks to hold\n{tail(job.log)}")
    assert slurm_cmd(slurm, "scancel", "--signal=USR1", job.id).returncode == 0

    # Lightning saves hpc_ckpt_1.ckpt and requeues the job, which SLURM then holds back for two minutes.
    poll(lambda: job_field(slurm, job, "JobState") == "PENDING", 120, f"job {job.id} to be requeued\n{tail(job.log)}")
    assert job_field(slurm, job, "Restarts") == "1"
    assert (job.run / "hpc_ckpt_1.ckpt").is_file()
    status = job.run / "status.json"
    poll(lambda: json.loads(status.read_text())["state"] == "interrupted", 60, "the status file to say interrupted")
    (job.probe / "status-while-pending.json").write_text(status.read_text())
    assert slurm_cmd(slurm, "scontrol", "update", f"JobId={job.id}", "StartTime=now").returncode == 0

    state = wait_until_done(slurm, job, timeout=240)
    print(f"\nSLURM job {job.id}, signalled and requeued: {state} after {time.monotonic() - job.submitted:.1f} s")
    assert state == "COMPLETED", tail(job.log)
    return job


def test_both_tasks_train_under_slurm_environment(requeued: Job) -> None:
    probes = probe_records(requeued.probe)
    assert sorted(probes) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # (rank, start): two ranks, started twice
    assert {(p["world_size"], p["environment"]) for p in probes.values()} == {(2, "SLURMEnvironment")}
    assert {p["trainer_log_dir"] for p in probes.values()} == {f"runs/mnist/{requeued.run.name}"}
    check_reduced(requeued.run, [probes[(rank, 1)]["steps"] for rank in (0, 1)], RESUMED_LOG_OFFSET)


def test_one_run_folder_written_by_rank_zero(requeued: Job) -> None:
    # SLURM's own log, and the run folder: nothing else in the folder the job was submitted from.
    assert sorted(p.name for p in requeued.work.iterdir()) == ["runs", requeued.log.name]
    assert [p.name for p in (requeued.work / "runs" / "mnist").iterdir()] == [requeued.run.name]
    touched = audit_records(requeued.audit)
    assert sorted(touched) == [0, 1]
    rank0 = {entry.split(" ", 1)[1] for entry in touched[0]}
    run = str(requeued.run)
    written = ("config.yaml", "status.json", "hpc_ckpt_1.ckpt", "checkpoints/last.ckpt")
    assert {f"{run}/{name}" for name in written} <= rank0
    # Rank zero writes in the run folder (after creating it and runs/mnist above it), rank one nowhere.
    above = {str(folder) for folder in requeued.run.parents}
    assert [p for p in rank0 if not p.startswith((run, str(requeued.probe))) and p not in above] == []
    assert [e for e in touched[1] if not e.split(" ", 1)[1].startswith(str(requeued.probe))] == []


def test_requeued_job_resumes_from_its_checkpoint_and_loses_no_epoch(requeued: Job, two_nodes: TwoNodes) -> None:
    log = requeued.log.read_text()
    assert f"Restored all states from the checkpoint at runs/mnist/{requeued.run.name}/hpc_ckpt_1.ckpt" in log
    probes = probe_records(requeued.probe)
    first, resumed = probes[(0, 0)]["steps"], probes[(0, 1)]["steps"]
    # The first start did epoch 1, and stepped the batch under way at SIGTERM, which its checkpoint does not hold;
    # the requeued start resumed at the end of epoch 1 and did epoch 2.
    assert [s["step"] for s in first][:STEPS_PER_EPOCH] == list(range(STEPS_PER_EPOCH))
    assert len(first) <= STEPS_PER_EPOCH + 1
    assert [s["step"] for s in resumed] == list(range(STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH))
    assert (probes[(0, 1)]["resumed_at_epoch"], probes[(0, 1)]["resumed_at_step"]) == (1, STEPS_PER_EPOCH)

    # The status file's story: interrupted while the job waited, running once it restarted, finished.
    interrupted = json.loads((requeued.probe / "status-while-pending.json").read_text())
    assert interrupted["epoch"] == 1
    assert STEPS_PER_EPOCH <= interrupted["step"] <= STEPS_PER_EPOCH + 1
    assert probes[(0, 1)]["status"][0] == {"when": "train_start", "state": "running"}
    status = json.loads((requeued.run / "status.json").read_text())
    assert (status["state"], status["epoch"], status["step"]) == ("finished", EPOCHS, EPOCHS * STEPS_PER_EPOCH)

    # The same training as the two-node torchrun run, which nothing interrupted: the same losses, the same weights.
    straight = probe_records(two_nodes.probe)[(0, 0)]["steps"]
    assert [s["train/loss"] for s in first[:STEPS_PER_EPOCH] + resumed] == [s["train/loss"] for s in straight]
    final = torch.load(requeued.probe / "final-start1.pt", weights_only=True)
    reference = torch.load(two_nodes.probe / "final-start0.pt", weights_only=True)
    difference = max((final[k] - reference[k]).abs().max().item() for k in reference)
    print(f"requeued SLURM job vs uninterrupted torchrun run: max abs weight difference {difference:.2e}")
    assert difference == 0.0


def test_validation_equals_one_process_on_the_same_checkpoint(requeued: Job, mnist_dir: Path) -> None:
    check_validation(requeued.run, mnist_dir, "SLURM", RESUMED_LOG_OFFSET)


def test_a_job_that_cannot_start_fails_at_once_naming_why(
    slurm: dict[str, str], tmp_path: Path, mnist_dir: Path
) -> None:
    # More tasks than the node has CPUs: sbatch refuses at submission (the cluster sets EnforcePartLimits=ALL; a
    # cluster without it leaves such a job pending, and squeue gives the reason).
    words = as_run(readme_command("sbatch"), mnist_dir)
    words[1:1] = ["--ntasks-per-node", "4"]
    refused = subprocess.run(words, cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode != 0
    assert "More processors requested than permitted" in refused.stderr

    # Tasks and devices disagree: Lightning refuses in every task, and the job fails naming both numbers.
    job = submit(slurm, tmp_path / "mismatch", mnist_dir, None, "--trainer.devices", "1")
    state = wait_until_done(slurm, job, timeout=120)
    print(f"\nSLURM job with devices != tasks: {state} after {time.monotonic() - job.submitted:.1f} s")
    log = job.log.read_text()
    assert state == "FAILED", log[-3000:]
    assert "plkit fit: error: ValueError: You set `devices=1` in Lightning" in log
    assert "`--ntasks-per-node=2`" in log
    assert [p.name for p in job.work.iterdir()] == [job.log.name]  # no run folder at all
