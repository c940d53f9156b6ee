"""Two torchrun "nodes" of one process each (gloo, CPU, loopback): the README's commands, checked against one process.

Both nodes run on this machine, in the same folder, as two machines with a shared filesystem would. The fit runs
with ``GradNormLogger``, ``ProgressNotifier`` and :class:`rank_probe.RankProbe`, and an audit hook records what each
rank writes (``audit/sitecustomize.py``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from plkit.data import MNISTDataModule
from plkit.models import ImageClassifier

from dist_helpers import (
    HERE,
    alive,
    as_run,
    audit_records,
    engine_env,
    free_port,
    probe_records,
    readme_command,
    scalars,
    start,
    tail,
    tiny_overlay,
    wait,
)

pytestmark = pytest.mark.distributed

EPOCHS = 2
STEPS_PER_EPOCH = 4  # 256 training images, 2 ranks, batches of 32


@dataclass
class TwoNodes:
    work: Path  # the folder both nodes run in
    run: Path
    status: Path
    probe: Path
    audit: Path
    fit_s: float
    predict_s: float


def run_on_two_nodes(words: list[str], env: dict[str, str], cwd: Path, logs: Path, timeout: float) -> float:
    """Start the same command twice, as two nodes, and wait for both; return the wall time."""
    began = time.monotonic()
    nodes = [start(words, logs / f"node{i}.log", env, cwd) for i in range(2)]
    codes = wait(nodes, timeout)
    for i, code in enumerate(codes):
        assert code == 0, f"node {i} exited with {code}:\n{tail(logs / f'node{i}.log')}"
    return time.monotonic() - began


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> TwoNodes:
    root = tmp_path_factory.mktemp("torchrun")
    work, status, probe, audit = root / "work", root / "status", root / "probe", root / "audit"
    for folder in (work, root / "fit_logs", root / "predict_logs"):
        folder.mkdir()
    overlay = tiny_overlay(
        root / "tiny.yaml",
        EPOCHS,
        [
            {"class_path": "GradNormLogger"},
            {"class_path": "ProgressNotifier", "init_args": {"status_file": str(status / "status.json")}},
            {"class_path": "rank_probe.RankProbe", "init_args": {"out_dir": str(probe)}},
        ],
    )
    env = engine_env(
        PYTHONPATH=f"{HERE / 'audit'}:{engine_env()['PYTHONPATH']}",
        PLKIT_AUDIT_ROOT=str(root),
        PLKIT_AUDIT_OUT=str(audit),
    )
    fit = [*as_run(readme_command("torchrun", " fit "), mnist_dir, free_port()), "--config", str(overlay)]
    fit_s = run_on_two_nodes(fit, env, work, root / "fit_logs", timeout=240)
    predict = as_run(readme_command("torchrun", " predict "), mnist_dir, free_port())
    predict_s = run_on_two_nodes(predict, env, work, root / "predict_logs", timeout=180)
    print(f"two-node fit {fit_s:.1f} s, predict {predict_s:.1f} s")
    return TwoNodes(work, work / "runs" / "mnist" / "version_0", status, probe, audit, fit_s, predict_s)


def one_process_trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)


def data(mnist_dir: Path) -> MNISTDataModule:
    return MNISTDataModule(data_dir=mnist_dir, batch_size=32, val_size=64)


def test_one_run_folder_with_its_files_written_by_rank_zero(two_nodes: TwoNodes) -> None:
    assert [p.name for p in two_nodes.work.iterdir()] == ["runs"]
    assert [p.relative_to(two_nodes.work).as_posix() for p in (two_nodes.work / "runs").glob("*/*")] == [
        "runs/mnist/version_0"
    ]
    probes = probe_records(two_nodes.probe)
    assert sorted(probes) == [(0, 0), (1, 0)]
    assert {(p["world_size"], p["environment"]) for p in probes.values()} == {(2, "TorchElasticEnvironment")}

    touched = audit_records(two_nodes.audit)
    assert sorted(touched) == [0, 1]
    run = str(two_nodes.run)
    rank0 = [entry.split(" ", 1)[1] for entry in touched[0]]
    assert f"{run}/config.yaml" in rank0
    assert f"{run}/checkpoints/last.ckpt" in rank0
    assert f"{run}/predictions/manifest.json" in rank0
    assert str(two_nodes.status / "status.json") in rank0
    # Rank 1 writes its own prediction shard and its probe records, nothing else.
    others = [
        e for e in touched[1] if "/.shards/rank1" not in e and not e.split(" ", 1)[1].startswith(str(two_nodes.probe))
    ]
    assert others == []
    assert any("/.shards/rank1" in e for e in touched[1])


def test_status_file_tells_the_run_finished(two_nodes: TwoNodes) -> None:
    status = json.loads((two_nodes.status / "status.json").read_text())
    assert (status["state"], status["epoch"], status["step"]) == ("finished", EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    # What rank zero saw at each epoch end: the file it had just written.
    assert [s["state"] for s in probe_records(two_nodes.probe)[(0, 0)]["status"]] == ["running"] * (EPOCHS + 1)


def test_validation_equals_one_process_on_the_same_checkpoint(two_nodes: TwoNodes, mnist_dir: Path) -> None:
    ckpt = two_nodes.run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    logged = scalars(two_nodes.run)
    # The validation that ran on these weights: logged at the last step before the checkpoint.
    step = checkpoint["global_step"] - 1
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    (single,) = one_process_trainer().validate(model, datamodule=data(mnist_dir), verbose=False)
    for key in ("val/loss", "val/acc"):
        difference = abs(logged[key][step] - single[key])
        print(f"{key}: two nodes {logged[key][step]:.8f}, one process {single[key]:.8f}, difference {difference:.2e}")
        assert difference < 1e-6, key


def test_logged_training_values_are_the_reduced_ones(two_nodes: TwoNodes) -> None:
    probes = probe_records(two_nodes.probe)
    steps = [probes[(rank, 0)]["steps"] for rank in (0, 1)]
    assert [s["step"] for s in steps[0]] == [s["step"] for s in steps[1]] == list(range(EPOCHS * STEPS_PER_EPOCH))
    logged = scalars(two_nodes.run)
    for zero, one in zip(*steps, strict=True):
        # Each rank's loss is its own batch's; the gradient norm is the all-reduced gradient's, the same on both.
        assert zero["train/loss"] != one["train/loss"]
        assert zero["grad_norm/total"] == pytest.approx(one["grad_norm/total"], rel=1e-6)
        assert logged["grad_norm/total"][zero["step"]] == pytest.approx(zero["grad_norm/total"], rel=1e-6)
        assert logged["train/loss"][zero["step"]] == pytest.approx(zero["train/loss"], rel=1e-6)
    last_epoch = [s["train/loss"] for rank in steps for s in rank if s["epoch"] == EPOCHS - 1]
    epoch_end = EPOCHS * STEPS_PER_EPOCH - 1
    assert logged["train/loss_epoch"][epoch_end] == pytest.approx(float(np.mean(last_epoch)), rel=1e-6)


def test_predict_writes_every_sample_once_in_order_equal_to_one_process(two_nodes: TwoNodes, mnist_dir: Path) -> None:
    out = two_nodes.run / "predictions"
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["rows"], manifest["world_size"]) == (64, 2)
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npy", "ids.npy", "manifest.json"]
    np.testing.assert_array_equal(np.load(out / "ids.npy"), np.arange(64))
    model = ImageClassifier.load_from_checkpoint(two_nodes.run / "checkpoints" / "last.ckpt", map_location="cpu")
    single = torch.cat(one_process_trainer().predict(model, datamodule=data(mnist_dir))).numpy()
    rows = np.load(out / "embeddings.npy")
    print(f"predict: {len(rows)} rows, max abs difference to one process {np.abs(rows - single).max():.2e}")
    np.testing.assert_allclose(rows, single, rtol=0, atol=1e-6)


def test_a_dead_rank_ends_both_nodes(tmp_path: Path, mnist_dir: Path) -> None:
    work, probe = tmp_path / "work", tmp_path / "probe"
    work.mkdir()
    status = tmp_path / "status.json"
    overlay = tiny_overlay(
        tmp_path / "tiny.yaml",
        3,
        [
            {"class_path": "ProgressNotifier", "init_args": {"status_file": str(status)}},
            {"class_path": "rank_probe.RankProbe", "init_args": {"out_dir": str(probe), "kill_rank": 1}},
        ],
    )
    fit = [*as_run(readme_command("torchrun", " fit "), mnist_dir, free_port()), "--config", str(overlay)]
    began = time.monotonic()
    nodes = [start(fit, tmp_path / f"node{i}.log", engine_env(), work) for i in range(2)]
    codes = wait(nodes, timeout=180)
    print(f"dead rank: both nodes ended in {time.monotonic() - began:.1f} s")
    logs = {i: (tmp_path / f"node{i}.log").read_text() for i in range(2)}
    assert all(code != 0 for code in codes), codes
    # The dead rank's node names it and its signal; the survivor names the connection it lost (gloo's words).
    everything = "\n".join(logs.values())
    assert re.search(r"rank\s*: 1 \(local_rank: 0\)\n\s*exitcode\s*: -9 .*\(SIGKILL\)", everything), everything[-3000:]
    lost = re.compile(r"\[127\.0\.0\.1\]:\d+: Connection (closed|reset) by peer")
    assert lost.search(everything)
    records = probe_records(probe)
    assert sorted(records) == [(0, 0), (1, 0)]
    assert not any(alive(r["pid"]) for r in records.values())
    state = json.loads(status.read_text())
    assert (state["state"], state["step"]) == ("failed", 1)
    assert lost.search(state["error"])
    assert not list(work.glob("runs/*/*/checkpoints/*.ckpt"))


def test_a_node_that_never_joins_fails_after_the_join_timeout(tmp_path: Path, mnist_dir: Path) -> None:
    fit = as_run(readme_command("torchrun", " fit "), mnist_dir, free_port())
    fit[1:1] = ["--rdzv_conf", "join_timeout=10"]
    began = time.monotonic()
    (code,) = wait([start(fit, tmp_path / "node0.log", engine_env(), tmp_path)], timeout=90)
    took = time.monotonic() - began
    print(f"no rendezvous: failed after {took:.1f} s")
    assert code != 0
    assert 10 <= took < 60
    # torch's own words, and its only ones: the README says what they mean.
    assert (tmp_path / "node0.log").read_text().rstrip().endswith("RendezvousTimeoutError")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node0.log"]
