"""Run folders: every rule about where a run's files go, in one place.

One run is one folder ``<save_dir>/<name>/<version>/`` (plkit's default: ``runs/<recipe>/version_N``) holding its
config, checkpoints, TensorBoard logs and predictions. Because ``ModelCheckpoint`` writes into the run's
``checkpoints/``, a checkpoint's path says which run it belongs to, and the rules below follow from that:

- a new run opens the next ``version_N`` (TensorBoard's numbering);
- ``--ckpt_path last`` / ``best`` means that file of the newest run of the recipe, or of the run named by
  ``trainer.logger.init_args.version`` when one is named (a requeued job continues its own run);
- a checkpoint that lies in a run folder of the same recipe continues that folder: ``fit`` resumes into
  it, ``test``/``validate``/``predict`` log beside the training, never into a new ``version_N+1``;
- ``plkit test --ckpt_path RUN/checkpoints/best.ckpt`` with no ``--config`` rebuilds the config from the
  run's ``config.yaml`` (or from the classes the checkpoint records);
- a run that fails before its first step leaves no folder behind.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from lightning.pytorch.utilities import rank_zero_info

from plkit.cli._errors import UsageError

__all__ = [
    "FIT_CONFIG",
    "RunLocation",
    "discard_failed_run",
    "place_run",
    "read_checkpoint",
    "recipe_checkpoint",
    "refuse_other_model",
    "run_config",
    "slurm_job",
    "snake_case",
    "tensorboard_logger",
]

FIT_CONFIG = "config.yaml"
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
# Keys of a saved ``fit`` config that mean nothing to the other verbs.
FIT_ONLY_KEYS = ("ckpt_path", "run_test")
_VERSION = re.compile(r"version_(\d+)")


class RunLocation(NamedTuple):
    """Where a run lives, in the terms of Lightning's loggers: ``save_dir/name/version``."""

    save_dir: Path
    name: str
    version: str

    @property
    def path(self) -> Path:
        """The run folder."""
        return self.save_dir / self.name / self.version

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunLocation | None:
        """The run a checkpoint was written by, or ``None`` if it does not lie in a run's ``checkpoints/``."""
        ckpt = Path(ckpt).resolve()
        if ckpt.parent.name != "checkpoints" or len(ckpt.parents) < 4:
            return None
        run = ckpt.parent.parent
        return cls(run.parent.parent, run.parent.name, run.name)


def version_value(folder: str) -> int | str:
    """``version_3`` -> ``3``: TensorBoard names the folder the same, and the progress bar shows ``v_num=3``.

    Example:
        >>> version_value("version_3"), version_value("slurm_1234")
        (3, 'slurm_1234')
    """
    match = _VERSION.fullmatch(folder)
    return int(match[1]) if match else folder


def _folder(version: int | str) -> str:
    return f"version_{version}" if isinstance(version, int) else str(version)


def slurm_job() -> str | None:
    """The SLURM job this process is a task of (``1234``; ``1234_5`` for an array task), or ``None`` outside srun.

    A job that SLURM requeues keeps its id, so the id names a run folder that survives the requeue.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    # Lightning's own test for "started by srun" (it leaves out interactive allocations); checking SLURM_NTASKS
    # first spares its warning where srun is installed but this process was not started by it.
    if "SLURM_NTASKS" not in os.environ or not SLURMEnvironment.detect():
        return None
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def snake_case(name: str) -> str:
    """``ImageClassifier`` -> ``image_classifier``: the run name when no config file names the run.

    Example:
        >>> snake_case("LitAutoEncoder")
        'lit_auto_encoder'
    """
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def tensorboard_logger(save_dir: str | Path, name: str, version: int | str | None = None) -> dict[str, Any]:
    """The config of plkit's default logger: ``TensorBoardLogger(save_dir, name, version)``."""
    init_args: dict[str, Any] = {"save_dir": str(save_dir), "name": name, "default_hp_metric": False}
    if version is not None:
        init_args["version"] = version
    return {"class_path": TENSORBOARD, "init_args": init_args}


def is_tensorboard(logger: Any) -> bool:
    """Whether a logger config (a dict or jsonargparse Namespace) is a ``TensorBoardLogger``."""
    class_path = logger.get("class_path") if hasattr(logger, "get") else None
    return class_path in (TENSORBOARD, "TensorBoardLogger")


def place_run(
    verb: str, logger: dict[str, Any] | None, ckpt_path: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """Apply the run-folder rules to a verb's TensorBoard ``logger`` config and its ``ckpt_path``.

    Returns:
        The logger config to use instead (``None``: keep it) and the checkpoint path to load (``last`` and
        ``best`` resolved to files; ``None`` for a ``fit --ckpt_path last`` with nothing to resume yet).

    Raises:
        UsageError: ``--ckpt_path last|best`` for a verb other than ``fit`` when no run has that file.
    """
    if logger is None or not is_tensorboard(logger):
        return None, ckpt_path
    args = logger.get("init_args") or {}
    save_dir, name, version = args.get("save_dir") or ".", args.get("name") or "", args.get("version")
    root = Path(save_dir) / name
    if ckpt_path in ("last", "best") and not (verb == "fit" and ckpt_path == "best"):
        filename = f"{ckpt_path}.ckpt"
        if version is not None:
            named = root / _folder(version) / "checkpoints" / filename
            found = named if named.is_file() else None
        else:
            found = _newest(root, filename)
        if found is None:
            where = root / _folder(version) if version is not None else root
            if verb == "fit":
                rank_zero_info(f"plkit: no {filename} under {where} to resume; starting a new run")
                return None, None
            raise UsageError(
                f"--ckpt_path {ckpt_path}: no run under {where} has a {filename}; train first (plkit fit ...) "
                "or give the checkpoint's path"
            )
        ckpt_path = str(found)
    location = RunLocation.of_checkpoint(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
    if location is None or root.resolve() != (location.save_dir / location.name):
        return None, ckpt_path
    # Continue the checkpoint's own run folder. Keep save_dir as the config wrote it: ModelCheckpoint compares
    # its folder as a string when it restores its state.
    return tensorboard_logger(save_dir, name, version_value(location.version)), ckpt_path


def recipe_checkpoint(config: str, which: str, runs: str | Path = "runs") -> Path:
    """``best`` or ``last``.ckpt of the newest run of the recipe or config file ``config`` under ``runs``.

    The run is named after the config as ``plkit fit`` names it: ``fashion_mnist`` or ``my.yaml`` -> ``my``.

    Raises:
        UsageError: no run of that name has the file.
    """
    root = Path(runs) / Path(config).stem
    found = _newest(root, f"{which}.ckpt")
    if found is None:
        raise UsageError(
            f"--ckpt_path {which}: no run under {root} has a {which}.ckpt; train first (plkit fit --config {config}) "
            "or give the checkpoint's path"
        )
    return found


def _newest(root: Path, filename: str) -> Path | None:
    """The newest ``<root>/*/checkpoints/<filename>``, by modification time."""
    found = [p for p in root.glob(f"*/checkpoints/{filename}") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's contents on the CPU (tensors memory-mapped, so a large file costs little).

    Raises:
        UsageError: the file cannot be read as a Lightning checkpoint (empty, truncated, not a checkpoint).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--ckpt_path {path}: no such file; give a .ckpt file (e.g. RUN/checkpoints/last.ckpt)")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # a legacy, non-zip file
    except Exception as err:  # torch raises EOFError, UnpicklingError, RuntimeError ... for a damaged file
        text = str(err).strip()
        reason = text.splitlines()[0].split(". ")[0][:100] if text else "empty or truncated"
        raise UsageError(
            f"--ckpt_path {path}: not a readable checkpoint ({type(err).__name__}: {reason}); "
            "give a .ckpt file written by Lightning"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UsageError(f"--ckpt_path {path}: not a Lightning checkpoint (no state_dict); give a .ckpt file")
    return checkpoint


def refuse_other_model(path: str | Path, checkpoint: dict[str, Any], model_class: type) -> None:
    """Refuse a checkpoint that records another model class than the one the config builds.

    Raises:
        UsageError: naming both classes and the two ways out.
    """
    saved = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if not saved or _same_class(saved, model_class):
        return
    theirs, ours = saved.rsplit(".", 1)[-1], model_class.__name__
    raise UsageError(
        f"--ckpt_path {path} holds a {theirs} ({saved}), but the config builds a {ours}: give a checkpoint of a "
        f"{ours} run, or drop --config so the checkpoint's own run config is used"
    )


def _same_class(class_path: str, cls: type) -> bool:
    import importlib

    if class_path == f"{cls.__module__}.{cls.__qualname__}":
        return True
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name) is cls
    except (ImportError, AttributeError, ValueError):
        return False


def run_config(ckpt: str | Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The config for ``plkit VERB --ckpt_path CKPT`` given without ``--config``.

    The run's saved ``config.yaml`` is preferred: it also restores the trainer settings and callbacks (a
    prediction writer, say). A checkpoint moved out of its run falls back on the model and data module
    classes recorded in its hyperparameters. Either way the logger points at the checkpoint's run, which
    :func:`place_run` then continues.

    Raises:
        UsageError: if neither source says which model to build.
    """
    location = RunLocation.of_checkpoint(ckpt)
    saved = location.path / FIT_CONFIG if location else None
    if saved is not None and saved.is_file():
        config = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        for key in FIT_ONLY_KEYS:
            config.pop(key, None)
    else:
        config = _config_from_hparams(ckpt, checkpoint)
    trainer = config.get("trainer") or {}
    config["trainer"] = trainer
    logger = trainer.get("logger")
    if location is not None and (logger in (None, True) or is_tensorboard(logger)):
        keep = logger.get("init_args", {}).get("save_dir") if isinstance(logger, dict) else None
        same = keep is not None and Path(keep).resolve() == location.save_dir
        trainer["logger"] = tensorboard_logger(keep if same else location.save_dir, location.name)
    return config


def _config_from_hparams(ckpt: str | Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key, section in (("hyper_parameters", "model"), ("datamodule_hyper_parameters", "data")):
        hparams = dict(checkpoint.get(key) or {})
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        if class_path is not None:
            config[section] = {"class_path": class_path, "init_args": hparams}
    if "model" not in config:
        raise UsageError(
            f"--ckpt_path {ckpt} does not record its model class (it was not written through plkit or LightningCLI) "
            f"and no {FIT_CONFIG} lies in its run folder: pass the recipe it was trained with, --config RECIPE"
        )
    return config


def discard_failed_run(run_dir: Path) -> bool:
    """Remove a run folder that a failed command created and that holds no checkpoint; return whether it did.

    A run that failed before its first step has nothing worth keeping, and an empty ``version_N`` would
    otherwise be taken for the newest run by ``--ckpt_path last`` and ``plkit report``.
    """
    if not run_dir.is_dir() or any(run_dir.glob("checkpoints/*.ckpt")):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
