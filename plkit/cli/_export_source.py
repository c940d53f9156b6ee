"""What ``plkit export`` exports: the model a checkpoint holds, its data module, and a batch to check the file on.

The model and data module classes come from the run's ``config.yaml``, or from the classes the checkpoint's
hyperparameters record, exactly as for ``plkit test --ckpt_path``. The exported function is
:class:`Deployable`: the model's ``forward`` (an ``AutoEncoder``'s encoder), or the whole autoencoder, and
optionally the data module's normalisation and a softmax around it.
"""

from __future__ import annotations

import importlib
import inspect
import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import instantiate_module
from torch import Tensor, nn

from plkit.cli._errors import UsageError
from plkit.cli._run_dir import RunLocation, run_config
from plkit.models import AutoEncoder, ImageClassifier

__all__ = [
    "PARTS",
    "Deployable",
    "check_part",
    "config_sections",
    "default_folder",
    "first_line",
    "load_datamodule",
    "load_model",
    "normalisation",
    "output_meaning",
    "read_checkpoint",
    "verification_inputs",
]

PARTS = ("encoder", "full")
#: rows of the verification batch: a batch's worth of real variety, cheap in every format.
VERIFY_ROWS = 32
WRITTEN_BY_FIT = "give a .ckpt file that plkit fit wrote, such as RUN/checkpoints/best.ckpt"


class Deployable(nn.Module):
    """The function ``plkit export`` writes: a model's ``forward``, or an ``AutoEncoder``'s reconstruction.

    With ``mean`` and ``std`` it takes raw ``uint8`` images ``[B, C, H, W]`` (0-255, as the data files
    hold them) and normalises them as plkit's image data modules do, ``(pixel / 255 - mean) / std`` per
    channel; with ``softmax`` it returns class probabilities instead of logits.

    Args:
        model: the trained module, in eval mode.
        reconstruct: apply an ``AutoEncoder``'s decoder to its ``forward`` (the embedding): return the
            reconstruction, shaped like the input.
        mean: per-channel mean of the pixel values in [0, 1], or ``None`` for inputs already normalised.
        std: per-channel standard deviation, with ``mean``.
        softmax: apply a softmax over the last dimension of the output.

    Example:
        >>> classifier = ImageClassifier(num_classes=3, in_channels=1, width=4).eval()
        >>> deployable = Deployable(classifier, mean=(0.5,), std=(0.25,), softmax=True)
        >>> probabilities = deployable(torch.full((2, 1, 28, 28), 255, dtype=torch.uint8))
        >>> probabilities.shape, probabilities.sum(dim=1).allclose(torch.ones(2))
        (torch.Size([2, 3]), True)
    """

    def __init__(
        self,
        model: nn.Module,
        reconstruct: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        softmax: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.reconstruct = reconstruct
        self.softmax = softmax
        self.normalise = mean is not None and std is not None
        if self.normalise:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, inputs: Tensor) -> Tensor:
        if self.normalise:
            inputs = (inputs.float() / 255.0 - self.mean) / self.std
        outputs = self.model(inputs)
        if self.reconstruct:
            outputs = self.model.decoder(outputs).reshape(inputs.shape)
        return outputs.softmax(dim=-1) if self.softmax else outputs


def read_checkpoint(ckpt: Path) -> tuple[bytes, dict[str, Any]]:
    """The checkpoint's bytes (they are hashed, and the model is loaded from them) and what ``torch.load`` reads.

    Raises:
        UsageError: the file is missing, is not a ``torch.save`` archive, or holds no ``state_dict``.
    """
    if not ckpt.is_file():
        raise UsageError(f"--ckpt_path {str(ckpt)!r} is not a file: {WRITTEN_BY_FIT}")
    data = ckpt.read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        # torch.save writes a zip archive; anything else is truncated or another kind of file.
        raise UsageError(f"{ckpt} cannot be read as a checkpoint: it is not a torch.save archive; {WRITTEN_BY_FIT}")
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"{ckpt} cannot be read as a checkpoint ({first_line(err)}): {WRITTEN_BY_FIT}") from None
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise UsageError(f"{ckpt} is not a Lightning checkpoint (no state_dict): {WRITTEN_BY_FIT}")
    return data, dict(checkpoint)


def default_folder(ckpt: Path) -> Path:
    """``RUN/export`` for a checkpoint in a run's ``checkpoints/``, else ``export/`` beside the checkpoint."""
    location = RunLocation.of_checkpoint(ckpt)
    return (location.path if location is not None else ckpt.resolve().parent) / "export"


def config_sections(ckpt: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` and ``data`` sections (``class_path`` + ``init_args``) the checkpoint was trained with."""
    try:
        config = run_config(ckpt, checkpoint)
    except UsageError:
        raise UsageError(
            f"{ckpt} does not record its model class, and no config.yaml lies in its run folder: {WRITTEN_BY_FIT}"
        ) from None
    return {key: config[key] for key in ("model", "data") if isinstance(config.get(key), dict)}


def load_model(ckpt: Path, data: bytes, section: Mapping[str, Any]) -> pl.LightningModule:
    """The checkpoint's module in eval mode, on the CPU, built by its own ``load_from_checkpoint``.

    Raises:
        UsageError: the class cannot be imported, or the checkpoint does not fit it.
    """
    cls = _import(section["class_path"], pl.LightningModule)
    # The eager forward, never a compiled wrapper: the exporters capture the Python code itself.
    overrides = {"compile": False} if "compile" in inspect.signature(cls.__init__).parameters else {}
    try:
        model = cls.load_from_checkpoint(io.BytesIO(data), map_location="cpu", **overrides)
    except Exception as err:
        raise UsageError(f"cannot rebuild {cls.__name__} from {ckpt}: {first_line(err)}") from err
    return model.eval()


def _import(class_path: str, base: type) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name, None) if module_name else None
    except ImportError:
        cls = None
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise UsageError(f"cannot import {class_path!r} as a {base.__name__}: install the package that defines it")
    return cls


def check_part(model: nn.Module, part: str | None) -> str:
    """The part of ``model`` to export: an ``AutoEncoder``'s ``"encoder"`` (default) or ``"full"``, else ``"forward"``.

    Raises:
        UsageError: a part other than those, or a part asked of a model that is not an ``AutoEncoder``.
    """
    if part is not None and part not in PARTS:
        raise UsageError(f"--part {part!r}: choose {' or '.join(PARTS)} (an AutoEncoder's encoder, or all of it)")
    if not isinstance(model, AutoEncoder):
        if part is not None:
            raise UsageError(f"--part {part} applies to an AutoEncoder; {type(model).__name__} exports its forward")
        return "forward"
    return part or "encoder"


def load_datamodule(section: Mapping[str, Any] | None) -> tuple[pl.LightningDataModule | None, str]:
    """The run's data module (built, but it reads no files yet), or ``None`` and why not."""
    if not section or "class_path" not in section:
        return None, "the run names no data module"
    config = {"_class_path": section["class_path"], **(section.get("init_args") or {})}
    try:
        # What load_from_checkpoint does with the hyperparameters LightningCLI records.
        return instantiate_module(pl.LightningDataModule, config), ""
    except Exception as err:
        return None, f"{section['class_path']} could not be built: {first_line(err)}"


def normalisation(datamodule: pl.LightningDataModule | None) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` of a plkit image data module (its class attributes), else ``None``."""
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    if mean is None or std is None or getattr(datamodule, "image_shape", None) is None:
        return None
    return [float(m) for m in mean], [float(s) for s in std]


def verification_inputs(
    datamodule: pl.LightningDataModule | None,
    data_note: str,
    model: pl.LightningModule,
    raw: tuple[list[float], list[float]] | None,
) -> tuple[Tensor, str, str]:
    """A batch to run through the eager model and the file: ``(inputs, "real" or "synthetic", where from)``.

    The first predict batch of the data module when its files are here, else random inputs of the shape
    the data module or the model gives. With ``raw`` (the normalisation's mean and std), ``uint8`` pixels.
    """
    if datamodule is not None:
        name = type(datamodule).__name__
        try:
            datamodule.setup("predict")
            batch = next(iter(datamodule.predict_dataloader()))
        except Exception as err:
            data_note = f"{name}'s files are not here: {first_line(err)}"
        else:
            inputs = (
                batch["input"]
                if isinstance(batch, Mapping)
                else batch[0]
                if isinstance(batch, (list, tuple))
                else batch
            )
            inputs = inputs[:VERIFY_ROWS]
            source = f"the first {len(inputs)} of {name}'s {getattr(datamodule, 'predict_split', 'predict')} split"
            if raw is not None:
                # Undo the data module's normalisation: the pixels as the data files hold them.
                mean, std = (torch.tensor(values).view(1, -1, 1, 1) for values in raw)
                inputs = ((inputs * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
            return inputs, "real", source
    shape = _input_shape(datamodule, model)
    generator = torch.Generator().manual_seed(0)
    if raw is not None:
        inputs = torch.randint(0, 256, (VERIFY_ROWS, *shape), generator=generator, dtype=torch.uint8)
    else:
        inputs = torch.randn(VERIFY_ROWS, *shape, generator=generator)
    return inputs, "synthetic", f"{VERIFY_ROWS} random inputs; {data_note}"


def _input_shape(datamodule: pl.LightningDataModule | None, model: pl.LightningModule) -> tuple[int, ...]:
    """One input's shape without data: the image data module's, the model's ``input_shape`` or example input."""
    example = model.example_input_array
    for shape in (
        getattr(datamodule, "image_shape", None),
        model.hparams.get("input_shape"),
        tuple(example.shape[1:]) if isinstance(example, Tensor) else None,
    ):
        if shape:
            return tuple(int(d) for d in shape)
    raise UsageError(
        f"cannot tell the input shape of {type(model).__name__}: its data files are not here and neither the data "
        "module (image_shape) nor the model (example_input_array) gives it; set example_input_array in the model"
    )


def output_meaning(model: nn.Module, part: str, softmax: bool) -> str:
    """What the exported function returns, in words, for the metadata."""
    if isinstance(model, ImageClassifier):
        return "class probabilities (softmax)" if softmax else "logits"
    if isinstance(model, AutoEncoder):
        return "reconstructions, normalised like the inputs" if part == "full" else "embeddings"
    return "the model's forward output"


def first_line(err: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters: the start of a long error, for one-line messages."""
    line = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {line}"[:200]
