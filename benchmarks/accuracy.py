"""Comparison 7: time to accuracy. How long the Fashion-MNIST configurations take to a trained, tested model.

Contenders: the baseline (``benchmarks/fashion_mnist_baseline.yaml``, the recipe as it shipped before bf16 and
compile were options), the ``fashion_mnist`` recipe (goal: >= 92.0% test accuracy in <= 0.6x the baseline's time),
the ``fashion_mnist_long`` recipe (goal: >= 93.0% in <= 1.0x), a hand-written PyTorch loop that trains each
recipe's network with the same hyperparameters and the same levers (precision, memory format, compile), and the
``fashion_mnist`` recipe with ``torch.compile`` on (``benchmarks/compile_overlay.yaml``), which shows what
compiling costs and saves on this CPU.

Each run is a fresh process (``python -m benchmarks.accuracy --contender NAME ...``) that sets the thread count
and imports everything, then times from before its data loading to the end of its test pass: decoding, any
compilation, every epoch's training and validation, checkpoints, and the test pass all count; the interpreter's
start and the imports count for no one (the start-up section measures those; the table shows the whole process
too). A plkit contender is ``plkit fit --config RECIPE --run_test true`` with the recipe's logger and checkpoints,
its progress bar off. The contenders take turns, round after round, and each round uses the next seed
(the recipes' own 42, then 43): the accuracy must hold for both.

Profile one contender with Lightning's simple profiler (plkit contenders only)::

    python -m benchmarks.accuracy --contender recipe --data-root /usr/share/datasets/fashion-mnist --profile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._data import REAL_DIR, StagedData, stage
from benchmarks._table import Table, ratio, verdict

REPO = Path(__file__).resolve().parents[1]
BASELINE_CONFIG = str(Path(__file__).with_name("fashion_mnist_baseline.yaml"))
COMPILE_CONFIG = str(Path(__file__).with_name("compile_overlay.yaml"))


@dataclass(frozen=True)
class Contender:
    """One row of the table: who trains (``plkit`` or ``hand``) which configuration, and its goal if it has one."""

    label: str
    runner: str
    configs: tuple[str, ...]
    target: float | None = None  # test accuracy the run must reach
    max_ratio: float | None = None  # its time over the baseline's, at most


CONTENDERS = {
    "baseline": Contender("baseline: fashion_mnist before the levers", "plkit", (BASELINE_CONFIG,)),
    "recipe": Contender("plkit fit --config fashion_mnist", "plkit", ("fashion_mnist",), 0.92, 0.6),
    "hand_recipe": Contender("hand-written loop, fashion_mnist's settings", "hand", ("fashion_mnist",)),
    "recipe_compile": Contender(
        "plkit fit --config fashion_mnist, compile on", "plkit", ("fashion_mnist", COMPILE_CONFIG)
    ),
    "long": Contender("plkit fit --config fashion_mnist_long", "plkit", ("fashion_mnist_long",), 0.93, 1.0),
    "hand_long": Contender("hand-written loop, fashion_mnist_long's settings", "hand", ("fashion_mnist_long",)),
}
BASELINE = "baseline"
HAND_OF = {"recipe": "hand_recipe", "long": "hand_long"}  # each plkit recipe and its hand-written twin
HAND_GOAL = 1.05  # plkit's time over the hand-written loop's, at most
SEEDS = (42, 43)
QUICK = ["baseline", "recipe", "hand_recipe"]
QUICK_IMAGES, QUICK_VAL = 1_024, 128


def _child(name: str, data: StagedData, threads: int, seed: int, quick: bool, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True)
    result = work / "result.json"
    command = [sys.executable, "-m", "benchmarks.accuracy", "--contender", name, "--threads", str(threads)]
    command += ["--data-root", str(data.root), "--val-size", str(data.val_size), "--seed", str(seed)]
    command += ["--work-dir", str(work), "--result", str(result), *(["--quick"] if quick else [])]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    process_seconds = time.perf_counter() - start
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"the {name} contender failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return {**json.loads(result.read_text()), "process_seconds": process_seconds}


def run(
    quick: bool, repeats: int | None = None, data: str = "auto", threads: int = 2, data_dir: Path = REAL_DIR
) -> dict[str, Any]:
    """Stage the data, run every contender ``repeats`` times in turn (one seed a round); medians and ratios.

    ``quick`` (the smoke test) trains one epoch of the baseline, the ``fashion_mnist`` recipe and its hand loop.
    """
    repeats = repeats or (1 if quick else 2)
    names = QUICK if quick else list(CONTENDERS)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="plkit-bench-acc-") as tmp:
        root = Path(tmp)
        val = QUICK_VAL if quick else 5_000
        staged = stage(root / "data", data, QUICK_IMAGES if quick else None, val, data_dir)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for repeat in range(repeats):
            seed = SEEDS[repeat % len(SEEDS)]
            for name in names:
                runs[name].append(_child(name, staged, threads, seed, quick, root / f"{name}-{repeat}"))
    load_after = os.getloadavg()

    def paired(name: str, base: str) -> list[float]:
        # Against the other contender of its own round: a burst of load from elsewhere skews one round's ratio.
        return [r["seconds"] / b["seconds"] for r, b in zip(runs[name], runs[base], strict=True)]

    vs_baseline = {name: paired(name, BASELINE) for name in names}
    vs_hand = {name: paired(name, hand) for name, hand in HAND_OF.items() if name in names}
    goals: dict[str, dict[str, bool]] = {}
    for name in names:
        contender = CONTENDERS[name]
        if contender.target is not None and contender.max_ratio is not None:
            goals[name] = {
                "accuracy": min(r["test_acc"] for r in runs[name]) >= contender.target,
                "time": statistics.median(vs_baseline[name]) <= contender.max_ratio,
                "vs_hand": statistics.median(vs_hand[name]) <= HAND_GOAL,
            }
    return {
        "data": staged.kind,
        "data_description": staged.describe(),
        "test_images": staged.test_images,
        "threads": threads,
        "repeats": repeats,
        "seeds": [SEEDS[r % len(SEEDS)] for r in range(repeats)],
        "load_before": load_before,
        "load_after": load_after,
        "seconds": {name: statistics.median(r["seconds"] for r in runs[name]) for name in names},
        "ratio_vs_baseline": {name: statistics.median(v) for name, v in vs_baseline.items()},
        "ratio_vs_baseline_per_round": vs_baseline,
        "ratio_vs_hand": {name: statistics.median(v) for name, v in vs_hand.items()},
        "ratio_vs_hand_per_round": vs_hand,
        "runs": runs,
        "goals": goals,
    }


def tables(results: dict[str, Any]) -> list[Table]:
    rows = []
    for name, runs in results["runs"].items():
        per_round = ", ".join(ratio(r) for r in results["ratio_vs_baseline_per_round"][name])
        vs_hand = ratio(results["ratio_vs_hand"][name]) if name in results["ratio_vs_hand"] else ""
        rows.append(
            [
                CONTENDERS[name].label,
                runs[0]["setup"],
                f"{results['seconds'][name]:.1f}",
                f"{statistics.median(r['process_seconds'] for r in runs):.1f}",
                ratio(results["ratio_vs_baseline"][name]),
                per_round,
                vs_hand,
                ", ".join(f"{r['test_acc']:.2%}" for r in runs),
            ]
        )
    seeds = ", ".join(str(s) for s in results["seeds"])
    rounds = f"{results['repeats']} round" + ("s" if results["repeats"] > 1 else "")
    title = (
        f"7. Time to accuracy: Fashion-MNIST fit + test, CPU, {results['threads']} threads, {rounds} (seeds {seeds})"
    )
    notes = []
    for name, met in results["goals"].items():
        contender = CONTENDERS[name]
        notes.append(
            f"Goal, {contender.label}: test accuracy >= {contender.target:.1%} with every seed: "
            f"{verdict(met['accuracy'])}; time <= {contender.max_ratio:.2f}x the baseline's: {verdict(met['time'])} "
            f"({ratio(results['ratio_vs_baseline'][name])}); time <= {HAND_GOAL:.2f}x the hand-written loop's: "
            f"{verdict(met['vs_hand'])} ({ratio(results['ratio_vs_hand'][name])})."
        )
    before, after = results["load_before"], results["load_after"]
    notes += [
        f"Data: {results['data_description']}; test accuracy is the run's own test/acc on the "
        f"{results['test_images']:,} test images.",
        "s: median seconds of a fresh process after its imports, from before data loading to the end of the test "
        "pass (decoding, compilation, training, validation, checkpoints, test); process s: launch to exit. The "
        "contenders take turns; vs baseline (vs hand loop) is the median over rounds of the time over the baseline's "
        "(the hand-written loop's) in the same round.",
        f"Load average (1, 5, 15 min) before: {before[0]:.1f}, {before[1]:.1f}, {before[2]:.1f}; "
        f"after: {after[0]:.1f}, {after[1]:.1f}, {after[2]:.1f} (on 2 cores, above 2 means other work competed).",
    ]
    header = ["contender", "settings", "s", "process s", "vs baseline", "per round", "vs hand loop", "test acc"]
    return [Table(title, header, rows, notes)]


def child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and test one time-to-accuracy contender once, timed.")
    parser.add_argument("--contender", choices=list(CONTENDERS), required=True)
    parser.add_argument("--data-root", type=Path, required=True, help="the folder holding the Fashion-MNIST files")
    parser.add_argument("--val-size", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=SEEDS[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one epoch (the smoke test's size)")
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the recipe's")
    parser.add_argument("--work-dir", type=Path, help="for plkit's run folder (default: a temporary folder)")
    parser.add_argument("--result", type=Path, help="write the result here as JSON (default: print it)")
    parser.add_argument("--profile", action="store_true", help="plkit contenders: print Lightning's simple profile")
    args = parser.parse_args(argv)
    contender = CONTENDERS[args.contender]
    if args.profile and contender.runner != "plkit":
        parser.error(f"--profile profiles a plkit contender, not {args.contender!r}: pass --contender recipe")

    import torch

    torch.set_num_threads(args.threads)
    from benchmarks import _accuracy_runs as runs  # every contender's imports, untimed

    with tempfile.TemporaryDirectory(prefix="plkit-bench-acc-") as tmp:
        epochs = 1 if args.quick else args.epochs
        settings = runs.Settings.from_configs(contender.configs, args.seed, args.val_size, epochs)
        work = args.work_dir or Path(tmp)
        start = time.perf_counter()
        if contender.runner == "plkit":
            result = runs.plkit_fit(contender.configs, settings, args.data_root, work, args.profile)
        else:
            result = runs.hand_loop(settings, args.data_root)
        result["seconds"] = time.perf_counter() - start
        if args.profile:
            print((work / "fit-profile.txt").read_text())
    result.update(contender=args.contender, setup=settings.describe(), threads=torch.get_num_threads(), seed=args.seed)
    text = json.dumps(result)
    if args.result:
        args.result.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    child_main()
