"""Duplicate suppression: a retried write is answered with its first outcome.

Each write may carry a client id and a request number; the chain remembers
the op number each got, so a client that retries after a failover is told the
op number of the write that already happened instead of applying it twice.
The table is replicated with the writes (every node remembers what it
applies) and travels with a state transfer.  It is bounded by entries and by
bytes, oldest forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

#: Retried writes remembered, across all clients.
MAX_ENTRIES = 100_000
#: Bytes of client ids remembered (an entry costs its id plus this overhead).
MAX_BYTES = 16 * 1024 * 1024
ENTRY_OVERHEAD = 64
#: Longest client id a write may carry.
MAX_CLIENT_ID = 256


class Entry:
    __slots__ = ("found", "seq")

    def __init__(self, seq: int, found: bool | None) -> None:
        self.seq = seq
        self.found = found  # None until applied


class DedupTable:
    """``(client_id, request_id) -> Entry``, oldest first."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._rows: OrderedDict[tuple[str, int], Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, client_id: str, request_id: int) -> Entry | None:
        return self._rows.get((client_id, request_id))

    def remember(self, client_id: str, request_id: int, seq: int, found: bool | None) -> None:
        key = (client_id, request_id)
        if key in self._rows:
            self._rows.move_to_end(key)
        else:
            self._bytes += len(client_id) + ENTRY_OVERHEAD
        self._rows[key] = Entry(seq, found)
        while self._rows and (len(self._rows) > self.max_entries or self._bytes > self.max_bytes):
            (old, _), _ = self._rows.popitem(last=False)
            self._bytes -= len(old) + ENTRY_OVERHEAD

    def applied(self, client_id: str, request_id: int, seq: int, found: bool) -> None:
        """The write ``seq`` was applied: remember whether its key was there."""
        entry = self._rows.get((client_id, request_id))
        if entry is not None and entry.seq == seq:
            entry.found = found

    def forget_after(self, seq: int) -> None:
        """Drop entries of ops after ``seq`` (they were never committed)."""
        for key in [k for k, e in self._rows.items() if e.seq > seq]:
            del self._rows[key]
            self._bytes -= len(key[0]) + ENTRY_OVERHEAD

    def clear(self) -> None:
        self._rows.clear()
        self._bytes = 0

    def rows(self, upto: int | None = None) -> Iterator[tuple[str, int, int, bool]]:
        """``(client_id, request_id, seq, found)`` for entries up to op ``upto``."""
        for (c, r), e in self._rows.items():
            if upto is None or e.seq <= upto:
                yield c, r, e.seq, bool(e.found) if e.found is not None else True

    def load(self, rows: Iterable[tuple[str, int, int, bool]]) -> None:
        for c, r, seq, found in rows:
            self.remember(c, r, seq, found)
