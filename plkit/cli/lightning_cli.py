"""``PlkitCLI``: Lightning's own ``LightningCLI`` with plkit's defaults for where a run's files go.

What it adds to ``LightningCLI``, each a default a recipe or a flag can override:

- a ``TensorBoardLogger`` writing to ``runs/<recipe>/version_N`` (``trainer.default_root_dir`` moves ``runs``);
- a ``ModelCheckpoint`` keeping ``best.ckpt`` (by ``checkpoint.monitor``) and ``last.ckpt``, configured
  under the top-level ``checkpoint:`` key and left out when the recipe lists its own;
- a ``LearningRateMonitor`` whenever there is a logger;
- the resolved config saved in the run folder (``config.yaml`` for ``fit``, ``<verb>_config.yaml``
  otherwise), overwriting rather than failing when the folder already holds one;
- ``--ckpt_path last`` resumes the newest run of the recipe in its own folder, and a checkpoint that
  lies in a run folder sends ``test``/``validate``/``predict`` logs to that folder;
- ``--run_test true`` tests the best checkpoint when ``fit`` ends;
- ``predict`` keeps no predictions in memory when a prediction writer is present.

Example::

    from plkit.cli import PlkitCLI

    PlkitCLI(args=["fit", "--config", "recipes/mnist.yaml", "--trainer.fast_dev_run", "true"])
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

# Imported for their side effect: jsonargparse resolves a short ``class_path: ImageClassifier`` among
# the subclasses that are already imported.
import plkit.callbacks
import plkit.data
import plkit.models  # noqa: F401
from plkit.cli._errors import UsageError
from plkit.cli._run_dir import (
    FIT_CONFIG,
    latest_checkpoint,
    run_of_checkpoint,
    snake_case,
    tensorboard_logger,
)

CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/loss",
    "checkpoint.mode": "min",
    "checkpoint.filename": "best",
    "checkpoint.save_top_k": 1,
    "checkpoint.save_last": True,
    "checkpoint.auto_insert_metric_name": False,
}


class PlkitArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` that reports a bad config in a few lines instead of the whole usage."""

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # JSONARGPARSE_DEBUG asks for the exception and its traceback: leave that to jsonargparse.
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        prog = (getattr(ex, "subcommand_parser", None) or self).prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {message.rstrip()}\n(`{prog} --help` lists every option)\n")
        raise SystemExit(2)


class PlkitCLI(LightningCLI):
    """``LightningCLI`` in subclass mode, with plkit's run-folder defaults.

    Args:
        args: the command line (without the program name), e.g. ``["fit", "--config", "mnist.yaml"]``.
        run_name: the folder under ``runs/`` (the recipe's name); ``None`` names it after the model class.
        **kwargs: passed on to ``LightningCLI``.
    """

    def __init__(self, args: Sequence[str] | None = None, run_name: str | None = None, **kwargs: Any) -> None:
        self.run_name = run_name
        self.extra_callbacks: list[Callback] = []
        kwargs.setdefault("parser_class", PlkitArgumentParser)
        kwargs.setdefault("save_config_callback", SaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(args=list(args) if args is not None else None, **kwargs)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # plkit always hands over its own, rewritten copy of the command line, so LightningCLI's warning
        # about passing both `args` and `sys.argv` would only confuse.
        self.config = parser.parse_args(args) if not isinstance(args, (dict, Namespace)) else parser.parse_object(args)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(ModelCheckpoint, "checkpoint", instantiate=False, fail_untyped=False)
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_class_arguments(LearningRateMonitor, "lr_monitor", instantiate=False, fail_untyped=False)
        parser.add_argument(
            "--run_test", type=bool, default=False, help="fit only: test the best checkpoint when fitting ends"
        )

    @override
    def before_instantiate_classes(self) -> None:
        verb = self.subcommand
        config = self.config[verb]
        if config.get("run_test") and verb != "fit":
            raise UsageError(f"--run_test belongs to fit, not {verb}: drop it, or run `plkit fit ... --run_test true`")
        self._default_logger(verb, config)
        self._resolve_ckpt_path(verb, self.config[verb])
        self.save_config_kwargs = {
            **self.save_config_kwargs,
            "config_filename": FIT_CONFIG if verb == "fit" else f"{verb}_config.yaml",
        }

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand]
        trainer = config["trainer"]
        callbacks = list(trainer.get("callbacks") or [])
        if trainer.get("enable_checkpointing") is not False and not _has(callbacks, ModelCheckpoint):
            callbacks.append(ModelCheckpoint(**config["checkpoint"].as_dict()))
        if trainer.get("logger") not in (None, False) and not _has(callbacks, LearningRateMonitor):
            callbacks.append(LearningRateMonitor(**config["lr_monitor"].as_dict()))
        callbacks.extend(self.extra_callbacks)
        return super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})

    @override
    def after_instantiate_classes(self) -> None:
        # A writer streams predictions to disk; keeping them all in RAM as well is what makes large
        # predict runs run out of memory.
        if (
            self.subcommand == "predict"
            and self.config_init.predict.get("return_predictions") is None
            and _has(self.trainer.callbacks, BasePredictionWriter)
        ):
            self.config_init.predict.return_predictions = False

    def after_fit(self) -> None:
        """With ``--run_test true``, test the best checkpoint (or the final weights if none was kept)."""
        if not self.config.fit.get("run_test"):
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        if not best:
            rank_zero_info("plkit: no best checkpoint was kept; testing the final weights")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def _default_logger(self, verb: str, config: Namespace) -> None:
        if config.trainer.get("logger") not in (None, True):
            return
        save_dir = Path(config.trainer.get("default_root_dir") or ".") / "runs"
        name = self.run_name or snake_case(str(config.model.class_path).rsplit(".", 1)[-1])
        update = {"trainer": {"logger": tensorboard_logger(None, save_dir, name)}}
        self.config = self.parser.parse_object({verb: update}, self.config)

    def _resolve_ckpt_path(self, verb: str, config: Namespace) -> None:
        ckpt = config.get("ckpt_path")
        logger = config.trainer.get("logger")
        logger_args = logger.get("init_args") if isinstance(logger, Namespace) else None
        is_tensorboard = logger_args is not None and str(logger.class_path).endswith("TensorBoardLogger")
        if ckpt in ("last", "best") and not (verb == "fit" and ckpt == "best") and is_tensorboard:
            run_root = Path(logger_args.save_dir) / logger_args.name
            found = latest_checkpoint(run_root, f"{ckpt}.ckpt")
            if found is None and verb == "fit":
                rank_zero_info(f"plkit: no earlier run under {run_root} has a last.ckpt; starting a new run")
                self.config = self.parser.parse_object({verb: {"ckpt_path": None}}, self.config)
                return
            if found is None:
                raise UsageError(
                    f"--ckpt_path {ckpt}: no run under {run_root} has a {ckpt}.ckpt. Train first "
                    f"(plkit fit ...) or give the checkpoint's path"
                )
            ckpt = str(found)
            self.config = self.parser.parse_object({verb: {"ckpt_path": ckpt}}, self.config)
        location = run_of_checkpoint(Path(ckpt)) if ckpt and Path(ckpt).is_file() else None
        if location is None or not is_tensorboard:
            return
        if (Path(logger_args.save_dir) / logger_args.name).resolve() == (location.save_dir / location.name):
            # Continue in the checkpoint's own run folder instead of opening version_N+1.
            update = {"trainer": {"logger": tensorboard_logger(location, location.save_dir, location.name)}}
            update["trainer"]["logger"]["init_args"]["save_dir"] = logger_args.save_dir
            self.config = self.parser.parse_object({verb: update}, self.config)


def _has(callbacks: Sequence[Callback], kind: type) -> bool:
    return any(isinstance(c, kind) for c in callbacks)


def run_lightning(verb: str, argv: Sequence[str], run_name: str | None = None) -> PlkitCLI:
    """Run ``plkit VERB ARGV`` through :class:`PlkitCLI` and return it."""
    return PlkitCLI(args=[verb, *argv], run_name=run_name)
