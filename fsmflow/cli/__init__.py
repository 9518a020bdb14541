"""The ``fsmflow`` command line (``python -m fsmflow``); :func:`main` is the entry point."""

from fsmflow.cli.main import main

__all__ = ["main"]
