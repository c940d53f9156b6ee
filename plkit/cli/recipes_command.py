"""``plkit recipes list | show NAME | copy NAME [DEST] [--force]`` (no torch, no Lightning)."""

from __future__ import annotations

import argparse
import shutil
import textwrap
from collections.abc import Sequence

from plkit.cli.recipes import copy_recipe, list_recipes, recipe_path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plkit recipes",
        description="The YAML recipes that ship with plkit. Run one with `plkit fit --config NAME`.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{list,show,copy}")
    verbs.add_parser("list", help="name and description of every recipe and overlay")
    show = verbs.add_parser("show", help="print a recipe's YAML")
    show.add_argument("name", help="a recipe name, e.g. mnist or overlays/debug")
    copy = verbs.add_parser("copy", help="copy a recipe to edit it")
    copy.add_argument("name", help="a recipe name, e.g. mnist")
    copy.add_argument("dest", nargs="?", default=None, help="file or folder to copy to (default: ./NAME.yaml)")
    copy.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    return parser


def run_recipes_command(argv: Sequence[str]) -> None:
    """Run ``plkit recipes`` with ``argv`` (the words after ``recipes``)."""
    args = _parser().parse_args(list(argv))
    if args.verb == "list":
        recipes = list_recipes()
        width = max((len(r.name) for r in recipes), default=0)
        columns = shutil.get_terminal_size((100, 24)).columns
        groups = (
            ("Recipes (plkit fit --config NAME):", [r for r in recipes if not r.is_overlay]),
            (
                "Overlays (stack after a recipe: --config NAME --config overlays/X):",
                [r for r in recipes if r.is_overlay],
            ),
        )
        for title, group in groups:
            if not group:
                continue
            print(title)
            for recipe in group:
                # The whole description, wrapped under itself: `  name   text ...` / `         ... text`.
                lines = textwrap.wrap(recipe.description, max(40, columns - width - 4)) or [""]
                print(f"  {recipe.name:<{width}}  {lines[0]}")
                for line in lines[1:]:
                    print(f"  {'':<{width}}  {line}")
    elif args.verb == "show":
        print(recipe_path(args.name).read_text(encoding="utf-8"), end="")
    else:
        target = copy_recipe(args.name, args.dest, force=args.force)
        print(f"copied {args.name} to {target}; run it with: plkit fit --config {target}")
