"""The two errors a data module raises for data a user can fix: files it cannot find, and files it cannot read."""

from __future__ import annotations

__all__ = ["DatasetFormatError", "DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk (and could not be downloaded).

    The message names the folder that was searched and says how to stage the files there.
    """


class DatasetFormatError(ValueError):
    """A dataset file is there but is not what it should be: truncated, a wrong magic number, mismatched counts.

    The message names the file and says how to replace it.
    """
