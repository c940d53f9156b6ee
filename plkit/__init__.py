"""plkit: a thin, opinionated layer over PyTorch Lightning.

Importing ``plkit`` is cheap and has no side effects: the sub-packages (``plkit.callbacks``,
``plkit.data``, ``plkit.models``, ``plkit.cli``) import Lightning and torch only when they are
imported themselves.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
