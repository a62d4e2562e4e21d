"""BACKUP on the client port: a node's committed state, handed out a chunk per request.

The first request (index 0) freezes the committed state as a state transfer
to a joiner does (``freeze_committed``: O(1), the tree is persistent); every
next request gets the next ``SnapshotChunk`` of it, encoded on a reader
thread.  The client pulls, so the node never holds more than one chunk for
it, and a client that stops asking costs the node one frozen tree until its
connection closes.  Nothing of this touches the chain: the writes go on
while a backup is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred, succeed

from kvtwist import wire
from kvtwist.chain.outcomes import Unavailable
from kvtwist.chain.transfer import (
    SNAPSHOT_CHUNK_BYTES,
    Frozen,
    chunks,
    client_batches,
    freeze_committed,
)
from kvtwist.proto.kvtwist_pb2 import Entry, Message, SnapshotChunk, Update
from kvtwist.server.requests import BadRequest, check_ctype
from kvtwist.store import Runner


class BackupCursor:
    """One connection's backup: the frozen state, and how far it has been read."""

    def __init__(self, frozen: Frozen, max_bytes: int = SNAPSHOT_CHUNK_BYTES) -> None:
        self.frozen = frozen
        self.total = len(frozen.tree)
        self.index = 0  # the chunk due next
        self._entries: Iterator[list[Entry]] = chunks(frozen.tree, max_bytes)
        self._clients: list[list[Update]] = client_batches(frozen.clients, max_bytes)
        self._in_entries = True
        self.done = False

    def next(self, runner: Runner) -> Deferred[SnapshotChunk]:
        """The next chunk; the last one is marked ``done`` and carries the epoch history."""
        if self.done:
            raise BadRequest("the backup is complete: start a new one at index 0")
        self.index += 1
        if self._in_entries:
            d: Deferred[Any] = runner.read(lambda: next(self._entries, None))
            return d.addCallback(self._entries_chunk)
        return succeed(self._clients_chunk())

    def _entries_chunk(self, entries: list[Entry] | None) -> SnapshotChunk:
        if entries is None:
            self._in_entries = False
            return self._clients_chunk()
        return SnapshotChunk(entries=entries, total=self.total, last_op=self.frozen.seq)

    def _clients_chunk(self) -> SnapshotChunk:
        rows = self._clients.pop(0)
        last = not self._clients
        self.done = last
        return SnapshotChunk(
            total=self.total,
            last_op=self.frozen.seq,
            done=last,
            clients=rows,
            marks=self.frozen.marks if last else (),
        )


def backup_step(
    cursor: BackupCursor | None, msg: Message, replica: Any, runner: Runner
) -> tuple[BackupCursor, Deferred[bytes]]:
    """Answer one BACKUP request: the cursor to keep for the connection, and the reply.

    Index 0 starts a backup of what this node has committed (refused, to be
    retried, while it is no member); any other index must be the one due.
    """
    check_ctype(msg, wire.CT_NONE)
    index = msg.request_id
    if index == 0:
        if not replica.life.serving:
            raise Unavailable(f"no backup while {replica.life.describe()}")
        cursor = BackupCursor(freeze_committed(replica.state))
    elif cursor is None or cursor.index != index:
        due = 0 if cursor is None else cursor.index
        raise BadRequest(f"backup chunk {index} asked for, chunk {due} is due")
    return cursor, cursor.next(runner).addCallback(chunk_reply)


def chunk_reply(chunk: SnapshotChunk) -> bytes:
    """The reply frame carrying one chunk of a backup."""
    return wire.frame(wire.reply(wire.OP_BACKUP, c_type=wire.CT_SNAPSHOT, snapshot=chunk))
