"""The workflow ``fsmflow bench --workers`` runs: ``steps`` trivial async steps in a line.

Inside the package, so that the worker processes the bench starts (and an installed
wheel) can import it: ``fsmflow worker fsmflow.bench.fleet_workflow:WORKFLOW`` runs the
20-step one. The steps are the throughput bench's own (:func:`~fsmflow.bench.measure.
trivial_steps`), so the in-process baseline and the workers run the same code.
"""

from __future__ import annotations

from functools import cache
from typing import Final

from fsmflow.bench.measure import linear_definition, trivial_steps
from fsmflow.engine.workflow import Workflow

DEFAULT_NAME: Final = "bench_fleet"
DEFAULT_STEPS: Final = 20


@cache
def fleet_workflow(name: str = DEFAULT_NAME, steps: int = DEFAULT_STEPS) -> Workflow:
    """``s0 -> s1 -> ... -> s<steps-1>``, each step doing nothing (one per name and size)."""
    definition = linear_definition(name, steps)
    return Workflow(definition, trivial_steps(definition))


WORKFLOW: Final = fleet_workflow()
