"""Comparison 1: wall time of one training epoch plus one validation pass, plkit against hand-written code.

Each run is a fresh process (``python -m benchmarks.training --contender NAME ...``), and the contenders take
turns (A B C D, A B C D, ...), so slow drifts of a shared machine hit them all alike. A child sets the thread
count, imports everything, then times the contender from before its data loading to the end of validation:
decoding the data counts for everyone, the interpreter's start and the imports for no one. It writes its
result as JSON to ``--result``.

Profile the plkit contender (one epoch of the recipe) with Lightning's simple profiler; plkit reads the Debian
package's ``.gz`` files where they are::

    python -m benchmarks.training --contender plkit --data-root /usr/share/datasets/fashion-mnist --profile
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
from pathlib import Path
from typing import Any

from benchmarks._data import REAL_DIR, StagedData, stage
from benchmarks._table import Table, ratio, verdict

REPO = Path(__file__).resolve().parents[1]
NAMES = ("hand_loop", "lightning_tensors", "lightning_torchvision", "plkit")
LABELS = {
    "hand_loop": "hand-written loop, in-memory tensors",
    "lightning_tensors": "bare Lightning, TensorDataset + DataLoader",
    "lightning_torchvision": "bare Lightning, torchvision dataset + per-sample PIL transforms",
    "plkit": "plkit fit, recipe + every default callback",
}
BASELINE = "hand_loop"
GOAL = 1.05  # plkit's epoch time over the hand-written loop's
QUICK_IMAGES, QUICK_VAL = 1_024, 128


def _child(name: str, data: StagedData, threads: int, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True)
    result = work / "result.json"
    command = [sys.executable, "-m", "benchmarks.training", "--contender", name, "--threads", str(threads)]
    command += ["--data-root", str(data.root), "--val-size", str(data.val_size), "--work-dir", str(work)]
    command += ["--result", str(result)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"the {name} contender failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(result.read_text())


def run(
    quick: bool, repeats: int | None = None, data: str = "auto", threads: int = 2, data_dir: Path = REAL_DIR
) -> dict[str, Any]:
    """Stage the data, run every contender ``repeats`` times in turn, and return the medians and ratios."""
    repeats = repeats or (1 if quick else 3)
    with tempfile.TemporaryDirectory(prefix="plkit-bench-") as tmp:
        root = Path(tmp)
        staged = stage(root / "data", data, QUICK_IMAGES if quick else None, QUICK_VAL if quick else 5_000, data_dir)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in NAMES}
        for repeat in range(repeats):
            for name in NAMES:
                runs[name].append(_child(name, staged, threads, root / f"{name}-{repeat}"))
    seconds = {name: statistics.median(r["seconds"] for r in runs[name]) for name in NAMES}
    # Each contender against the hand loop of its own round: the two ran minutes apart, not a whole run apart,
    # so a burst of load from elsewhere skews one round's ratio rather than a median's.
    base = [r["seconds"] for r in runs[BASELINE]]
    paired = {name: [r["seconds"] / b for r, b in zip(runs[name], base, strict=True)] for name in NAMES}
    ratios = {name: statistics.median(values) for name, values in paired.items()}
    return {
        "data": staged.kind,
        "data_description": staged.describe(),
        "threads": threads,
        "repeats": repeats,
        "train_images": staged.train_file_images - staged.val_size,
        "val_images": staged.val_size,
        "seconds": seconds,
        "fastest_seconds": {name: min(r["seconds"] for r in runs[name]) for name in NAMES},
        "ratio_vs_hand_loop": ratios,
        "ratio_vs_hand_loop_per_round": paired,
        "runs": runs,
        "goal": {"plkit_max_ratio": GOAL, "met": ratios["plkit"] <= GOAL},
    }


def tables(results: dict[str, Any]) -> list[Table]:
    ratios = results["ratio_vs_hand_loop"]
    rows = []
    for name in NAMES:
        runs = results["runs"][name]
        goal = f"<= {GOAL:.2f}x: {verdict(results['goal']['met'])}" if name == "plkit" else ""
        seconds = [f"{results['seconds'][name]:.2f}", f"{results['fastest_seconds'][name]:.2f}"]
        per_round = ", ".join(ratio(r) for r in results["ratio_vs_hand_loop_per_round"][name])
        accs = ", ".join(f"{r['val_acc']:.3f}" for r in runs)
        rows.append([LABELS[name], *seconds, ratio(ratios[name]), per_round, goal, str(runs[0]["train_steps"]), accs])
    rounds = f"{results['repeats']} round" + ("s" if results["repeats"] > 1 else "")
    title = (
        f"1. Training: one epoch ({results['train_images']:,} images, batch 128) + one validation pass "
        f"({results['val_images']:,}), CPU, {results['threads']} threads, {rounds}"
    )
    notes = [
        f"Data: {results['data_description']}.",
        "Each run is a fresh process, timed after its imports, from before data loading to the end of validation "
        "(data decoding counts for everyone). The contenders take turns, round after round; the ratio is the median "
        "over rounds of the time over the hand loop's in the same round.",
    ]
    header = ["contender", "median s", "fastest s", "vs hand loop", "per round", "goal", "steps", "val acc"]
    return [Table(title, header, rows, notes)]


def child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one training contender once and time it.")
    parser.add_argument("--contender", choices=NAMES, required=True)
    parser.add_argument("--data-root", type=Path, required=True, help="the folder holding FashionMNIST/raw/")
    parser.add_argument("--val-size", type=int, default=5_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, help="for plkit's run folder (default: a temporary folder)")
    parser.add_argument("--result", type=Path, help="write the result here as JSON (default: print it)")
    parser.add_argument("--profile", action="store_true", help="plkit only: print Lightning's simple profile")
    args = parser.parse_args(argv)
    if args.profile and args.contender != "plkit":
        parser.error(f"--profile profiles the plkit contender, not {args.contender!r}: pass --contender plkit")

    import torch

    torch.set_num_threads(args.threads)
    from benchmarks._contenders import CONTENDERS, Work, plkit_args  # every contender's imports, untimed

    with tempfile.TemporaryDirectory(prefix="plkit-bench-") as tmp:
        work = Work.from_recipe(args.data_root, args.val_size, args.work_dir or Path(tmp))
        if args.profile:
            from plkit.cli import main

            main(plkit_args(work, profile=True))
            print((work.work_dir / "fit-profile.txt").read_text())
            return
        start = time.perf_counter()
        result = CONTENDERS[args.contender](work)
        result["seconds"] = time.perf_counter() - start
    result.update(contender=args.contender, threads=torch.get_num_threads(), pid=os.getpid())
    text = json.dumps(result)
    if args.result:
        args.result.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    child_main()
