"""Two torchrun "nodes" of one process each (gloo, CPU, loopback): the README's commands, checked against one process.

Both nodes run on this machine, in the same folder, as two machines with a shared filesystem would. The fit runs
with ``GradNormLogger``, ``ProgressNotifier`` and :class:`rank_probe.RankProbe`, and an audit hook records what each
rank writes (``audit/sitecustomize.py``).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from plkit.data import MNISTDataModule
from plkit.models import ImageClassifier

from dist_helpers import (
    EPOCHS,
    STEPS_PER_EPOCH,
    TwoNodes,
    alive,
    as_run,
    audit_records,
    check_reduced,
    check_validation,
    engine_env,
    free_port,
    probe_records,
    readme_command,
    start,
    tiny_overlay,
    wait,
)

pytestmark = pytest.mark.distributed


def test_one_run_folder_with_its_files_written_by_rank_zero(two_nodes: TwoNodes) -> None:
    assert [p.name for p in two_nodes.work.iterdir()] == ["runs"]
    assert [p.relative_to(two_nodes.work).as_posix() for p in (two_nodes.work / "runs").glob("*/*")] == [
        "runs/mnist/version_0"
    ]
    probes = probe_records(two_nodes.probe)
    assert sorted(probes) == [(0, 0), (1, 0)]
    assert {(p["world_size"], p["environment"]) for p in probes.values()} == {(2, "TorchElasticEnvironment")}
    # Rank zero picked the version and broadcast it: every rank's trainer names the same folder.
    assert {p["trainer_log_dir"] for p in probes.values()} == {"runs/mnist/version_0"}

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
    check_validation(two_nodes.run, mnist_dir, "two nodes")


def test_logged_training_values_are_the_reduced_ones(two_nodes: TwoNodes) -> None:
    probes = probe_records(two_nodes.probe)
    steps = [probes[(rank, 0)]["steps"] for rank in (0, 1)]
    assert [s["step"] for s in steps[0]] == [s["step"] for s in steps[1]] == list(range(EPOCHS * STEPS_PER_EPOCH))
    check_reduced(two_nodes.run, steps)


def test_predict_writes_every_sample_once_in_order_equal_to_one_process(two_nodes: TwoNodes, mnist_dir: Path) -> None:
    out = two_nodes.run / "predictions"
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["rows"], manifest["world_size"]) == (64, 2)
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npy", "ids.npy", "manifest.json"]
    np.testing.assert_array_equal(np.load(out / "ids.npy"), np.arange(64))
    model = ImageClassifier.load_from_checkpoint(two_nodes.run / "checkpoints" / "last.ckpt", map_location="cpu")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single = torch.cat(trainer.predict(model, MNISTDataModule(mnist_dir, batch_size=32, val_size=64))).numpy()
    rows = np.load(out / "embeddings.npy")
    print(f"predict: {len(rows)} rows, max abs difference to one process {np.abs(rows - single).max():.2e}")
    np.testing.assert_allclose(rows, single, rtol=0, atol=1e-6)


def test_a_dead_rank_ends_both_nodes(tmp_path: Path, mnist_dir: Path) -> None:
    work, probe = tmp_path / "work", tmp_path / "probe"
    work.mkdir()
    status = tmp_path / "status.json"
    overlay = tiny_overlay(
        tmp_path / "tiny.yaml",
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
    lost = re.compile(r"Connection (closed|reset) by peer")
    assert lost.search(everything)
    records = probe_records(probe)
    assert sorted(records) == [(0, 0), (1, 0)]
    assert not any(alive(r["pid"]) for r in records.values())
    state = json.loads(status.read_text())
    assert (state["state"], state["step"]) == ("failed", 1)
    assert lost.search(state["error"])
    assert "[127.0.0.1]:" in state["error"]
    assert not list(work.glob("runs/*/*/checkpoints/*.ckpt"))


def test_a_node_that_never_joins_fails_after_the_join_timeout(tmp_path: Path, mnist_dir: Path) -> None:
    fit = as_run(readme_command("torchrun", " fit "), mnist_dir, free_port())
    fit[1:1] = ["--rdzv_conf", "join_timeout=5"]
    began = time.monotonic()
    (code,) = wait([start(fit, tmp_path / "node0.log", engine_env(), tmp_path)], timeout=90)
    took = time.monotonic() - began
    print(f"no rendezvous: failed after {took:.1f} s")
    assert code != 0
    assert 5 <= took < 60
    # torch's own words, and its only ones: the README says what they mean.
    assert (tmp_path / "node0.log").read_text().rstrip().endswith("RendezvousTimeoutError")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node0.log"]
