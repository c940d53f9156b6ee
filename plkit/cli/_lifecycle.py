"""What happens around a verb's run: interrupts and exit codes, the closing summary, predictions kept on disk.

Exit codes a script can rely on: 0 only for a run that finished, 130 after Ctrl+C (SIGINT), 143 after SIGTERM,
1 for an error, 2 for a command line or config plkit cannot run.

Interrupts. Lightning stops a run cleanly on SIGTERM: its handler sets a flag that the loops check after each
batch, so the run ends at a batch boundary (optimizer step and loop counters done) and the ``on_exception``
hooks save ``last.ckpt`` and mark the status file. Ctrl+C, left to Lightning, raises ``KeyboardInterrupt``
wherever the main thread happens to be, mid-step included. :class:`Interrupts` sends the first Ctrl+C down the
SIGTERM path instead (a second one stops at once), and remembers which signal came, for the exit code.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from plkit.cli._files import write_atomically

__all__ = ["Interrupts", "count_rows", "format_metrics", "save_predictions", "writer_rows"]


class Interrupts:
    """Turn SIGINT and SIGTERM during a run into a stop at the next batch boundary, and remember the signal.

    Use it around the trainer call; ``exit_code`` is then ``128 + signal`` (130, 143) or ``None``.
    Outside the training loops (while data loads, say) Lightning is not listening, and a signal stops the
    process at once, with the same exit code.
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def exit_code(self) -> int | None:
        """``128 + signal number``, as a shell reports a process ended by that signal."""
        return None if self.signal is None else 128 + self.signal

    @contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Install the handlers for the duration of the block (main thread only, where signals are delivered)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _lightning_listens(self) -> bool:
        # While a Trainer runs its loops, Lightning wraps the SIGTERM handler it found (ours) in its own.
        return signal.getsignal(signal.SIGTERM) is not self._on_sigterm

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None or not self._lightning_listens():
            self.signal = self.signal or signum
            raise KeyboardInterrupt
        self.signal = signum
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler, then ours (below), run next

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
        if not self._lightning_listens():
            raise KeyboardInterrupt


def format_metrics(metrics: dict[str, Any]) -> str:
    """``test/acc=0.9123, test/loss=0.2841``: a verb's scalar results on one line.

    Example:
        >>> format_metrics({"test/loss": torch.tensor(0.28414), "test/acc": 0.91234})
        'test/acc=0.9123, test/loss=0.2841'
    """
    items = []
    for key, value in sorted(metrics.items()):
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)):
            items.append(f"{key}={value:.4g}")
    return ", ".join(items)


def count_rows(predictions: Any) -> int:
    """Rows in ``trainer.predict``'s result: a list of per-batch outputs (one list per dataloader with several).

    Example:
        >>> count_rows([torch.zeros(4, 3), torch.zeros(2, 3)])
        6
        >>> count_rows([{"probabilities": torch.zeros(5, 10)}])
        5
    """
    if isinstance(predictions, torch.Tensor):
        return int(predictions.shape[0]) if predictions.dim() else 1
    if isinstance(predictions, dict):
        first = next((v for v in predictions.values() if isinstance(v, torch.Tensor)), None)
        return count_rows(first) if first is not None else 1
    if isinstance(predictions, (list, tuple)):
        return sum(count_rows(p) for p in predictions)
    return 1


def save_predictions(predictions: Any, target: Path) -> Path:
    """Save ``trainer.predict``'s result to ``target`` (``torch.load`` reads it back), atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(target, lambda tmp: torch.save(predictions, tmp))


def writer_rows(folder: Path) -> int | None:
    """The row count a prediction writer recorded in ``folder/manifest.json`` (``EmbeddingWriter`` does)."""
    try:
        return int(json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
