"""``python -m fsmflow``: the ``fsmflow`` command line (see :mod:`fsmflow.cli`)."""

from __future__ import annotations

from fsmflow.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
