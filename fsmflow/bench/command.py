"""``fsmflow bench``: what fsmflow costs per transition, next to raw INSERTs.

What it measures and how is the text of ``fsmflow bench --help``
(:data:`fsmflow.cli.bench_parser.DESCRIPTION`, declared with the command's arguments so
that the CLI registers the command without importing the benchmark). Entry points:
:func:`run_bench_command` (the command's handler) and :func:`run_bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from fsmflow import sql
from fsmflow.bench.checks import lock_capacity, memory_check, resume_check
from fsmflow.bench.counting import Monitor
from fsmflow.bench.fleet import FleetOptions, fleet_check
from fsmflow.bench.measure import copy_config, sample_context
from fsmflow.bench.otel import OtelOptions, format_otel, otel_check
from fsmflow.bench.report import evaluate_targets, format_report
from fsmflow.bench.throughput import throughput
from fsmflow.bench.waits import wait_check
from fsmflow.errors import WorkflowInterruptedError
from fsmflow.settings import DBConfig, parse_table_name

logger = logging.getLogger("fsmflow.bench")


@dataclass(frozen=True)
class BenchOptions:
    """What to run (the command-line options of ``fsmflow bench``)."""

    steps: int = 20
    instances: int = 100
    concurrency: int = 32
    rounds: int = 3
    context_bytes: int = 200
    throughput: bool = True
    resume_check: bool = False
    resume_rows: int = 1_000_000
    memory_check: bool = False
    memory_instances: int = 10_000
    tracemalloc: bool = False
    wait_check: bool = False
    wait_rounds: int = 200
    wait_instances: int = 100
    idle_seconds: float = 30.0
    wait_memory_instances: int = 10_000
    workers: bool = False
    worker_instances: int = 2_000
    worker_steps: int = 20
    worker_counts: tuple[int, ...] = (1, 2, 4)
    worker_concurrency: int = 32
    worker_rounds: int = 1
    takeover_kills: int = 3
    claim_queued: int = 10_000
    claim_history_rows: int = 1_000_000
    info_logs: bool = False
    otel: bool = False  # --otel: the cost of OpenTelemetry (fsmflow.bench.otel)

    def fleet(self) -> FleetOptions:
        """The options of the ``--workers`` measurements."""
        return FleetOptions(
            instances=self.worker_instances,
            steps=self.worker_steps,
            counts=self.worker_counts,
            concurrency=self.worker_concurrency,
            rounds=self.worker_rounds,
            kills=self.takeover_kills,
            claim_queued=self.claim_queued,
            claim_history_rows=self.claim_history_rows,
            context_bytes=self.context_bytes,
        )


async def run_bench_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Run the benchmark described by ``args`` against ``config``'s database; exit code."""
    options = BenchOptions(
        steps=args.steps,
        instances=args.instances,
        concurrency=args.concurrency,
        rounds=args.rounds,
        context_bytes=args.context_bytes,
        throughput=not args.no_throughput,
        resume_check=args.resume_check,
        resume_rows=max(args.resume_rows, 20),
        memory_check=args.memory_check,
        memory_instances=args.memory_instances,
        tracemalloc=args.tracemalloc,
        wait_check=args.wait_check,
        wait_rounds=args.wait_rounds,
        wait_instances=args.wait_instances,
        idle_seconds=args.idle_seconds,
        wait_memory_instances=args.wait_memory_instances,
        workers=args.workers,
        worker_instances=args.worker_instances,
        worker_steps=args.worker_steps,
        worker_counts=tuple(args.worker_counts),
        worker_concurrency=args.worker_concurrency,
        worker_rounds=args.worker_rounds,
        takeover_kills=args.takeover_kills,
        claim_queued=args.claim_queued,
        claim_history_rows=args.claim_history_rows,
        info_logs=args.info_logs,
        otel=args.otel,
    )
    try:
        report = await run_bench(config, options)
    except BenchStopped as exc:
        print(f"fsmflow: bench {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        json.dumps(report, indent=2) if args.json else format_report(report) + format_otel(report)
    )
    return 0


# -- orchestration -----------------------------------------------------------------------


class Scratch:
    """Scratch tables next to the configured one; :meth:`drop_all` removes them."""

    def __init__(self, base: DBConfig) -> None:
        self.base = base
        self.schema, _ = parse_table_name(base.table)
        self.prefix = f"fsmflow_bench_{secrets.token_hex(4)}"
        self.configs: list[DBConfig] = []

    async def table(self, suffix: str) -> DBConfig:
        """A new, initialized scratch table and fresh (unopened) settings for it."""
        name = f"{self.prefix}{suffix}"
        table = f"{self.schema}.{name}" if self.schema else name
        setup = copy_config(self.base, table=table)
        self.configs.append(setup)
        logger.info("scratch table %s (dropped at the end)", table)
        await setup.init_db()
        await setup.close()  # its sessions end now, not inside a measured window
        config = copy_config(self.base, table=table)
        self.configs.append(config)
        return config

    async def drop_all(self, connect_kwargs: dict[str, Any]) -> None:
        """Close every scratch store and drop every scratch table."""
        for config in self.configs:
            with contextlib.suppress(Exception):
                await config.close()
        if not self.configs:
            return
        conn = await asyncpg.connect(**connect_kwargs)
        try:
            for table in dict.fromkeys(parse_table_name(c.table)[1] for c in self.configs):
                await conn.execute(sql.drop_scratch_ddl(self.schema, table))
        finally:
            await conn.close()


async def _resolved(config: DBConfig) -> DBConfig:
    """``config`` itself, or for the embedded default a copy naming its socket."""
    if config.configured:
        return config
    from fsmflow.store.embedded import embedded_connect_kwargs

    kwargs = await asyncio.to_thread(embedded_connect_kwargs, config)
    return copy_config(
        config,
        host=kwargs["host"],
        port=kwargs["port"],
        user=kwargs["user"],
        database=kwargs["database"],
    )


class BenchStopped(Exception):
    """The bench was stopped by a signal; its scratch tables have been dropped."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def _cancel_on_sigterm() -> Iterator[list[bool]]:
    """SIGTERM cancels the bench like Ctrl-C does, so the scratch tables are dropped."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    received: list[bool] = []
    install = (
        task is not None
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    )

    def stop() -> None:
        assert task is not None
        received.append(True)
        task.cancel()

    if install:
        loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        yield received
    finally:
        if install:
            loop.remove_signal_handler(signal.SIGTERM)


@contextlib.contextmanager
def _runner_logs(info: bool) -> Iterator[None]:
    """fsmflow logs every transition at INFO: keep those lines off stderr while the bench
    runs (its own progress lines stay). ``info``: format them into /dev/null instead.
    ``transitions`` logs every transition of the hand-rolled loop at INFO: kept at WARNING,
    as a program that never configured logging has it (else the loop pays for lines
    fsmflow's runs do not)."""
    runner = logging.getLogger("fsmflow")
    library = logging.getLogger("transitions")
    saved = runner.level, runner.propagate, logger.level, logger.propagate, library.level
    library.setLevel(logging.WARNING)
    logger.setLevel(logger.getEffectiveLevel())
    progress = logging.getLogger().handlers  # the bench's own lines still reach them
    with open(os.devnull, "w", encoding="utf-8") as null:
        sink = logging.StreamHandler(null)
        sink.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        if info:
            runner.addHandler(sink)
            runner.propagate = logger.propagate = False
            for handler in progress:
                logger.addHandler(handler)
        runner.setLevel(logging.INFO if info else logging.WARNING)
        try:
            yield
        finally:
            runner.removeHandler(sink)
            for handler in progress if info else ():
                logger.removeHandler(handler)
            runner.setLevel(saved[0])
            runner.propagate, logger.propagate = saved[1], saved[3]
            logger.setLevel(saved[2])
            library.setLevel(saved[4])


async def run_bench(config: DBConfig, options: BenchOptions) -> dict[str, Any]:
    """Run the benchmark and return its report (what ``--json`` prints).

    Scratch tables are dropped at the end, also on error, Ctrl-C or SIGTERM. fsmflow's
    own log lines below WARNING are silenced meanwhile (see ``--info-logs``).
    """
    with _cancel_on_sigterm() as terminated, _runner_logs(options.info_logs):
        try:
            return await _run_bench(config, options)
        except WorkflowInterruptedError:  # Ctrl-C while fsmflow instances ran
            raise BenchStopped("interrupted; the scratch tables were dropped", 130) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not terminated or task is None:
                raise
            task.uncancel()
            raise BenchStopped("stopped by SIGTERM; the scratch tables were dropped", 143) from None


async def _run_bench(config: DBConfig, options: BenchOptions) -> dict[str, Any]:
    target = await _resolved(config)
    kwargs = target.connect_kwargs()
    scratch = Scratch(target)
    monitor = Monitor(await asyncpg.connect(**kwargs))
    try:
        report: dict[str, Any] = {
            "target": config.display_target(),
            "server": await monitor.probe(),
            "options": options.__dict__,
        }
        if options.throughput:
            table = await scratch.table("")
            report["throughput"] = await throughput(table, monitor, kwargs, options)
        if options.resume_check:
            resume_config = await scratch.table("_resume")
            report["resume"] = await resume_check(resume_config, kwargs, rows=options.resume_rows)
        if options.memory_check:
            report["memory"] = await _memory(scratch, kwargs, options)
        if options.wait_check:
            report["waits"] = await wait_check(
                scratch.table,
                monitor,
                kwargs,
                rounds=options.wait_rounds,
                instances=options.wait_instances,
                idle_seconds=options.idle_seconds,
                memory_instances=options.wait_memory_instances,
                trace=options.tracemalloc,
            )
        if options.workers:
            report["workers"] = await fleet_check(scratch.table, kwargs, options.fleet())
        if options.otel:
            workload = (options.steps, options.instances, options.concurrency, options.rounds)
            report["otel"] = await otel_check(
                scratch.table, OtelOptions(*workload, options.context_bytes)
            )
    finally:
        with contextlib.suppress(Exception):
            await monitor.conn.close()
        await scratch.drop_all(kwargs)
    report["targets"] = evaluate_targets(report)
    return report


async def _memory(scratch: Scratch, kwargs: dict[str, Any], options: BenchOptions) -> Any:
    capacity = await lock_capacity(kwargs)
    if capacity < options.memory_instances + 100:
        return {
            "skipped": f"the server's lock table holds about {capacity} locks and each running "
            f"instance holds one; raise max_locks_per_transaction (needs "
            f"{options.memory_instances + 100} or more) or lower --memory-instances"
        }
    config = await scratch.table("_memory")
    return await memory_check(
        config,
        instances=options.memory_instances,
        steps=options.steps,
        context=sample_context(options.context_bytes),
        trace=options.tracemalloc,
    )
