"""The quick benchmark runs end to end on generated data and reports every section with finite numbers.

It checks that ``python -m benchmarks --quick`` finishes and writes what it promises, not that the goals are met:
a shared CI machine is too noisy for that. The full run is ``python -m benchmarks`` (minutes).

The quick run takes about a minute on two busy cores (fresh Python processes that import Lightning), so its
tests are marked ``slow``: ``.ci/run`` runs them with ``pytest -m slow tests/test_benchmarks.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def numbers(value: Any) -> Iterator[float]:
    """Every int and float inside a nest of dicts and lists."""
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield float(value)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, str]:
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "benchmarks", "--quick", "--repeats", "1", "--data", "generated"]
    command += ["--json", str(out / "results.json"), "--markdown", str(out / "results.md")]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text()), proc.stdout, (out / "results.md").read_text()


@pytest.mark.slow
def test_every_section_reports_finite_numbers(quick: tuple[dict[str, Any], str, str]) -> None:
    results, _, _ = quick
    sections = results["sections"]
    assert {"training", "export", "gradnorm", "startup", "gpu", "latency", "accuracy"} <= set(sections)
    for name, section in sections.items():
        values = list(numbers(section))
        assert values, name
        assert all(math.isfinite(v) for v in values), name
        assert section["wall_s"] > 0


@pytest.mark.slow
def test_training_contenders_did_the_same_work(quick: tuple[dict[str, Any], str, str]) -> None:
    training = quick[0]["sections"]["training"]
    assert training["data"] == "generated"
    assert training["train_images"] == 896
    assert set(training["seconds"]) == {"hand_loop", "lightning_tensors", "lightning_torchvision", "plkit"}
    for runs in training["runs"].values():
        assert [r["train_steps"] for r in runs] == [7]  # ceil(896 / 128), one epoch for everyone
        assert [r["threads"] for r in runs] == [2]
        assert all(0.0 <= r["val_acc"] <= 1.0 for r in runs)
    assert training["ratio_vs_hand_loop"]["hand_loop"] == 1.0


@pytest.mark.slow
def test_output_names_the_machine_data_and_goals(quick: tuple[dict[str, Any], str, str]) -> None:
    results, stdout, markdown = quick
    assert results["machine"]["cpu_count"] >= 1
    assert "generated Fashion-MNIST-like images" in stdout
    # plkit's epoch, 2x flat memory, tsv, grad norm, start-up; the recipe's accuracy, time and time over the hand loop
    assert stdout.count("PASS") + stdout.count("MISS") >= 8
    gpu = results["sections"]["gpu"]
    if not gpu["available"]:
        assert "no GPU: GPU variants skipped" in stdout
    assert markdown.count("| --- |") >= 5
    assert "python -m benchmarks --quick" in markdown


@pytest.mark.slow
def test_time_to_accuracy_contenders_trained_what_they_claim(quick: tuple[dict[str, Any], str, str]) -> None:
    accuracy = quick[0]["sections"]["accuracy"]
    assert accuracy["data"] == "generated"
    assert accuracy["seeds"] == [42]
    names = ["baseline", "recipe", "hand_recipe"]  # --quick leaves out fashion_mnist_long and its hand loop
    assert list(accuracy["runs"]) == names
    for name in names:
        (run,) = accuracy["runs"][name]
        assert run["threads"] == 2
        assert run["seed"] == 42
        assert 0.0 < run["seconds"] < run["process_seconds"]
        # Generated images whose bright patch gives the class: one epoch learns them.
        assert run["test_acc"] >= 0.5, (name, run["test_acc"])
    # The hand-written loop trains what the recipe says, levers included; the baseline is fp32.
    assert accuracy["runs"]["hand_recipe"][0]["setup"] == accuracy["runs"]["recipe"][0]["setup"]
    assert accuracy["runs"]["baseline"][0]["setup"] == "width 20, batch 128, 1 epoch, 32-true"
    assert accuracy["ratio_vs_baseline"]["baseline"] == 1.0
    assert set(accuracy["goals"]) == {"recipe"}
    assert set(accuracy["goals"]["recipe"]) == {"accuracy", "time", "vs_hand"}
    assert accuracy["test_images"] == 170  # the generated test file: a sixth of the 1,024 training images
    assert len(accuracy["load_before"]) == len(accuracy["load_after"]) == 3


def test_bad_section_names_the_choices() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "trainig"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "--only 'trainig': choose among training," in proc.stderr
    assert ",accuracy" in proc.stderr
