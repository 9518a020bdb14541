"""Waiting for the lock table to empty after runs ended.

A completed run gives its lock back just after ``run_workflow()`` returns (no round trip
on its path), so a test that checks for leftover locks reads them again until none is left
(or 10 s passed): a lock that is never given back still shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")  # falsy when nothing is left: an empty list, 0


async def once_released(read: Callable[[], T], *, limit: float = 10.0) -> T:
    """``read()`` once its answer is falsy (nothing left), or its last answer after
    ``limit`` seconds."""
    for _ in range(round(limit / 0.01)):
        if not (found := read()):
            return found
        await asyncio.sleep(0.01)  # lets this process's releases in flight run
    return read()
