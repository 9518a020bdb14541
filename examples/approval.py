"""An LLM draft that waits for a person's approval: durable across restarts and deadlines.

A DSPy module drafts an announcement; the instance then waits in state ``review`` for an
``approval`` event (``{"ok": true|false, "by": "...", "note": "..."}``) sent by a reviewer
with ``fsmflow send-event``, from anywhere, with only the database settings:

* approved (``ok`` true): ``publish`` runs and the instance completes;
* rejected (``ok`` false): ``revise`` rewrites the draft using the note, and the instance
  waits in ``review`` again;
* no answer within ``--timeout`` seconds of the wait's start (the database server's clock;
  restarts never reset it): ``escalate`` runs and the instance completes.

    python examples/approval.py --instance-id doc-1 --suspend   # drafts, records the wait, exits
    fsmflow send-event approval doc-1 approval --data '{"ok": true, "by": "ana", "note": ""}'
    python examples/approval.py --instance-id doc-1 --suspend   # delivers it, publishes

Without ``--suspend`` the program waits in-process (holding the instance's lock, no open
transaction) and continues the moment the event is sent. Either way the draft step, whose
LM call costs time and money, runs once: the rerun logs
``LM calls: 1 recorded in the workflow, 0 made by this process``.

Environment:

* ``DSPY_MODEL``: a real LM for ``dspy.LM`` (e.g. ``openai/gpt-4o-mini``, with the
  provider's key in the environment). Unset (the default): dspy's ``DummyLM`` answers with
  canned, deterministic outputs and nothing touches the network.
* ``FSMFLOW_CRASH_IN``: a state name; the process hard-exits (``os._exit``, no cleanup, like
  ``kill -9``) inside that step, after its LM call. Crash demonstration and test hook.
* ``FSMFLOW_HOLD_IN`` and ``FSMFLOW_HOLD_FILE``: the step of that state, after its LM call,
  waits until that file exists (a slow step, for the tests: an event sent meanwhile is
  delivered as soon as the wait begins).
* the database settings of :class:`fsmflow.DBConfig`; with none, a local embedded PostgreSQL.

``--timeout`` is part of the workflow definition: run an instance with the same value every
time (a different one is a changed definition, refused on resume).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import dspy  # type: ignore[import-untyped]
from dspy.utils import DummyLM  # type: ignore[import-untyped]
from dspy.utils.callback import BaseCallback  # type: ignore[import-untyped]

from fsmflow import (
    Condition,
    DBConfig,
    PersistentWorkflowStateMachine,
    RetryPolicy,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowState,
    WorkflowStep,
    run_program,
)

log = logging.getLogger("approval")

StepOutcome = tuple[WorkflowContext, str | None]

WORKFLOW: Final = "approval"
EVENT: Final = "approval"
CRASH_EXIT_CODE: Final = 70
DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_TOPIC: Final = "fsmflow workflows can now wait for people, systems and time"


# -- DSPy: signatures, modules, and the LM -------------------------------------------


class DraftAnnouncement(dspy.Signature):  # type: ignore[misc]
    """Write a short release announcement about the topic."""

    topic: str = dspy.InputField()
    announcement: str = dspy.OutputField()


class ReviseAnnouncement(dspy.Signature):  # type: ignore[misc]
    """Rewrite the announcement so that it addresses the reviewer's note."""

    topic: str = dspy.InputField()
    announcement: str = dspy.InputField()
    note: str = dspy.InputField()
    revision: str = dspy.OutputField()


draft_announcement = dspy.Predict(DraftAnnouncement)
revise_announcement = dspy.Predict(ReviseAnnouncement)


def dummy_lm() -> Any:
    """Offline, deterministic answers, chosen by the output field each prompt asks for."""
    return DummyLM(
        {
            "`[[ ## revision ## ]]`": {
                "revision": "fsmflow 0.3: a workflow can wait hours for a reviewer, across "
                "restarts, and escalates when nobody answers in time."
            },
            "`[[ ## announcement ## ]]`": {
                "announcement": "fsmflow 0.3: workflows wait for people, systems and time."
            },
        }
    )


class LMCallCounter(BaseCallback):  # type: ignore[misc]
    """Counts the LM calls made by this process (one workflow runs at a time here)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.calls += 1


LM_CALLS: Final = LMCallCounter()


# -- test and demonstration hooks ------------------------------------------------------


def _maybe_crash(state: str) -> None:
    if os.environ.get("FSMFLOW_CRASH_IN") == state:
        log.warning("FSMFLOW_CRASH_IN=%s: exiting abruptly inside the step", state)
        logging.shutdown()  # flush the log; nothing else gets a chance to run
        os._exit(CRASH_EXIT_CODE)


async def _maybe_hold(state: str) -> None:
    hold = os.environ.get("FSMFLOW_HOLD_FILE")
    if os.environ.get("FSMFLOW_HOLD_IN") != state or not hold:
        return
    log.warning("FSMFLOW_HOLD_IN=%s: holding the step until %s exists", state, hold)
    await asyncio.to_thread(_wait_for_file, Path(hold))
    log.info("FSMFLOW_HOLD_IN=%s: released", state)


def _wait_for_file(path: Path) -> None:
    while not path.exists():
        time.sleep(0.02)


def _count_calls(ctx: WorkflowContext, state: str, before: int) -> None:
    calls = ctx.data.setdefault("lm_calls", {})
    calls[state] = calls.get(state, 0) + LM_CALLS.calls - before
    log.info("%s: %d LM call(s)", state, LM_CALLS.calls - before)


# -- steps -----------------------------------------------------------------------------


async def draft(ctx: WorkflowContext) -> StepOutcome:
    """Draft the announcement (one LM call); the instance then waits for a review."""
    before = LM_CALLS.calls
    prediction = await draft_announcement.acall(topic=ctx.data["topic"])
    ctx.data["draft"] = prediction.announcement
    _count_calls(ctx, "draft", before)
    _maybe_crash("draft")
    await _maybe_hold("draft")
    return ctx, None


async def revise(ctx: WorkflowContext) -> StepOutcome:
    """Rewrite the draft with the reviewer's note (one LM call); then wait again."""
    review = ctx.data[EVENT]
    before = LM_CALLS.calls
    prediction = await revise_announcement.acall(
        topic=ctx.data["topic"], announcement=ctx.data["draft"], note=review.get("note", "")
    )
    ctx.data["draft"] = prediction.revision
    ctx.data.setdefault("rejections", []).append(
        {"by": review.get("by"), "note": review.get("note")}
    )
    _count_calls(ctx, "revise", before)
    _maybe_crash("revise")
    return ctx, None


async def publish(ctx: WorkflowContext) -> StepOutcome:
    """Publish the approved draft (here: record it)."""
    by = ctx.data[EVENT].get("by")
    ctx.data["published"] = {"text": ctx.data["draft"], "approved_by": by}
    ctx.data["outcome"] = f"published, approved by {by}"
    _maybe_crash("publish")
    return ctx, None


async def escalate(ctx: WorkflowContext) -> StepOutcome:
    """Nobody answered in time: hand the draft to the on-call editor (here: record it)."""
    ctx.data["escalated"] = {"to": "on-call editor", "draft": ctx.data["draft"]}
    ctx.data["outcome"] = "escalated: no review in time"
    _maybe_crash("escalate")
    return ctx, None


def definition(timeout: float = DEFAULT_TIMEOUT) -> WorkflowDefinition:
    """The workflow; ``review`` has no step: it only waits (for the event or the deadline)."""
    approved = Condition(field="approval.ok", operator="eq", value=True)
    rejected = Condition(field="approval.ok", operator="eq", value=False)
    return WorkflowDefinition(
        name=WORKFLOW,
        steps=["draft", "review", "publish", "revise", "escalate"],
        transitions=[
            Transition(trigger="submit", source="draft", dest="review"),
            Transition("approved", "review", "publish", [approved], event=EVENT),
            Transition("rejected", "review", "revise", [rejected], event=EVENT),
            Transition("expired", "review", "escalate", timeout=timeout),
            Transition(trigger="resubmit", source="revise", dest="review"),
            Transition(trigger="done", source="publish", dest=None),  # completes
            Transition(trigger="handed_over", source="escalate", dest=None),
        ],
    )


DEFINITION: Final = definition()  # with the default timeout (for `fsmflow graph`)

# LM calls fail transiently (rate limits, timeouts): retry each LM step a few times.
LM_RETRY: Final = RetryPolicy(max_attempts=3, initial_backoff=2.0, timeout=120.0)

STEPS: Final = [
    WorkflowStep(name="draft", execute=draft, retry=LM_RETRY),
    WorkflowStep(name="revise", execute=revise, retry=LM_RETRY),
    WorkflowStep(name="publish", execute=publish),
    WorkflowStep(name="escalate", execute=escalate),
]


def configure_dspy() -> None:
    """A real LM when ``DSPY_MODEL`` is set, else the offline DummyLM; count every call."""
    model = os.environ.get("DSPY_MODEL")
    lm = dspy.LM(model) if model else dummy_lm()
    log.info("LM: %s", model or "dspy DummyLM (offline; set DSPY_MODEL for a real LM)")
    dspy.configure(lm=lm, callbacks=[LM_CALLS])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="An LLM draft that waits for an approval.")
    parser.add_argument(
        "--instance-id",
        help="resume (or create) this instance; default: resume the most recently started "
        "unfinished one, else start a new one",
    )
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help="what to announce")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for a review before escalating (default: %(default)s); use "
        "the same value on every run of an instance",
    )
    parser.add_argument(
        "--suspend",
        action="store_true",
        help="return (exit 0) as soon as the instance waits, instead of waiting in-process",
    )
    return parser.parse_args(argv)


def send_command(instance_id: str, ok: bool, note: str) -> str:
    """The exact shell command a reviewer runs to answer."""
    data = f'{{"ok": {"true" if ok else "false"}, "by": "you", "note": "{note}"}}'
    return f"fsmflow send-event {WORKFLOW} {shlex.quote(instance_id)} {EVENT} --data '{data}'"


def report(state: WorkflowState) -> None:
    """Print where the instance is and, if it waits, how to answer."""
    if state.status == "waiting":
        deadline = "none" if state.wake_at is None else f"{state.wake_at:%Y-%m-%d %H:%M:%S %Z}"
        events = ", ".join(state.waiting_for)
        print(f"instance {state.instance_id} waits in state {state.current_state!r} for {events} "
              f"(deadline {deadline})")  # fmt: skip
        print(f"approve: {send_command(state.instance_id, True, '')}")
        print(f"reject:  {send_command(state.instance_id, False, 'shorter, please')}")
        print("then run this program again to continue")
        return
    recorded = sum(state.context.data.get("lm_calls", {}).values())
    log.info(
        "LM calls: %d recorded in the workflow, %d made by this process", recorded, LM_CALLS.calls
    )
    print(f"{state.context.data.get('outcome', state.status)} (instance {state.instance_id})")


async def main(options: argparse.Namespace) -> WorkflowState:
    """Run (or continue) the approval workflow."""
    configure_dspy()
    db = DBConfig()  # DB_URL / DB_HOST ... from the environment or .env; none: embedded
    try:
        await db.init_db()
        workflow = PersistentWorkflowStateMachine(
            db, definition(options.timeout), steps=STEPS, instance_id=options.instance_id
        )
        state = await workflow.run_workflow(
            context={"topic": options.topic}, suspend=options.suspend
        )
    finally:
        await db.close()
    report(state)
    return state


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    raise SystemExit(run_program(main(parse_args())))
