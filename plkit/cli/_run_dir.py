"""Run folders: ``<save_dir>/<name>/<version>/`` holds one run's config, checkpoints, logs and predictions.

plkit's default logger is ``TensorBoardLogger(save_dir="runs", name=<recipe>)``, and its
``ModelCheckpoint`` writes into the run's ``checkpoints/`` folder, so a checkpoint's path says which
run it belongs to: ``runs/mnist/version_3/checkpoints/best.ckpt``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from plkit.cli._errors import UsageError

FIT_CONFIG = "config.yaml"
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
# Keys of a saved ``fit`` config that mean nothing to the other verbs.
FIT_ONLY_KEYS = ("ckpt_path", "run_test")


class RunLocation(NamedTuple):
    """Where a run lives, in the terms of Lightning's loggers: ``save_dir/name/version``."""

    save_dir: Path
    name: str
    version: str

    @property
    def path(self) -> Path:
        return self.save_dir / self.name / self.version


def run_of_checkpoint(ckpt: Path) -> RunLocation | None:
    """Return the run a checkpoint was written by, or ``None`` if it is not in a run's ``checkpoints/``."""
    ckpt = ckpt.resolve()
    if ckpt.parent.name != "checkpoints" or len(ckpt.parents) < 4:
        return None
    run = ckpt.parent.parent
    return RunLocation(run.parent.parent, run.parent.name, run.name)


def latest_checkpoint(run_root: Path, filename: str) -> Path | None:
    """Return the newest ``<run_root>/*/checkpoints/<filename>``, by modification time."""
    found = [p for p in run_root.glob(f"*/checkpoints/{filename}") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def snake_case(name: str) -> str:
    """``ImageClassifier`` -> ``image_classifier``: the run name when no recipe names the run."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def tensorboard_logger(location: RunLocation | None, save_dir: Path, name: str) -> dict[str, Any]:
    """The config of plkit's default logger, continuing ``location`` when given."""
    init_args: dict[str, Any] = {"save_dir": str(save_dir), "name": name, "default_hp_metric": False}
    if location is not None:
        init_args.update(save_dir=str(location.save_dir), name=location.name, version=location.version)
    return {"class_path": TENSORBOARD, "init_args": init_args}


def config_for_checkpoint(ckpt: Path, verb: str) -> str:
    """Build the config (YAML text) for ``plkit VERB --ckpt_path CKPT`` run without ``--config``.

    The run's saved ``config.yaml`` is preferred: it also restores the trainer settings and
    callbacks (a prediction writer, say). A checkpoint moved out of its run falls back on the model
    and data module classes recorded in the checkpoint's hyperparameters. Either way the logger
    writes into the checkpoint's own run folder, so a test's metrics land beside the training's.

    Raises:
        UsageError: if neither source says which model to build.
    """
    location = run_of_checkpoint(ckpt)
    saved = location.path / FIT_CONFIG if location else None
    if saved is not None and saved.is_file():
        config = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        for key in FIT_ONLY_KEYS:
            config.pop(key, None)
    else:
        config = _config_from_hparams(ckpt)
    trainer = config.setdefault("trainer", {}) or {}
    config["trainer"] = trainer
    logger = trainer.get("logger")
    if location is not None and (logger in (None, True) or _is_tensorboard(logger)):
        trainer["logger"] = tensorboard_logger(location, location.save_dir, location.name)
        saved_dir = (logger or {}).get("init_args", {}).get("save_dir") if isinstance(logger, dict) else None
        if saved_dir and Path(saved_dir).resolve() == location.save_dir:
            # Keep the path as the run wrote it: ModelCheckpoint compares its dirpath as a string.
            trainer["logger"]["init_args"]["save_dir"] = saved_dir
    return yaml.safe_dump(config, sort_keys=False)


def _is_tensorboard(logger: Any) -> bool:
    return isinstance(logger, dict) and logger.get("class_path") in (TENSORBOARD, "TensorBoardLogger")


def _config_from_hparams(ckpt: Path) -> dict[str, Any]:
    import torch

    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    config: dict[str, Any] = {}
    for key, section in (("hyper_parameters", "model"), ("datamodule_hyper_parameters", "data")):
        hparams = dict(checkpoint.get(key) or {})
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        if class_path is not None:
            config[section] = {"class_path": class_path, "init_args": hparams}
    if "model" not in config:
        raise UsageError(
            f"{ckpt} does not record its model class (it was not written through plkit or LightningCLI), and "
            f"no {FIT_CONFIG} lies in its run folder. Pass the recipe it was trained with: --config RECIPE"
        )
    return config
