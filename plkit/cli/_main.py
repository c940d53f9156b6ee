"""``plkit``'s entry point: route a command line to the right place, importing torch only when needed.

``plkit --help``, ``plkit --version`` and ``plkit recipes ...`` answer without importing torch or
Lightning. The training verbs go to :class:`plkit.cli.lightning_cli.PlkitCLI` after three fixes to
the command line that plain ``LightningCLI`` users trip on:

- ``plkit --config x.yaml fit`` is read as ``plkit fit --config x.yaml``;
- ``--config NAME`` accepts a shipped recipe's name as well as a path;
- ``plkit test|validate|predict --ckpt_path RUN/checkpoints/best.ckpt`` with no ``--config`` takes
  the model and data from the run's saved ``config.yaml`` (or from the checkpoint itself).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from plkit import __version__
from plkit.cli._errors import UsageError
from plkit.cli.recipes import RecipeNotFoundError, recipe_names, recipe_path

VERBS = ("fit", "validate", "test", "predict")
COMMANDS = (*VERBS, "check", "recipes", "report", "export")
CONFIG_FLAGS = ("--config", "-c")

USAGE = f"""\
usage: plkit COMMAND [options]

plkit {__version__}: PyTorch Lightning with reusable modules, production-grade callbacks and YAML recipes.

Lightning's verbs (LightningCLI; `plkit COMMAND --help` lists every option):
  fit         train a model:              plkit fit --config mnist --trainer.max_epochs 5
  validate    run one validation epoch:   plkit validate --ckpt_path runs/mnist/version_0/checkpoints/best.ckpt
  test        run one test epoch:         plkit test --ckpt_path runs/mnist/version_0/checkpoints/best.ckpt
  predict     run prediction:             plkit predict --ckpt_path RUN/checkpoints/best.ckpt

plkit's own:
  check       build a config on the CPU and run one training and one validation batch
  recipes     list | show NAME | copy NAME [DEST] [--force]: the recipes that ship with plkit
  report      RUN_DIR: plot a finished run's curves to report.png and summarise it
  export      --ckpt_path CKPT --format onnx|torchscript|exported_program: a verified model file in RUN/export

--config takes a path or a recipe name (`plkit recipes list`); several --config merge in order, and
dotted flags such as --trainer.max_epochs 3 or --model.init_args.lr 0.01 override them.
"""


def main(args: Sequence[str] | None = None) -> None:
    """Run the ``plkit`` command line (``args`` defaults to ``sys.argv[1:]``).

    Tests and notebooks call it in-process: ``main(["fit", "--config", "mnist", ...])``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    try:
        _dispatch(argv)
    except (UsageError, RecipeNotFoundError, FileExistsError) as err:
        print(f"plkit: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _dispatch(argv: list[str]) -> None:
    argv = _verb_first(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if argv[0] in ("-V", "--version"):
        print(f"plkit {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)} (see `plkit --help`)")
    if command == "recipes":
        from plkit.cli.recipes_command import run_recipes_command

        run_recipes_command(rest)
        return
    if command == "report":
        from plkit.cli.report import run_report_command

        run_report_command(rest)
        return
    if command == "export":
        from plkit.cli.export import run_export_command

        run_export_command(rest)
        return

    rest = _resolve_configs(rest)
    run_name = _run_name(rest)
    if command in ("validate", "test", "predict") and not _has_config(rest):
        rest = _config_from_checkpoint(command, rest)
    try:
        if command == "check":
            from plkit.cli.check import run_check

            run_check(rest)
        else:
            from plkit.cli.lightning_cli import run_lightning

            run_lightning(command, rest, run_name=run_name)
    except Exception as err:
        if isinstance(err, UsageError) or _debug() or not _is_user_error(err):
            raise
        print(f"plkit {command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        print("(set PLKIT_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def _verb_first(argv: list[str]) -> list[str]:
    """Move the command to the front: ``--config x.yaml fit`` means ``fit --config x.yaml``."""
    if not argv or argv[0] in COMMANDS:
        return argv
    for i, token in enumerate(argv):
        if token in VERBS or token == "check":
            return [token, *argv[:i], *argv[i + 1 :]]
    return argv


def _config_values(argv: list[str]) -> list[tuple[int, str]]:
    """Return ``(index, value)`` for every ``--config``/``-c`` value on the command line."""
    found = []
    for i, token in enumerate(argv):
        if token in CONFIG_FLAGS and i + 1 < len(argv):
            found.append((i + 1, argv[i + 1]))
        elif token.startswith("--config="):
            found.append((i, token.split("=", 1)[1]))
    return found


def _has_config(argv: list[str]) -> bool:
    return bool(_config_values(argv)) or any(t == "--model" or t.startswith(("--model=", "--model.")) for t in argv)


def _looks_inline(value: str) -> bool:
    """jsonargparse also takes a config as a YAML/JSON string: ``--config '{trainer: {max_epochs: 1}}'``."""
    return "\n" in value or value.lstrip().startswith("{") or ": " in value


def _resolve_configs(argv: list[str]) -> list[str]:
    """Replace each ``--config NAME`` that is not a file by the shipped recipe of that name."""
    argv = list(argv)
    for index, value in _config_values(argv):
        if _looks_inline(value) or Path(value).is_file():
            continue
        try:
            path = str(recipe_path(value))
        except RecipeNotFoundError:
            raise UsageError(
                f"--config {value!r} is neither a file nor a recipe name. "
                f"Recipes: {', '.join(recipe_names())} (`plkit recipes list`)"
            ) from None
        argv[index] = path if argv[index] == value else f"--config={path}"
    return argv


def _run_name(argv: list[str]) -> str | None:
    """Name the run after the first config file (``mnist``, ``my_recipe``); ``None`` means after the model."""
    for _, value in _config_values(argv):
        if _looks_inline(value):
            continue
        return Path(value).stem
    return None


def _option_value(argv: list[str], flag: str) -> str | None:
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(f"{flag}="):
            return token.split("=", 1)[1]
    return None


def _config_from_checkpoint(command: str, argv: list[str]) -> list[str]:
    """Supply ``--config`` for ``plkit test --ckpt_path FILE`` from the run the checkpoint belongs to."""
    ckpt = _option_value(argv, "--ckpt_path")
    if ckpt is None:
        return argv
    path = Path(ckpt)
    if not path.is_file():
        raise UsageError(
            f"--ckpt_path {ckpt!r} is not a file, and there is no --config to take the model from. "
            "Give the path of a .ckpt file (for example runs/mnist/version_0/checkpoints/best.ckpt)."
        )
    from plkit.cli._run_dir import config_for_checkpoint

    return ["--config", config_for_checkpoint(path, command), *argv]


def _is_user_error(err: Exception) -> bool:
    """Errors a config or the files it names cause, and whose message says what to fix.

    Their tracebacks run deep into Lightning and torch and help nobody but plkit's developers, who
    set ``PLKIT_DEBUG=1``. Anything else (a bug) keeps its traceback.
    """
    return isinstance(err, (OSError, ValueError)) or type(err).__name__ == "MisconfigurationException"


def _debug() -> bool:
    return os.environ.get("PLKIT_DEBUG", "") not in ("", "0")
