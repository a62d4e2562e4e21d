"""Duplicate suppression: a retried write is answered with its first outcome.

Each write may carry a client id and a request number; the chain remembers
the op number each got, so a client that retries after a failover is told the
op number of the write that already happened instead of applying it twice.
The table is replicated with the writes (every node remembers what it
applies, and changes it only as the writes say, so every member holds the
same table) and travels with snapshots and state transfers.

Clients acknowledge, as in RIFL (Lee et al., SOSP 2015): a write may carry
``ack_below``, below which every request of its client has had its answer and
is never sent again.  Those entries are dropped and ``ack_below`` becomes the
client's *floor*: a request below it is refused, never applied.  So an
acknowledging client costs only its unanswered requests, and the guarantee
lasts as long as it retries.  A client that sends no ``ack_below`` keeps its
newest ``max_client_entries`` entries; a retry older than that is applied
again.

Memory is bounded by entries and bytes: over either, whole clients go, least
recently written first, and ``evicted`` counts them.  From then on a re-send
(the client's ``resend`` flag) from a client the table does not know may be a
duplicate of a forgotten write: it is refused as of unknown outcome.  A client
row made after an eviction starts with its first request as its floor, since
its older requests may be forgotten ones.

Rows as the table exports them, ``(client_id, request_id, seq, found)``:
``seq`` 0 marks a client's own row, with its floor in ``request_id`` (left out
when the floor is 0 and entries of the client follow), and client id ``""``
with seq 0 carries the eviction count.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from kvtwist.chain.outcomes import Refused
from kvtwist.chain.rmw import RmwResult

#: Retried writes remembered, across all clients.
MAX_ENTRIES = 100_000
#: Entries one client may hold (its oldest go first).
MAX_CLIENT_ENTRIES = 10_000
#: Bytes the table may take: each client costs its id plus CLIENT_OVERHEAD,
#: each entry ENTRY_OVERHEAD.
MAX_BYTES = 16 * 1024 * 1024
ENTRY_OVERHEAD = 64
CLIENT_OVERHEAD = 192
#: Longest client id a write may carry.
MAX_CLIENT_ID = 256

#: How every refusal of the table begins: not applied now, but an earlier
#: attempt may have been, so the write's fate is open.
OUTCOME_UNKNOWN = "outcome unknown"
TOO_OLD = (
    f"{OUTCOME_UNKNOWN}: request too old to deduplicate"
    " (not applied now; an earlier attempt may have been)"
)
UNKNOWN = (
    f"{OUTCOME_UNKNOWN}: a re-sent request of a client the chain no longer remembers"
    " (not applied now; an earlier attempt may have been)"
)


class Entry:
    __slots__ = ("found", "group", "result", "seq")

    def __init__(
        self,
        seq: int,
        found: bool | None,
        result: RmwResult | None = None,
        group: tuple[RmwResult, ...] | None = None,
    ) -> None:
        self.seq = seq
        self.found = found  # None until applied
        #: a read-modify-write's answer; rows (snapshots, recovery) do not carry it
        self.result = result
        #: a group's answers, one per request (nor do rows carry these)
        self.group = group

    @property
    def size(self) -> int:
        size = ENTRY_OVERHEAD + (self.result.size if self.result is not None else 0)
        if self.group:
            size += sum(ENTRY_OVERHEAD // 4 + r.size for r in self.group)
        return size


class ClientRecord:
    """One client: its floor and its entries, in the order they were remembered."""

    __slots__ = ("entries", "floor")

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.entries: dict[int, Entry] = {}


class DedupTable:
    """``client_id -> ClientRecord``, least recently written first."""

    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        max_client_entries: int = MAX_CLIENT_ENTRIES,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_client_entries = max_client_entries
        self._clients: OrderedDict[str, ClientRecord] = OrderedDict()
        self._entries = 0
        self._bytes = 0
        self.evicted = 0  # client records dropped whole to stay within the bounds

    def __len__(self) -> int:
        return self._entries

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def clients(self) -> int:
        return len(self._clients)

    def get(self, client_id: str, request_id: int) -> Entry | None:
        row = self._clients.get(client_id)
        return None if row is None else row.entries.get(request_id)

    def check(self, client_id: str, request_id: int, resend: bool = False) -> Entry | None:
        """The first attempt's entry of a duplicate, None for a new write; Refused if unknowable."""
        row = self._clients.get(client_id)
        if row is None:
            if resend and self.evicted:
                raise Refused(UNKNOWN)
            return None
        if request_id < row.floor:
            raise Refused(TOO_OLD)
        return row.entries.get(request_id)

    def remember(
        self,
        client_id: str,
        request_id: int,
        seq: int,
        found: bool | None,
        ack_below: int = 0,
        result: RmwResult | None = None,
        group: tuple[RmwResult, ...] | None = None,
    ) -> None:
        clients = self._clients
        row = clients.get(client_id)
        if row is None:
            row = clients[client_id] = ClientRecord(request_id if self.evicted else 0)
            self._bytes += len(client_id) + CLIENT_OVERHEAD
        else:
            clients.move_to_end(client_id)
        if ack_below > row.floor:
            self._raise_floor(row, ack_below)
        if request_id < row.floor:
            return  # refused at the head; a retry of it is refused here too
        entries = row.entries
        old = entries.get(request_id)
        if old is None:
            self._entries += 1
        else:
            self._bytes -= old.size
        entry = entries[request_id] = Entry(seq, found, result, group)
        self._bytes += entry.size
        while len(entries) > self.max_client_entries:
            self._drop_oldest(row)
        self._shrink(client_id)

    def _raise_floor(self, row: ClientRecord, floor: int) -> None:
        row.floor = floor
        entries = row.entries
        # requests are remembered about in order: the acknowledged ones are in front
        while entries:
            oldest = next(iter(entries))
            if oldest >= floor:
                break
            self._bytes -= entries.pop(oldest).size
            self._entries -= 1

    def _drop_oldest(self, row: ClientRecord) -> None:
        oldest = next(iter(row.entries))
        self._bytes -= row.entries.pop(oldest).size
        self._entries -= 1
        if row.floor:  # an acknowledging client: a retry of it is refused, not applied
            row.floor = max(row.floor, oldest + 1)

    def _shrink(self, keep: str | None) -> None:
        """Evict whole clients, least recently written first, until within the bounds."""
        clients = self._clients
        while self._entries > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(clients), None)
            if oldest is None:
                return
            if oldest == keep:
                row = clients[oldest]
                if not row.entries:
                    return
                self._drop_oldest(row)  # the only client left
                continue
            self._evict(oldest)

    def _evict(self, client_id: str) -> None:
        row = self._clients.pop(client_id)
        self._entries -= len(row.entries)
        self._bytes -= len(client_id) + CLIENT_OVERHEAD + sum(e.size for e in row.entries.values())
        self.evicted += 1

    def applied(self, client_id: str, request_id: int, seq: int, found: bool) -> None:
        """The write ``seq`` was applied: remember whether its key was there."""
        entry = self.get(client_id, request_id)
        if entry is not None and entry.seq == seq:
            entry.found = found

    def forget_after(self, seq: int) -> None:
        """Drop entries of ops after ``seq`` (they were never committed).

        Floors they raised stay: the client said those requests were answered,
        whatever became of the op that carried it, so it never sends them again.
        """
        for client_id, row in list(self._clients.items()):
            gone = [r for r, e in row.entries.items() if e.seq > seq]
            for r in gone:
                self._bytes -= row.entries.pop(r).size
            self._entries -= len(gone)
            if not row.entries and not row.floor:
                del self._clients[client_id]
                self._bytes -= len(client_id) + CLIENT_OVERHEAD

    def clear(self) -> None:
        self._clients.clear()
        self._entries = 0
        self._bytes = 0
        self.evicted = 0

    def rows(self, upto: int | None = None) -> Iterator[tuple[str, int, int, bool]]:
        """The table as rows (see the module's docstring); entries only up to op ``upto``."""
        if self.evicted:
            yield "", self.evicted, 0, False
        for c, row in self._clients.items():
            entries = [
                (c, r, e.seq, bool(e.found) if e.found is not None else True)
                for r, e in row.entries.items()
                if upto is None or e.seq <= upto
            ]
            if row.floor or not entries:  # else its entries make the client known
                yield c, row.floor, 0, False
            yield from entries

    def load(self, rows: Iterable[tuple[str, int, int, bool]]) -> None:
        """Add exported rows as they are, then keep within this table's bounds."""
        clients = self._clients
        for c, r, seq, found in rows:
            if seq == 0 and not c:
                self.evicted = max(self.evicted, r)
                continue
            row = clients.get(c)
            if row is None:
                row = clients[c] = ClientRecord(0)
                self._bytes += len(c) + CLIENT_OVERHEAD
            if seq == 0:
                row.floor = max(row.floor, r)
                continue
            old = row.entries.get(r)
            if old is None:
                self._entries += 1
            else:
                self._bytes -= old.size
            row.entries[r] = Entry(seq, found)
            self._bytes += ENTRY_OVERHEAD
        self._shrink(None)
