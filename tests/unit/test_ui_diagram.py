"""The dashboard's state diagram, laid out from a stored definition summary (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

from fsmflow.model.records import TransitionRecord
from fsmflow.ui import diagram

# A stored summary as a hand-edited or older definition may leave it: c and lonely are
# unreachable (fsmflow's own definitions refuse that), lonely has no transitions.
SUMMARY = {
    "states": ["a", "b", "c", "lonely"],
    "initial": "a",
    "transitions": [
        {"trigger": "go", "source": ["a"], "dest": "b", "conditions": []},
        {"trigger": "back", "source": ["b"], "dest": "a", "conditions": []},
        {"trigger": "stay", "source": ["b"], "dest": "b", "conditions": []},
        {"trigger": "finish", "source": ["b", "c"], "dest": None, "conditions": []},
    ],
}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def row(seq: int, trigger: str | None, source: str | None, dest: str | None) -> TransitionRecord:
    return TransitionRecord("flow", "i", seq, trigger, source, dest, {}, "running", NOW)


def test_rows_by_distance_edges_per_source_and_counts() -> None:
    moves = [("go", "a", "b"), ("back", "b", "a"), ("go", "a", "b"), ("stay", "b", "b"),
             ("finish", "b", None)]  # fmt: skip
    records = [row(0, None, None, "a")] + [row(n, *m) for n, m in enumerate(moves, start=1)]
    drawn = diagram.build(SUMMARY, records, "b")
    assert drawn is not None
    nodes = {n.name: n for n in drawn.nodes}
    assert nodes["a"].y < nodes["b"].y < nodes[diagram.END].y
    assert nodes["c"].y == nodes["lonely"].y  # unreachable from the initial state: last row
    assert nodes["b"].current and not nodes["a"].current and nodes["a"].initial
    assert nodes[diagram.END].end
    counts = {(e.trigger, e.source, e.dest): e.count for e in drawn.edges}
    assert counts == {
        ("go", "a", "b"): 2, ("back", "b", "a"): 1, ("stay", "b", "b"): 1,
        ("finish", "b", None): 1, ("finish", "c", None): 0,
        ("", "lonely", None): 0,  # a state without transitions completes: implicit edge
    }  # fmt: skip
    assert all(e.path.startswith("M ") for e in drawn.edges)
    assert drawn.width > 0 and drawn.height > 0


def test_failed_and_operator_rows_are_no_traversals() -> None:
    records = [row(0, None, None, "a"), row(1, None, "a", "a"), row(2, "fsmflow:retry", "a", "a")]
    drawn = diagram.build(SUMMARY, records, "a")
    assert drawn is not None
    assert all(e.count == 0 for e in drawn.edges)


def test_long_names_are_cut_in_the_box_and_kept_whole() -> None:
    name = "s" * 80
    summary = {"states": [name], "initial": name, "transitions": []}
    drawn = diagram.build(summary, [], name)
    assert drawn is not None
    (state, _end) = drawn.nodes
    assert state.name == name and len(state.label) == diagram.MAX_LABEL


def test_no_or_malformed_summary() -> None:
    assert diagram.build(None, [], None) is None
    assert diagram.build({"states": "x"}, [], None) is None
    summary = {"states": ["a", 3], "initial": "a", "transitions": [7, {"trigger": 1}, {
        "trigger": "t", "source": ["a", None], "dest": "missing"}]}  # fmt: skip
    drawn = diagram.build(summary, [], "a")
    assert drawn is not None and [n.name for n in drawn.nodes] == ["a"]
    assert drawn.edges == ()  # an edge to a state the summary lacks is not drawn


def test_a_completion_by_a_state_without_transitions_counts_on_its_end_edge() -> None:
    # A state with no outgoing transition completes when its step returns: that row has
    # no trigger, and it is the implicit edge's traversal; a failed row in it is none.
    summary = {"states": ["a", "lonely"], "initial": "a",
               "transitions": [{"trigger": "go", "source": ["a"], "dest": "lonely"}]}  # fmt: skip
    failed = TransitionRecord("flow", "i", 2, None, "lonely", "lonely", {}, "failed", NOW)
    completed = TransitionRecord("flow", "i", 3, None, "lonely", None, {}, "completed", NOW)
    records = [row(0, None, None, "a"), row(1, "go", "a", "lonely"), failed, completed]
    drawn = diagram.build(summary, records, "lonely")
    assert drawn is not None
    counts = {(e.trigger, e.source, e.dest): e.count for e in drawn.edges}
    assert counts == {("go", "a", "lonely"): 1, ("", "lonely", None): 1}
