"""Write a file so that no reader ever sees half of it: into a temporary name beside it, then renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(target: str | Path, write: Callable[[Path], object], mode: int = 0o644) -> Path:
    """Call ``write(tmp)`` with a temporary path in ``target``'s folder, then rename it to ``target``.

    A write that fails or is interrupted leaves ``target`` as it was (missing, or its previous content)
    and removes the temporary file. The result gets ``mode``: ``mkstemp`` creates files readable by their
    owner only, and a run's files are meant to be read by others too.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "summary.txt"
        >>> write_atomically(target, lambda tmp: tmp.write_text("done\\n")).read_text()
        'done\\n'
        >>> oct(target.stat().st_mode & 0o777)
        '0o644'
    """
    target = Path(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
