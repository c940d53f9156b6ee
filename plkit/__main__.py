"""``python -m plkit``: the same entry point as the ``plkit`` command."""

from plkit.cli import main

if __name__ == "__main__":
    main()
