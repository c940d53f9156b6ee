"""``PlkitCLI``: Lightning's own ``LightningCLI``, same signature and behaviour, plus plkit's defaults.

Anything that works with ``LightningCLI(...)`` works with ``PlkitCLI(...)``: positional classes, subclass mode,
``run=False``, ``args`` as a list, dict or Namespace, hooks overridden without ``super()``, ``save_config_kwargs``,
``trainer_class`` callables, ``parser_kwargs``, environment variables. plkit's additions are defaults layered
on top, each switched off by a keyword-only argument (or by the config, as noted):

- ``run_folder``: a ``TensorBoardLogger`` writing to ``runs/<recipe>/version_N`` (under
  ``trainer.default_root_dir``; any ``trainer.logger`` in the config replaces it), the run folder printed at
  the start and a one-line summary at the end, ``--ckpt_path last|best`` resolved to the newest run of the
  recipe (or the run ``trainer.logger.init_args.version`` names), a checkpoint's own run folder continued,
  ``test --ckpt_path RUN/checkpoints/best.ckpt`` needing no ``--config``, and a run that fails before its
  first step leaving no folder;
- ``checkpoints``: :class:`~plkit.cli._checkpoint.RunCheckpoint` keeping ``best.ckpt`` (by the top-level
  ``checkpoint.monitor``/``mode``) and a ``last.ckpt`` written every epoch and on SIGINT/SIGTERM (a recipe's
  own ``ModelCheckpoint`` keeps its top-k files; ``--trainer.enable_checkpointing false`` turns all off);
- ``lr_monitor``: a ``LearningRateMonitor`` whenever there is a logger (a recipe's own replaces it);
- ``predictions``: ``predict`` with no prediction writer keeps its rows in ``RUN/predictions/``;
- under srun, ``fit`` without ``--ckpt_path`` runs in ``runs/<recipe>/slurm_<job id>``, which is also
  ``trainer.default_root_dir``: a job Lightning requeues before its time limit resumes there from its
  ``hpc_ckpt_<n>.ckpt`` (part of ``run_folder``);
- ``signals``: Ctrl+C stops at a batch boundary like SIGTERM, and the exit codes are 130 and 143;
- ``bf16_fallback``: ``trainer.precision: bf16-*`` on a CPU without native bf16 runs ``32-true``, with a warning;
- ``check_ckpt_path``: ``--ckpt_path`` must be a readable checkpoint of the configured model class.

Also on by default: ``--config`` takes a recipe name and may come before the verb; ``--run_test true`` tests
the best checkpoint when ``fit`` ends; option names are never abbreviated (``parser_kwargs={"allow_abbrev":
True}`` allows it); the config is saved into the run folder, overwriting (``config.yaml`` for ``fit``,
``<verb>_config.yaml`` otherwise; ``save_config_kwargs`` overrides both); parse errors are one line.

Example::

    from plkit.cli import PlkitCLI

    PlkitCLI(args=["fit", "--config", "mnist", "--trainer.fast_dev_run", "true"])
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

# Imported for their side effect: jsonargparse resolves a short ``class_path: ImageClassifier`` among
# the subclasses that are already imported.
import plkit.callbacks
import plkit.data
import plkit.models  # noqa: F401
from plkit.cli._checkpoint import checkpoint_callbacks
from plkit.cli._errors import UsageError
from plkit.cli._lifecycle import Interrupts, count_rows, format_metrics, save_predictions, writer_rows
from plkit.cli._parser import PlkitArgumentParser, RecipeConfigFile
from plkit.cli._precision import bf16_fallback
from plkit.cli._run_dir import (
    FIT_CONFIG,
    discard_failed_run,
    place_run,
    read_checkpoint,
    refuse_other_model,
    run_config,
    slurm_job,
    snake_case,
    tensorboard_logger,
)

__all__ = ["PlkitCLI", "run_cli"]

CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/loss",
    "checkpoint.mode": "min",
    "checkpoint.filename": "best",
    "checkpoint.save_top_k": 1,
    "checkpoint.save_last": True,
    "checkpoint.auto_insert_metric_name": False,
}
RUNS = "runs"
# plkit's default logger's save_dir until the run's default_root_dir is known (--print_config shows it so).
RUNS_UNDER_ROOT = "{default_root_dir}/runs"
# ``ckpt_path`` values Lightning itself gives a meaning; anything else must be a file.
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def _checkpoint_support(load_from_checkpoint_support: bool) -> dict[str, bool]:
    # Lightning 2.5.1, plkit's floor, has no load_from_checkpoint_support: its CLI never reads a checkpoint's
    # hyperparameters, which is that option off, so there the option is not passed on.
    if "load_from_checkpoint_support" in inspect.signature(LightningCLI.__init__).parameters:
        return {"load_from_checkpoint_support": load_from_checkpoint_support}
    return {}


class PlkitCLI(LightningCLI):
    """``LightningCLI`` with plkit's defaults; each keyword-only argument switches one off.

    The positional and keyword arguments up to ``load_from_checkpoint_support`` are ``LightningCLI``'s, with
    the same defaults, except ``parser_class`` (:class:`~plkit.cli._parser.PlkitArgumentParser`, whose
    errors are one line) and ``save_config_kwargs`` (``overwrite=True`` unless given).

    Args:
        model_class: As in ``LightningCLI``.
        datamodule_class: As in ``LightningCLI``.
        save_config_callback: As in ``LightningCLI``.
        save_config_kwargs: As in ``LightningCLI``; plkit adds ``overwrite=True`` and a per-verb
            ``config_filename`` unless given here.
        trainer_class: As in ``LightningCLI``.
        trainer_defaults: As in ``LightningCLI``.
        seed_everything_default: As in ``LightningCLI``.
        parser_kwargs: As in ``LightningCLI``; plkit adds ``allow_abbrev=False`` unless given.
        parser_class: As in ``LightningCLI``; a subclass of ``PlkitArgumentParser`` keeps ``--config`` before
            the verb and the one-line errors.
        subclass_mode_model: As in ``LightningCLI``.
        subclass_mode_data: As in ``LightningCLI``.
        args: As in ``LightningCLI``: a list of strings, a dict or a Namespace; ``None`` reads ``sys.argv``.
        run: As in ``LightningCLI``.
        auto_configure_optimizers: As in ``LightningCLI``.
        load_from_checkpoint_support: As in ``LightningCLI``.
        run_name: The folder under ``runs/``; ``None`` names it after the first ``--config`` file, else the model.
        run_folder: plkit's run folder rules (module docstring).
        checkpoints: ``RunCheckpoint`` (``best.ckpt``, ``last.ckpt``) configured by the ``checkpoint:`` key.
        lr_monitor: A ``LearningRateMonitor`` configured by the ``lr_monitor:`` key, when there is a logger.
        predictions: ``predict`` keeps its rows in ``RUN/predictions/`` when no writer is configured.
        signals: SIGINT stops at a batch boundary like SIGTERM; exit codes 130 and 143.
        bf16_fallback: ``bf16-*`` precision on a CPU without native bf16 becomes ``32-true``, with a warning.
        check_ckpt_path: ``--ckpt_path`` must be a readable checkpoint of the configured model class, refused
            before anything runs (Lightning itself fails later, or loads another class's weights).
    """

    def __init__(
        self,
        model_class: type[LightningModule] | Callable[..., LightningModule] | None = None,
        datamodule_class: type[LightningDataModule] | Callable[..., LightningDataModule] | None = None,
        save_config_callback: type[SaveConfigCallback] | None = SaveConfigCallback,
        save_config_kwargs: dict[str, Any] | None = None,
        trainer_class: type[Trainer] | Callable[..., Trainer] = Trainer,
        trainer_defaults: dict[str, Any] | None = None,
        seed_everything_default: bool | int = True,
        parser_kwargs: dict[str, Any] | None = None,
        parser_class: type[LightningArgumentParser] = PlkitArgumentParser,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: ArgsType = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
        load_from_checkpoint_support: bool = True,
        *,
        run_name: str | None = None,
        run_folder: bool = True,
        checkpoints: bool = True,
        lr_monitor: bool = True,
        predictions: bool = True,
        signals: bool = True,
        bf16_fallback: bool = True,
        check_ckpt_path: bool = True,
    ) -> None:
        self.run_name = run_name
        self.run_folder = run_folder
        self.checkpoints = checkpoints
        self.lr_monitor = lr_monitor
        self.predictions = predictions
        self.signals = signals
        self.bf16_fallback = bf16_fallback
        self.check_ckpt_path = check_ckpt_path
        self.verb_parsers: dict[str, LightningArgumentParser] = {}
        self._parsers: list[LightningArgumentParser] = []
        self._named_config_file = "config_filename" in (save_config_kwargs or {})
        super().__init__(
            model_class,
            datamodule_class,
            save_config_callback,
            {"overwrite": True, **(save_config_kwargs or {})},
            trainer_class,
            trainer_defaults,
            seed_everything_default,
            {"allow_abbrev": False, **(parser_kwargs or {})},
            parser_class,
            subclass_mode_model,
            subclass_mode_data,
            args,
            run,
            auto_configure_optimizers,
            **_checkpoint_support(load_from_checkpoint_support),
        )

    # ----- the parser -------------------------------------------------------------------------------------

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c",
            "--config",
            action=RecipeConfigFile,
            help="A YAML config file, or the name of a recipe that ships with plkit (`plkit recipes list`). "
            "Repeat it to merge several in order; later flags override them.",
        )
        self._parsers.append(parser)
        return parser

    @override
    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self.verb_parsers = {p.subcommand: p for p in self._parsers if getattr(p, "subcommand", None)}
        if add_subcommands and isinstance(self.parser, PlkitArgumentParser):
            self.parser.verb_configs = []  # --config before the verb: its parser applies them
            self.parser.verbs = tuple(self.verb_parsers)

    @override
    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_default_arguments_to_parser(parser)
        # Added here rather than in add_arguments_to_parser, which subclasses override without super().
        if self.checkpoints:
            parser.add_class_arguments(ModelCheckpoint, "checkpoint", instantiate=False, fail_untyped=False)
            parser.set_defaults(CHECKPOINT_DEFAULTS)
        if self.lr_monitor:
            parser.add_class_arguments(LearningRateMonitor, "lr_monitor", instantiate=False, fail_untyped=False)
        parser.add_argument(
            "--run_test", type=bool, default=False, help="fit only: test the best checkpoint when fitting ends"
        )

    @override
    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # LightningCLI's, except that a model given by class path is optional: `plkit test --ckpt_path RUN/...`
        # takes it from the run, and parse_arguments says what is missing when nothing gives it.
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        if self.run_folder and "logger" in inspect.signature(self.trainer_class).parameters:
            # plkit's run folder as the logger's default, so `--trainer.logger.version NAME` (a requeued job's
            # own folder) needs nothing more; the run's name and default_root_dir are filled in after parsing.
            parser.set_defaults({"trainer.logger": tensorboard_logger(RUNS_UNDER_ROOT, None)})
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        model_class = self.model_class or LightningModule
        subclass_mode = self.model_class is None or self.subclass_mode_model
        parser.add_lightning_class_args(model_class, "model", subclass_mode=subclass_mode, required=False)
        data_class = self.datamodule_class or LightningDataModule
        subclass_mode = self.datamodule_class is None or self.subclass_mode_data
        parser.add_lightning_class_args(
            data_class, "data", subclass_mode=subclass_mode, required=self.datamodule_class is not None
        )

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        verb = self.config.get("subcommand")
        try:
            if verb is not None and self._model_missing(self.config[verb]):
                self._config_from_checkpoint(parser, args, verb)
            self._apply_defaults(verb)
            if verb is not None and self.check_ckpt_path:
                self._check_checkpoint(verb)
        except UsageError as err:
            (self.verb_parsers.get(str(verb)) or parser).error(str(err), err)

    def _model_missing(self, config: Namespace) -> bool:
        return (self.model_class is None or self.subclass_mode_model) and config.get("model") is None

    def _config_from_checkpoint(self, parser: LightningArgumentParser, args: ArgsType, verb: str) -> None:
        """``plkit test --ckpt_path RUN/checkpoints/best.ckpt``: the model and data come from the run."""
        ckpt = self.config[verb].get("ckpt_path")
        if verb == "fit" or not ckpt:
            source = "--ckpt_path RUN/checkpoints/best.ckpt (its run's config is reused), " if verb != "fit" else ""
            raise UsageError(f"{verb} needs a model: {source}--config RECIPE (`plkit recipes list`) or --model CLASS")
        if str(ckpt) in LIGHTNING_CKPT_NAMES:
            raise UsageError(f"--ckpt_path {ckpt} needs --config RECIPE to know whose runs to look in")
        base = parser.parse_object({verb: run_config(ckpt, read_checkpoint(ckpt))})
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args, base)
        else:
            self.config = parser.parse_args(args, base)

    def _apply_defaults(self, verb: str | None) -> None:
        config = self.config[verb] if verb else self.config
        trainer = config.get("trainer")
        update: dict[str, Any] = {}  # trainer settings
        values: dict[str, Any] = {}  # everything to change, validated in one pass
        if not self._named_config_file:
            self.save_config_kwargs["config_filename"] = FIT_CONFIG if verb in (None, "fit") else f"{verb}_config.yaml"
        if self.run_folder and isinstance(trainer, Namespace) and "logger" in trainer:
            logger = trainer.get("logger")
            root = Path(trainer.get("default_root_dir") or ".") / RUNS
            if logger in (None, True):
                logger = update["logger"] = tensorboard_logger(root, self._run_name(config))
            elif isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
                logger = logger.as_dict()
                args = logger["init_args"]
                if args.get("save_dir") == RUNS_UNDER_ROOT:  # plkit's default (its version may be set)
                    filled = {"save_dir": str(root), "name": args.get("name") or self._run_name(config)}
                    logger = update["logger"] = {**logger, "init_args": {**args, **filled}}
            if verb in (None, "fit") and "logger" in update and config.get("ckpt_path") is None:
                update.update(_slurm_run(update["logger"]))
            if verb is not None:
                ckpt = config.get("ckpt_path")
                continued, resolved = place_run(verb, logger if isinstance(logger, dict) else None, ckpt)
                if continued is not None:
                    update["logger"] = continued
                if resolved != ckpt:
                    values["ckpt_path"] = resolved
        if verb not in (None, "fit") and config.get("run_test"):
            raise UsageError(f"--run_test belongs to fit, not {verb}: drop it, or run plkit fit ... --run_test true")
        mode = (config.get("checkpoint") or Namespace()).get("mode") if self.checkpoints else None
        if mode not in (None, "min", "max"):
            raise UsageError(f"checkpoint.mode {mode!r}: choose min (a loss) or max (an accuracy)")
        if self.bf16_fallback and isinstance(trainer, Namespace):
            fallback = bf16_fallback(trainer.get("precision"), trainer.get("accelerator"))
            if fallback is not None:
                rank_zero_warn(
                    f"trainer.precision {trainer.get('precision')}: this CPU has no native bf16, which would run "
                    f"emulated and slow; using {fallback} instead (PlkitCLI(bf16_fallback=False) keeps bf16)"
                )
                update["precision"] = fallback
        if update:
            values["trainer"] = update
        if values:
            self.config = self.parser.parse_object({verb: values} if verb else values, self.config)

    def _run_name(self, config: Namespace) -> str:
        if self.run_name:
            return self.run_name
        files = [p for p in (config.get("config") or []) if p is not None]
        if files:
            return Path(str(files[0])).stem
        model = config.get("model")
        if isinstance(model, Namespace) and model.get("class_path"):
            return snake_case(str(model.class_path).rsplit(".", 1)[-1])
        return snake_case(getattr(self.model_class, "__name__", "model"))

    def _check_checkpoint(self, verb: str) -> None:
        ckpt = self.config[verb].get("ckpt_path")
        if ckpt is None or str(ckpt) in LIGHTNING_CKPT_NAMES or "://" in str(ckpt):
            return
        checkpoint = read_checkpoint(ckpt)
        model = self.config[verb].get("model")
        if isinstance(model, Namespace) and model.get("class_path"):
            refuse_other_model(ckpt, checkpoint, _import(str(model.class_path)))
        elif isinstance(self.model_class, type):
            refuse_other_model(ckpt, checkpoint, self.model_class)

    # ----- the trainer ------------------------------------------------------------------------------------

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.get("trainer") or {}
        if "callbacks" in trainer and "callbacks" not in kwargs:
            callbacks = list(trainer.get("callbacks") or [])
            present = [*callbacks, *_as_list(self.trainer_defaults.get("callbacks")), *_top_level_callbacks(config)]
            if self.checkpoints and trainer.get("enable_checkpointing") is not False:
                callbacks.extend(checkpoint_callbacks(config["checkpoint"].as_dict(), present))
            has_logger = trainer.get("logger") not in (None, False)
            if self.lr_monitor and has_logger and not _has(present, LearningRateMonitor):
                callbacks.append(LearningRateMonitor(**config["lr_monitor"].as_dict()))
            kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    # ----- the verbs: LightningCLI calls these instead of the trainer's methods when they exist -------------

    def fit(self, model: LightningModule, **kwargs: Any) -> None:
        """``trainer.fit`` inside plkit's run lifecycle."""
        self._run("fit", model=model, **kwargs)

    def validate(self, model: LightningModule, **kwargs: Any) -> Any:
        """``trainer.validate`` inside plkit's run lifecycle."""
        return self._run("validate", model=model, **kwargs)

    def test(self, model: LightningModule, **kwargs: Any) -> Any:
        """``trainer.test`` inside plkit's run lifecycle."""
        return self._run("test", model=model, **kwargs)

    def predict(self, model: LightningModule, **kwargs: Any) -> Any:
        """``trainer.predict`` inside plkit's run lifecycle; without a prediction writer the rows are kept."""
        writers = [c for c in self.trainer.callbacks if isinstance(c, BasePredictionWriter)]
        run_dir = self._run_dir()
        if not writers and self.predictions and run_dir is not None:
            make_writer = getattr(model, "prediction_writer", None)
            if callable(make_writer):
                writers = [make_writer(run_dir / "predictions")]
                self.trainer.callbacks.append(writers[0])
        if kwargs.get("return_predictions") is None:
            # A writer streams rows to disk; keeping them all in memory as well is what runs out of RAM.
            kwargs["return_predictions"] = not writers
        predictions = self._run("predict", model=model, **kwargs)
        if writers:
            for writer in writers:
                folder = Path(getattr(writer, "output_dir", None) or (run_dir or Path(".")) / "predictions")
                rows = writer_rows(folder)
                self._say(f"plkit predict: {'' if rows is None else f'{rows:,} rows, '}written to {folder}")
        elif isinstance(predictions, list) and self.predictions and run_dir is not None:
            # Under DDP each rank holds only its own samples: one file per rank, never one rank's as the whole.
            ranks = self.trainer.world_size
            name = "predictions.pt" if ranks == 1 else f"predictions_rank{self.trainer.global_rank}.pt"
            path = save_predictions(predictions, run_dir / "predictions" / name)
            where = path if ranks == 1 else path.with_name("predictions_rank*.pt")
            rows = f"{count_rows(predictions):,} rows" + ("" if ranks == 1 else f" on rank 0 of {ranks}")
            self._say(f"plkit predict: {rows}, saved to {where} (torch.load reads it)")
        return predictions

    def after_fit(self) -> None:
        """With ``--run_test true``, test the best checkpoint (or the final weights if none was kept)."""
        if not self.config.fit.get("run_test"):
            return
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not best:
            rank_zero_info("plkit: no best checkpoint was kept; testing the final weights")
        self.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)

    def _run(self, verb: str, **kwargs: Any) -> Any:
        """Run one trainer verb: say where, stop cleanly on a signal, clean up a failed start, summarise."""
        trainer = self.trainer
        run_dir = self._run_dir()
        existed = run_dir is None or run_dir.exists()
        if run_dir is not None:
            self._say(f"plkit {verb}: run folder {run_dir}")
        interrupts = Interrupts()
        try:
            if self.signals:
                with interrupts.installed():
                    result = getattr(trainer, verb)(**kwargs)
            else:
                result = getattr(trainer, verb)(**kwargs)
        except BaseException:
            if (
                interrupts.signal is None
                and not existed
                and (verb != "fit" or trainer.global_step == 0)
                and trainer.is_global_zero
            ):
                discard_failed_run(run_dir)  # type: ignore[arg-type]
            if interrupts.exit_code is not None:
                self._say_interrupted(verb, interrupts)
                raise SystemExit(interrupts.exit_code) from None
            raise
        if run_dir is not None:
            self._summarise(verb, result)
        return result

    def _run_dir(self) -> Path | None:
        if not self.run_folder or self.trainer.logger is None or self.trainer.fast_dev_run:
            return None
        return Path(self.trainer.log_dir) if self.trainer.log_dir else None

    def _summarise(self, verb: str, result: Any) -> None:
        trainer = self.trainer
        if verb == "fit":
            epochs, steps = trainer.current_epoch, trainer.global_step
            line = f"plkit fit: {epochs} epoch{'s' * (epochs != 1)}, {steps} step{'s' * (steps != 1)}"
            callback = trainer.checkpoint_callback
            if isinstance(callback, ModelCheckpoint) and callback.best_model_score is not None:
                line += f"; best {callback.monitor} {callback.best_model_score.item():.4g}: {callback.best_model_path}"
            last = getattr(callback, "last_model_path", "") if callback is not None else ""
            if last:
                line += f"; last: {last}"
            self._say(line)
        elif verb in ("validate", "test") and result:
            self._say(f"plkit {verb}: {format_metrics({k: v for d in result for k, v in d.items()})}")

    def _say_interrupted(self, verb: str, interrupts: Interrupts) -> None:
        if not self.trainer.is_global_zero:
            return
        name = "SIGINT" if interrupts.exit_code == 130 else "SIGTERM"
        line = f"plkit {verb}: stopped by {name} at epoch {self.trainer.current_epoch}, step {self.trainer.global_step}"
        callback = self.trainer.checkpoint_callback
        if verb == "fit" and getattr(callback, "last_model_path", ""):
            line += f"; resume with --ckpt_path last ({callback.last_model_path})"
        print(line, flush=True)

    def _say(self, line: str) -> None:
        if self.trainer.is_global_zero:
            print(line, flush=True)


def _slurm_run(logger: dict[str, Any]) -> dict[str, Any]:
    """Under srun, name plkit's run after the SLURM job and make it ``trainer.default_root_dir``.

    A job that Lightning requeues before its time limit (SLURMEnvironment's SIGUSR1 handler) runs the same command
    again with the same job id: the run named after the job is found again with no directory listing to race on,
    every task names it alike, and Lightning saves and looks for its requeue checkpoint (``hpc_ckpt_<n>.ckpt``) in
    ``default_root_dir``, which is then this run's folder, not the working directory, where any later fit started
    there would silently resume from it.
    """
    args = logger["init_args"]
    job = slurm_job() if args.get("version") is None else None
    if job is None:
        return {}
    args["version"] = f"slurm_{job}"
    return {"default_root_dir": str(Path(args["save_dir"]) / args["name"] / args["version"])}


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _top_level_callbacks(config: Namespace) -> list[Callback]:
    """Callbacks a subclass added with ``parser.add_lightning_class_args(SomeCallback, "key")``."""
    return [v for v in config.values() if isinstance(v, Callback)]


def _has(callbacks: Sequence[Callback], kind: type) -> bool:
    return any(isinstance(c, kind) for c in callbacks)


def _import(class_path: str) -> type:
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def run_cli(args: Sequence[str], cli_class: Callable[..., PlkitCLI] = PlkitCLI, **kwargs: Any) -> PlkitCLI:
    """Run the ``plkit`` command line ``args`` through ``cli_class`` and return it."""
    with warnings.catch_warnings():
        # `plkit` hands its own command line over as `args`; LightningCLI's caution about also having sys.argv
        # is for scripts that call it from Python.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return cli_class(args=list(args), **kwargs)
