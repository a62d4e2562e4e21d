"""State transfer to a joining node: a frozen tree streamed in chunks.

The tail sends a snapshot of its committed state while it goes on serving;
the persistent tree makes that snapshot O(1) to take and safe to walk on a
reader thread.  Chunks are encoded off the reactor, one at a time, with the
reactor turning between them, and progress goes to the log on both ends.
What happens around the transfer (the backlog of writes, registration, the
handoff) is the replica's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger

from kvtwist.chain.link import Link
from kvtwist.proto.kvtwist_pb2 import Entry, EpochMark, SnapshotChunk, Update
from kvtwist.store import Runner
from kvtwist.tree import BTree

if TYPE_CHECKING:
    from kvtwist.chain.state import ChainState

log = Logger(namespace="kvtwist.chain")

#: Bytes of entries per chunk, unless the receiver's frame limit is smaller.
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
#: Bytes an entry or client row costs in a chunk beyond its own contents (tags, lengths).
ROW_OVERHEAD = 16


def _entry_size(key: bytes, value: bytes) -> int:
    return len(key) + len(value) + ROW_OVERHEAD


@dataclass(frozen=True)
class Frozen:
    """The committed state at op ``seq``, as a joiner or a backup receives it."""

    tree: BTree
    seq: int
    clients: list[Update]  # duplicate-suppression rows up to ``seq``
    marks: list[EpochMark]  # epoch history up to ``seq``


def freeze_committed(state: ChainState) -> Frozen:
    """The committed tree with the rows and epochs that belong to it, taken at once.

    O(1) in the tree (it is persistent), so it may be taken on the reactor
    thread while the chain goes on; the parts describe one and the same op.
    """
    seq = state.committed_seq
    clients = [
        Update(seq=s, client_id=c, request_id=r, found=found)
        for c, r, s, found in state.dedup.rows(upto=seq)
    ]
    history = state.history.copy()
    history.truncate(seq)
    marks = [EpochMark(first_seq=s, epoch=e) for s, e in history.marks]
    return Frozen(state.committed_tree, seq, clients, marks)


def chunks(tree: BTree, max_bytes: int = SNAPSHOT_CHUNK_BYTES) -> Iterator[list[Entry]]:
    """The tree's entries in key order, at most ``max_bytes`` of them at a time.

    An entry larger than that goes alone (the link check makes sure the
    receiver's frame can carry the largest entry there can be).
    """
    batch: list[Entry] = []
    size = 0
    for k, v in tree.iter_items():
        n = _entry_size(k, v)
        if batch and size + n > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(Entry(key=k, data=v))
        size += n
    if batch:
        yield batch


def client_batches(rows: list[Update], max_bytes: int) -> list[list[Update]]:
    """Split duplicate-suppression rows so that no chunk exceeds ``max_bytes``."""
    out: list[list[Update]] = [[]]
    size = 0
    for row in rows:
        n = row.ByteSize() + ROW_OVERHEAD
        if out[-1] and size + n > max_bytes:
            out.append([])
            size = 0
        out[-1].append(row)
        size += n
    return out


class SnapshotSender:
    """Streams ``tree`` (the state at op ``seq``) over ``link``, then calls ``done``.

    ``wanted`` is asked before every chunk: the transfer stops quietly once the
    replica has moved on (the joiner left, the node was fenced).  Chunks stay
    under the joiner's frame limit, and the next one is made only once the
    link's send buffer has room again, so a joiner that reads slowly (or not
    at all) holds at most one chunk here beyond the transport's buffer.  The
    duplicate-suppression rows travel in the last chunks, the final one
    marked ``done``.
    """

    def __init__(
        self,
        reactor: Any,
        runner: Runner,
        link: Link,
        tree: BTree,
        seq: int,
        clients: list[Update],
        wanted: Callable[[], bool],
        done: Callable[[], None],
        marks: Sequence[EpochMark] = (),
    ) -> None:
        self.reactor = reactor
        self.runner = runner
        self.link = link
        self.seq = seq
        self.clients = clients
        self.wanted = wanted
        self.done = done
        self.marks = list(marks)
        self.total = len(tree)
        self.sent = 0
        self.started = time.monotonic()
        self.max_bytes = min(SNAPSHOT_CHUNK_BYTES, link.frame_budget)
        self._chunks = chunks(tree, self.max_bytes)

    def start(self) -> Deferred[Any]:
        log.info(
            "state transfer to {peer}: {n} keys at op {seq}",
            peer=self.link.peer,
            n=self.total,
            seq=self.seq,
        )
        d = self._next()
        d.addErrback(lambda f: log.failure("state transfer failed", f))
        return d

    def _next(self, _: Any = None) -> Deferred[Any]:
        if not self.wanted():
            return succeed(None)
        return self.link.writable().addCallback(self._produce)

    def _produce(self, _: Any) -> Deferred[Any] | None:
        if not self.wanted():
            return None
        return self.runner.read(lambda: next(self._chunks, None)).addCallback(self._send)

    def _send(self, entries: list[Entry] | None) -> Any:
        if not self.wanted():
            return None
        if entries is None:
            return self._send_clients(client_batches(self.clients, self.max_bytes))
        self.link.snapshot(SnapshotChunk(entries=entries, total=self.total, last_op=self.seq))
        self.sent += len(entries)
        log.info(
            "state transfer to {peer}: {sent}/{total}",
            peer=self.link.peer,
            sent=self.sent,
            total=self.total,
        )
        # let the reactor turn (and the transport write) before the next chunk
        return deferLater(self.reactor, 0, self._next)

    def _send_clients(self, batches: list[list[Update]]) -> Any:
        if not self.wanted():
            return None
        rows = batches.pop(0)
        last = not batches
        self.link.snapshot(
            SnapshotChunk(
                total=self.total,
                last_op=self.seq,
                done=last,
                clients=rows,
                marks=self.marks if last else (),
            )
        )
        if not last:
            return self.link.writable().addCallback(lambda _: self._send_clients(batches))
        log.info(
            "state transfer to {peer} sent in {s:.2f}s",
            peer=self.link.peer,
            s=time.monotonic() - self.started,
        )
        self.done()
        return None


class SnapshotReceiver:
    """Collects a transferred state as two flat lists, ready for ``BTree.from_sorted``.

    ``clients`` gathers the duplicate-suppression rows of every chunk: a large
    table spans several.
    """

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.values: list[bytes] = []
        self.clients: list[Update] = []

    def add(self, chunk: SnapshotChunk) -> None:
        self.clients.extend(chunk.clients)
        entries = chunk.entries
        if not entries:
            return
        self.keys.extend([e.key for e in entries])
        self.values.extend([e.data for e in entries])
        log.info("joining: received {n}/{total} keys", n=len(self.keys), total=chunk.total)
