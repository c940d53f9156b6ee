"""The three formats of ``plkit export``: write a module in one, load the file back, and say why a format failed.

An ExportedProgram is a ``torch.export`` capture with a dynamic batch dimension, and ONNX translates the
same capture (``torch.onnx.export(dynamo=True)``): a model that ``torch.export`` cannot capture fails in
both, for the same reason. TorchScript is ``torch.jit.trace`` of the eager module, which records tensor
sizes as sizes (tracing the captured graph instead would fix every size it computes, the batch's included);
a trace that had to turn a tensor into a Python value is refused, since it would be wrong for other inputs.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import importlib.util
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from plkit.cli._errors import UsageError

__all__ = [
    "FILENAMES",
    "FORMATS",
    "RUNTIMES",
    "CaptureError",
    "TraceError",
    "check_extra",
    "check_format",
    "explain",
    "load",
    "save",
    "versions",
]

FORMATS = ("onnx", "torchscript", "exported_program")
FILENAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "exported_program": "model.pt2"}
#: what runs the file back, for the messages and the metadata.
RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torch.jit.load", "exported_program": "torch.export.load"}
#: the packages each format needs beyond torch: the ``export`` extra of pyproject.toml.
EXTRA_PACKAGES = {"onnx": ("onnx", "onnxruntime", "onnxscript"), "torchscript": (), "exported_program": ()}
INPUT_NAME, OUTPUT_NAME = "input", "output"


def check_format(name: str) -> str:
    """Return ``name`` if it is one of :data:`FORMATS`.

    Raises:
        UsageError: another name; the message suggests the closest format.

    Example:
        >>> check_format("onnx")
        'onnx'
        >>> check_format("onxx")
        Traceback (most recent call last):
        ...
        plkit.cli._errors.UsageError: --format 'onxx': did you mean 'onnx'? (onnx, torchscript or exported_program)
    """
    if name in FORMATS:
        return name
    close = difflib.get_close_matches(name.lower(), FORMATS, n=1, cutoff=0.5)
    choices = f"{', '.join(FORMATS[:-1])} or {FORMATS[-1]}"
    raise UsageError(
        f"--format {name!r}: did you mean {close[0]!r}? ({choices})"
        if close
        else f"--format {name!r}: choose {choices}"
    )


def check_extra(fmt: str) -> None:
    """Raise if a package ``fmt`` needs is not installed.

    Raises:
        UsageError: naming the missing packages and the extra that installs them.
    """
    missing = [name for name in EXTRA_PACKAGES[fmt] if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"--format {fmt} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            'pip install "plkit[export]"'
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what torch prints while it exports: deprecation notices, log lines and graph dumps.

    TorchScript's deprecation is told once, in the command's output; a failed capture prints pages of
    graph that :func:`explain` reduces to one line. (The tracer's warnings are recorded, not printed:
    :func:`_trace` turns them into a :class:`TraceError`.)
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        # torch.export prints a failed capture's graph to sys.stderr; its loggers' handlers hold the real stream.
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


class CaptureError(Exception):
    """``torch.export`` cannot capture the module, so no format can export it (its cause says why)."""


def _capture(module: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    try:
        # Dim 0 varies; the example has 2 rows so that torch.export does not specialise the batch to 1.
        return torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as err:
        raise CaptureError(str(err)) from err


class TraceError(Exception):
    """``torch.jit.trace`` turned a tensor into a Python value: the trace would be wrong for other inputs."""


def _trace(module: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    with _attached(module), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, (example,), check_trace=False)  # plkit export checks it on real inputs
    for warning in caught:
        if issubclass(warning.category, torch.jit.TracerWarning):
            what = str(warning.message).split(" might ", 1)[0].split(".", 1)[0]
            raise TraceError(f"{what} at {Path(warning.filename).name}:{warning.lineno}")
    return traced


@contextlib.contextmanager
def _attached(module: nn.Module) -> Iterator[None]:
    """Attach a bare ``Trainer`` to the ``LightningModule`` s in ``module`` for as long as a trace runs.

    ``torch.jit.trace`` reads every attribute of every submodule, and a ``LightningModule``'s ``trainer``
    property raises when no ``Trainer`` is attached.
    """
    detached = [m for m in module.modules() if isinstance(m, pl.LightningModule) and not _has_trainer(m)]
    if detached:
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
        for lightning_module in detached:
            lightning_module.trainer = trainer
    try:
        yield
    finally:
        for lightning_module in detached:
            lightning_module.trainer = None


def _has_trainer(module: pl.LightningModule) -> bool:
    try:
        return module.trainer is not None
    except RuntimeError:
        return False


def save(module: nn.Module, example: Tensor, fmt: str, path: Path) -> None:
    """Export ``module`` (in eval mode) called on ``example`` to ``path`` in ``fmt``, with a dynamic batch dimension.

    Args:
        module: the module to export; its ``forward`` takes one tensor and returns one tensor.
        example: an input batch of at least 2 rows; only its shape and dtype matter.
        fmt: one of :data:`FORMATS`.
        path: the file to write (any name: ``plkit export`` writes to a temporary one, then renames it).

    Raises:
        CaptureError: ``torch.export`` cannot capture ``module`` (ONNX raises its exporter's own errors).
        TraceError: ``torch.jit.trace`` had to fix a value computed from the inputs.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "model.pt2"
        >>> save(nn.Linear(3, 2).eval(), torch.zeros(2, 3), "exported_program", path)
        >>> load(path, "exported_program")(torch.ones(5, 3)).shape
        torch.Size([5, 2])
    """
    with _quiet():
        if fmt == "onnx":
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                verbose=False,
            )
            # One self-contained file: plkit's models are far below the 2 GB that would need external data.
            program.save(str(path), external_data=False)
        elif fmt == "torchscript":
            torch.jit.save(_trace(module, example), str(path))
        else:
            buffer = io.BytesIO()  # torch.export.save insists on a .pt2 name; a buffer lets the file have any name
            torch.export.save(_capture(module, example), buffer)
            path.write_bytes(buffer.getvalue())


def load(path: Path, fmt: str, threads: int | None = None) -> Callable[[Tensor], Tensor]:
    """Load an exported file and return a function that runs it on a batch, as its deployment runtime would.

    Args:
        path: a file :func:`save` wrote.
        fmt: its format.
        threads: onnxruntime's intra-op threads (``None``: its default); torch formats use torch's setting.
    """
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda batch: torch.from_numpy(session.run(None, {INPUT_NAME: batch.numpy()})[0])
    with _quiet():
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")
        with path.open("rb") as file:
            return torch.export.load(file).module()


def versions(fmt: str, path: Path) -> dict[str, Any]:
    """The versions an exported file depends on: the packages of its format and, for ONNX, its opset."""
    found: dict[str, Any] = {"torch": torch.__version__}
    for name in EXTRA_PACKAGES[fmt]:
        found[name] = importlib.metadata.version(name)
    if fmt == "onnx":
        import onnx

        opsets = {entry.domain or "ai.onnx": entry.version for entry in onnx.load(str(path)).opset_import}
        found["opset"] = opsets.get("ai.onnx")
    return found


# What the exporters say, reduced to the op or construct at fault (their messages run to pages).
_NO_ONNX_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>")
_FAILED_NODE = re.compile(r"target=torch\.ops\.([\w.]+)")
_FIRST_CAUSE = re.compile(r"<class '[^']+'>: (.+)")  # the innermost error of torch.onnx's exception summary
# Where the user's code is: after "The following call raised this error:" (torch 2.7 and later) or "from user
# code:" (2.6, outermost frame first), the last frame listed.
_USER_CODE_START = re.compile(r"The following call raised this error:|from user code:")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\s*\n\s*(.+)')


def explain(err: BaseException) -> str:
    """One line naming the op or construct an exporter failed on.

    Example:
        >>> explain(RuntimeError("No ONNX function found for <OpOverload(op='aten.histc', overload='default')>."))
        'aten.histc.default has no ONNX translation'
    """
    if isinstance(err, TraceError):
        return f"torch.jit.trace would fix a value computed from the inputs: {err}"
    if isinstance(err, CaptureError) and err.__cause__ is not None:
        err = err.__cause__
    text = "\n".join(str(e) for e in _chain(err))
    if match := _NO_ONNX_FUNCTION.search(text):
        return f"{match[1]}.{match[2]} has no ONNX translation"
    if match := _FAILED_NODE.search(text):
        cause = _FIRST_CAUSE.search(text)
        return f"the ONNX translation of {match[1]} failed" + (f": {cause[1].strip()[:200]}" if cause else "")
    if "data-dependent" in text or "Dynamic control flow" in text:  # torch 2.7 and later; torch 2.6
        start = _USER_CODE_START.search(text)
        frames = _FRAME.findall(text, start.end()) if start else []
        where = frames[-1] if frames else None
        at = f" at {Path(where[0]).name}:{where[1]} in {where[2]}: `{where[3].strip()}`" if where else ""
        return f"control flow that depends on a tensor's values (a Python if, int() or .item()){at}"
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first[:300]}"


def _chain(err: BaseException) -> list[BaseException]:
    chain = [err]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    return chain
