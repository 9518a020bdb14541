"""The state diagram of an instance's workflow, laid out in Python for a server-side SVG.

The graph comes from the definition summary stored with the instance's seq 0 (what
``send-event`` and fork read too), so the dashboard needs no workflow code. States are
put in rows by their distance from the initial state; an edge per transition and source
carries the number of times this instance's history took it. The template
``_diagram.html`` draws the result (every name escaped there, like any other value).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fsmflow.model.records import TransitionRecord

NODE_HEIGHT: Final = 36
ROW_GAP: Final = 96  # vertical space between two rows of states
NODE_GAP: Final = 48  # horizontal space between two states of a row
MARGIN: Final = 32
CHAR_WIDTH: Final = 8  # a rough width of one character of the labels' font
MAX_LABEL: Final = 28  # characters of a name drawn in a box (the full name is its title)
END: Final = "[end]"  # the pseudo-state a completing transition goes to


@dataclass(frozen=True, slots=True)
class Node:
    """A state's box: ``x``/``y`` is its top-left corner."""

    name: str
    label: str
    x: float
    y: float
    width: float
    current: bool = False
    initial: bool = False
    end: bool = False

    @property
    def center_x(self) -> float:
        """The horizontal middle of the box."""
        return self.x + self.width / 2


@dataclass(frozen=True, slots=True)
class Edge:
    """One transition from one source: an SVG path and where its label goes."""

    trigger: str
    source: str
    dest: str | None  # None: the transition completes the instance
    count: int
    path: str
    label_x: float
    label_y: float


@dataclass(frozen=True, slots=True)
class Diagram:
    """What the template draws: the boxes, the edges and the picture's size."""

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    width: float
    height: float


def short(name: str) -> str:
    """``name`` cut to :data:`MAX_LABEL` characters for a box."""
    return name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 1] + "\u2026"


def transitions_of(summary: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """``(trigger, source, dest)`` of every transition and source in a stored summary
    (malformed entries skipped: a hand-edited summary draws what it can)."""
    found: list[tuple[str, str, str | None]] = []
    for t in summary.get("transitions") or ():
        if not isinstance(t, dict) or not isinstance(t.get("trigger"), str):
            continue
        dest = t.get("dest") if isinstance(t.get("dest"), str) else None
        sources = t.get("source")
        for source in [sources] if isinstance(sources, str) else sources or ():
            if isinstance(source, str):
                found.append((t["trigger"], source, dest))
    return found


def traversals(
    records: Iterable[TransitionRecord],
) -> Counter[tuple[str | None, str, str | None]]:
    """How often the history took each ``(trigger, source, dest)`` (seq 0 is a start; a
    completion by a state without transitions has no trigger; failed and cancelled rows
    take no edge)."""
    return Counter(
        (r.trigger, r.source_state, r.dest_state)
        for r in records
        if r.seq > 0 and r.source_state is not None and r.status not in ("failed", "cancelled")
    )


def layers(
    states: Sequence[str], initial: str | None, edges: Sequence[tuple[str, str]]
) -> dict[str, int]:
    """Each state's row: its distance from ``initial``; unreachable states go last."""
    rows: dict[str, int] = {initial: 0} if initial is not None and initial in states else {}
    frontier: list[str] = list(rows)
    while frontier:
        following = []
        for state in frontier:
            for source, dest in edges:
                if source == state and dest in states and dest not in rows:
                    rows[dest] = rows[state] + 1
                    following.append(dest)
        frontier = following
    last = max(rows.values(), default=-1) + 1
    return {s: rows.get(s, last) for s in states}


def build(
    summary: dict[str, Any] | None, records: Sequence[TransitionRecord], current: str | None
) -> Diagram | None:
    """The diagram of ``summary`` with ``records``' traversal counts and ``current``
    marked; None when there is no stored summary to draw (rows of fsmflow before 0.1)."""
    if not isinstance(summary, dict) or not isinstance(summary.get("states"), list):
        return None
    states = [s for s in summary["states"] if isinstance(s, str)]
    initial = summary.get("initial") if isinstance(summary.get("initial"), str) else None
    arrows = transitions_of(summary)
    rows = layers(states, initial, [(s, d) for _, s, d in arrows if d is not None])
    outgoing = {s for _, s, _ in arrows}
    ends = any(d is None for *_, d in arrows) or any(s not in outgoing for s in states)
    if ends:
        rows[END] = max(rows.values(), default=-1) + 1
    nodes = _place(rows, initial, current)
    counts = traversals(records)
    edges = _edges(arrows, {n.name: n for n in nodes}, rows, counts, states, outgoing)
    width = max((n.x + n.width for n in nodes), default=0) + MARGIN
    height = max((n.y for n in nodes), default=0) + NODE_HEIGHT + MARGIN
    return Diagram(tuple(nodes), tuple(edges), width + 120, height)


def _place(rows: dict[str, int], initial: str | None, current: str | None) -> list[Node]:
    by_row: dict[int, list[str]] = {}
    for name, row in rows.items():
        by_row.setdefault(row, []).append(name)
    widths = {name: max(80, CHAR_WIDTH * len(short(name)) + 28) for name in rows}
    spans = {
        r: sum(widths[n] for n in names) + NODE_GAP * (len(names) - 1)
        for r, names in by_row.items()
    }
    widest = max(spans.values(), default=0)
    nodes = []
    for row, names in sorted(by_row.items()):
        x = MARGIN + (widest - spans[row]) / 2
        for name in names:
            end = name == END and row == rows[END]
            nodes.append(
                Node(
                    name=name,
                    label=short(name),
                    x=x,
                    y=MARGIN + row * (NODE_HEIGHT + ROW_GAP),
                    width=widths[name],
                    current=name == current and not end,
                    initial=name == initial,
                    end=end,
                )
            )
            x += widths[name] + NODE_GAP
    return nodes


def _edges(
    arrows: Sequence[tuple[str, str, str | None]],
    nodes: dict[str, Node],
    rows: dict[str, int],
    counts: Counter[tuple[str | None, str, str | None]],
    states: Sequence[str],
    outgoing: set[str],
) -> list[Edge]:
    """An edge per transition and source, plus an implicit one to the end from every
    state without outgoing transitions (its step's ``None`` completes the instance)."""
    implicit = [(None, s, None) for s in states if s not in outgoing]
    edges: list[Edge] = []
    seen: Counter[tuple[str, str]] = Counter()
    for trigger, source, dest in [*arrows, *implicit]:
        if source not in nodes:
            continue
        target = nodes.get(END if dest is None else dest)
        if target is None:
            continue
        bend = seen[(source, target.name)]
        seen[(source, target.name)] += 1
        path, lx, ly = _route(nodes[source], target, rows, bend)
        count = sum(
            n
            for (t, s, d), n in counts.items()
            if s == source and d == dest and (trigger is None or t == trigger)
        )
        edges.append(Edge(trigger or "", source, dest, count, path, lx, ly))
    return edges


def _route(a: Node, b: Node, rows: dict[str, int], bend: int) -> tuple[str, float, float]:
    """An SVG path from ``a`` to ``b`` and its label's position: down to a later row,
    a loop for a self-transition, round the right side for one that goes back."""
    if a.name == b.name:
        x, y = a.x + a.width, a.y + NODE_HEIGHT / 2
        reach = 40 + 16 * bend
        path = (
            f"M {x:.1f} {y - 8:.1f} C {x + reach:.1f} {y - 30:.1f} "
            f"{x + reach:.1f} {y + 30:.1f} {x:.1f} {y + 8:.1f}"
        )
        return path, x + reach - 6, y - 14
    if rows[b.name] > rows[a.name]:
        x1, y1 = a.center_x, a.y + NODE_HEIGHT
        x2, y2 = b.center_x, b.y
        cx, cy = (x1 + x2) / 2 + 30 * bend, (y1 + y2) / 2
    else:
        x1, y1 = a.x + a.width, a.y + NODE_HEIGHT / 2
        x2, y2 = b.x + b.width, b.y + NODE_HEIGHT / 2
        cx = max(x1, x2) + 60 + 24 * bend
        cy = (y1 + y2) / 2
    path = f"M {x1:.1f} {y1:.1f} Q {cx:.1f} {cy:.1f} {x2:.1f} {y2:.1f}"
    # The curve's middle (t = 1/2 of a quadratic Bezier curve).
    return path, 0.25 * x1 + 0.5 * cx + 0.25 * x2 + 4, 0.25 * y1 + 0.5 * cy + 0.25 * y2
