"""The values the storage layer trades with its callers, and its errors."""

from __future__ import annotations

import enum
import errno as errno_mod
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from kvtwist.chain.dedup import DedupTable
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.tree import BTree


class FsyncPolicy(enum.StrEnum):
    """When appended records reach the platter.

    ALWAYS: every batch is fsynced before append returns (group commit).
    INTERVAL: the caller runs ``sync()`` on a timer; a crash loses at most that window.
    NEVER: the OS decides; a crash loses an unknown suffix, never a middle piece.
    """

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One replicated write as it is logged."""

    seq: int
    is_put: bool
    key: bytes
    data: bytes = b""
    epoch: int = 0
    client_id: str = ""
    request_id: int = 0
    ack_below: int = 0


#: A write as the journal takes it: a LogRecord, or the replicated Update itself
#: (the same fields), which is logged as it is without building another.
Record = LogRecord | Update


@dataclass(frozen=True, slots=True)
class ClientRow:
    """One duplicate-suppression entry: a retried write is answered from it."""

    client_id: str
    request_id: int
    seq: int
    found: bool


@dataclass
class Recovered:
    """The state a data directory holds: snapshot plus replayed log."""

    tree: BTree
    last_seq: int
    epochs: list[tuple[int, int]]
    clients: list[ClientRow]
    snapshot_seq: int
    warnings: list[str] = field(default_factory=list)


class CorruptData(Exception):
    """Stored bytes fail their checks where no crash could have left them so."""

    def __init__(self, path: str, offset: int, problem: str) -> None:
        super().__init__(f"corrupt data in {path} at byte {offset}: {problem}")
        self.path = path
        self.offset = offset
        self.problem = problem


class DiskError(Exception):
    """The disk refused an operation (ENOSPC, EIO, EROFS, a held lock...)."""

    def __init__(self, path: str, what: str, err: OSError | None = None) -> None:
        why = ""
        if err is not None:
            code = errno_mod.errorcode.get(err.errno or 0, str(err.errno))
            why = f": {err.strerror or os.strerror(err.errno or 0)} ({code})"
        super().__init__(f"{what} {path}{why}")
        self.path = path
        self.errno = err.errno if err is not None else None


class CannotTruncate(Exception):
    """The records to drop are already folded into the newest snapshot."""


class ClientTable(DedupTable):
    """The duplicate-suppression table as applied writes build it, to store and recover.

    The same table as a replica's (:mod:`kvtwist.chain.dedup`), fed the same
    writes in the same order, so what a restart recovers is what the replica had.
    """

    def __init__(self, limit: int, rows: Iterable[ClientRow] = ()) -> None:
        super().__init__(max_entries=limit)
        self.limit = limit
        self.load((r.client_id, r.request_id, r.seq, r.found) for r in rows)

    def note(self, w: Record, found: bool) -> None:
        """Record an applied write, if it came from an identified client."""
        if w.client_id:
            found = True if w.is_put else found
            self.remember(w.client_id, w.request_id, w.seq, found, w.ack_below)

    def client_rows(self) -> list[ClientRow]:
        return [ClientRow(*row) for row in self.rows()]


def note_epoch(epochs: list[tuple[int, int]], seq: int, epoch: int) -> None:
    """Extend an epoch history with a record; a boundary where the epoch changes."""
    if not epochs or epochs[-1][1] != epoch:
        epochs.append((seq, epoch))


__all__ = [
    "CannotTruncate",
    "ClientRow",
    "ClientTable",
    "CorruptData",
    "DiskError",
    "FsyncPolicy",
    "LogRecord",
    "Record",
    "Recovered",
    "note_epoch",
]
