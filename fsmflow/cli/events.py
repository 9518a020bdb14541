"""The ``fsmflow send-event`` sub-command: deliver an event to a waiting (or future) wait.

Sending needs only the database settings, never the workflow's code: the store checks the
event against the definition summary stored with the instance. ``--data`` is checked
before anything connects (exit 2, naming the option and where the JSON breaks); payload
values are never printed, not in errors and not in the output.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fsmflow.cli.arguments import (
    command_parser,
    identifier,
    instance_arguments,
    json_data,
    json_flag,
)
from fsmflow.cli.output import dumps, say, timestamp
from fsmflow.engine.shutdown import EXIT_OK
from fsmflow.model.definition import event_name_problems
from fsmflow.model.records import SentEvent
from fsmflow.settings import DBConfig

if TYPE_CHECKING:
    from fsmflow.cli.arguments import Commands


# -- argument types ----------------------------------------------------------------------


def event_name(value: str) -> str:
    """argparse type: a name an event can have (it becomes a context key)."""
    for problem in event_name_problems(value):
        raise argparse.ArgumentTypeError(problem)
    return value


# -- send-event --------------------------------------------------------------------------


def add_send_event(commands: Commands, common: argparse.ArgumentParser, epilog: str) -> None:
    """``fsmflow send-event``."""
    parser = command_parser(
        commands, common, epilog, "send-event", "send an event to an instance",
        "Store EVENT with a JSON payload for an instance; it is durable when the command "
        "returns and is delivered at most once, in order with the instance's other events "
        "of that name, when the instance waits in a state with a transition on EVENT (its "
        "waiting runner wakes at once; a suspended instance gets it on its next run). The "
        "payload is put at context.data[EVENT] before the transition's conditions are "
        "judged. Needs no workflow code. Refused, with nothing stored: an unknown "
        "instance, one that already ended, an event its stored definition does not "
        "declare (the error lists the declared ones), a payload that breaks the context "
        "rules or size cap. With --key, sending again with the same key stores nothing "
        "and reports the first send (safe for webhook retries).",
    )  # fmt: skip
    instance_arguments(parser)
    parser.add_argument("event", metavar="EVENT", type=event_name, help="event name")
    parser.add_argument(
        "--data",
        type=json_data,
        metavar="JSON",
        help="the payload: a JSON text, @FILE to read it from a file, or - to read it from "
        "standard input (default: null)",
    )
    parser.add_argument(
        "--key", type=identifier, help="idempotency key: a second send with it stores nothing"
    )
    json_flag(parser)
    parser.set_defaults(handler=send_event_command)


async def send_event_command(args: argparse.Namespace, config: DBConfig) -> int:
    """Send the event; print what was stored (never the payload)."""
    sent = await config.store.send_event(
        args.workflow, args.instance, args.event, args.data, key=args.key
    )
    if args.json:
        print(dumps(sent_json(sent)))
    else:
        say(sent_text(sent, args.event))
    return EXIT_OK


def sent_json(sent: SentEvent) -> dict[str, Any]:
    """``send-event --json``: what was stored, without the payload."""
    event = sent.event
    return {
        "workflow_name": event.workflow_name,
        "instance_id": event.instance_id,
        "event_id": event.event_id,
        "event": event.event,
        "key": event.key,
        "created_at": event.created_at,
        "duplicate": sent.duplicate,
        "delivered_seq": event.delivered_seq,
    }


def sent_text(sent: SentEvent, asked: str) -> str:
    """The one line ``send-event`` prints (``asked``: the event name given)."""
    event = sent.event
    if not sent.duplicate:
        return (
            f"sent event {event.event!r} (id {event.event_id}) to workflow "
            f"{event.workflow_name!r} instance {event.instance_id!r}"
        )
    text = (
        f"already sent with key {event.key!r} (id {event.event_id}, at "
        f"{timestamp(event.created_at)} UTC): nothing stored"
    )
    if event.event != asked:
        text += f" (that send was event {event.event!r}, not {asked!r})"
    return text
