"""``plkit``'s entry point: route the command line, importing torch only for the commands that need it.

``plkit --help``, ``--version``, ``recipes`` and ``report`` answer without importing torch or Lightning. Every
other command line goes, unchanged, to :class:`~plkit.cli.lightning_cli.PlkitCLI` (``check`` to its
subclass), whose parser handles recipe names, ``--config`` before the verb and ``--ckpt_path`` without a
config. This module also decides how a failure looks: one line naming the problem (``PLKIT_DEBUG=1`` shows
the traceback) and the exit code.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from plkit import __version__
from plkit.cli._errors import UsageError, debug_requested, did_you_mean, hint_for, is_user_error, one_line_error

VERBS = ("fit", "validate", "test", "predict")
# plkit's own commands: the module and function each is routed to, imported when used.
ROUTES = {
    "check": ("plkit.cli.check", "run_check"),
    "recipes": ("plkit.cli.recipes_command", "run_recipes_command"),
    "report": ("plkit.cli.report", "run_report_command"),
    "export": ("plkit.cli.export", "run_export_command"),
}

USAGE = f"""\
usage: plkit COMMAND [options]

plkit {__version__}: PyTorch Lightning with reusable modules, production-grade callbacks and YAML recipes.

Lightning's verbs (LightningCLI; `plkit COMMAND --help` lists every option):
  fit         train a model:            plkit fit --config mnist --trainer.max_epochs 5
  validate    one validation epoch:     plkit validate --config mnist --ckpt_path best
  test        one test epoch:           plkit test --config mnist --ckpt_path best
  predict     predictions to disk:      plkit predict --config mnist --ckpt_path best

plkit's own:
  check       build a config on the CPU and run one training and one validation batch
  recipes     list | show NAME | copy NAME [DEST] [--force]: the recipes that ship with plkit
  report      RUN [RUN ...] [--output FILE.png]: curves to RUN/report.png and a summary; several runs side by side
  export      --ckpt_path CKPT --format onnx|torchscript|exported_program: a verified model file in RUN/export

--config takes a path or a recipe name (`plkit recipes list`); several --config merge in order, and
dotted flags such as --trainer.max_epochs 3 or --model.init_args.optimizer.init_args.lr 0.01 override them.
--ckpt_path last|best means that file of the recipe's newest run (runs/<recipe>/version_N); a checkpoint's
path alone (plkit test --ckpt_path runs/mnist/version_0/checkpoints/best.ckpt) needs no --config.
Exit codes: 0 finished, 1 error, 2 bad command line or config, 130 Ctrl+C, 143 SIGTERM.
"""


def main(args: Sequence[str] | None = None) -> None:
    """Run the ``plkit`` command line (``args`` defaults to ``sys.argv[1:]``).

    Tests and notebooks call it in-process: ``main(["fit", "--config", "mnist", ...])``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    first = argv[0] if argv else None
    if first in (None, "-h", "--help", "help"):
        print(USAGE, end="")
        return
    if first in ("-V", "--version"):
        print(f"plkit {__version__}")
        return
    command = first if first in ROUTES or first in VERBS else "plkit"
    with _reported(command):
        if first in ROUTES:
            module, function = ROUTES[first]
            getattr(importlib.import_module(module), function)(argv[1:])
            return
        if not first.startswith("-") and first not in VERBS:
            commands = (*VERBS, *ROUTES)
            raise UsageError(
                f"unknown command {first!r}{did_you_mean(first, commands)}; "
                f"choose one of {', '.join(commands)} (`plkit --help`)"
            )
        from plkit.cli.lightning_cli import run_cli

        if args is None:
            _progress_notes_to_stdout()
            # Notices Lightning's internals trigger in a newer torch (a LeafSpec deprecation, say): nothing a
            # user of the command can act on.
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.")
        run_cli(argv, parser_kwargs={"prog": "plkit"})


@contextmanager
def _reported(command: str) -> Iterator[None]:
    """Turn a user's mistake into one line on stderr and an exit code; keep the traceback of anything else."""
    prefix = "plkit" if command == "plkit" else f"plkit {command}"
    if debug_requested():  # plkit's developers want the traceback of everything
        yield
        return
    try:
        yield
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except UsageError as err:
        print(f"{prefix}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"{prefix}: error: {one_line_error(err)}", file=sys.stderr)
        hint = hint_for(err)
        print(f"hint: {hint}" if hint else "(PLKIT_DEBUG=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def _progress_notes_to_stdout() -> None:
    """Send Lightning's progress notes ("GPU available: ...", "Seed set to 42") to stdout, keeping stderr for
    warnings and errors. Only for the ``plkit`` process itself: in-process callers keep their logging as is."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                handler.setStream(sys.stdout)
