"""How the CLI words a mistake: one line that names the bad file, key or value and says what to write instead.

Three sources feed it: plkit's own checks (:class:`UsageError`), jsonargparse's parse errors (multi-line
"Does not validate against any of the Union subtypes" reports, rewritten by :func:`one_line_parse_error`), and
exceptions a run raises for a config mistake, such as a channel mismatch deep inside a convolution
(:func:`hint_for`). This module imports neither torch nor Lightning.

Example:
    >>> did_you_mean("max_epoch", ["max_epochs", "min_epochs", "max_steps"])
    "; did you mean 'max_epochs'?"
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
from collections.abc import Iterable

__all__ = [
    "UsageError",
    "debug_requested",
    "did_you_mean",
    "hint_for",
    "is_user_error",
    "one_line_error",
    "one_line_parse_error",
]


class UsageError(TypeError):
    """A command line, config or checkpoint plkit cannot run; the message names the bad value and the fix.

    A ``TypeError`` so that jsonargparse, when one is raised inside an argument's action, reports it as a
    parse error (exit code 2) rather than a crash.
    """


def debug_requested() -> bool:
    """``PLKIT_DEBUG`` is set (and not ``0``): show tracebacks instead of one-line errors."""
    return os.environ.get("PLKIT_DEBUG", "") not in ("", "0")


def did_you_mean(word: str, choices: Iterable[str], quote: str = "'") -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``word``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {quote}{close[0]}{quote}?" if close else ""


# Runtime errors whose cause is a config value, with the fix: (pattern in the message, hint).
HINTS = (
    (
        re.compile(r"expected input\[.*\] to have (\d+) channels, but got (\d+) channels"),
        "the model expects {0} input channels but the data has {1}: set model.init_args.in_channels: {1}",
    ),
    (
        re.compile(r"Target (-?\d+) is out of bounds|index (\d+) is out of bounds"),
        "a label is not below model.init_args.num_classes: set num_classes to the number of classes in the data",
    ),
    (
        re.compile(r"mat1 and mat2 shapes cannot be multiplied"),
        "a layer's input size does not fit the data: check the image size and input_shape against the data module",
    ),
)


def hint_for(error: BaseException) -> str | None:
    """Return a one-line fix for a known config mistake behind ``error``, or ``None``.

    Example:
        >>> hint_for(RuntimeError("expected input[8, 1, 28, 28] to have 3 channels, but got 1 channels instead"))
        'the model expects 3 input channels but the data has 1: set model.init_args.in_channels: 1'
    """
    text = str(error)
    for pattern, hint in HINTS:
        match = pattern.search(text)
        if match:
            return hint.format(*match.groups())
    return None


def is_user_error(error: BaseException) -> bool:
    """Errors a config, or the files it names, causes, and whose message says what to fix.

    Their tracebacks run deep into Lightning and torch and help nobody but plkit's developers, who set
    ``PLKIT_DEBUG=1``. Anything else (a bug) keeps its traceback.
    """
    if isinstance(error, (UsageError, OSError, ValueError)) or type(error).__name__ == "MisconfigurationException":
        return True
    return hint_for(error) is not None


_UNION = re.compile(r'^Parser key "(?P<key>[^"]+)":.*?Does not validate against any of the Union subtypes', re.S)
_LITERAL = re.compile(r"Expected a typing\.Literal\[(?P<values>[^\]]*)\]")
_CHOICE = re.compile(r"invalid choice: '(?P<choice>[^']*)' \(choose from (?P<choices>[^)]*)\)")
_SUBCOMMAND = re.compile(r'expected "(?P<dest>[\w.]*subcommand)" to be one of \{(?P<verbs>[^}]*)\}')
_CLASS_PROBLEM = re.compile(
    r"Problem with given class_path '(?P<cls>[^']+)':\s*\n\s*(?P<problem>.+?)(?=\n\s*- |\n\s*Given value|\Z)", re.S
)
_NOT_ACCEPTED = re.compile(r"(?:Option|Key) '(?P<name>[^']+)' is not (?:accepted|expected)")
_GIVEN = re.compile(r"Given value: (?P<value>.*)$", re.M)
_EXPECTED = re.compile(r"- Expected a <class '(?:[\w.]+\.)?(?P<type>\w+)'>")
_IMPORT_PATH = re.compile(r"Expected a dot import path string: (?P<value>\S+)")
_NESTED = re.compile(r"NestedArg\(key='(?P<key>[^']*)', val=(?P<val>.*)\)$")
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (?P<args>.+)$")
_KEY_NOT_EXPECTED = re.compile(
    r"(?:Key \"?'?(?P<key>[\w./]+)'?\"? is not expected|does not accept option '(?P<option>[\w./]+)')"
)
_UNEXPECTED_KEYS = re.compile(r"Unexpected (?:keys?|config)[: ]*(?P<keys>.*)$", re.S)
# A bool/int/float parameter's parse error: 'Parser key "trainer.max_epochs": Expected a <class 'int'>. Got value: abc'
_PLAIN = re.compile(r'^Parser key "(?P<key>[^"]+)":\s*\n?\s*(?P<problem>.+)', re.S)


def one_line_parse_error(message: str, options: Iterable[str] = ()) -> str:
    """Rewrite a jsonargparse error ``message`` as one line that names the key or value and the fix.

    ``options`` are the option names the parser accepts (``--trainer.max_epochs``, ...) for "did you mean".
    A message this function does not recognise is returned with its lines joined.

    Example:
        >>> one_line_parse_error("unrecognized arguments: --trainer.max_epoch 1", ["--trainer.max_epochs"])
        "unknown option --trainer.max_epoch; did you mean '--trainer.max_epochs'?"
    """
    message = message.strip()
    unrecognized = _UNRECOGNIZED.match(message)
    if unrecognized:
        option = next((a for a in unrecognized["args"].split() if a.startswith("-")), unrecognized["args"].split()[0])
        name = option.split("=", 1)[0]
        if not name.startswith("-"):
            return f"unexpected word {name!r}: options start with --, and the verb comes first (plkit fit ...)"
        return f"unknown option {name}{did_you_mean(name, options)}"
    union = _UNION.match(message)
    if union:
        return _union_error(union["key"], message)
    choice = _CHOICE.search(message)
    if choice:
        word, choices = choice["choice"], [c.strip(" '") for c in choice["choices"].split(",")]
        if word in ("check", "recipes", "report"):
            return f"{word!r} is a command of plkit's own: put it first (plkit {word} --config ...)"
        return f"unknown verb {word!r}{did_you_mean(word, choices)}; choose one of {', '.join(choices)}"
    subcommand = _SUBCOMMAND.search(message)
    if subcommand:
        verbs = subcommand["verbs"].split(",")
        return f"name the verb first: plkit {verbs[0]} --config ... (one of {', '.join(verbs)}; `plkit --help`)"
    not_expected = _KEY_NOT_EXPECTED.search(message)
    if not_expected:
        key = not_expected["key"] or not_expected["option"]
        return f"unknown key {key}{did_you_mean('--' + key, options).replace('--', '')}"
    plain = _PLAIN.match(message)
    if plain:
        problem = " ".join(plain["problem"].split())
        return f"{plain['key']}: {_short_problem(problem)}"
    return " ".join(message.split())


def one_line_error(error: BaseException) -> str:
    """``Type: message`` on one line for an exception a run raised; a jsonargparse report becomes its cause.

    Example:
        >>> one_line_error(ValueError("num_classes=0:\\n  it must be >= 1"))
        'ValueError: num_classes=0: it must be >= 1'
    """
    text = str(error)
    union = re.search(r"Errors:\s*\n\s*- (?P<first>.+?)(?=\n\s*- |\n\s*Given value|\Z)", text, re.S)
    if "Does not validate against any of the Union subtypes" in text and union:
        text = union["first"]  # the complaint of the class that was meant, not of NoneType
    text = " ".join(text.split())
    return f"{type(error).__name__}: {text[:497] + '...' if len(text) > 500 else text}"


def _union_error(key: str, message: str) -> str:
    """One line for a value that matched none of a parameter's types (the report lists every type's complaint)."""
    given = _GIVEN.search(message)
    value = given["value"].strip() if given else "?"
    nested = _NESTED.match(value)
    problem = _CLASS_PROBLEM.search(message)
    if problem:
        class_path, detail = problem["cls"], problem["problem"].strip()
        short = class_path.rsplit(".", 1)[-1]
        if (nested and nested["key"] == "class_path") or re.search(r"No module named|has no attribute", detail):
            hint = did_you_mean(short, _class_names(key))
            return f"{key}.class_path: no class named {class_path!r} ({' '.join(detail.split())}){hint}"
        bad = _NOT_ACCEPTED.search(detail)
        if bad:
            return _unknown_parameter(key, class_path, bad["name"])
        inner = _PLAIN.match(detail)
        if inner:  # a parameter of the class got a bad value: 'Parser key "num_classes": Expected a <class 'int'>'
            return f"{key}.init_args.{inner['key']}: {_short_problem(inner['problem'])} ({short}.{inner['key']})"
        where = f"{key}.init_args.{nested['key']}" if nested else key
        return f"{where}: {short} does not accept {nested['val'] if nested else value} ({_short_problem(detail)})"
    import_path = _IMPORT_PATH.search(message)
    if import_path or (nested and nested["key"] == "class_path"):
        name = import_path["value"] if import_path else nested["val"].strip("'\"")
        where = f"{key}.class_path" if nested else key
        return f"{where}: no class named {name!r}{did_you_mean(name, _class_names(key))}"
    if nested:
        return f"--{key}.{nested['key']}: {key} names no class to take it; give the class first: --{key} CLASS"
    choices = [v.strip().strip("'\"") for group in _LITERAL.findall(message) for v in group.split(",")]
    if choices:
        choices = list(dict.fromkeys(choices))
        hint = did_you_mean(value, choices)
        return f"{key}: {value!r} is not one of the accepted values{hint or ': ' + ', '.join(choices)}"
    types = [t for t in _EXPECTED.findall(message) if t != "NoneType"]
    errors = message.split("Errors:", 1)[-1]
    other = [
        " ".join(e.split())
        for e in re.findall(r"\n\s*- (.+?)(?=\n\s*- |\n\s*Given value|\Z)", errors, re.S)
        if not e.startswith("Expected a ")
    ]
    if not types and other:  # "Multiple subclasses with name X. Give the full class path ...", say
        return f"{key}: {other[0]}"
    expected = " or ".join(types) if types else "another type"
    nullable = " (or null)" if "NoneType" in message else ""
    return f"{key}: {value!r} is not a valid {expected}{nullable}"


def _unknown_parameter(key: str, class_path: str, name: str) -> str:
    short = class_path.rsplit(".", 1)[-1]
    params = _parameters(class_path)
    hint = did_you_mean(name, params)
    if not hint and "optimizer" in params:
        hint = f"; an optimizer setting goes under {key}.init_args.optimizer.init_args.{name}"
    listing = f" (it takes: {', '.join(params)})" if params and not hint else ""
    return f"{key}.init_args.{name}: {short} has no parameter {name!r}{hint}{listing}"


def _parameters(class_path: str) -> list[str]:
    try:
        module, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


def _class_names(key: str) -> list[str]:
    """Names of the already imported classes a ``model``/``data``/callback key could take, for "did you mean"."""
    base_paths = {
        "model": "lightning.pytorch.LightningModule",
        "data": "lightning.pytorch.LightningDataModule",
    }
    base_path = base_paths.get(key.rsplit(".", 1)[-1], "lightning.pytorch.Callback")
    module, name = base_path.rsplit(".", 1)
    base = getattr(importlib.import_module(module), name)
    seen: set[str] = set()
    stack = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        if not cls.__name__.startswith("_"):
            seen.add(cls.__name__)
        stack.extend(cls.__subclasses__())
    return sorted(seen)


def _short_problem(problem: str) -> str:
    problem = " ".join(problem.split())
    expected = re.match(r"Expected a <class '(?:[\w.]+\.)?(\w+)'>\. Got value: (.*)", problem)
    if expected:
        return f"{expected[2]!r} is not a valid {expected[1]}"
    return problem
