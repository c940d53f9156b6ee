"""The one exception type the CLI raises for a command line it cannot run."""


class UsageError(Exception):
    """A command line or config plkit cannot run; the message names the bad value and what to write instead."""
