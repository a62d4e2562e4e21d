"""Which head numbered each op: the epoch history of a log.

Every head takes a fresh epoch (from the chain record in ZooKeeper) before it
numbers a write, and every update carries its epoch.  A log's history is the
list of ``(first_seq, epoch)`` marks where the epoch changes.  Two logs that
hold the same op number with the same epoch hold the same writes up to it
(one head numbers each op of its epoch once, and a node appends only right
after a point it has checked with its predecessor), so comparing histories is
enough to find where two logs part: the rest of the longer one was never
committed and is dropped.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

Mark = tuple[int, int]  # (first op number, epoch)


class EpochHistory:
    """The epoch marks of one log, up to its last op."""

    __slots__ = ("marks",)

    def __init__(self, marks: Iterable[Mark] = ()) -> None:
        self.marks: list[Mark] = sorted(marks)

    def note(self, seq: int, epoch: int) -> None:
        """Op ``seq`` (the next one in the log) was numbered in ``epoch``."""
        if not self.marks or self.marks[-1][1] != epoch:
            self.marks.append((seq, epoch))

    def epoch_at(self, seq: int) -> int:
        """The epoch of op ``seq``; 0 before the first mark."""
        i = bisect_right(self.marks, (seq, float("inf"))) - 1
        return self.marks[i][1] if i >= 0 else 0

    def truncate(self, seq: int) -> None:
        """Forget the marks of ops after ``seq``."""
        self.marks = [m for m in self.marks if m[0] <= seq]

    def copy(self) -> EpochHistory:
        return EpochHistory(self.marks)

    def __repr__(self) -> str:
        return f"EpochHistory({self.marks!r})"


def match_point(mine: EpochHistory, my_last: int, theirs: EpochHistory, their_last: int) -> int:
    """The last op number up to which the two logs are the same."""
    limit = min(my_last, their_last)
    bounds = sorted({s for s, _ in mine.marks} | {s for s, _ in theirs.marks} | {1})
    for start in bounds:
        if start > limit:
            break
        if mine.epoch_at(start) != theirs.epoch_at(start):
            return start - 1
    return limit
