"""Wake-ups for waiting runners: one LISTEN connection per store, whatever the number of
instances waiting in the process.

Part of the store layer (it knows asyncpg). Sending an event (and cancelling a waiting
instance) notifies the table's channel with the instance's names, delivered when that
transaction commits; the listener sets the :class:`Subscription` of that instance, and its
runner reads what happened. A notification is only a hint: runners always read the
tables, so a lost one costs at most a wait until the next deadline or reconnection, after
which every subscriber is woken to look again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import asyncpg

from fsmflow.store.database import Backoff, Database
from fsmflow.store.events import parse_wake_payload
from fsmflow.store.lanes import HEARTBEAT_SECONDS, LANE_SETTINGS, session_gone

logger = logging.getLogger("fsmflow.store")

_LISTENER_SETTINGS: Final = {**LANE_SETTINGS, "application_name": "fsmflow-listener"}


ANY_INSTANCE: Final = ""  # instance ids are never empty: (workflow, "") means all of them


class Subscription:
    """One waiting runner's wake-up: :attr:`woken` is set by a notification for its
    instance (or by a reconnection, which may have missed one). A worker's subscription
    has one key per workflow, ``(workflow, ANY_INSTANCE)``: any of their instances."""

    def __init__(self, listener: Listener, *keys: tuple[str, str]) -> None:
        self.listener = listener
        self.keys = keys
        self.woken = asyncio.Event()

    @property
    def key(self) -> tuple[str, str]:
        """The first (for a runner: the only) key."""
        return self.keys[0]

    def __repr__(self) -> str:
        keys = ", ".join(f"{w!r}:{i or '*'!r}" for w, i in self.keys)
        return f"Subscription({keys}, woken={self.woken.is_set()})"

    def close(self) -> None:
        """Stop receiving wake-ups."""
        self.listener.unsubscribe(self)


class Listener:
    """The process's one listening connection for a table's wake channel."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._subscribers: dict[tuple[str, str], set[Subscription]] = {}
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closed = asyncio.Event()  # set by asyncpg when the session ends
        self.connections = 0  # how many times it connected (a reconnection wakes everyone)

    def __repr__(self) -> str:
        state = "listening" if self._connected.is_set() else "idle"
        return f"Listener({self.db.wake_channel!r}, {state}, subscribers={self.count})"

    @property
    def count(self) -> int:
        """How many subscriptions are open."""
        return len({s for subscriptions in self._subscribers.values() for s in subscriptions})

    async def subscribe(self, workflow: str, instance_id: str) -> Subscription:
        """Start receiving wake-ups for an instance; returns once the listener listens
        (within the retry budget; after that, wake-ups come with the next reconnection)."""
        return await self._subscribe(Subscription(self, (workflow, instance_id)))

    async def subscribe_workflows(self, workflows: list[str]) -> Subscription:
        """Wake-ups for any instance of these workflows (a worker: submissions, events,
        claims given back)."""
        return await self._subscribe(Subscription(self, *((w, ANY_INSTANCE) for w in workflows)))

    async def _subscribe(self, subscription: Subscription) -> Subscription:
        for key in subscription.keys:
            self._subscribers.setdefault(key, set()).add(subscription)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self.db.config.retry_budget)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop a subscription (the connection stays open for the next one)."""
        for key in subscription.keys:
            found = self._subscribers.get(key)
            if found is not None:
                found.discard(subscription)
                if not found:
                    del self._subscribers[key]

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        key = parse_wake_payload(payload)
        if key is None:
            return
        for subscription in self._subscribers.get(key, ()):
            subscription.woken.set()
        for subscription in self._subscribers.get((key[0], ANY_INSTANCE), ()):
            subscription.woken.set()

    def _wake_all(self) -> None:
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.woken.set()

    async def _run(self) -> None:
        """Keep one listening session up while anyone subscribes; reconnect when it dies."""
        backoff: Backoff | None = None
        while True:
            try:
                await self._listen()
                backoff = None
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = type(exc).__name__
            self._connected.clear()
            await self._drop()
            backoff = backoff or Backoff(float("inf"))
            logger.warning(
                "wake-up listener on %s lost (%s); reconnecting in %.1fs",
                self.db.target, failure, backoff.delay,
            )  # fmt: skip
            await backoff.sleep()

    async def _listen(self) -> None:
        kwargs = dict(await self.db.connect_kwargs())
        kwargs["server_settings"] = {**kwargs.get("server_settings", {}), **_LISTENER_SETTINGS}
        self._conn = conn = await asyncpg.connect(**kwargs)
        self._closed = asyncio.Event()
        conn.add_termination_listener(lambda _: self._closed.set())
        await conn.add_listener(self.db.wake_channel, self._on_notification)
        self.connections += 1
        self._connected.set()
        if self.connections > 1:
            self._wake_all()  # a notification may have come while nobody listened

    async def _watch(self) -> None:
        """Until the session dies: a heartbeat while anyone waits (a silently cut link
        would otherwise leave the waiters deaf until their deadlines)."""
        conn = self._conn
        assert conn is not None
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):  # closed: asyncpg's termination callback
                await asyncio.wait_for(self._closed.wait(), HEARTBEAT_SECONDS)
            if self._subscribers and not conn.is_closed():
                try:
                    await conn.fetchval("SELECT 1", timeout=HEARTBEAT_SECONDS)
                except TimeoutError:
                    raise ConnectionError("listener heartbeat timed out") from None
                except Exception as exc:
                    if session_gone(exc) or conn.is_closed():
                        raise
        raise ConnectionError("listener connection closed")

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._connected.clear()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
