"""``StepInfo`` and its idempotency key, without a database: the key's format, its escaping
(names may contain ``:``), immutability, and the error outside a step."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

import fsmflow
from fsmflow import FsmflowError, NotInStepError, StepInfo
from fsmflow.engine.stepinfo import running_step


def test_the_key_names_workflow_instance_and_seq() -> None:
    info = StepInfo("payments", "order-42", "charge", 3, 2)
    assert info.idempotency_key == "payments:order-42:3"
    assert repr(info) == (
        "StepInfo(workflow_name='payments', instance_id='order-42', state='charge', seq=3, "
        "attempt=2, idempotency_key='payments:order-42:3')"
    )


def test_colons_in_names_cannot_make_two_instances_share_a_key() -> None:
    one = StepInfo("a:b", "c", "s", 0, 1).idempotency_key
    other = StepInfo("a", "b:c", "s", 0, 1).idempotency_key
    assert one != other
    assert (one, other) == ("a%3Ab:c:0", "a:b%3Ac:0")
    assert StepInfo("a%3Ab", "c", "s", 0, 1).idempotency_key == "a%253Ab:c:0"


def test_the_key_ignores_the_attempt_and_the_state_name() -> None:
    keys = {StepInfo("w", "i", "s", 5, n).idempotency_key for n in (1, 2, 3)}
    assert keys == {StepInfo("w", "i", "other", 5, 1).idempotency_key}


def test_step_info_is_frozen() -> None:
    info = StepInfo("w", "i", "s", 0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.seq = 1  # type: ignore[misc]


def test_outside_a_step_step_info_raises_a_fsmflow_error() -> None:
    with pytest.raises(NotInStepError) as caught:
        fsmflow.step_info()
    assert isinstance(caught.value, FsmflowError)
    assert "call it from inside a step" in str(caught.value)


async def test_the_running_step_is_reset_afterwards_even_when_it_raises() -> None:
    with pytest.raises(RuntimeError), running_step("w", "i", "s", 0, 1):
        info = fsmflow.step_info()  # built when first asked for, then the same object
        assert info == StepInfo("w", "i", "s", 0, 1) and info.idempotency_key == "w:i:0"
        assert fsmflow.step_info() is info
        assert await asyncio.to_thread(fsmflow.step_info) is info  # copied into the thread
        raise RuntimeError
    with pytest.raises(NotInStepError):
        fsmflow.step_info()
