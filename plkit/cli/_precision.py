"""bf16 on a CPU: whether this one computes it natively, and the precision to use when it does not.

A CPU without a bf16 unit (AVX512-BF16 or AMX on x86, the ``bf16`` extension on Arm) runs ``bf16-mixed``
emulated, several times slower than ``32-true``, without a word. plkit says so once and runs ``32-true``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["bf16_fallback", "cpu_has_native_bf16", "has_bf16_flag"]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively, read from ``/proc/cpuinfo``.

    Where that file does not exist (macOS, Windows) the answer is ``True``: plkit never overrides a precision
    it cannot judge.
    """
    try:
        return has_bf16_flag(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return True


def has_bf16_flag(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo`` text lists a native bf16 unit: x86 ``avx512_bf16``/``amx_bf16``, Arm ``bf16``.

    Example:
        >>> has_bf16_flag("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile")
        True
        >>> has_bf16_flag("Features\t: fp asimd sve bf16 i8mm")
        True
        >>> has_bf16_flag("flags\t\t: fpu sse avx2 avx512f")
        False
    """
    flags = {
        word for line in cpuinfo.splitlines() if line.lower().startswith(("flags", "features")) for word in line.split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def bf16_fallback(precision: Any, accelerator: Any, cpu_bf16: Callable[[], bool] | None = None) -> str | None:
    """The precision to use instead of a ``bf16-*`` one that would run emulated on this CPU, or ``None``.

    Example:
        >>> bf16_fallback("bf16-mixed", "cpu", cpu_bf16=lambda: False)
        '32-true'
        >>> bf16_fallback("bf16-mixed", "cpu", cpu_bf16=lambda: True) is None
        True
        >>> bf16_fallback("16-mixed", "cpu", cpu_bf16=lambda: False) is None
        True
    """
    if not str(precision).startswith("bf16"):
        return None
    if accelerator in (None, "auto"):
        import torch

        on_cpu = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    else:
        on_cpu = str(accelerator) == "cpu"
    return "32-true" if on_cpu and not (cpu_bf16 or cpu_has_native_bf16)() else None
