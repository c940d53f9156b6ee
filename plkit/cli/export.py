"""``plkit export``: turn a run's checkpoint into ONNX, TorchScript or an ExportedProgram, verified before it is kept.

``plkit export --ckpt_path RUN/checkpoints/best.ckpt --format onnx`` needs no ``--config``: the run's
``config.yaml`` (or, for a checkpoint moved elsewhere, the classes its hyperparameters record) names the
model and the data module. It writes ``RUN/export/model.onnx`` (``model.torchscript.pt``, ``model.pt2``)
and, beside it, ``model.onnx.json``: the input's shape and dtype, the data module's normalisation, class
names where the data module has them, versions, and the SHA-256 of the checkpoint and of the file.

Before anything is kept, one batch of real inputs (the first predict batch of the run's data module, when
its files are on this machine; else random inputs of the right shape, and the JSON says which) goes
through the eager model and through the exported file, loaded back by its runtime, at its full size and
at one row (the batch dimension is dynamic); a difference above the tolerance keeps nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import Tensor

import plkit
from plkit.cli._errors import UsageError
from plkit.cli._export_formats import (
    FILENAMES,
    FORMATS,
    RUNTIMES,
    CaptureError,
    check_extra,
    check_format,
    explain,
    load,
    save,
    versions,
)
from plkit.cli._export_source import (
    Deployable,
    check_part,
    config_sections,
    default_folder,
    first_line,
    load_datamodule,
    load_model,
    normalisation,
    output_meaning,
    read_checkpoint,
    verification_inputs,
)
from plkit.cli._files import write_atomically
from plkit.cli._run_dir import recipe_checkpoint
from plkit.models import ImageClassifier

__all__ = ["ExportReport", "export_checkpoint", "run_export_command"]

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_checkpoint` wrote, and its metadata (the JSON beside the file)."""

    path: Path
    metadata_path: Path
    metadata: dict[str, Any]

    def lines(self) -> list[str]:
        """The command's output: what was exported, how it was checked, the files."""
        meta, check = self.metadata, self.metadata["verification"]
        lines = [f"exported {meta['model']} ({meta['part']}) from {meta['checkpoint']['path']} as {meta['format']}"]
        if meta["format"] == "torchscript":
            lines.append("note: TorchScript is deprecated in PyTorch; exported_program is its successor")
        sizes = " and ".join(map(str, check["batch_sizes"]))
        lines.append(
            f"verified with {check['runtime']} on {check['inputs']} inputs ({check['source']}), batches of {sizes}: "
            f"max abs difference {check['max_abs_diff']:.2e} <= {check['tolerance']:.2e}"
        )
        lines.append(f"wrote {self.path} and {self.metadata_path.name}")
        return lines


def export_checkpoint(
    ckpt_path: str | Path,
    format: str,
    part: str | None = None,
    raw_images: bool = False,
    output_dir: str | Path | None = None,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportReport:
    """Export the model of a checkpoint in ``format``, verify the file against the eager model, then keep it.

    Args:
        ckpt_path: a checkpoint written by ``plkit fit`` (or any ``LightningCLI``), e.g.
            ``runs/mnist/version_0/checkpoints/best.ckpt``.
        format: ``"onnx"`` (needs ``plkit[export]``), ``"torchscript"`` or ``"exported_program"``.
        part: for an ``AutoEncoder``, ``"encoder"`` (the default: inputs to embeddings) or ``"full"``
            (inputs to reconstructions); ``None`` for other models, which export their ``forward``.
        raw_images: the file takes ``uint8`` images as the data files hold them and applies the data
            module's normalisation itself; a classifier's file then returns probabilities (softmax).
        output_dir: where to write; ``None`` is the run's ``export/`` folder (beside ``checkpoints/``).
        force: replace an export of the same format already in ``output_dir``.
        tolerance: the largest allowed difference between the file's outputs and the eager model's,
            relative to the largest eager output when that exceeds 1.

    Raises:
        UsageError: a checkpoint that cannot be read or rebuilt, a bad format or part, a missing extra, an
            existing export without ``force``, a model the format cannot express, or a failed verification.
            Nothing is left in ``output_dir`` then.

    Returns:
        The paths written and the metadata.
    """
    fmt = check_format(format)
    check_extra(fmt)
    if not tolerance > 0:
        raise UsageError(f"--tolerance {tolerance}: it must be > 0, e.g. {DEFAULT_TOLERANCE}")
    ckpt = Path(ckpt_path)
    data, checkpoint = read_checkpoint(ckpt)
    target = (Path(output_dir) if output_dir is not None else default_folder(ckpt)) / FILENAMES[fmt]
    metadata_path = target.with_name(f"{target.name}.json")
    if not force and (target.exists() or metadata_path.exists()):
        raise UsageError(
            f"{target.parent} already holds an export as {fmt} ({target.name}): pass --force to replace it"
        )

    sections = config_sections(ckpt, checkpoint)
    model = load_model(ckpt, data, sections["model"])
    part = check_part(model, part)
    datamodule, data_note = load_datamodule(sections.get("data"))
    norm = normalisation(datamodule)
    if raw_images and norm is None:
        raise UsageError(
            f"--raw_images needs the normalisation of an image data module (mean, std), and {ckpt} names "
            f"{type(datamodule).__name__ if datamodule else 'no data module'}: export without --raw_images"
        )
    raw = norm if raw_images else None
    mean, std = raw or (None, None)
    softmax = raw_images and isinstance(model, ImageClassifier)
    deployable = Deployable(model, reconstruct=part == "full", mean=mean, std=std, softmax=softmax).eval()
    inputs, kind, source = verification_inputs(datamodule, data_note, model, raw)
    with torch.no_grad():
        try:
            expected = deployable(inputs)
        except Exception as err:
            raise UsageError(f"{type(model).__name__} fails on {source}: {first_line(err)}") from err
    if not isinstance(expected, Tensor):
        raise UsageError(f"{type(model).__name__}.forward returns {type(expected).__name__}: export needs one tensor")

    check, sha256, file_versions = _write_verified(target, fmt, deployable, inputs, expected, tolerance, source)
    check.update(inputs=kind, source=source, batch_sizes=[len(inputs), 1], runtime=RUNTIMES[fmt])
    metadata = {
        "format": fmt,
        "file": target.name,
        "sha256": sha256,
        "model": sections["model"]["class_path"],
        "part": part,
        "input": {"name": "input", "shape": ["batch", *inputs.shape[1:]], "dtype": _dtype(inputs)},
        "output": {"name": "output", "shape": ["batch", *expected.shape[1:]], "dtype": _dtype(expected)},
        "output_is": output_meaning(model, part, softmax),
        "normalisation": None if norm is None else _normalisation_note(*norm, raw_images),
        "num_classes": model.hparams.get("num_classes") if isinstance(model, ImageClassifier) else None,
        "class_names": _class_names(datamodule),
        "data_module": sections.get("data", {}).get("class_path"),
        "checkpoint": {"path": str(ckpt), "sha256": hashlib.sha256(data).hexdigest()},
        "verification": check,
        "versions": {**file_versions, "lightning": lightning.__version__, "plkit": plkit.__version__},
    }
    write_atomically(metadata_path, lambda tmp: tmp.write_text(json.dumps(metadata, indent=2) + "\n"))
    return ExportReport(target, metadata_path, metadata)


def _write_verified(
    target: Path, fmt: str, module: Deployable, inputs: Tensor, expected: Tensor, tolerance: float, source: str
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Export ``module`` to a temporary file, check it on ``inputs`` and on one row, then rename it to ``target``.

    The metadata of an export it replaces is removed first, so no file ever sits beside another's JSON; a
    folder it had to create is removed again when nothing could be kept.

    Returns:
        The check (``max_abs_diff``, ``tolerance``), the file's SHA-256, and the versions it depends on.
    """
    allowed = tolerance * max(1.0, float(expected.abs().max()))
    kept: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        # Two rows, so that torch.export does not specialise the batch dimension to 1.
        example = inputs[:2] if len(inputs) >= 2 else inputs.repeat(2, *[1] * (inputs.dim() - 1))
        try:
            save(module, example, fmt, tmp)
        except Exception as err:
            raise UsageError(_cannot_export(err, fmt, module, example)) from err
        try:
            run = load(tmp, fmt)
            with torch.no_grad():
                outputs = [(run(batch), want) for batch, want in ((inputs, expected), (inputs[:1], expected[:1]))]
        except Exception as err:
            raise UsageError(f"the {fmt} file fails in {RUNTIMES[fmt]}: {first_line(err)}") from err
        for got, want in outputs:
            if got.shape != want.shape:
                raise UsageError(
                    f"the {fmt} file returns {list(got.shape)} where the eager model returns {list(want.shape)}: "
                    "nothing kept"
                )
        diff = max(float((got - want).abs().max()) for got, want in outputs)
        if not diff <= allowed:
            raise UsageError(
                f"the {fmt} file's outputs differ from the eager model's by {diff:.2e} (tolerance {allowed:.2e}) "
                f"on {source}: nothing kept; raise --tolerance if that is expected"
            )
        kept.update(
            check={"max_abs_diff": diff, "tolerance": allowed},
            sha256=hashlib.sha256(tmp.read_bytes()).hexdigest(),
            versions=versions(fmt, tmp),
        )
        target.with_name(f"{target.name}.json").unlink(missing_ok=True)

    folder = target.parent
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(target, write)
    except OSError as err:
        raise UsageError(f"cannot write {target} ({err.strerror or err}): choose another --output_dir") from err
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return kept["check"], kept["sha256"], kept["versions"]


def _cannot_export(err: Exception, fmt: str, module: Deployable, example: Tensor) -> str:
    """One line: the op or construct ``fmt`` failed on, and the formats that export the model instead."""
    works = []
    capture_failed = isinstance(err, CaptureError)
    with tempfile.TemporaryDirectory() as folder:
        # The successor of TorchScript first; ONNX last: it needs the extra, and translates torch.export's capture.
        for other in ("exported_program", "torchscript", "onnx"):
            if other == fmt or (other == "onnx" and capture_failed):
                continue
            try:
                check_extra(other)
                save(module, example, other, Path(folder) / FILENAMES[other])
            except CaptureError:
                capture_failed = True
                continue
            except Exception:
                continue
            works.append(other)
    if works:
        advice = f"{' and '.join(works)} {'works' if len(works) == 1 else 'work'}: --format {works[0]}"
    else:
        advice = "no other format exports it either"
    return f"{fmt} cannot export {type(module.model).__name__}: {explain(err)}; {advice}"


def _dtype(tensor: Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _normalisation_note(mean: list[float], std: list[float], inside: bool) -> dict[str, Any]:
    where = "inside the file (it takes uint8 pixels)" if inside else "by the caller, before the file"
    return {"mean": mean, "std": std, "formula": "(pixel / 255 - mean) / std, per channel", "applied": where}


def _class_names(datamodule: object) -> list[str] | None:
    names = getattr(datamodule, "class_names", None)
    return [str(name) for name in names] if names else None


def run_export_command(argv: Sequence[str]) -> None:
    """Run ``plkit export --ckpt_path CKPT --format FORMAT [--part P] [--raw_images] [--output_dir D] [--force]``."""
    description = "Export a checkpoint's model, verified against the eager model before it is kept (see README)."
    parser = argparse.ArgumentParser(prog="plkit export", description=description)
    parser.add_argument(
        "--ckpt_path", required=True, metavar="CKPT", help="e.g. runs/mnist/version_0/checkpoints/best.ckpt"
    )
    parser.add_argument(
        "--config",
        metavar="RECIPE",
        help="with --ckpt_path best or last: that checkpoint of the newest run of this recipe (or config file)",
    )
    parser.add_argument("--format", required=True, help=f"{' | '.join(FORMATS)} (onnx needs plkit[export])")
    parser.add_argument(
        "--part", metavar="{encoder,full}", help="AutoEncoder only: its encoder (the default) or all of it"
    )
    raw_help = "take uint8 images and normalise them inside the file; a classifier's returns probabilities"
    parser.add_argument("--raw_images", action="store_true", help=raw_help)
    parser.add_argument("--output_dir", metavar="DIR", help="where to write (default: the run's export/ folder)")
    parser.add_argument("--force", action="store_true", help="replace an export of the same format")
    tolerance_help = f"largest allowed |file - eager|, times the largest |output| above 1 (default {DEFAULT_TOLERANCE})"
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="T", help=tolerance_help)
    args = parser.parse_args(list(argv))
    ckpt_path = args.ckpt_path
    if ckpt_path in ("best", "last"):
        if args.config is None:
            raise UsageError(f"--ckpt_path {ckpt_path} needs --config RECIPE to know whose runs to look in")
        ckpt_path = recipe_checkpoint(args.config, ckpt_path)
    elif args.config is not None:
        raise UsageError(f"--config {args.config} only picks a run for --ckpt_path best or last: drop it")
    report = export_checkpoint(
        ckpt_path, args.format, args.part, args.raw_images, args.output_dir, args.force, args.tolerance
    )
    for line in report.lines():
        print(line)
