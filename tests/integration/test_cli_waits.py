"""``fsmflow send-event``, and ``show``/``list``/``cancel`` of waiting instances, run as a
subprocess against the test's database. The waiting instances are made in-process first
(``run_workflow(suspend=True)``); every refusal is checked to store nothing."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from fsmflow import (
    Condition,
    DBConfig,
    InstanceCancelledError,
    PersistentWorkflowStateMachine,
    Transition,
    WorkflowContext,
    WorkflowDefinition,
)
from tests.test_cli_startup import bench_modules_after

from .test_cli import assert_one_error_line, fsmflow

WORKFLOW = "approval"
TIMEOUT = 3600.0  # the review's deadline: far enough that no run here reaches it
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
SECRET = "payload-s3cr3t"

DEFINITION = WorkflowDefinition(
    name=WORKFLOW,
    steps=["draft", "review", "publish", "escalate"],
    transitions=[
        Transition("drafted", "draft", "review"),
        Transition(
            "approved",
            "review",
            "publish",
            event="approval",
            conditions=[Condition(field="approval.ok", operator="eq", value=True)],
        ),
        Transition("expired", "review", "escalate", timeout=TIMEOUT),
        Transition("published", "publish", None),
        Transition("escalated", "escalate", None),
    ],
)


def _step(trigger: str) -> Any:
    async def step(ctx: WorkflowContext) -> tuple[WorkflowContext, str]:
        ctx.data.setdefault("trail", []).append(trigger)
        return ctx, trigger

    return step


def machine(db: DBConfig, instance_id: str) -> PersistentWorkflowStateMachine:
    """A runner of the approval workflow for one instance."""
    steps = {
        "draft": _step("drafted"),
        "publish": _step("published"),
        "escalate": _step("escalated"),
    }
    return PersistentWorkflowStateMachine(
        db, DEFINITION, steps=steps, instance_id=instance_id, handle_signals=False
    )


async def run(db: DBConfig, instance_id: str) -> str:
    """Run (or continue) an instance until it waits or ends; its status."""
    return (await machine(db, instance_id).run_workflow(suspend=True)).status


@pytest.fixture
async def waiting(db_config: DBConfig) -> DBConfig:
    """doc-1 waits in 'review' for event 'approval' (or the timeout)."""
    assert await run(db_config, "doc-1") == "waiting"
    return db_config


def events_table(postgresql: Any) -> list[tuple[Any, ...]]:
    """Every stored event: (id, workflow, instance, event, key, payload)."""
    with postgresql.cursor() as cur:
        cur.execute(
            "SELECT id, workflow_name, instance_id, event, key, payload::text "
            "FROM fsmflow_transitions_events ORDER BY id"
        )
        rows = [tuple(row) for row in cur.fetchall()]
    postgresql.commit()
    return rows


def ok(result: Any) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, result.stdout + result.stderr
    return str(result.stdout)


# -- send-event --------------------------------------------------------------------------


async def test_send_event_prints_one_line_and_stores_the_event(
    waiting: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    out = ok(fsmflow(db_env, "send-event", WORKFLOW, "doc-1", "approval", "--data", '{"ok": 1}'))
    [(event_id, *stored)] = events_table(postgresql)
    assert out == f"sent event 'approval' (id {event_id}) to workflow 'approval' instance 'doc-1'\n"
    assert stored[:3] == ["approval", "doc-1", "approval"] and stored[4] == '{"ok":1}'
    assert stored[3].startswith("fsmflow:")  # no --key: one made up, never shown

    # --json: what was stored, without the payload; no --data is a null payload.
    sent = json.loads(ok(fsmflow(db_env, "send-event", WORKFLOW, "doc-1", "approval", "--json")))
    assert set(sent) == {
        "workflow_name", "instance_id", "event_id", "event", "key", "created_at", "duplicate",
        "delivered_seq",
    }  # fmt: skip
    assert sent["event_id"] == event_id + 1 and sent["event"] == "approval"
    assert (sent["workflow_name"], sent["instance_id"]) == (WORKFLOW, "doc-1")
    assert (sent["key"], sent["duplicate"], sent["delivered_seq"]) == (None, False, None)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*", sent["created_at"])
    assert events_table(postgresql)[-1][-1] == "null"


async def test_a_second_send_with_the_key_stores_nothing(
    waiting: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    send = ("send-event", WORKFLOW, "doc-1", "approval", "--key", "hook-7")
    first = json.loads(ok(fsmflow(db_env, *send, "--data", '{"ok": true}', "--json")))
    assert first["key"] == "hook-7" and first["duplicate"] is False

    again = ok(fsmflow(db_env, *send, "--data", f'{{"ok": false, "s": "{SECRET}"}}'))
    moment = first["created_at"].replace("T", " ")[:19]
    eid = first["event_id"]
    assert again == f"already sent with key 'hook-7' (id {eid}, at {moment} UTC): nothing stored\n"
    repeated = json.loads(ok(fsmflow(db_env, *send, "--json")))
    assert repeated == {**first, "duplicate": True}
    assert len(events_table(postgresql)) == 1 and SECRET not in str(events_table(postgresql))

    # the same key for another event name reports the first send and says so
    other = ok(fsmflow(db_env, "send-event", WORKFLOW, "doc-1", "nudge", "--key", "hook-7"))
    assert other.endswith("nothing stored (that send was event 'approval', not 'nudge')\n")

    # once delivered, a retried webhook learns the row that delivered it
    assert await run(waiting, "doc-1") == "completed"
    late = json.loads(ok(fsmflow(db_env, *send, "--json")))
    delivered = [r for r in await waiting.store.history(WORKFLOW, "doc-1") if r.event_id == eid]
    assert late["duplicate"] is True and late["delivered_seq"] == delivered[0].seq


async def test_data_from_a_file_and_from_stdin(
    waiting: DBConfig, db_env: dict[str, str], postgresql: Any, tmp_path: Path
) -> None:
    payload = {"ok": True, "by": "ann", "note": "línea\nnueva", "n": [1, 2.5, None]}
    path = tmp_path / "approval.json"
    path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    ok(fsmflow(db_env, "send-event", WORKFLOW, "doc-1", "approval", "--data", f"@{path}"))
    piped = fsmflow(
        db_env, "send-event", WORKFLOW, "doc-1", "approval", "--data", "-",
        input=json.dumps({"ok": False}), stdin=None,
    )  # fmt: skip
    ok(piped)
    stored = [json.loads(row[-1]) for row in events_table(postgresql)]
    assert stored == [payload, {"ok": False}]

    help_text = ok(fsmflow(db_env, "send-event", "--help"))
    assert "@FILE" in help_text and "standard input" in help_text


def test_send_event_starts_without_the_benchmark() -> None:
    assert bench_modules_after("send-event", ["wf", "i-1", "approval", "--data", "{}"]) == []


# -- refusals: nothing stored ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ('{"ok": NaN}', "the text is not valid JSON: NaN at line 1 column 8 (char 7): JSON has no"),
        ("[1, -Infinity]", "-Infinity at line 1 column 5 (char 4)"),
        ('{"s": "NaN", "x": Infinity}', "Infinity at line 1 column 19 (char 18)"),
        ('{"ok": tru, "s": "' + SECRET + '"}', "Expecting value at line 1 column 8 (char 7)"),
        ('{"ok": true,\n "s": "' + SECRET + '" "t"}', "delimiter at line 2 column 24 (char 36)"),
        ("", "the text is not valid JSON: Expecting value at line 1 column 1 (char 0)"),
        ("[" * 100_000, "not valid JSON: nested too deeply"),
    ],
)
async def test_invalid_json_is_a_usage_error_naming_the_option_and_position(
    waiting: DBConfig, db_env: dict[str, str], postgresql: Any, data: str, text: str
) -> None:
    result = fsmflow(db_env, "send-event", WORKFLOW, "doc-1", "approval", "--data", data)
    assert result.returncode == 2, result.stderr
    assert "argument --data: " in result.stderr and text in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert events_table(postgresql) == []


async def test_unreadable_data_files_and_stdin_are_usage_errors(
    waiting: DBConfig, db_env: dict[str, str], postgresql: Any, tmp_path: Path
) -> None:
    send = ("send-event", WORKFLOW, "doc-1", "approval", "--data")
    missing = fsmflow(db_env, *send, f"@{tmp_path / 'nope.json'}")
    assert missing.returncode == 2 and "cannot read file" in missing.stderr
    assert "No such file or directory" in missing.stderr
    binary = tmp_path / "latin1.json"
    binary.write_bytes(b'{"s": "\xe9"}')
    result = fsmflow(db_env, *send, f"@{binary}")
    assert result.returncode == 2 and "is not UTF-8 text (byte 7)" in result.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"ok": true,}', encoding="utf-8")
    result = fsmflow(db_env, *send, f"@{broken}")
    assert result.returncode == 2
    assert f"file {str(broken)!r} is not valid JSON: Expecting property name" in result.stderr
    piped = fsmflow(db_env, *send, "-", input="{", stdin=None)
    assert piped.returncode == 2 and "standard input is not valid JSON" in piped.stderr
    assert events_table(postgresql) == []


async def test_refusals_are_one_error_line_and_store_nothing(
    waiting: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    assert await run(waiting, "doc-2") == "waiting"
    await waiting.store.send_event(WORKFLOW, "doc-2", "approval", {"ok": True})
    assert await run(waiting, "doc-2") == "completed"
    before = events_table(postgresql)

    def send(*args: str) -> Any:
        return fsmflow(db_env, "send-event", *args, "--data", f'{{"s": "{SECRET}"}}')

    result = send(WORKFLOW, "nobody", "approval")
    assert_one_error_line(result, 1, "InstanceNotFoundError: workflow 'approval', instance")
    assert "no such instance to send event 'approval' to" in result.stderr
    result = send(WORKFLOW, "doc-2", "approval")
    assert_one_error_line(result, 1, "InstanceStateError")
    assert "already completed at seq" in result.stderr and "not stored" in result.stderr
    result = send(WORKFLOW, "doc-1", "approve")
    assert_one_error_line(result, 1, "UnknownEventError")
    assert "no event 'approve' (declared events: 'approval'); nothing was stored" in result.stderr
    result = send(WORKFLOW, "doc-1", "approval.ok")  # a dot would split a condition's field
    assert result.returncode == 2 and "argument EVENT: event name 'approval.ok'" in result.stderr
    result = send(WORKFLOW, "doc-1", "approval", "--key", "fsmflow:mine")
    assert_one_error_line(result, 2, "InvalidIdentifierError: event key must not start with")
    result = send(WORKFLOW, "doc-1", "approval", "--key", "")
    assert result.returncode == 2 and "argument --key" in result.stderr
    big = fsmflow(
        {**db_env, "FSMFLOW_MAX_CONTEXT_BYTES": "1024"},
        "send-event", WORKFLOW, "doc-1", "approval", "--data", json.dumps("x" * 2000),
    )  # fmt: skip
    assert_one_error_line(big, 1, "ContextTooLargeError: serialized context is")
    assert "(payload of event 'approval')" in big.stderr
    surrogate = fsmflow(db_env, "send-event", WORKFLOW, "doc-1", "approval", "--data", '"\\ud800"')
    assert_one_error_line(surrogate, 1, "ContextSerializationError")
    for refused in (result, big, surrogate):
        assert SECRET not in refused.stdout + refused.stderr
    assert events_table(postgresql) == before


@pytest.mark.parametrize(
    "hostile",
    [
        "w'; DROP TABLE fsmflow_transitions; --",
        'x"); DELETE FROM fsmflow_transitions_events; --',
        "a\x1b[2Jb;\u202ec",
    ],
)
async def test_hostile_names_are_refused_or_stored_verbatim(
    waiting: DBConfig, db_env: dict[str, str], postgresql: Any, hostile: str
) -> None:
    result = fsmflow(db_env, "send-event", hostile, "doc-1", "approval")
    assert_one_error_line(result, 1, "InstanceNotFoundError")
    result = fsmflow(db_env, "send-event", WORKFLOW, hostile, "approval")
    assert_one_error_line(result, 1, "InstanceNotFoundError")
    result = fsmflow(db_env, "send-event", WORKFLOW, "doc-1", hostile)
    assert_one_error_line(result, 1, "UnknownEventError")
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr
    assert events_table(postgresql) == []

    # as a key it is just a key: stored exactly, escaped when printed
    sent = fsmflow(db_env, "send-event", WORKFLOW, "doc-1", "approval", "--key", hostile, "--json")
    assert json.loads(ok(sent))["key"] == hostile
    again = ok(fsmflow(db_env, "send-event", WORKFLOW, "doc-1", "approval", "--key", hostile))
    assert again.startswith("already sent with key ") and "\x1b" not in again
    [row] = events_table(postgresql)
    assert row[4] == hostile
    assert len(await waiting.store.history(WORKFLOW, "doc-1")) == 2  # the history is intact


# -- show, list, cancel of a waiting instance --------------------------------------------


async def test_show_of_a_waiting_instance(waiting: DBConfig, db_env: dict[str, str]) -> None:
    store = waiting.store
    first = await store.send_event(WORKFLOW, "doc-1", "approval", {"ok": "maybe"}, key="k-1")
    assert await run(waiting, "doc-1") == "waiting"  # consumed, matched nothing: waits on
    second = await store.send_event(WORKFLOW, "doc-1", "approval", {"ok": SECRET}, key="k-2")
    third = await store.send_event(WORKFLOW, "doc-1", "approval", {"ok": True})
    history = await store.history(WORKFLOW, "doc-1")
    since, wake = history[-1].waiting_since, history[-1].wake_at
    assert since is not None and wake is not None

    out = ok(fsmflow(db_env, "show", WORKFLOW, "doc-1"))
    assert SECRET not in out
    lines = out.splitlines()
    assert lines[0].startswith("workflow 'approval', instance 'doc-1': waiting, state 'review'")
    assert lines[1].split()[:9] == [
        "SEQ", "AT", "(UTC)", "TRIGGER", "FROM", "TO", "STATUS", "STEP", "EVENT",
    ]  # fmt: skip
    wake_text = wake.strftime("%Y-%m-%d %H:%M:%S")
    assert re.fullmatch(rf"\s+1  {STAMP}  drafted\s+draft\s+review\s+waiting\s+\d+ ms\s+"
                        rf"{wake_text}  1 key, \d+ B", lines[3])  # fmt: skip
    unmatched = rf"\s+2  {STAMP}  fsmflow:unmatched-event\s+review\s+review\s+waiting\s+\d+ ms"
    assert re.fullmatch(
        rf"{unmatched}\s+{first.event.event_id}  {wake_text}  1 key, \d+ B", lines[4]
    )
    tail = lines[lines.index("context keys at seq 2: trail") + 1 :]
    assert tail[:5] == [
        f"waiting in state 'review' since {since.strftime('%Y-%m-%d %H:%M:%S')} UTC",
        "  event 'approval' (transitions approved)",
        f"  timeout after 3600 s (1h) at {wake_text} UTC (transition expired)",
        f"  next deadline: {wake_text} UTC (in 59m)",
        "pending events (sent, not delivered yet), oldest first:",
    ]
    assert tail[5].split() == ["ID", "EVENT", "KEY", "SENT", "AT"]
    assert tail[6].split()[:3] == [str(second.event.event_id), "approval", "k-2"]
    assert tail[7].split()[:2] == [str(third.event.event_id), "approval"]
    assert tail[7].split()[2].count("-") == 2 and len(tail) == 8  # no key: the date is next

    shown = ok(fsmflow(db_env, "show", WORKFLOW, "doc-1", "--context"))
    assert f'payload of event {second.event.event_id}: {{"ok": "{SECRET}"}}' in shown

    data = json.loads(ok(fsmflow(db_env, "show", WORKFLOW, "doc-1", "--json")))
    assert SECRET not in json.dumps(data)
    assert data["status"] == "waiting" and data["current_state"] == "review"
    assert data["waiting"] == {
        "state": "review",
        "since": since.isoformat(),
        "events": [{"event": "approval", "triggers": ["approved"]}],
        "timeouts": [{"trigger": "expired", "seconds": TIMEOUT, "at": wake.isoformat()}],
        "next_deadline": wake.isoformat(),
    }
    assert data["pending_events"] == [
        {"event_id": e.event.event_id, "event": "approval", "key": e.event.key,
         "created_at": e.event.created_at.isoformat()}
        for e in (second, third)
    ]  # fmt: skip
    assert [(r["status"], r["event_id"]) for r in data["rows"]] == [
        ("running", None), ("waiting", None), ("waiting", first.event.event_id),
    ]  # fmt: skip
    full = json.loads(ok(fsmflow(db_env, "show", WORKFLOW, "doc-1", "--json", "--context")))
    assert full["pending_events"][0]["payload"] == {"ok": SECRET}

    # delivered: the table names the event that made the transition; nothing is pending
    assert await run(waiting, "doc-1") == "completed"
    done = ok(fsmflow(db_env, "show", WORKFLOW, "doc-1"))
    assert "waiting in state" not in done and "pending events" not in done
    seq3, seq4 = done.splitlines()[5:7]  # seq 3 consumed the second event, seq 4 the third
    assert re.search(
        rf"  fsmflow:unmatched-event .* waiting .*  {second.event.event_id}  {STAMP}  ", seq3
    )
    assert re.search(rf"  approved .* running .* ms\s+{third.event.event_id}\s+2 keys", seq4)


async def test_list_status_waiting(waiting: DBConfig, db_env: dict[str, str]) -> None:
    assert await run(waiting, "doc-2") == "waiting"
    await waiting.store.send_event(WORKFLOW, "doc-2", "approval", {"ok": True})
    assert await run(waiting, "doc-2") == "completed"
    lines = ok(fsmflow(db_env, "list", "--status", "waiting")).splitlines()
    assert [line.split()[:5] for line in lines[1:]] == [
        [WORKFLOW, "doc-1", "waiting", "review", "1"]
    ]
    listed = json.loads(ok(fsmflow(db_env, "list", "--status", "waiting", "--json")))
    assert [(i["instance_id"], i["status"]) for i in listed] == [("doc-1", "waiting")]
    both = ok(fsmflow(db_env, "list", "--status", "waiting", "--status", "completed"))
    assert "doc-1" in both and "doc-2" in both
    assert "waiting" in ok(fsmflow(db_env, "list", "--help"))


async def test_cancel_of_a_waiting_instance_prints_the_cancelled_row(
    waiting: DBConfig, db_env: dict[str, str], postgresql: Any
) -> None:
    out = ok(fsmflow(db_env, "cancel", WORKFLOW, "doc-1", "--reason", "not needed"))
    assert out == "cancelled instance 'doc-1' at seq 2, in state 'review'\n"
    assert await run(waiting, "doc-2") == "waiting"
    row = json.loads(ok(fsmflow(db_env, "cancel", WORKFLOW, "doc-2", "--json")))
    assert (row["status"], row["seq"], row["dest_state"]) == ("cancelled", 2, "review")
    assert (row["trigger"], row["wake_at"], row["event_id"]) == ("fsmflow:cancel", None, None)
    result = fsmflow(db_env, "send-event", WORKFLOW, "doc-1", "approval")
    assert_one_error_line(result, 1, "InstanceStateError")
    assert "already cancelled at seq 2" in result.stderr
    assert events_table(postgresql) == []
    shown = ok(fsmflow(db_env, "show", WORKFLOW, "doc-1"))  # ended: no wait, nothing pending
    assert "waiting in state" not in shown and "pending events" not in shown
    assert "EVENT  WAKE AT (UTC)" in shown.splitlines()[1]


async def test_cancel_of_an_instance_waiting_in_process(
    db_config: DBConfig, db_env: dict[str, str]
) -> None:
    task = asyncio.create_task(
        machine(db_config, "doc-4").run_workflow()
    )  # waits in-process, holding the lock
    for _ in range(250):
        last = await db_config.store.last_record(WORKFLOW, "doc-4")
        if last is not None and last.status == "waiting":
            break
        await asyncio.sleep(0.02)
    result = await asyncio.to_thread(fsmflow, db_env, "cancel", WORKFLOW, "doc-4")
    assert ok(result) == "cancelled instance 'doc-4' at seq 2, in state 'review'\n"
    with pytest.raises(InstanceCancelledError):
        await asyncio.wait_for(task, 10)
