"""plkit's argument parser: ``--config`` by recipe name, before or after the verb, and one-line parse errors.

:class:`RecipeConfigFile` is the ``--config`` action. It takes a path, the name of a recipe that ships with
plkit (``mnist``, ``overlays/debug``) or inline YAML, checks a file before jsonargparse reads it (missing,
empty, not YAML, not a mapping: each named with the fix), and reports a bad key or value inside it with the
file's name. Given before the verb (``plkit --config mnist.yaml fit``) it applies to the verb's options, in
order, ahead of the verb's own flags.

:class:`PlkitArgumentParser` is ``LightningArgumentParser`` whose errors are one line naming the bad key or
value, with "did you mean" for option names, parameters and class names.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

from plkit.cli._errors import UsageError, debug_requested, did_you_mean, one_line_parse_error
from plkit.cli.recipes import RecipeNotFoundError, recipe_names, recipe_path

__all__ = ["PlkitArgumentParser", "RecipeConfigFile", "resolve_config"]


def _is_inline(value: str) -> bool:
    """jsonargparse also takes a config as YAML or JSON text: ``--config '{trainer: {max_epochs: 1}}'``."""
    return "\n" in value or value.lstrip().startswith("{") or ": " in value


def resolve_config(value: str) -> str:
    """Return the config file (or inline text) ``--config value`` means, after checking the file reads as YAML.

    Raises:
        UsageError: a missing file that is no recipe's name either, a folder, an empty file, a YAML syntax
            error or a file whose top level is not a mapping; the message names the file.
    """
    if _is_inline(value):
        return value
    path = Path(value).expanduser()
    if not path.is_file():  # a file of that name wins (a copied recipe), then a shipped recipe's name
        try:
            path = recipe_path(value)
        except RecipeNotFoundError:
            if path.is_dir():
                raise UsageError(
                    f"--config {value}: is a folder; give a YAML file inside it or a recipe name"
                ) from None
            hint = did_you_mean(value.removesuffix(".yaml"), recipe_names())
            raise UsageError(
                f"--config {value}: no such file, and no recipe has that name{hint} (`plkit recipes list`)"
            ) from None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--config {value}: cannot be read ({err}); give a readable YAML file") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{path}{where}: YAML syntax error ({problem}); fix the file") from None
    if content is None:
        raise UsageError(f"{path} is empty: write the keys to set (`plkit recipes show mnist` shows a whole recipe)")
    if not isinstance(content, dict):
        raise UsageError(
            f"{path}: the top level must be keys such as trainer:, model:, data:, not a {type(content).__name__}"
        )
    return str(path)


def _names_a_verb(value: str, verbs: set[str]) -> bool:
    """Whether a root-level config is in LightningCLI's full form (``fit: {...}`` or ``subcommand: fit``)."""
    content = yaml.safe_load(value if _is_inline(value) else Path(value).read_text(encoding="utf-8"))
    return isinstance(content, dict) and bool(set(content) & (verbs | {"subcommand"}))


class RecipeConfigFile(ActionConfigFile):
    """``--config``: a path, a recipe name or inline YAML; several merge in order; also accepted before the verb."""

    @override
    def __call__(self, parser: Any, cfg: Namespace, values: Any, option_string: str | None = None) -> None:
        value = resolve_config(str(values))
        pending = getattr(parser, "verb_configs", None)
        if pending is not None and not _names_a_verb(value, set(getattr(parser, "verbs", ()))):
            pending.append(value)  # the verb's parser applies it before its own arguments
            return
        self.load(parser, cfg, self.dest, value)

    @staticmethod
    def load(parser: Any, cfg: Namespace, dest: str, value: str) -> None:
        """Merge config ``value`` into ``cfg``, reporting a bad key or value with the file's name."""
        loaded = getattr(parser, "loaded_configs", None)
        if loaded is not None and not _is_inline(value):
            loaded.append(value)
        try:
            ActionConfigFile.apply_config(parser, cfg, dest, value)
        except UsageError:
            raise
        except Exception as err:  # jsonargparse raises TypeError, KeyError, ValueError or its ArgumentError
            source = "inline config" if _is_inline(value) else value
            raise UsageError(f"{source}: {one_line_parse_error(str(err), _options(parser))}") from err


def _file_setting(files: list[str], key: str) -> str | None:
    """The last of ``files`` that sets the dotted ``key`` (``init_args`` levels optional), or ``None``."""
    for file in reversed(files):
        try:
            node: Any = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        for part in (p for p in key.split(".") if p != "init_args"):
            if isinstance(node, dict) and isinstance(node.get("init_args"), dict) and part not in node:
                node = node["init_args"]
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            return file
    return None


_MISSING = object()
_KEY = re.compile(r"^(?:unknown key |unknown option --)?(?P<key>[\w/]+(?:\.[\w/]+)*)(?=[:;]| |$)")


def _on_command_line(key: str, args: list[str]) -> bool:
    """Whether a flag on the command line sets ``key`` or a part of it (``init_args`` levels aside)."""
    parts = [p for p in key.split(".") if p != "init_args"]
    for arg in args:
        if arg.startswith("--"):
            flag = [p for p in arg[2:].split("=", 1)[0].split(".") if p != "init_args"]
            if flag and (parts[: len(flag)] == flag or flag[: len(parts)] == parts):
                return True
    return False


def _options(parser: Any) -> list[str]:
    """The option names ``parser`` accepts (``--trainer.max_epochs``), for "did you mean"."""
    try:
        keys = list(parser.get_defaults().keys())
    except Exception:  # defaults that fail to build must not hide the error being reported
        keys = []
    return [f"--{key}" for key in keys]


class PlkitArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose errors are one line naming the bad key or value, and the fix.

    ``JSONARGPARSE_DEBUG`` or ``exit_on_error=False`` keep jsonargparse's own behaviour (the full report, or an
    exception). As the root parser of a CLI with verbs it also holds the ``--config`` files given before
    the verb, which the verb's parser applies first.
    """

    verb_configs: list[str] | None = None
    verbs: tuple[str, ...] = ()
    loaded_configs: list[str] | None = None

    @override
    def parse_args(self, args: Any = None, namespace: Namespace | None = None, *more: Any, **kwargs: Any) -> Namespace:
        self.loaded_configs = []
        parent = getattr(self, "parent_parser", None)
        pending = getattr(parent, "verb_configs", None) if parent is not None else None
        if parent is None and self.verb_configs is not None:
            self.verb_configs = []
        elif pending:
            namespace = namespace.clone() if namespace is not None else Namespace()
            for value in pending:
                RecipeConfigFile.load(self, namespace, "config", value)
            pending.clear()
        return super().parse_args(args, namespace, *more, **kwargs)

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        if debug_requested():
            raise UsageError(message) from ex  # the traceback, and jsonargparse's whole report
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        cause = ex
        while cause is not None and not isinstance(cause, UsageError):
            cause = cause.__cause__ or cause.__context__
        line = str(cause) if cause is not None else one_line_parse_error(message, _options(parser))
        key = _KEY.match(line)
        if cause is None and key and not _on_command_line(key["key"], getattr(parser, "args", [])):
            files = [*(self.loaded_configs or []), *(getattr(parser, "loaded_configs", None) or [])]
            source = _file_setting(files, key["key"])
            line = f"{source}: {line}" if source else line
        sys.stderr.write(f"{prog}: error: {line}\n")
        raise SystemExit(2)
