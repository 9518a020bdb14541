"""The store layer: the only code that talks to PostgreSQL (through asyncpg).

:class:`Store` is its face; its parts are the driver error mapping (``dberrors``),
owner connections (``lanes``, ``ownership``), operations on stored instances
(``operations``) and the zero-config local server (``embedded``). It imports only the
model layer, :mod:`fsmflow.errors` and :mod:`fsmflow.sql`.
"""

from fsmflow.store.facade import Store

__all__ = ["Store"]
