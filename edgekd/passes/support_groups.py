"""The nodes a target cannot run, grouped by op type: a count, up to three node names and the reason,
and how many of them the canonicalize pass would remove — one line per op, not one per node."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

SHOWN_NAMES = 3


@dataclass(frozen=True)
class UnsupportedGroup:
    op: str
    count: int
    nodes: tuple[str, ...]  # the first few, in graph order
    reason: str  # the most common reason
    other_reasons: int = 0
    canonicalize_removes: int = 0  # of ``count``, nodes gone after canonicalization

    def to_dict(self) -> dict:
        return {
            "op": self.op,
            "count": self.count,
            "nodes": list(self.nodes),
            "reason": self.reason,
            "other_reasons": self.other_reasons,
            "canonicalize_removes": self.canonicalize_removes,
        }

    def line(self) -> str:
        names = ", ".join(self.nodes) + (", …" if self.count > len(self.nodes) else "")
        more = (
            f" (+{self.other_reasons} other reason{'s' if self.other_reasons > 1 else ''})"
            if self.other_reasons
            else ""
        )
        removes = (
            f" [canonicalize removes {'all' if self.canonicalize_removes == self.count else self.canonicalize_removes}]"
            if self.canonicalize_removes
            else ""
        )
        return f"{self.op} ×{self.count}: {self.reason}{more} — {names}{removes}"


def group_unsupported(records: Iterable, after_canonicalize: Iterable | None = None) -> list[UnsupportedGroup]:
    """Groups ``Unsupported`` records by op type, largest group first; with the records of the
    canonicalized graph, each group says how many of its nodes canonicalization removes."""
    by_op: dict[str, list] = {}
    for r in records:
        by_op.setdefault(r.op, []).append(r)
    left = Counter(r.op for r in after_canonicalize) if after_canonicalize is not None else None
    groups = []
    for op, items in by_op.items():
        reasons = Counter(r.reason for r in items)
        removes = max(0, len(items) - left.get(op, 0)) if left is not None else 0
        groups.append(
            UnsupportedGroup(
                op,
                len(items),
                tuple(r.node for r in items[:SHOWN_NAMES]),
                reasons.most_common(1)[0][0],
                len(reasons) - 1,
                removes,
            )
        )
    return sorted(groups, key=lambda g: (-g.count, g.op))


def describe_groups(groups: list[UnsupportedGroup], target: str) -> str:
    nodes = sum(g.count for g in groups)
    head = f"{nodes} node(s) of {len(groups)} op type(s) cannot run on {target}:"
    return "\n".join([head] + [f"  {g.line()}" for g in groups])
