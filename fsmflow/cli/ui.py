"""The ``fsmflow ui`` sub-command: serve the web dashboard (:mod:`fsmflow.ui`) with uvicorn.

Read-only and bound to 127.0.0.1 by default; ``--allow-actions`` adds retry, cancel,
send-event and fork, each behind ``FSMFLOW_UI_TOKEN``. The first line on stdout is the
address it serves (``--port 0`` picks a free port, which that line names). SIGINT and
SIGTERM stop it (exit 0). Without the ``ui`` extra it exits 2 saying what to install.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fsmflow.cli.arguments import bounded, command_parser
from fsmflow.cli.output import say
from fsmflow.engine.shutdown import EXIT_OK
from fsmflow.errors import ConfigError
from fsmflow.settings import DBConfig

if TYPE_CHECKING:
    from fsmflow.cli.arguments import Commands

logger = logging.getLogger("fsmflow.cli")

port_number = bounded(0, 65535, "port ")


def add_ui(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow ui``."""
    parser = command_parser(
        commands, common, epilog, "ui", "serve the web dashboard (read-only by default)",
        "Serve the web dashboard on the same settings as every other command: the "
        "instances (filters, id search, counts by status, live refresh), one instance "
        "(its timeline, wait, pending events, the state diagram with the current state "
        "and each transition's count), the workers. Needs the ui extra: pip install "
        "'fsmflow[ui]'. Read-only and on 127.0.0.1 by default. --allow-actions adds "
        "retry, cancel, send an event and fork, each refused unless the form carries "
        "FSMFLOW_UI_TOKEN (unset: every action is refused). Context values are shown only "
        "for the row a person asks for, never logged. Prints the address it serves on its "
        "first line; SIGINT or SIGTERM stops it (exit 0).",
    )  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument(
        "--port", type=port_number, default=8080, help="port (8080; 0: a free one, printed)"
    )
    parser.add_argument(
        "--allow-actions",
        action="store_true",
        help="offer retry, cancel, send-event and fork (each needs FSMFLOW_UI_TOKEN)",
    )
    parser.set_defaults(handler=ui_command)


def _load() -> tuple[Any, Any, Any]:
    """uvicorn and the dashboard; :class:`ConfigError` naming the extra if missing."""
    try:
        import uvicorn

        from fsmflow.ui import UIOptions, create_app
    except ImportError as exc:
        raise ConfigError(
            f"fsmflow ui needs the ui extra ({exc.name or 'a package'} is not installed): "
            "pip install 'fsmflow[ui]'"
        ) from None
    return uvicorn, UIOptions, create_app


async def ui_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Serve the dashboard until SIGINT/SIGTERM."""
    uvicorn, ui_options, create_app = _load()
    _warn(args, config)
    store = config.store
    await store.open()  # fail here, with the usual error, if the table is not usable
    options = ui_options(allow_actions=args.allow_actions, token=config.ui_token)
    server_config = uvicorn.Config(
        create_app(store, options),
        host=args.host,
        port=args.port,
        log_config=None,  # fsmflow's logging (stderr, control characters escaped)
        access_log=True,
        server_header=False,
        lifespan="off",
    )
    sock = _bind(server_config)
    server = _server_class(uvicorn)(server_config)
    with _stop_on_signals(server):  # before the address is out: a client may signal at once
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        mode = "actions allowed" if args.allow_actions else "read-only"
        say(f"fsmflow ui: serving http://{shown}:{port}/ ({mode}; Ctrl-C stops it)")
        await server.serve(sockets=[sock])
    return EXIT_OK


def _bind(server_config: Any) -> socket.socket:
    try:
        sock: socket.socket = server_config.bind_socket()
    except SystemExit:  # uvicorn logs the OSError and exits
        raise ConfigError(
            f"cannot listen on {server_config.host}:{server_config.port} (in use, or not "
            "an address of this machine): pass another --port or --host"
        ) from None
    # Listen now, before the address is printed: a client that reads it and connects at
    # once waits in the backlog until uvicorn accepts, instead of being refused.
    sock.listen(server_config.backlog)
    return sock


def _warn(args: argparse.Namespace, config: DBConfig) -> None:
    if not _loopback(args.host) and config.ui_token is None:
        logger.warning(
            "fsmflow ui listens on %s, not only on this machine, and FSMFLOW_UI_TOKEN is "
            "not set: anyone who reaches it sees every instance (context values stay "
            "hidden until asked for per row). Bind to 127.0.0.1, or put it behind an "
            "authenticating proxy",
            args.host,
        )
    if args.allow_actions and config.ui_token is None:
        logger.warning(
            "--allow-actions without FSMFLOW_UI_TOKEN: every action is refused until "
            "it is set (restart fsmflow ui with it in the environment)"
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_class(uvicorn: Any) -> Any:
    class Server(uvicorn.Server):  # type: ignore[misc]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # The signals are handled by _stop_on_signals, from before the address is
            # printed; uvicorn's own handling would also raise them again after the
            # shutdown (exit 130/143 instead of 0).
            yield

    return Server


@contextlib.contextmanager
def _stop_on_signals(server: Any) -> Iterator[None]:
    """SIGINT/SIGTERM stop ``server`` gracefully (exit 0, like every fsmflow command)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.handle_exit, sig, None)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
