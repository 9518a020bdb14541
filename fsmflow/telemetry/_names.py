"""The names fsmflow's telemetry uses: spans, attributes, events, metrics, outcomes.

They are part of fsmflow's documented surface (README, "Tracing and metrics"): dashboards
and alerts are built on them, so they change only with a note in the changelog.
"""

from __future__ import annotations

from typing import Final, Literal

TRACER_NAME: Final = "fsmflow"  # the tracer's and the meter's (instrumentation scope) name

# Span names: the workflow's or the state's name follows, after a space.
START_SPAN: Final = "fsmflow.start"  # a new instance, started by its first run
RUN_SPAN: Final = "fsmflow.run"
STEP_SPAN: Final = "fsmflow.step"
SUBMIT_SPAN: Final = "fsmflow.submit"
FORK_SPAN: Final = "fsmflow.fork"

# Attributes (identifiers only: never a context value).
WORKFLOW: Final = "fsmflow.workflow"
INSTANCE: Final = "fsmflow.instance_id"
STATE: Final = "fsmflow.state"
SEQ: Final = "fsmflow.seq"
ATTEMPT: Final = "fsmflow.attempt"
OUTCOME: Final = "fsmflow.outcome"
RESUMED: Final = "fsmflow.resumed"
SOURCE: Final = "fsmflow.source"
DEST: Final = "fsmflow.dest"
TRIGGER: Final = "fsmflow.trigger"
STATUS: Final = "fsmflow.status"
EVENTS: Final = "fsmflow.events"
DEADLINE: Final = "fsmflow.deadline"
WHY: Final = "fsmflow.why"
EVENT: Final = "fsmflow.event"
FORKED_FROM: Final = "fsmflow.forked_from"
ERROR_TYPE: Final = "error.type"  # the semantic conventions' name

# Span events.
TRANSITION_RECORDED: Final = "fsmflow.transition_recorded"
WAIT: Final = "fsmflow.wait"
WAKE: Final = "fsmflow.wake"

# Metrics.
TRANSITIONS: Final = "fsmflow.transitions"
STEP_DURATION: Final = "fsmflow.step.duration"
STEP_FAILURES: Final = "fsmflow.step.failures"
STEP_RETRIES: Final = "fsmflow.step.retries"
INSTANCES: Final = "fsmflow.instances"
APPEND_DURATION: Final = "fsmflow.append.duration"

Outcome = Literal["moved", "completed", "failed", "retry", "waiting", "interrupted"]
# What a recorded row's status says about the step attempt it ended.
OUTCOME_OF_STATUS: Final[dict[str, Outcome]] = {
    "running": "moved",
    "completed": "completed",
    "waiting": "waiting",
    "failed": "failed",
    "cancelled": "failed",
}
