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
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger

from kvtwist.chain.link import Link
from kvtwist.proto.kvtwist_pb2 import Entry, EpochMark, SnapshotChunk, Update
from kvtwist.store import Runner
from kvtwist.tree import AVLTree

log = Logger(namespace="kvtwist.chain")

#: Entries per chunk: about a megabyte for short keys and values.
SNAPSHOT_CHUNK = 20_000


def chunks(tree: AVLTree, size: int = SNAPSHOT_CHUNK) -> Iterator[list[Entry]]:
    """The tree's entries in key order, ``size`` at a time."""
    batch: list[Entry] = []
    for k, v in tree.iter_items():
        batch.append(Entry(key=k, data=v))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class SnapshotSender:
    """Streams ``tree`` (the state at op ``seq``) over ``link``, then calls ``done``.

    ``wanted`` is asked before every chunk: the transfer stops quietly once the
    replica has moved on (the joiner left, the node was fenced).
    """

    def __init__(
        self,
        reactor: Any,
        runner: Runner,
        link: Link,
        tree: AVLTree,
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
        self._chunks = chunks(tree)

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
        return self.runner.read(lambda: next(self._chunks, None)).addCallback(self._send)

    def _send(self, entries: list[Entry] | None) -> Any:
        if not self.wanted():
            return None
        if entries is None:
            self.link.snapshot(
                SnapshotChunk(
                    total=self.total,
                    last_op=self.seq,
                    done=True,
                    clients=self.clients,
                    marks=self.marks,
                )
            )
            log.info(
                "state transfer to {peer} sent in {s:.2f}s",
                peer=self.link.peer,
                s=time.monotonic() - self.started,
            )
            self.done()
            return None
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


class SnapshotReceiver:
    """Collects a transferred state as two flat lists, ready for ``AVLTree.from_sorted``."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.values: list[bytes] = []

    def add(self, chunk: SnapshotChunk) -> None:
        entries = chunk.entries
        if not entries:
            return
        self.keys.extend([e.key for e in entries])
        self.values.extend([e.data for e in entries])
        log.info("joining: received {n}/{total} keys", n=len(self.keys), total=chunk.total)
