"""Production-grade Lightning callbacks that work in any Lightning project.

``from plkit.callbacks import EmbeddingWriter, LRDecay, GradNormLogger, ProgressNotifier`` needs nothing else
from plkit, and importing it has no side effects. Each callback lives in its own file, which imports nothing
else from plkit either, so it can also be copied into a project on its own (``EmbeddingWriter`` with its
storage module, ``_embedding_store.py``, which imports only numpy).
"""

from plkit.callbacks.embedding_writer import EmbeddingWriter
from plkit.callbacks.grad_norm_logger import GradNormLogger
from plkit.callbacks.lr_decay import LRDecay
from plkit.callbacks.progress_notifier import ProgressNotifier

__all__ = ["EmbeddingWriter", "GradNormLogger", "LRDecay", "ProgressNotifier"]
