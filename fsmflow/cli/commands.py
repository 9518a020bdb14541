"""The ``fsmflow`` sub-commands: :data:`COMMANDS` registers them, in ``--help`` order.

The commands about the table itself (init-db, reset-db, check) are in
:mod:`fsmflow.cli.admin`, ``migrate`` in :mod:`fsmflow.cli.migrate`, those about
instances (list, show, graph, fork, retry, cancel, prune) in :mod:`fsmflow.cli.instances`
(what show says about waits in :mod:`fsmflow.cli.waits`), ``send-event`` in
:mod:`fsmflow.cli.events`, those of the worker fleet (submit, worker, workers) in
:mod:`fsmflow.cli.fleet`, ``bench`` in :mod:`fsmflow.cli.bench_parser` and ``embedded``
in :mod:`fsmflow.cli.embedded`, ``ui`` (the web dashboard) in :mod:`fsmflow.cli.ui`;
the argument types, the ``MODULE:ATTRIBUTE`` loader and
the registration helpers are in :mod:`fsmflow.cli.arguments`. Each ``add_*`` registers
one parser and its handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from fsmflow.cli.admin import add_check, add_init_db, add_reset_db
from fsmflow.cli.events import add_send_event
from fsmflow.cli.fleet import add_submit, add_worker, add_workers
from fsmflow.cli.instances import (
    add_cancel,
    add_fork,
    add_graph,
    add_list,
    add_prune,
    add_retry,
    add_show,
)
from fsmflow.cli.migrate import add_migrate
from fsmflow.cli.ui import add_ui

if TYPE_CHECKING:
    from fsmflow.cli.arguments import Register

COMMANDS: Final[tuple[Register, ...]] = (
    add_init_db,
    add_migrate,
    add_reset_db,
    add_check,
    add_list,
    add_show,
    add_graph,
    add_fork,
    add_retry,
    add_cancel,
    add_send_event,
    add_submit,
    add_worker,
    add_workers,
    add_prune,
    add_ui,
)
