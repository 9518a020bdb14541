"""The timed runs of ``fsmflow bench``: three kinds, two modes, interleaved rounds.

Each round runs, in each mode (sequential, ``--concurrency`` in flight), the raw-INSERT
baseline ("b"), the hand-rolled loop ("h") and fsmflow ("f"), in an order that rotates
from round to round (b h f, h f b, f b h, ...) so that no kind always runs first or
right after the same neighbour. Ratios are per round (runs seconds apart), then the
median and min-max over rounds. Timed runs carry no statement counting: the accounting
passes (:mod:`fsmflow.bench.accounting`, :mod:`fsmflow.bench.start`) come after.
"""

from __future__ import annotations

import logging
import statistics
import uuid
from collections.abc import Callable
from typing import Any, Final, Protocol

import asyncpg

from fsmflow.bench.accounting import account_mode
from fsmflow.bench.counting import Monitor, StatementLog, counting_config
from fsmflow.bench.handrolled import HandRolled, handrolled_insert
from fsmflow.bench.measure import (
    BASELINE_CONNECTIONS,
    Run,
    baseline_insert,
    baseline_pool,
    linear_definition,
    percentile,
    run_baseline,
    run_fsmflow,
    sample_context,
    trivial_steps,
)
from fsmflow.bench.start import start_check
from fsmflow.model.context import encode_context
from fsmflow.settings import DBConfig

logger = logging.getLogger("fsmflow.bench")


class Sizes(Protocol):
    """What the timed runs need of the bench's options."""

    @property
    def steps(self) -> int: ...
    @property
    def instances(self) -> int: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def rounds(self) -> int: ...
    @property
    def context_bytes(self) -> int: ...


KINDS: Final = {"b": "baseline", "h": "handrolled", "f": "fsmflow"}
_ORDER: Final = tuple(KINDS)


def round_order(round_: int) -> tuple[str, ...]:
    """The kinds in the order round ``round_`` runs them (rotating)."""
    shift = round_ % len(_ORDER)
    return _ORDER[shift:] + _ORDER[:shift]


def summary(runs: list[Run]) -> dict[str, Any]:
    """Rates (median, min-max), latency percentiles and client CPU of one kind's runs."""
    rates = [r.rate for r in runs]
    latencies = [x for r in runs for x in r.latencies]
    starts = [x for r in runs for x in r.starts]
    out = {
        "transitions_per_run": runs[0].transitions,
        "rate_median": statistics.median(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "rates": rates,
        "client_cpu_us": sum(r.cpu_seconds for r in runs) / sum(r.transitions for r in runs) * 1e6,
        "latency_p50_ms": percentile(latencies, 0.5) * 1000,
        "latency_p99_ms": percentile(latencies, 0.99) * 1000,
    }
    if starts:
        out["instance_start_p50_ms"] = percentile(starts, 0.5) * 1000
    return out


def ratio(values: list[float]) -> dict[str, Any]:
    """Per-round ratios: median, min, max and each round's."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": values,
    }


def _per_round(a: list[Run], b: list[Run], of: Callable[[Run], float]) -> dict[str, Any]:
    return ratio([of(x) / of(y) if of(y) > 0 else 0.0 for x, y in zip(a, b, strict=True)])


def _cpu(run: Run) -> float:
    return run.cpu_seconds / run.transitions


def compare(runs: dict[str, list[Run]]) -> dict[str, Any]:
    """A mode's ratios: fsmflow / hand-rolled and / baseline (rates), CPU f / h."""
    f, h, b = runs["f"], runs["h"], runs["b"]
    return {
        "fsmflow_vs_handrolled": _per_round(f, h, lambda r: r.rate),
        "fsmflow_vs_baseline": _per_round(f, b, lambda r: r.rate),
        "handrolled_vs_baseline": _per_round(h, b, lambda r: r.rate),
        "cpu_fsmflow_vs_handrolled": _per_round(f, h, _cpu),
    }


async def throughput(
    table: DBConfig, monitor: Monitor, kwargs: dict[str, Any], options: Sizes
) -> dict[str, Any]:
    """The timed rounds, then the accounting passes; ``report["throughput"]``."""
    modes = {"sequential": 1, "concurrent": options.concurrency}
    sessions = StatementLog(count=False)  # only notes the timed runs' backend pids
    try:
        runs = await _timed_rounds(table, sessions, kwargs, options, modes)
    finally:
        await monitor.wait_gone(sessions.pids)  # their statistics are flushed now
    logger.info("accounting passes (statements, transactions, WAL flushes per transition)")
    result: dict[str, Any] = {}
    for mode, concurrency in modes.items():
        by_kind = {k: runs[(mode, k)] for k in KINDS}
        result[mode] = {
            "concurrency": concurrency,
            "baseline_connections": 1 if concurrency == 1 else BASELINE_CONNECTIONS,
            **{name: summary(by_kind[k]) for k, name in KINDS.items()},
            "ratios": compare(by_kind),
            "accounting": await account_mode(
                monitor,
                table,
                kwargs,
                steps=options.steps,
                instances=options.instances,
                concurrency=concurrency,
                context_bytes=options.context_bytes,
            ),
        }
    logger.info("instance start pass (round trips, commits beyond the transitions)")
    result["start"] = await start_check(
        monitor, table, kwargs, steps=options.steps, instances=options.instances
    )
    return result


async def _timed_rounds(
    config: DBConfig,
    sessions: StatementLog,
    kwargs: dict[str, Any],
    options: Sizes,
    modes: dict[str, int],
) -> dict[tuple[str, str], list[Run]]:
    """Runs of each kind and mode, interleaved over the rounds."""
    target = counting_config(config, sessions)
    definition = linear_definition("bench", options.steps)
    steps = trivial_steps(definition)
    context = sample_context(options.context_bytes)
    context_json = encode_context(context)
    query = baseline_insert(config)
    hand = HandRolled(handrolled_insert(config), options.steps)
    plain = {**kwargs, "connection_class": sessions.connection_class()}
    conn = await asyncpg.connect(**plain)
    pool = await baseline_pool(plain, BASELINE_CONNECTIONS)
    runs: dict[tuple[str, str], list[Run]] = {(m, k): [] for m in modes for k in KINDS}

    async def one(mode: str, kind: str, round_: int, scale: float = 1.0) -> Run:
        concurrency = modes[mode]
        prefix = f"{mode[0]}{round_}-{uuid.uuid4().hex[:6]}"
        instances = max(1, int(options.instances * scale))
        execute = conn.execute if concurrency == 1 else pool.execute
        if kind == "f":
            return await run_fsmflow(
                target,
                definition,
                steps,
                instances=instances,
                concurrency=concurrency,
                context=context,
                prefix=prefix,
            )
        if kind == "h":
            return await hand.run(
                execute,
                instances=instances,
                concurrency=concurrency,
                context=context,
                prefix=prefix,
            )
        return await run_baseline(
            execute,
            query,
            rows=instances * options.steps,
            steps=options.steps,
            concurrency=concurrency,
            context_json=context_json,
            fingerprint=definition.fingerprint,
            prefix=prefix,
        )

    try:
        logger.info("warming up (prepared statements, connections)")
        for mode in modes:
            for kind in KINDS:
                await one(mode, kind, -1, scale=0.2)
        for round_ in range(options.rounds):
            for mode in modes:
                for kind in round_order(round_):
                    run = await one(mode, kind, round_)
                    runs[(mode, kind)].append(run)
                    logger.info(
                        "round %d/%d %s %s: %.0f transitions/s",
                        round_ + 1,
                        options.rounds,
                        mode,
                        KINDS[kind],
                        run.rate,
                    )
    finally:
        await conn.close()
        await pool.close()
        await target.close()
    return runs
