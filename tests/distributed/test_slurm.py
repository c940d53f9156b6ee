"""The README's ``sbatch slurm/fit.sbatch ...`` on a one-node SLURM cluster (``slurm/local_cluster.sh``): 2 tasks.

Lightning must find ``SLURMEnvironment`` and start no processes itself; both tasks train. Then the time-limit path:
SIGUSR1 makes Lightning save ``hpc_ckpt_1.ckpt`` into the run folder and requeue the job, and the requeued job
resumes from it to the end. The test sends SIGUSR1 with ``scancel --signal=USR1`` instead of waiting for
``--signal=USR1@180``: SLURM delivers that one to the same tasks, but only within a minute of the time asked for,
and only minutes into a job. :class:`rank_probe.RankProbe` holds every rank after an epoch while the signal comes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from plkit.data import MNISTDataModule
from plkit.models import ImageClassifier

from dist_helpers import (
    HERE,
    as_run,
    audit_records,
    free_port,
    poll,
    probe_records,
    readme_command,
    scalars,
    tail,
    tiny_overlay,
)

pytestmark = pytest.mark.distributed

EPOCHS = 3
STEPS_PER_EPOCH = 4  # 256 training images, 2 tasks, batches of 32


@dataclass
class Job:
    id: str
    work: Path  # the folder it was submitted from
    run: Path
    probe: Path
    audit: Path
    wall_s: float


def slurm_cmd(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout, check=False)


def job_field(env: dict[str, str], job: str, field: str) -> str:
    shown = slurm_cmd(env, "scontrol", "--oneliner", "show", "job", job).stdout
    found = re.search(rf"\b{field}=(\S+)", shown)
    return found.group(1) if found else ""


def wait_until_done(env: dict[str, str], job: Job, timeout: float) -> str:
    """Wait for the job to end; return its state (COMPLETED, FAILED, ...)."""
    done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    try:
        return poll(lambda: (s := job_field(env, job.id, "JobState")) in done and s, timeout, f"job {job.id} to end")
    except AssertionError:
        raise AssertionError(f"job {job.id} did not end:\n{tail(job.work / f'slurm-{job.id}.out')}") from None


def submit(
    env: dict[str, str],
    root: Path,
    mnist_dir: Path,
    probe: dict[str, object] | None = None,
    extra: tuple[str, ...] = (),
) -> Job:
    """``sbatch`` the README's command from ``root/work``, with the tiny overlay, audited."""
    work, probe_dir, audit = root / "work", root / "probe", root / "audit"
    work.mkdir(parents=True)
    overlay = tiny_overlay(
        root / "tiny.yaml",
        EPOCHS,
        [
            {"class_path": "GradNormLogger"},
            {"class_path": "rank_probe.RankProbe", "init_args": {"out_dir": str(probe_dir), **(probe or {})}},
        ],
    )
    env = {
        **env,
        "PYTHONPATH": f"{HERE / 'audit'}:{env['PYTHONPATH']}",
        "PLKIT_AUDIT_ROOT": str(root),
        "PLKIT_AUDIT_OUT": str(audit),
        "MASTER_PORT": str(free_port()),
    }
    words = [*as_run(readme_command("sbatch"), mnist_dir), "--config", str(overlay), *extra]
    words[1:1] = ["--parsable"]
    submitted = subprocess.run(words, cwd=work, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    return Job(job_id, work, work / "runs" / "mnist" / f"slurm_{job_id}", probe_dir, audit, time.monotonic())


def checked_outputs(job: Job) -> None:
    """Only the run folder and SLURM's own log in the submit folder; files by rank zero only."""
    assert sorted(p.name for p in job.work.iterdir()) == ["runs", f"slurm-{job.id}.out"]
    assert [p.name for p in (job.work / "runs" / "mnist").iterdir()] == [job.run.name]
    touched = audit_records(job.audit)
    assert sorted(touched) == [0, 1], touched.keys()
    rank0 = {entry.split(" ", 1)[1] for entry in touched[0]}
    # Rank zero creates the run folder (and runs/mnist above it) and writes in it; rank one writes nothing there.
    assert {f"{job.run}/config.yaml", f"{job.run}/status.json", f"{job.run}/checkpoints/last.ckpt"} <= rank0
    above = {str(folder) for folder in job.run.parents}
    outside = [p for p in rank0 if not p.startswith((str(job.run), str(job.probe))) and p not in above]
    assert outside == []
    assert all(entry.split(" ", 1)[1].startswith(str(job.probe)) for entry in touched[1])


@pytest.fixture(scope="module")
def straight(slurm: dict[str, str], tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Job:
    """The README's batch job, run to the end."""
    job = submit(slurm, tmp_path_factory.mktemp("straight"), mnist_dir)
    state = wait_until_done(slurm, job, timeout=240)
    job.wall_s = time.monotonic() - job.wall_s
    print(f"SLURM job {job.id}: {state} in {job.wall_s:.1f} s")
    assert state == "COMPLETED", tail(job.work / f"slurm-{job.id}.out")
    return job


def test_both_tasks_train_under_slurm_environment(straight: Job) -> None:
    probes = probe_records(straight.probe)
    assert sorted(probes) == [(0, 0), (1, 0)]
    assert {(p["world_size"], p["environment"]) for p in probes.values()} == {(2, "SLURMEnvironment")}
    for record in probes.values():
        assert [s["step"] for s in record["steps"]] == list(range(EPOCHS * STEPS_PER_EPOCH))
    status = json.loads((straight.run / "status.json").read_text())
    assert (status["state"], status["epoch"], status["step"]) == ("finished", EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    checked_outputs(straight)


def test_logged_values_are_the_reduced_ones(straight: Job, mnist_dir: Path) -> None:
    probes = probe_records(straight.probe)
    logged = scalars(straight.run)
    for zero, one in zip(probes[(0, 0)]["steps"], probes[(1, 0)]["steps"], strict=True):
        assert zero["grad_norm/total"] == pytest.approx(one["grad_norm/total"], rel=1e-6)
        assert logged["grad_norm/total"][zero["step"]] == pytest.approx(zero["grad_norm/total"], rel=1e-6)
    ckpt = straight.run / "checkpoints" / "last.ckpt"
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] - 1
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (single,) = trainer.validate(model, MNISTDataModule(mnist_dir, batch_size=32, val_size=64), verbose=False)
    for key in ("val/loss", "val/acc"):
        difference = abs(logged[key][step] - single[key])
        print(
            f"SLURM {key}: 2 tasks {logged[key][step]:.8f}, one process {single[key]:.8f}, difference {difference:.2e}"
        )
        assert difference < 1e-6, key


def test_sigusr1_saves_requeues_and_resumes_to_the_same_end(
    slurm: dict[str, str], straight: Job, tmp_path: Path, mnist_dir: Path
) -> None:
    job = submit(slurm, tmp_path, mnist_dir, probe={"hold_after_epoch": 1})
    log = job.work / f"slurm-{job.id}.out"
    poll(
        lambda: len(list(job.probe.glob("holding-rank*"))) == 2, 180, f"both tasks of job {job.id} to hold\n{tail(log)}"
    )
    assert slurm_cmd(slurm, "scancel", "--signal=USR1", job.id).returncode == 0

    # Lightning saves hpc_ckpt_1.ckpt, requeues the job (pending again, for SLURM's requeue delay) and stops.
    poll(lambda: job_field(slurm, job.id, "JobState") == "PENDING", 120, f"job {job.id} to be requeued\n{tail(log)}")
    assert job_field(slurm, job.id, "Restarts") == "1"
    assert (job.run / "hpc_ckpt_1.ckpt").is_file()
    interrupted = poll(
        lambda: (s := json.loads((job.run / "status.json").read_text()))["state"] == "interrupted" and s,
        60,
        "the status file to say interrupted",
    )
    # Epoch 1 done; the batch under way when SIGTERM came may have stepped too (the resumed run redoes it).
    assert interrupted["epoch"] == 1
    assert STEPS_PER_EPOCH <= interrupted["step"] <= STEPS_PER_EPOCH + 1
    # SLURM holds a requeued job back for two minutes (its BeginTime); start it now.
    assert slurm_cmd(slurm, "scontrol", "update", f"JobId={job.id}", "StartTime=now").returncode == 0
    state = wait_until_done(slurm, job, timeout=240)
    print(f"SLURM requeue job {job.id}: {state} after {time.monotonic() - job.wall_s:.1f} s")
    assert state == "COMPLETED", tail(log)

    assert (
        "Restored all states from the checkpoint at " + f"runs/mnist/slurm_{job.id}/hpc_ckpt_1.ckpt" in log.read_text()
    )
    probes = probe_records(job.probe)
    assert sorted(probes) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # No step lost: the first start did epoch 1 (and stepped the batch under way at SIGTERM, which the checkpoint
    # does not hold); the requeued one resumed at the end of epoch 1 and did epochs 2 and 3.
    first, resumed = probes[(0, 0)]["steps"], probes[(0, 1)]["steps"]
    assert [s["step"] for s in first][:STEPS_PER_EPOCH] == list(range(STEPS_PER_EPOCH))
    assert len(first) <= STEPS_PER_EPOCH + 1
    assert [s["step"] for s in resumed] == list(range(STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH))
    assert (probes[(0, 1)]["resumed_at_epoch"], probes[(0, 1)]["resumed_at_step"]) == (1, STEPS_PER_EPOCH)
    # The status file's story: interrupted (read above), running again, finished.
    assert next(s["state"] for s in probes[(0, 1)]["status"]) == "running"
    status = json.loads((job.run / "status.json").read_text())
    assert (status["state"], status["epoch"], status["step"]) == ("finished", EPOCHS, EPOCHS * STEPS_PER_EPOCH)

    # The interrupted and resumed job trains exactly what the straight one did.
    straight_steps = probe_records(straight.probe)[(0, 0)]["steps"]
    losses = [s["train/loss"] for s in first[:STEPS_PER_EPOCH] + resumed]
    assert losses == [s["train/loss"] for s in straight_steps]
    final = torch.load(job.probe / "final-start1.pt", weights_only=True)
    reference = torch.load(straight.probe / "final-start0.pt", weights_only=True)
    difference = max((final[k] - reference[k]).abs().max().item() for k in reference)
    print(f"requeued vs straight job: max abs weight difference {difference:.2e}")
    assert difference == 0.0
    checked_outputs(job)


def test_a_job_that_cannot_start_fails_at_once_naming_why(
    slurm: dict[str, str], tmp_path: Path, mnist_dir: Path
) -> None:
    # More tasks than the node has CPUs: sbatch refuses at submission (the cluster sets EnforcePartLimits=ALL; a
    # cluster without it leaves such a job pending, squeue giving the reason).
    words = as_run(readme_command("sbatch"), mnist_dir)
    words[1:1] = ["--ntasks-per-node", "4"]
    refused = subprocess.run(words, cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode != 0
    assert "More processors requested than permitted" in refused.stderr

    # Tasks and devices disagree: Lightning refuses in every task, and the job fails naming both numbers.
    job = submit(slurm, tmp_path / "mismatch", mnist_dir, extra=["--trainer.devices", "1"])
    state = wait_until_done(slurm, job, timeout=120)
    log = (job.work / f"slurm-{job.id}.out").read_text()
    assert state == "FAILED", log[-3000:]
    assert "plkit fit: error: ValueError: You set `devices=1` in Lightning" in log
    assert "`--ntasks-per-node=2`" in log
    assert [p.name for p in job.work.iterdir()] == [f"slurm-{job.id}.out"]  # no run folder at all
