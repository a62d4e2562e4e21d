"""Redis's WATCH at the head: was a key written after a watch point? (no I/O)

A client watches keys at a *watch point*: an op number the head had
committed when asked (OP_WATCH), so every write up to it is visible to the
client's later reads.  Its EXEC's group carries each key with its point; the
head, deciding the group in write order, aborts it if any key was written
(put or deleted, to any value) by an op after the point.

To answer, every member notes the op of each key's last write as it takes
updates into its order (the head also as it numbers them), in a bounded
:class:`WriteIndex`.  The index is sure of a key only for writes after its
``floor``: before, it may have forgotten (a restart, a state transfer, or
the oldest entries dropped to stay within its bounds).  A watch point below
the floor, or past the ops this member holds, is not known to be safe, and
the group aborts: an aborted EXEC is a legal outcome, which clients retry.

An entry may name an op that was later taken back (never committed, then
numbered again for other writes): it can only abort a group that would
have passed, never pass one that should abort.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from kvtwist.proto.kvtwist_pb2 import Update

#: Keys the index remembers (their key bytes plus ENTRY_OVERHEAD each).
MAX_BYTES = 32 * 1024 * 1024
ENTRY_OVERHEAD = 96


def changed_keys(u: Update) -> list[bytes]:
    """The keys an update writes, as WATCH counts them.

    A read-modify-write that failed (its condition, or refused) writes its
    key's value back unchanged: as in Redis, that is no write of the key.
    """
    if u.group:
        return [s.key for s in u.group if not s.skip]
    if u.rmw and (u.rmw_error or not u.rmw_applied):
        return []
    return [u.key]


class WriteIndex:
    """Per key, the op of its last write, for every write after ``floor``."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.floor = 0
        self.bytes = 0
        self._last: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def reset(self, seq: int) -> None:
        """Forget everything: from now on only writes after ``seq`` are known."""
        self._last.clear()
        self.bytes = 0
        self.floor = seq

    def wrote(self, keys: Iterable[bytes], seq: int) -> None:
        """Op ``seq`` wrote ``keys`` (in op order; a repeat of the same op is harmless)."""
        last = self._last
        for key in keys:
            if not key:
                continue  # an update that writes nothing (a refused or aborted group)
            old = last.get(key)
            if old is None:
                self.bytes += len(key) + ENTRY_OVERHEAD
                last[key] = seq
            else:
                last[key] = max(old, seq)
                last.move_to_end(key)
        while self.bytes > self.max_bytes and last:
            key, op = last.popitem(last=False)
            self.bytes -= len(key) + ENTRY_OVERHEAD
            self.floor = max(self.floor, op)  # a forgotten key's last write is at most here

    def last_write(self, key: bytes) -> int | None:
        """The op of ``key``'s last write after the floor; None if none is known."""
        return self._last.get(key)

    def unchanged(self, watch: Iterable[tuple[bytes, int]], last_received: int) -> bool:
        """Whether no key was written after its watch point, as far as we know for sure."""
        last = self._last
        for key, point in watch:
            if point < self.floor or point > last_received:
                return False  # our memory does not reach it, or it is no point of ours
            if last.get(key, 0) > point:
                return False
        return True


__all__ = ["WriteIndex", "changed_keys"]
