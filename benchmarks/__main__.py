"""``python -m benchmarks``: measure plkit against bare Lightning and hand-written code, print one table each.

Sections (``--only`` picks some): ``training`` (epoch wall time, four contenders in fresh processes),
``export`` (EmbeddingWriter), ``gradnorm`` (GradNormLogger), ``startup`` (the ``plkit`` command), ``gpu``
(images/s lever by lever, plkit and a hand loop; skipped without CUDA), ``latency`` (inference in each ``plkit
export`` format) and ``accuracy`` (time to a tested Fashion-MNIST accuracy: the recipes against the configuration
before the levers and a hand loop). ``--quick`` is the smoke-test size; ``--json`` and ``--markdown`` write the
results and the tables (the README's performance section is the Markdown of a full run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._data import REAL_DIR

SECTIONS = ("training", "export", "gradnorm", "startup", "gpu", "latency", "accuracy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smoke-test size: small data, 1 repeat")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {','.join(SECTIONS)}")
    repeats_help = "rounds of the training, start-up and accuracy runs (default 3, 5 and 2)"
    parser.add_argument("--repeats", type=int, help=repeats_help)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every contender (default 2)")
    data_help = "real Fashion-MNIST (its Debian package), generated images, or auto: real when installed (default)"
    parser.add_argument("--data", choices=("auto", "real", "generated"), default="auto", help=data_help)
    dir_help = f"the folder of real Fashion-MNIST's four .gz files (default {REAL_DIR})"
    parser.add_argument("--data-dir", type=Path, default=REAL_DIR, help=dir_help)
    parser.add_argument("--json", type=Path, help="write every number to this JSON file")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown (the README's section)")
    return parser


def _sections(value: str, parser: argparse.ArgumentParser) -> list[str]:
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        parser.error(f"--only {value!r}: choose among {','.join(SECTIONS)}")
    return [s for s in SECTIONS if s in chosen]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> dict[str, Any]:
    """The date, CPU, GPU and versions a run was measured with."""
    import lightning
    import torch

    import plkit

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "plkit": plkit.__version__,
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['date']} | {m['cpu_count']} CPUs ({m['cpu']}), torch threads {m['torch_threads']} | GPU: {m['gpu']} | "
        f"python {m['python']}, torch {m['torch']}, lightning {m['lightning']}, plkit {m['plkit']}"
    )


def _runners(args: argparse.Namespace) -> dict[str, tuple[Callable[[], dict[str, Any]], Callable[..., list]]]:
    """Each section's ``run`` and ``tables``, imported only when the section runs."""
    from benchmarks import accuracy, callbacks, export_latency, gpu, startup, training

    return {
        "training": (
            lambda: training.run(args.quick, args.repeats, args.data, args.threads, args.data_dir),
            training.tables,
        ),
        "export": (lambda: callbacks.run_export(args.quick), callbacks.export_tables),
        "gradnorm": (lambda: callbacks.run_grad_norm(args.quick), callbacks.grad_norm_tables),
        "startup": (lambda: startup.run(args.quick, args.repeats), startup.tables),
        "gpu": (lambda: gpu.run(args.quick, args.data, data_dir=args.data_dir), gpu.tables),
        "latency": (lambda: export_latency.run(args.quick), export_latency.tables),
        "accuracy": (
            lambda: accuracy.run(args.quick, args.repeats, args.data, args.threads, args.data_dir),
            accuracy.tables,
        ),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the chosen sections in order, printing each table as soon as its section ends."""
    parser = _parser()
    args = parser.parse_args(argv)
    sections = _sections(args.only, parser)
    import lightning.pytorch
    import torch

    # Lightning's "GPU available: ..." lines from the in-process sections would land in the middle of the tables
    # (Lightning sets its logger's level when imported: this must come after the import).
    logging.getLogger(lightning.pytorch.__name__).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)  # the in-process sections (export, gradnorm) use the same count
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    info = machine(args.threads)
    header = [f"plkit benchmarks{' (--quick)' if args.quick else ''}: {command}", machine_line(info)]
    print("\n".join(header), end="\n\n", flush=True)
    results: dict[str, Any] = {"command": command, "quick": args.quick, "machine": info, "sections": {}}
    markdown = [f"Measured {info['date']} with `{command}` on: {machine_line(info).split(' | ', 1)[1]}."]
    runners = _runners(args)
    for name in sections:
        run, tables = runners[name]
        start = time.perf_counter()
        results["sections"][name] = run()
        results["sections"][name]["wall_s"] = time.perf_counter() - start
        for table in tables(results["sections"][name]):
            print(table.text(), end="\n\n", flush=True)
            markdown.append(table.markdown())
        print(f"({name}: {results['sections'][name]['wall_s']:.0f} s)", end="\n\n", flush=True)
    if args.json:
        _write(args.json, json.dumps(results, indent=2, default=str) + "\n")
    if args.markdown:
        _write(args.markdown, "\n\n".join(markdown) + "\n")


def _write(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: an interrupted run leaves no half file that looks complete."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


if __name__ == "__main__":
    main()
