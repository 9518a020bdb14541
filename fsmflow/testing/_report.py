"""What a crash test found: :class:`CrashReport`, one :class:`BoundaryResult` per boundary.

An *outcome* is what an instance ended with: ``status``, ``state``, ``context`` and the
type of the error its run raised (None if none), as JSON values. Two outcomes are equal
when all four are; :func:`differences` says where they are not, as readable lines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fsmflow.testing._probe import BOUNDARIES, Boundary

__all__ = ["BoundaryResult", "CrashReport", "differences"]

Outcome = Mapping[str, Any]
_MAX_SHOWN: Final = 5  # differences shown per boundary
_RERUN: Final[frozenset[str]] = frozenset({"inside_step", "before_commit"})


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _walk(expected: Any, actual: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        found: list[tuple[str, Any, Any]] = []
        for key in [*expected, *(k for k in actual if k not in expected)]:
            missing = "<missing>"
            sub = f"{path}.{key}" if path else str(key)
            found += _walk(expected.get(key, missing), actual.get(key, missing), sub)
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        pairs = zip(expected, actual, strict=True)
        return [d for i, (e, a) in enumerate(pairs) for d in _walk(e, a, f"{path}[{i}]")]
    if expected == actual and type(expected) is type(actual):
        return []
    return [(path, expected, actual)]


def differences(expected: Outcome, actual: Outcome, *, label: str) -> tuple[str, ...]:
    """Where ``actual`` differs from ``expected``: ``path: <expected> uninterrupted,
    <actual> <label>`` for each differing value (dotted paths into the context)."""
    return tuple(
        f"{path}: {_show(e)} uninterrupted, {_show(a)} {label}"
        for path, e, a in _walk(dict(expected), dict(actual), "")
    )


@dataclass(frozen=True)
class BoundaryResult:
    """The run killed at ``boundary`` of ``state``'s step entered at ``seq``, restarted.

    ``equal``: its final outcome is the uninterrupted run's. ``reached``: the killed run
    got to the boundary at all (not, if the run took another path). ``error``: a child
    process failed in a way the kit did not cause (its message, or stderr's end).
    """

    state: str
    seq: int
    boundary: Boundary
    reached: bool
    equal: bool
    differences: tuple[str, ...] = ()
    error: str | None = None

    @property
    def reran_step(self) -> bool:
        """True if the crash made ``state``'s step run twice (killed inside it, or after it
        returned but before its row was committed)."""
        return self.boundary in _RERUN

    @property
    def ok(self) -> bool:
        """Reached, no unexpected failure, and the same outcome."""
        return self.reached and self.equal and self.error is None

    @property
    def verdict(self) -> str:
        """One word: ``equal``, ``DIFFERS``, ``UNREACHED`` or ``ERROR``."""
        if self.error is not None:
            return "ERROR"
        if not self.reached:
            return "UNREACHED"
        return "equal" if self.equal else "DIFFERS"

    def describe(self, *, deterministic: bool = True) -> list[str]:
        """Lines saying what went wrong here (none if nothing did); ``deterministic``:
        whether a difference can be put down to the crash at all."""
        where = f"{self.state} (seq {self.seq}) {self.boundary}"
        if self.error is not None:
            return [f"{where}: {self.error}"]
        if not self.reached:
            return [f"{where}: the killed run never got there (it took another path)"]
        if self.equal:
            return []
        if not deterministic:
            why = "ended differently (so do uninterrupted runs)"
        elif self.reran_step:
            why = f"{self.state} ran again after the crash and changed the outcome"
        else:
            why = "no step ran twice; state kept outside the history differs (a global, a file?)"
        shown = [f"    {d}" for d in self.differences[:_MAX_SHOWN]]
        if len(self.differences) > _MAX_SHOWN:
            shown.append(f"    ... and {len(self.differences) - _MAX_SHOWN} more")
        return [f"{where}: {why}", *shown]


@dataclass(frozen=True)
class CrashReport:
    """What :func:`~fsmflow.testing.check_crash_safety` found for one workflow.

    ``outcome`` is the uninterrupted run's; ``nondeterminism`` lists where a second
    uninterrupted run ended differently (empty: deterministic). ``boundaries`` has one
    result per boundary of every step run, in the order the run passes them. ``ok`` is
    True when the workflow is deterministic and every crash ended like no crash.
    ``str(report)`` is the readable table; ``assert report.ok, report`` shows it.
    """

    workflow: str
    target: str
    outcome: Outcome
    nondeterminism: tuple[str, ...]
    boundaries: tuple[BoundaryResult, ...]

    @property
    def deterministic(self) -> bool:
        """True if two uninterrupted runs ended with the same outcome."""
        return not self.nondeterminism

    @property
    def failures(self) -> tuple[BoundaryResult, ...]:
        """The boundaries whose crash did not end like the uninterrupted run."""
        return tuple(b for b in self.boundaries if not b.ok)

    @property
    def non_idempotent_steps(self) -> tuple[str, ...]:
        """The states whose step, run again after a crash, changed the outcome (none are
        named when the workflow is not deterministic: nothing can be put down to a rerun)."""
        if not self.deterministic:
            return ()
        found = (b.state for b in self.boundaries if b.reached and not b.equal and b.reran_step)
        return tuple(dict.fromkeys(found))

    @property
    def ok(self) -> bool:
        """Deterministic, and every boundary reached with the uninterrupted outcome."""
        return self.deterministic and not self.failures

    def __repr__(self) -> str:
        return (
            f"CrashReport(workflow={self.workflow!r}, ok={self.ok}, "
            f"boundaries={len(self.boundaries)}, failures={len(self.failures)}, "
            f"non_idempotent_steps={self.non_idempotent_steps!r}, "
            f"deterministic={self.deterministic})"
        )

    def __str__(self) -> str:
        return "\n".join(self._lines())

    def _lines(self) -> list[str]:
        verdict = "OK" if self.ok else "FAILED"
        runs = len({(b.seq, b.state) for b in self.boundaries})
        equal = sum(b.ok for b in self.boundaries)
        crashes = len(self.boundaries)
        lines = [
            f"crash safety of workflow {self.workflow!r}: {verdict}",
            f"  target: {self.target}",
            f"  uninterrupted: {self.outcome['status']} in state {self.outcome['state']!r}"
            + (f" with {self.outcome['error']}" if self.outcome.get("error") else ""),
            f"  {crashes} crash{'es' * (crashes != 1)} ({runs} step run{'s' * (runs != 1)} x up "
            f"to {len(BOUNDARIES)} boundaries): {equal} ended like the uninterrupted run",
        ]
        if self.deterministic:
            lines.append("  deterministic: two uninterrupted runs ended the same")
        else:
            lines += [
                "  NOT DETERMINISTIC: two uninterrupted runs ended differently (a clock,",
                "  randomness, an outside service?), so no crash can be judged:",
            ]
            lines += [f"    {d}" for d in self.nondeterminism[:_MAX_SHOWN]]
        if self.non_idempotent_steps:
            names = ", ".join(self.non_idempotent_steps)
            lines.append(f"  non-idempotent steps: {names}")
        return [*lines, "", *self._table(), *self._details()]

    def _table(self) -> list[str]:
        runs: dict[tuple[int, str], dict[str, str]] = {}
        for b in self.boundaries:
            runs.setdefault((b.seq, b.state), {})[b.boundary] = b.verdict
        width = max([len("state"), *(len(state) for _, state in runs)])
        header = f"  {'seq':>4}  {'state':<{width}}  " + "  ".join(
            f"{name:<13}" for name in BOUNDARIES
        )
        rows = [
            f"  {seq:>4}  {state:<{width}}  "
            + "  ".join(f"{verdicts.get(name, '-'):<13}" for name in BOUNDARIES)
            for (seq, state), verdicts in sorted(runs.items())
        ]
        return [line.rstrip() for line in [header, *rows]]

    def _details(self) -> list[str]:
        judged = self.deterministic
        found = [line for b in self.boundaries for line in b.describe(deterministic=judged)]
        return ["", *(f"  {line}" for line in found)] if found else []
