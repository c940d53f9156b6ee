"""Where datasets live when the user does not say: a per-user cache, never the working directory."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_data_dir", "resolve_data_dir"]

ENV_DATA_DIR = "PLKIT_DATA_DIR"


def default_data_dir() -> Path:
    """The per-user dataset cache: ``$PLKIT_DATA_DIR``, else ``$XDG_CACHE_HOME/plkit/datasets``, else ``~/.cache/...``.

    Example:
        >>> import os
        >>> os.environ["PLKIT_DATA_DIR"] = "/data/shared"
        >>> default_data_dir()
        PosixPath('/data/shared')
        >>> del os.environ["PLKIT_DATA_DIR"]
    """
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "plkit" / "datasets"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``data_dir`` as an absolute path with ``~`` expanded; ``None`` gives :func:`default_data_dir`."""
    folder = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    return folder.absolute()
