"""The ``plkit`` command: ``LightningCLI`` with plkit's defaults, plus ``check``, ``recipes`` and ``report``.

``main`` is importable without torch; ``PlkitCLI`` imports Lightning when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plkit.cli._main import main

if TYPE_CHECKING:
    from plkit.cli.lightning_cli import PlkitCLI

__all__ = ["PlkitCLI", "main"]


def __getattr__(name: str) -> Any:
    if name == "PlkitCLI":
        from plkit.cli.lightning_cli import PlkitCLI

        return PlkitCLI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
