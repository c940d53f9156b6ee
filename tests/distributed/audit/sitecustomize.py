"""Record every file a rank writes under ``$PLKIT_AUDIT_ROOT``: Python imports this module at start-up.

The distributed tests put this folder on ``PYTHONPATH`` of the engines they start. In a process that has a rank
(``RANK`` from torchrun, ``SLURM_PROCID`` from srun), an audit hook notes each open for writing, rename, removal and
folder creation under ``$PLKIT_AUDIT_ROOT``, and at exit the list goes to
``$PLKIT_AUDIT_OUT/rank{r}-pid{pid}.json``. Other processes (the torchrun agent, the test itself) are left alone.
"""

from __future__ import annotations

import atexit
import json
import os
import sys

_ROOT = os.environ.get("PLKIT_AUDIT_ROOT")
_OUT = os.environ.get("PLKIT_AUDIT_OUT")
_RANK = os.environ.get("RANK", os.environ.get("SLURM_PROCID"))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_touched: list[str] = []
_recording = [True]


def _audit(event: str, args: tuple) -> None:
    if not _recording[0]:
        return
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
        )
        paths = [(path, None)] if writes else []
    elif event == "os.rename":  # (src, dst, src_dir_fd, dst_dir_fd)
        paths = [(args[1], args[3])]
    elif event in ("os.remove", "os.rmdir", "os.mkdir"):  # (path, [mode,] dir_fd)
        paths = [(args[0], args[-1])]
    elif event in ("shutil.rmtree", "os.truncate"):
        paths = [(args[0], None)]
    else:
        return
    for path, dir_fd in paths:
        if isinstance(path, (str, bytes, os.PathLike)):
            text = os.fsdecode(path)
            # shutil.rmtree removes by names relative to an open folder: resolve them against it.
            base = os.readlink(f"/proc/self/fd/{dir_fd}") if isinstance(dir_fd, int) and dir_fd >= 0 else None
            text = os.path.abspath(os.path.join(base, text) if base else text)
            if text.startswith(_ROOT):
                _touched.append(f"{event} {text}")


def _dump() -> None:
    _recording[0] = False
    os.makedirs(_OUT, exist_ok=True)
    with open(os.path.join(_OUT, f"rank{_RANK}-pid{os.getpid()}.json"), "w") as f:
        json.dump(sorted(set(_touched)), f, indent=1)


if _ROOT and _OUT and _RANK is not None:
    _ROOT = os.path.abspath(_ROOT)
    sys.addaudithook(_audit)
    atexit.register(_dump)
