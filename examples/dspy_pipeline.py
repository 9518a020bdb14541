"""A DSPy pipeline whose finished LM steps survive a crash: retrieve, draft, critique, finalize.

Each state calls a DSPy module. LM calls cost time and money, so the point of running the
program under fsmflow is that a crash (OOM kill, deploy, ``kill -9``) does not pay again for
the steps that already finished: the rerun resumes at the unfinished step.

    python examples/dspy_pipeline.py                                # offline, dspy DummyLM
    FSMFLOW_CRASH_IN=draft python examples/dspy_pipeline.py         # dies inside "draft"
    python examples/dspy_pipeline.py                                # resumes at "draft"

The rerun logs ``resumed in state 'draft'`` and ends with
``LM calls: 4 recorded in the workflow, 3 made by this process``: the retrieve step's call
was not made again.

Environment:

* ``DSPY_MODEL``: a real LM for ``dspy.LM`` (e.g. ``openai/gpt-4o-mini``, with the
  provider's key such as ``OPENAI_API_KEY`` in the environment). Unset (the default): dspy's
  ``DummyLM`` answers with canned, deterministic outputs and nothing touches the network.
* ``FSMFLOW_CRASH_IN``: a state name; the process hard-exits (``os._exit``, no cleanup, like
  ``kill -9``) inside that step, after its LM call. Crash demonstration and test hook.
* the database settings of :class:`fsmflow.DBConfig`; with none, a local embedded PostgreSQL.

The LM calls of every finished step are counted in the workflow context (``lm_calls``), so
the count survives the crash along with the results.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, Final

import dspy  # type: ignore[import-untyped]
from dspy.utils import DummyLM  # type: ignore[import-untyped]
from dspy.utils.callback import BaseCallback  # type: ignore[import-untyped]

from fsmflow import (
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

log = logging.getLogger("dspy_pipeline")

StepOutcome = tuple[WorkflowContext, str | None]

CRASH_EXIT_CODE: Final = 70
DEFAULT_QUESTION: Final = "What happens to finished steps when a workflow process crashes?"
CORPUS: Final = [
    "fsmflow appends one row per finished step to a PostgreSQL table, in one INSERT.",
    "After a crash, fsmflow resumes an instance at the start of its last unfinished state.",
    "A step that was running when the process died runs again from its start.",
    "Steps that already finished are never run again after a restart.",
    "The context a finished step returned is stored with its transition as jsonb.",
    "An advisory lock ensures that one runner owns an instance at a time.",
    "DSPy modules call a language model; each call costs time and money.",
    "SIGTERM lets the running step finish within a grace period, then the process exits 75.",
]
TOP_K: Final = 3


# -- DSPy: signatures, modules, and the LM -------------------------------------------


class WriteSearchQuery(dspy.Signature):  # type: ignore[misc]
    """Write a short keyword search query that finds passages answering the question."""

    question: str = dspy.InputField()
    search_query: str = dspy.OutputField()


class DraftAnswer(dspy.Signature):  # type: ignore[misc]
    """Answer the question using only the passages."""

    question: str = dspy.InputField()
    passages: list[str] = dspy.InputField()
    draft: str = dspy.OutputField()


class CritiqueDraft(dspy.Signature):  # type: ignore[misc]
    """Point out claims in the draft that the passages do not support, and what is missing."""

    question: str = dspy.InputField()
    passages: list[str] = dspy.InputField()
    draft: str = dspy.InputField()
    critique: str = dspy.OutputField()
    score: int = dspy.OutputField(desc="1 (poor) to 10 (excellent)")


class FinalizeAnswer(dspy.Signature):  # type: ignore[misc]
    """Rewrite the draft into a final answer, fixing what the critique found."""

    question: str = dspy.InputField()
    draft: str = dspy.InputField()
    critique: str = dspy.InputField()
    answer: str = dspy.OutputField()


write_query = dspy.Predict(WriteSearchQuery)
draft_answer = dspy.ChainOfThought(DraftAnswer)
critique_draft = dspy.Predict(CritiqueDraft)
finalize_answer = dspy.Predict(FinalizeAnswer)


def dummy_lm() -> Any:
    """Offline, deterministic answers, chosen by the output field each prompt asks for."""
    return DummyLM(
        {
            "`[[ ## search_query ## ]]`": {"search_query": "crash resume finished steps"},
            "`[[ ## draft ## ]]`": {
                "reasoning": "The passages say finished steps are stored and skipped.",
                "draft": "Finished steps are not run again; the crashed step runs again.",
            },
            "`[[ ## critique ## ]]`": {
                "critique": "Say where the results of finished steps are kept.",
                "score": 7,
            },
            "`[[ ## answer ## ]]`": {
                "answer": "Finished steps are never run again: their results are stored in "
                "PostgreSQL, and only the step that was running restarts from its beginning."
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


def retrieve_passages(query: str) -> list[str]:
    """The ``TOP_K`` corpus passages sharing most words with ``query`` (ties: corpus order)."""
    words = set(re.findall(r"[a-z]+", query.lower()))
    ranked = sorted(
        range(len(CORPUS)),
        key=lambda i: (-len(words & set(re.findall(r"[a-z]+", CORPUS[i].lower()))), i),
    )
    return [CORPUS[i] for i in ranked[:TOP_K]]


# -- steps -----------------------------------------------------------------------------


def _record_calls(ctx: WorkflowContext, state: str, before: int) -> None:
    ctx.data.setdefault("lm_calls", {})[state] = LM_CALLS.calls - before
    log.info("%s: %d LM call(s)", state, LM_CALLS.calls - before)


def _maybe_crash(state: str) -> None:
    if os.environ.get("FSMFLOW_CRASH_IN") == state:
        log.warning("FSMFLOW_CRASH_IN=%s: exiting abruptly inside the step", state)
        logging.shutdown()  # flush the log; nothing else gets a chance to run
        os._exit(CRASH_EXIT_CODE)


async def retrieve(ctx: WorkflowContext) -> StepOutcome:
    """Ask the LM for a search query, then search the corpus with it."""
    before = LM_CALLS.calls
    prediction = await write_query.acall(question=ctx.data["question"])
    ctx.data["search_query"] = prediction.search_query
    ctx.data["passages"] = retrieve_passages(prediction.search_query)
    _record_calls(ctx, "retrieve", before)
    _maybe_crash("retrieve")
    return ctx, None


async def draft(ctx: WorkflowContext) -> StepOutcome:
    """Draft an answer from the passages (chain of thought)."""
    before = LM_CALLS.calls
    prediction = await draft_answer.acall(
        question=ctx.data["question"], passages=ctx.data["passages"]
    )
    ctx.data["draft"] = prediction.draft
    _record_calls(ctx, "draft", before)
    _maybe_crash("draft")
    return ctx, None


async def critique(ctx: WorkflowContext) -> StepOutcome:
    """Critique the draft against the passages."""
    before = LM_CALLS.calls
    prediction = await critique_draft.acall(
        question=ctx.data["question"], passages=ctx.data["passages"], draft=ctx.data["draft"]
    )
    ctx.data["critique"] = prediction.critique
    ctx.data["score"] = int(prediction.score)
    _record_calls(ctx, "critique", before)
    _maybe_crash("critique")
    return ctx, None


async def finalize(ctx: WorkflowContext) -> StepOutcome:
    """Write the final answer."""
    before = LM_CALLS.calls
    prediction = await finalize_answer.acall(
        question=ctx.data["question"], draft=ctx.data["draft"], critique=ctx.data["critique"]
    )
    ctx.data["answer"] = prediction.answer
    _record_calls(ctx, "finalize", before)
    _maybe_crash("finalize")
    return ctx, None


# LM calls fail transiently (rate limits, timeouts): retry each step a few times.
LM_RETRY: Final = RetryPolicy(max_attempts=3, initial_backoff=2.0, timeout=120.0)

DEFINITION: Final = WorkflowDefinition(
    name="dspy_pipeline",
    steps=["retrieve", "draft", "critique", "finalize"],
    transitions=[
        Transition(trigger="write_draft", source="retrieve", dest="draft"),
        Transition(trigger="review", source="draft", dest="critique"),
        Transition(trigger="finish", source="critique", dest="finalize"),
        Transition(trigger="publish", source="finalize", dest=None),  # completes
    ],
)

STEPS: Final = [
    WorkflowStep(name="retrieve", execute=retrieve, retry=LM_RETRY),
    WorkflowStep(name="draft", execute=draft, retry=LM_RETRY),
    WorkflowStep(name="critique", execute=critique, retry=LM_RETRY),
    WorkflowStep(name="finalize", execute=finalize, retry=LM_RETRY),
]


def configure_dspy() -> None:
    """A real LM when ``DSPY_MODEL`` is set, else the offline DummyLM; count every call."""
    model = os.environ.get("DSPY_MODEL")
    lm = dspy.LM(model) if model else dummy_lm()
    log.info("LM: %s", model or "dspy DummyLM (offline; set DSPY_MODEL for a real LM)")
    dspy.configure(lm=lm, callbacks=[LM_CALLS])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="A crash-resumable DSPy pipeline.")
    parser.add_argument(
        "--instance-id",
        help="resume (or create) this instance; default: resume the most recently started "
        "unfinished one, else start a new one",
    )
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="the question to answer")
    return parser.parse_args(argv)


async def main(options: argparse.Namespace) -> WorkflowState:
    """Run (or resume) the pipeline and print the answer."""
    configure_dspy()
    db = DBConfig()  # DB_URL / DB_HOST ... from the environment or .env; none: embedded
    try:
        await db.init_db()
        workflow = PersistentWorkflowStateMachine(
            db, DEFINITION, steps=STEPS, instance_id=options.instance_id
        )
        state = await workflow.run_workflow(context={"question": options.question})
    finally:
        await db.close()
    recorded = sum(state.context.data["lm_calls"].values())
    log.info(
        "LM calls: %d recorded in the workflow, %d made by this process", recorded, LM_CALLS.calls
    )
    print(f"answer: {state.context.data['answer']} (instance {state.instance_id})")
    return state


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    raise SystemExit(run_program(main(parse_args())))
