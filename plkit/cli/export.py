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
import importlib
import inspect
import io
import json
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.cli import instantiate_module
from torch import Tensor, nn

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
)
from plkit.cli._export_formats import versions as format_versions
from plkit.cli._files import write_atomically
from plkit.cli._run_dir import FIT_CONFIG, run_of_checkpoint
from plkit.models import AutoEncoder, ImageClassifier

__all__ = ["Deployable", "ExportReport", "export_checkpoint", "run_export_command"]

PARTS = ("encoder", "full")
#: rows of the verification batch: enough to cover a batch's worth of real variety, cheap on any format.
VERIFY_ROWS = 32
DEFAULT_TOLERANCE = 1e-4


class Deployable(nn.Module):
    """The function ``plkit export`` writes: a model's ``forward``, or an ``AutoEncoder``'s reconstruction.

    With ``mean`` and ``std`` it takes raw ``uint8`` images ``[B, C, H, W]`` (0-255, as the data files
    hold them) and normalises them as plkit's image data modules do, ``(pixel / 255 - mean) / std`` per
    channel; with ``softmax`` it returns class probabilities instead of logits.

    Args:
        model: the trained module, in eval mode.
        part: ``"encoder"`` (an ``AutoEncoder``'s ``forward``: the embedding), ``"full"`` (its decoder
            applied to the embedding: the reconstruction, shaped like the input) or ``"forward"`` (any
            other model's ``forward``).
        mean: per-channel mean of the pixel values in [0, 1], or ``None`` for inputs already normalised.
        std: per-channel standard deviation, with ``mean``.
        softmax: apply a softmax over the last dimension of the output.

    Example:
        >>> classifier = ImageClassifier(num_classes=3, in_channels=1, width=4).eval()
        >>> deployable = Deployable(classifier, "forward", mean=(0.5,), std=(0.25,), softmax=True)
        >>> probabilities = deployable(torch.full((2, 1, 28, 28), 255, dtype=torch.uint8))
        >>> probabilities.shape, probabilities.sum(dim=1).allclose(torch.ones(2))
        (torch.Size([2, 3]), True)
    """

    def __init__(
        self,
        model: nn.Module,
        part: str = "forward",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        softmax: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.part = part
        self.softmax = softmax
        self.normalise = mean is not None
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, inputs: Tensor) -> Tensor:
        if self.normalise:
            inputs = (inputs.float() / 255.0 - self.mean) / self.std
        outputs = self.model(inputs)
        if self.part == "full":
            outputs = self.model.decoder(outputs).reshape(inputs.shape)
        return outputs.softmax(dim=-1) if self.softmax else outputs


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_checkpoint` wrote and how it checked it."""

    path: Path
    metadata_path: Path
    metadata: dict[str, Any]

    def lines(self) -> list[str]:
        """The command's output: what was exported, the check, the files."""
        meta, check = self.metadata, self.metadata["verification"]
        lines = [f"exported {meta['model']} ({meta['part']}) from {meta['checkpoint']['path']} as {meta['format']}"]
        if meta["format"] == "torchscript":
            lines.append("note: TorchScript is deprecated in PyTorch; exported_program is its successor")
        lines.append(
            f"verified with {check['runtime']} on {check['inputs']} inputs ({check['source']}), batches of "
            f"{' and '.join(map(str, check['batch_sizes']))}: max abs difference {check['max_abs_diff']:.2e} "
            f"<= {check['tolerance']:.2e}"
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
            (inputs to reconstructions); ``None`` for other models.
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
    if part is not None and part not in PARTS:
        raise UsageError(f"--part {part!r}: choose {' or '.join(PARTS)} (an AutoEncoder's encoder, or all of it)")
    if not tolerance > 0:
        raise UsageError(f"--tolerance {tolerance}: it must be > 0, e.g. {DEFAULT_TOLERANCE}")
    ckpt = Path(ckpt_path)
    data, checkpoint = _read_checkpoint(ckpt)
    out_dir = Path(output_dir) if output_dir is not None else _run_folder(ckpt) / "export"
    target = out_dir / FILENAMES[fmt]
    metadata_path = target.with_name(f"{target.name}.json")
    if not force and (target.exists() or metadata_path.exists()):
        raise UsageError(f"{out_dir} already holds an export as {fmt} ({target.name}): pass --force to replace it")

    sections = _sections(ckpt, checkpoint)
    model = _load_model(ckpt, data, sections["model"])
    part = _part(model, part)
    datamodule, data_note = _build_datamodule(sections.get("data"))
    mean, std = _normalisation(datamodule)
    if raw_images and mean is None:
        raise UsageError(
            f"--raw_images needs the normalisation of an image data module (mean, std); {ckpt} names "
            f"{type(datamodule).__name__ if datamodule else 'no data module'}: export without --raw_images"
        )
    deployable = Deployable(
        model,
        part,
        mean if raw_images else None,
        std if raw_images else None,
        softmax=raw_images and isinstance(model, ImageClassifier),
    ).eval()
    inputs, kind, source = _verification_inputs(datamodule, data_note, model, raw_images, mean, std)
    with torch.no_grad():
        try:
            reference = deployable(inputs)
        except Exception as err:
            raise UsageError(
                f"{type(model).__name__} fails on inputs of shape {list(inputs.shape)} from {source}: "
                f"{type(err).__name__}: {err}"
            ) from err
    if not isinstance(reference, Tensor):
        raise UsageError(f"{type(model).__name__}.forward returns {type(reference).__name__}: export needs one tensor")

    allowed = tolerance * max(1.0, float(reference.abs().max()))
    check: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        example = inputs[:2] if len(inputs) >= 2 else inputs.repeat(2, *[1] * (inputs.dim() - 1))
        try:
            save(deployable, example, fmt, tmp)
        except Exception as err:
            raise UsageError(_cannot_export(err, fmt, type(model).__name__, deployable, example)) from err
        run = load(tmp, fmt)
        with torch.no_grad():
            diffs = [
                (run(batch) - expected).abs().max()
                for batch, expected in ((inputs, reference), (inputs[:1], reference[:1]))
            ]
        check["max_abs_diff"] = float(max(diffs))
        if not check["max_abs_diff"] <= allowed:
            raise UsageError(
                f"the {fmt} file's outputs differ from the eager model's by {check['max_abs_diff']:.2e} "
                f"(tolerance {allowed:.2e}) on {source}: nothing kept; raise --tolerance if that is expected"
            )
        check["versions"] = format_versions(fmt, tmp)
        check["sha256"] = hashlib.sha256(tmp.read_bytes()).hexdigest()
        # The metadata of a replaced export goes before the new file arrives: never a file with another's JSON.
        metadata_path.unlink(missing_ok=True)

    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(target, write)
    except OSError as err:
        raise UsageError(f"cannot write {target} ({err.strerror or err}): choose another --output_dir") from err
    finally:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()

    metadata = {
        "format": fmt,
        "file": target.name,
        "sha256": check["sha256"],
        "model": sections["model"]["class_path"],
        "part": part,
        "input": {"name": "input", "shape": ["batch", *inputs.shape[1:]], "dtype": _dtype(inputs)},
        "output": {"name": "output", "shape": ["batch", *reference.shape[1:]], "dtype": _dtype(reference)},
        "output_is": _output_meaning(model, part, raw_images),
        "normalisation": _normalisation_note(mean, std, raw_images),
        "num_classes": model.hparams.get("num_classes") if isinstance(model, ImageClassifier) else None,
        "class_names": _class_names(datamodule),
        "data_module": sections.get("data", {}).get("class_path"),
        "checkpoint": {"path": str(ckpt), "sha256": hashlib.sha256(data).hexdigest()},
        "verification": {
            "inputs": kind,
            "source": source,
            "batch_sizes": [len(inputs), 1],
            "max_abs_diff": check["max_abs_diff"],
            "tolerance": allowed,
            "runtime": RUNTIMES[fmt],
        },
        "versions": {**check["versions"], "lightning": lightning.__version__, "plkit": plkit.__version__},
    }
    write_atomically(metadata_path, lambda tmp: tmp.write_text(json.dumps(metadata, indent=2) + "\n"))
    return ExportReport(target, metadata_path, metadata)


def _read_checkpoint(ckpt: Path) -> tuple[bytes, dict[str, Any]]:
    """The checkpoint's bytes (hashed, then loaded from memory: the file is read once) and its contents."""
    if not ckpt.is_file():
        raise UsageError(f"--ckpt_path {str(ckpt)!r} is not a file: give a .ckpt such as RUN/checkpoints/best.ckpt")
    data = ckpt.read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        # torch.save writes a zip archive; anything else is truncated or another kind of file.
        raise UsageError(
            f"{ckpt} cannot be read as a checkpoint: it is not a torch.save archive (truncated, or another kind "
            "of file); give a .ckpt file that plkit fit wrote, such as RUN/checkpoints/best.ckpt"
        )
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(
            f"{ckpt} cannot be read as a checkpoint ({type(err).__name__}: {_first_line(err)}): "
            "give a .ckpt file that plkit fit wrote, such as RUN/checkpoints/best.ckpt"
        ) from None
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise UsageError(
            f"{ckpt} is not a Lightning checkpoint (no state_dict): give a .ckpt file that plkit fit wrote"
        )
    return data, dict(checkpoint)


def _run_folder(ckpt: Path) -> Path:
    location = run_of_checkpoint(ckpt)
    return location.path if location is not None else ckpt.resolve().parent


def _sections(ckpt: Path, checkpoint: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``model`` and ``data`` config sections (``class_path`` + ``init_args``) that the checkpoint was trained with.

    The run's ``config.yaml`` first, as ``plkit test --ckpt_path`` reads it; else the classes that
    ``LightningCLI`` records in the checkpoint's hyperparameters.
    """
    location = run_of_checkpoint(ckpt)
    saved = location.path / FIT_CONFIG if location is not None else None
    sections: dict[str, dict[str, Any]] = {}
    if saved is not None and saved.is_file():
        config = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        sections = {key: config[key] for key in ("model", "data") if isinstance(config.get(key), dict)}
    for key, section in (("hyper_parameters", "model"), ("datamodule_hyper_parameters", "data")):
        hparams = dict(checkpoint.get(key) or {})
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        if section not in sections and class_path is not None:
            sections[section] = {"class_path": class_path, "init_args": hparams}
    if "class_path" not in sections.get("model", {}):
        raise UsageError(
            f"{ckpt} does not record its model class (it was not written by plkit fit or LightningCLI) and no "
            f"{FIT_CONFIG} lies in its run folder: export it from Python with plkit.cli.export.Deployable"
        )
    return sections


def _import(class_path: str, base: type) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name) if module_name else None
    except (ImportError, AttributeError):
        cls = None
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise UsageError(f"cannot import {class_path!r} as a {base.__name__}: install the package that defines it")
    return cls


def _load_model(ckpt: Path, data: bytes, section: Mapping[str, Any]) -> pl.LightningModule:
    cls = _import(section["class_path"], pl.LightningModule)
    # The eager forward, never a compiled wrapper: torch.export captures the Python code itself.
    overrides = {"compile": False} if "compile" in _init_parameters(cls) else {}
    try:
        model = cls.load_from_checkpoint(io.BytesIO(data), map_location="cpu", **overrides)
    except Exception as err:
        raise UsageError(f"cannot rebuild {cls.__name__} from {ckpt}: {type(err).__name__}: {err}") from err
    return model.eval()


def _init_parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def _part(model: nn.Module, part: str | None) -> str:
    if isinstance(model, AutoEncoder):
        return part or "encoder"
    if part is not None:
        raise UsageError(f"--part {part} applies to an AutoEncoder; {type(model).__name__} exports its forward")
    return "forward"


def _build_datamodule(section: Mapping[str, Any] | None) -> tuple[pl.LightningDataModule | None, str]:
    """The run's data module (it reads no files yet), or ``None`` and why."""
    if not section or "class_path" not in section:
        return None, "the run names no data module"
    config = {"_class_path": section["class_path"], **(section.get("init_args") or {})}
    try:
        return instantiate_module(pl.LightningDataModule, config), ""
    except Exception as err:
        return None, f"{section['class_path']} could not be built: {type(err).__name__}: {err}"


def _normalisation(datamodule: pl.LightningDataModule | None) -> tuple[list[float] | None, list[float] | None]:
    """``mean`` and ``std`` of a plkit image data module (its class attributes), else ``(None, None)``."""
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    if mean is None or std is None or getattr(datamodule, "image_shape", None) is None:
        return None, None
    return [float(m) for m in mean], [float(s) for s in std]


def _verification_inputs(
    datamodule: pl.LightningDataModule | None,
    data_note: str,
    model: pl.LightningModule,
    raw_images: bool,
    mean: list[float] | None,
    std: list[float] | None,
) -> tuple[Tensor, str, str]:
    """A batch to compare the eager model and the file on: ``(inputs, "real" or "synthetic", where from)``."""
    if datamodule is not None:
        name = type(datamodule).__name__
        try:
            datamodule.setup("predict")
            batch = next(iter(datamodule.predict_dataloader()))
        except Exception as err:
            data_note = f"{name}'s files are not here: {type(err).__name__}: {_first_line(err)}"
        else:
            inputs = (
                batch["input"] if isinstance(batch, Mapping) else batch[0] if isinstance(batch, Sequence) else batch
            )
            inputs = inputs[:VERIFY_ROWS]
            split = getattr(datamodule, "predict_split", "predict")
            source = f"the first {len(inputs)} of {name}'s {split} split"
            if raw_images and mean is not None and std is not None:
                # Undo the data module's normalisation: the pixels as the data files hold them.
                shape = (1, -1, *[1] * (inputs.dim() - 2))
                pixels = (inputs * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)) * 255
                inputs = pixels.round().clamp(0, 255).to(torch.uint8)
            return inputs, "real", source
    shape = _input_shape(datamodule, model)
    generator = torch.Generator().manual_seed(0)
    if raw_images:
        inputs = torch.randint(0, 256, (VERIFY_ROWS, *shape), generator=generator, dtype=torch.uint8)
    else:
        inputs = torch.randn(VERIFY_ROWS, *shape, generator=generator)
    return inputs, "synthetic", f"{VERIFY_ROWS} random inputs; {data_note}"


def _input_shape(datamodule: pl.LightningDataModule | None, model: pl.LightningModule) -> tuple[int, ...]:
    """One input's shape without data: the image data module's, the model's ``input_shape`` or example input."""
    for shape in (
        getattr(datamodule, "image_shape", None),
        model.hparams.get("input_shape"),
        None if model.example_input_array is None else tuple(model.example_input_array.shape[1:]),
    ):
        if shape:
            return tuple(int(d) for d in shape)
    raise UsageError(
        f"cannot tell the input shape of {type(model).__name__}: its data files are not here and neither the data "
        "module (image_shape) nor the model (example_input_array) gives it; set example_input_array in the model"
    )


def _cannot_export(err: Exception, fmt: str, model_name: str, module: nn.Module, example: Tensor) -> str:
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
    return f"{fmt} cannot export {model_name}: {explain(err)}; {advice}"


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), "")[:200]


def _dtype(tensor: Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _output_meaning(model: nn.Module, part: str, raw_images: bool) -> str:
    if isinstance(model, ImageClassifier):
        return "class probabilities (softmax)" if raw_images else "logits"
    if isinstance(model, AutoEncoder):
        return "reconstructions, normalised like the inputs" if part == "full" else "embeddings"
    return "the model's forward output"


def _normalisation_note(mean: list[float] | None, std: list[float] | None, raw_images: bool) -> dict[str, Any] | None:
    if mean is None:
        return None
    where = "inside the file (it takes uint8 pixels)" if raw_images else "by the caller, before the file"
    return {"mean": mean, "std": std, "formula": "(pixel / 255 - mean) / std, per channel", "applied": where}


def _class_names(datamodule: pl.LightningDataModule | None) -> list[str] | None:
    names = getattr(datamodule, "class_names", None)
    return [str(name) for name in names] if names else None


def run_export_command(argv: Sequence[str]) -> None:
    """Run ``plkit export --ckpt_path CKPT --format FORMAT [...]``."""
    parser = argparse.ArgumentParser(prog="plkit export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ckpt_path", required=True, help="a checkpoint, e.g. runs/mnist/version_0/checkpoints/best.ckpt"
    )
    parser.add_argument("--format", required=True, help=f"{' | '.join(FORMATS)} (onnx needs plkit[export])")
    parser.add_argument("--part", help="AutoEncoder only: encoder (inputs -> embeddings, the default) or full")
    raw_help = "take uint8 images and normalise them inside the file; a classifier returns probabilities (softmax)"
    parser.add_argument("--raw_images", action="store_true", help=raw_help)
    parser.add_argument("--output_dir", help="where to write (default: the run's export/ folder)")
    parser.add_argument("--force", action="store_true", help="replace an export of the same format")
    tolerance_help = (
        f"largest allowed |file - eager| (relative to the largest output above 1; default {DEFAULT_TOLERANCE})"
    )
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help=tolerance_help)
    args = parser.parse_args(list(argv))
    report = export_checkpoint(
        args.ckpt_path, args.format, args.part, args.raw_images, args.output_dir, args.force, args.tolerance
    )
    for line in report.lines():
        print(line)
