"""The values the storage layer trades with its callers, and its errors."""

from __future__ import annotations

import enum
import errno as errno_mod
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

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


class ClientTable:
    """Duplicate-suppression rows keyed by (client_id, request_id), oldest first, bounded."""

    def __init__(self, limit: int, rows: Iterable[ClientRow] = ()) -> None:
        self.limit = limit
        self._rows: OrderedDict[tuple[str, int], ClientRow] = OrderedDict()
        for row in rows:
            self.add(row)

    def add(self, row: ClientRow) -> None:
        key = (row.client_id, row.request_id)
        rows = self._rows
        rows[key] = row
        rows.move_to_end(key)
        while len(rows) > self.limit:
            rows.popitem(last=False)

    def note(self, seq: int, is_put: bool, found: bool, client_id: str, request_id: int) -> None:
        """Record an applied write, if it came from an identified client."""
        if client_id:
            self.add(ClientRow(client_id, request_id, seq, True if is_put else found))

    def rows(self) -> list[ClientRow]:
        return list(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)


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
