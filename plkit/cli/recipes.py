"""The recipes that ship with plkit: find them by name, list, show and copy them.

A recipe is a YAML file for ``plkit fit --config``. The files live in the repository's top-level
``recipes/`` folder and the wheel carries a copy inside the package (``plkit/recipes``), so a recipe
is found the same way from a checkout and from an installed plkit. A recipe's name is its path
below that folder without ``.yaml``: ``mnist``, ``overlays/debug``.

This module imports neither torch nor Lightning: ``plkit recipes ...`` must answer at once.

Example:
    >>> "mnist" in recipe_names()
    True
    >>> recipe_path("mnist").name
    'mnist.yaml'
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from plkit.cli._errors import UsageError, did_you_mean
from plkit.cli._files import write_atomically

__all__ = [
    "Recipe",
    "RecipeNotFoundError",
    "copy_recipe",
    "list_recipes",
    "recipe_names",
    "recipe_path",
    "recipes_root",
]

SUFFIX = ".yaml"


class RecipeNotFoundError(UsageError, LookupError):
    """Raised for a recipe name that plkit does not ship."""


@dataclass(frozen=True)
class Recipe:
    """One shipped recipe: its name, file and the description from its header."""

    name: str
    path: Path
    description: str

    @property
    def is_overlay(self) -> bool:
        """Overlays (``overlays/*``) are stacked after a recipe with a second ``--config``."""
        return self.name.startswith("overlays/")


def recipes_root() -> Path:
    """Return the folder that holds the recipes: inside the package when installed, else the checkout's."""
    packaged = resources.files("plkit") / "recipes"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "recipes"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"plkit's recipes are missing: neither {packaged} nor {checkout} exists. Reinstall plkit (pip install plkit)."
    )


def recipe_names() -> list[str]:
    """Return every recipe name, recipes before overlays, each group sorted."""
    root = recipes_root()
    names = [p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}")]
    return sorted(names, key=lambda name: (name.startswith("overlays/"), name))


def recipe_path(name: str) -> Path:
    """Return the file of the recipe called ``name`` (``mnist`` or ``mnist.yaml``).

    Raises:
        RecipeNotFoundError: if plkit ships no recipe of that name; the message lists the ones it has.
    """
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    names = recipe_names()
    if stem not in names:
        hint = did_you_mean(stem, names) or f"; the recipes are {', '.join(names)}"
        raise RecipeNotFoundError(f"no recipe is named {name!r}{hint} (`plkit recipes list`)")
    return recipes_root() / f"{stem}{SUFFIX}"


def describe(path: Path) -> str:
    """Return a recipe's description: the header comment paragraph after its ``Run:`` line, joined into one line.

    The paragraph ends at an empty comment line (``#``) or at the first line that is not a comment.
    """
    words: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            text = line.lstrip("#").strip()
            if text.lower().startswith("run:"):
                continue
            if not text:
                if words:
                    break
                continue
            words.append(text)
    return " ".join(words)


def list_recipes() -> list[Recipe]:
    """Return every shipped recipe with its description."""
    root = recipes_root()
    return [Recipe(name, root / f"{name}{SUFFIX}", describe(root / f"{name}{SUFFIX}")) for name in recipe_names()]


def copy_recipe(name: str, dest: str | Path | None = None, force: bool = False) -> Path:
    """Copy a recipe to ``dest`` (a file, or a folder to copy into; default: ``./<name>.yaml``).

    Raises:
        RecipeNotFoundError: for an unknown recipe name.
        UsageError: if the destination exists and ``force`` is false.
    """
    source = recipe_path(name)
    target = Path(dest) if dest is not None else Path(source.name)
    if target.is_dir():
        target = target / source.name
    if target.exists() and not force:
        raise UsageError(f"{target} already exists; pass --force to overwrite it, or give another destination")
    target.parent.mkdir(parents=True, exist_ok=True)
    # An interrupted copy never leaves a truncated recipe.
    text = source.read_text(encoding="utf-8")
    write_atomically(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return target
