"""The keys a cluster's chain holds: its shard's range, narrowed by splits in its log (no I/O).

A lone chain holds every key.  A cluster's chain holds the range ``[start,
end)`` of its shard, as the server's shard map says; when the shard is split
at key ``b`` (docs/cluster.md, "Splitting a shard"), the head writes a *split
marker* into the chain's log: from that op on, the chain numbers no write of a
key at or above ``b``, and once the marker is committed its tail serves no
read of one.  The new chain above ``b`` starts from the committed state at or
after the marker, which no later op of this chain changes above ``b``.

What a split leaves behind in the tree above ``b`` is deleted later by
*sweeps*: ops of plain deletes, written by the head once the new chain no
longer needs this chain's copy to start from.

The map and the markers both narrow the range; the narrowest end rules.  The
marker is what every member agrees on (it is an op, in order); the map is what
a member that never saw the marker (one that copied its state afterwards)
learns the split from.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HeadOp", "KeyBounds", "Moved", "Split", "Sweep", "narrowest"]


@dataclass(frozen=True)
class Split:
    """A request the head makes of itself: write the split marker at ``at``."""

    at: bytes


@dataclass(frozen=True)
class Sweep:
    """A request the head makes of itself: delete ``keys``, which the chain gave away
    (kvtwist.cluster.sweep says when that is safe).  One op, so every member deletes
    them at the same point of the log; a key the chain still holds is left alone."""

    keys: tuple[bytes, ...]


#: What the head asks of itself, numbered among client writes.
HeadOp = Split | Sweep


class Moved(Exception):
    """A key this chain no longer holds (its shard was split): read the map again."""


def narrowest(a: bytes | None, b: bytes | None) -> bytes | None:
    """The lower of two range ends (None: no end)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


class KeyBounds:
    """One chain's range by the map and its split markers, by op number."""

    def __init__(self) -> None:
        self.start = b""
        self.map_end: bytes | None = None
        #: where the map says a chain was split off this one (its end then)
        self.split_end: bytes | None = None
        self.limited = False  # a lone chain's: every key
        #: split markers received, in op order: (op, split key)
        self.marks: list[tuple[int, bytes]] = []

    def set_map(self, start: bytes, end: bytes | None, split: bool = False) -> None:
        """The shard's range by the server's latest map; ``split``: the shard after it
        was split off this chain (so its end is a split to mark)."""
        self.limited = True
        self.start, self.map_end = start, end
        self.split_end = end if split else None

    def note(self, seq: int, at: bytes) -> None:
        """A split marker at op ``seq`` (taken in order; noted once)."""
        if not self.marks or self.marks[-1][0] < seq:
            self.marks.append((seq, at))

    def truncate(self, seq: int) -> None:
        """Markers past ``seq`` were never committed: forget them."""
        self.marks = [m for m in self.marks if m[0] <= seq]

    def clear(self) -> None:
        """A copy of another member's state replaces ours: its markers are not in our log."""
        self.marks = []

    def end(self, upto: int | None = None) -> bytes | None:
        """The range's end counting the markers up to op ``upto`` (None: all received)."""
        end = self.map_end
        for seq, at in self.marks:
            if upto is not None and seq > upto:
                break
            end = narrowest(end, at)
        return end

    def holds(self, key: bytes, upto: int | None = None) -> bool:
        if not self.limited:
            return True
        end = self.end(upto)
        return self.start <= key and (end is None or key < end)

    def marker_due(self) -> bytes | None:
        """The split key the head is to mark: where the map split a chain off this one,
        when no marker in the log narrows the range that far."""
        if self.split_end is None:
            return None
        logged = None
        for _, at in self.marks:
            logged = narrowest(logged, at)
        if logged is not None and logged <= self.split_end:
            return None
        return self.split_end

    def marker_op(self, at: bytes) -> int | None:
        """The op of the first marker that narrows the range to ``at`` or below."""
        for seq, mark in self.marks:
            if mark <= at:
                return seq
        return None
