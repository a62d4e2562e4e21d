"""Backups: a node's committed state at one op, in a file; and a data directory made from it.

A backup file *is* a snapshot file of a data directory (kvtwist.storage.snapshot,
format version 2: magic, version, checksummed header, records each with a
crc32, a trailer with the counts and a crc32 of the whole file), whose header
names the backup's op and log id 0 (no history: a restore starts a new one).
Its epoch history and duplicate-suppression rows are the ones a joining node
receives with a state transfer, so a node started from the restored directory
knows what a joiner knows.  One format, one reader with all its checks.

``fetch`` reads a backup from a node over BACKUP (docs/protocol.md), ``save``
writes it, ``load`` reads and checks a file, and ``restore`` installs it in a
data directory the way a joining node installs a transferred state
(``DataDir.reset``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from kvtwist import wire
from kvtwist.storage import snapshot as snapfmt
from kvtwist.storage.datadir import DataDir
from kvtwist.storage.disk import RealDisk
from kvtwist.storage.files import write_snapshot_file
from kvtwist.storage.records import ClientRow, CorruptData, DiskError
from kvtwist.tree import BTree
from kvtwist.wire import Message

#: The log id a backup's header carries: it belongs to no data directory's history.
BACKUP_LOG_ID = 0


class BadBackup(Exception):
    """The backup cannot be read, written or restored; the message is one line."""


@dataclass
class Backup:
    """The committed state at op ``seq``, with what a node keeps beside its tree."""

    seq: int
    keys: list[bytes]
    values: list[bytes]
    epochs: list[tuple[int, int]]  # (first op, epoch) marks up to ``seq``
    clients: list[ClientRow]

    @property
    def epoch(self) -> int:
        """The epoch op ``seq`` was numbered in (0: before any epoch)."""
        return max((e for s, e in self.epochs if s <= self.seq), default=0)

    def tree(self) -> BTree:
        return BTree.from_sorted(self.keys, self.values)


def fetch(ask: Callable[[Message], Message]) -> Backup:
    """Read a whole backup from a node, chunk after chunk; ``ask`` sends one request.

    Raises BadBackup when the node refuses or its chunks do not hang together.
    """
    out = Backup(0, [], [], [], [])
    index = 0
    while True:
        reply = ask(wire.req_backup(index))
        if reply.opcode == wire.OP_ERROR:
            raise BadBackup(f"the node refused the backup: {reply.error}")
        if reply.opcode != wire.OP_BACKUP + 1 or not reply.HasField("snapshot"):
            raise BadBackup(f"reply opcode {reply.opcode} to BACKUP")
        chunk = reply.snapshot
        if index == 0:
            out.seq = chunk.last_op
        elif chunk.last_op != out.seq:
            raise BadBackup(f"chunk {index} is at op {chunk.last_op}, the backup at {out.seq}")
        out.keys += [e.key for e in chunk.entries]
        out.values += [e.data for e in chunk.entries]
        out.clients += [ClientRow(r.client_id, r.request_id, r.seq, r.found) for r in chunk.clients]
        index += 1
        if chunk.done:
            if len(out.keys) != chunk.total:
                raise BadBackup(f"received {len(out.keys)} keys of {chunk.total}")
            out.epochs = [(m.first_seq, m.epoch) for m in chunk.marks]
            return out


def save(backup: Backup, path: str) -> int:
    """Write ``backup`` to ``path`` durably (temporary name, fsync, rename); its size."""
    full = os.path.abspath(path)  # its directory is fsynced too, so it needs a name
    try:
        write_snapshot_file(
            RealDisk(),
            full,
            BACKUP_LOG_ID,
            backup.seq,
            backup.tree(),
            backup.epochs,
            backup.clients,
            tmp_only=False,
        )
        return os.path.getsize(full)
    except DiskError as e:
        raise BadBackup(str(e)) from e
    except OSError as e:
        raise BadBackup(f"cannot write {path}: {e.strerror or e}") from e


def load(path: str) -> Backup:
    """Read ``path`` and check every checksum, the counts and the format version."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadBackup(f"cannot read {path}: {e.strerror or e}") from e
    try:
        snap = snapfmt.read_snapshot(data, path)
    except CorruptData as e:
        raise BadBackup(f"{path} is not a sound backup: {e.problem} (at byte {e.offset})") from e
    return Backup(snap.seq, snap.keys, snap.values, snap.epochs, snap.clients)


def restore(path: str, data_dir: str, force: bool = False) -> Backup:
    """Make ``data_dir`` hold the backup at ``path``, ready for a node to start from.

    The file is checked whole before the directory is touched.  A directory
    that holds anything is refused unless ``force``; then its log and
    snapshots are replaced, as a state transfer replaces them, and its
    record of a chain membership is dropped (the restored copy is not that
    member's log).  Its node id stays.
    """
    backup = load(path)
    if os.path.isdir(data_dir) and os.listdir(data_dir) and not force:
        raise BadBackup(f"{data_dir} is not empty: give --force to replace what it holds")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise BadBackup(f"{data_dir} is not a directory")
    dd = DataDir(data_dir)
    try:
        dd.open()
    except (CorruptData, DiskError) as e:
        raise BadBackup(f"cannot open {data_dir}: {e}") from e
    try:
        try:
            tree = BTree.from_sorted(backup.keys, backup.values)
        except ValueError as e:
            raise BadBackup(f"{path} is not a sound backup: {e}") from e
        dd.reset(tree, backup.seq, backup.epochs, backup.clients)
        dd.set_meta({})
    except DiskError as e:
        raise BadBackup(f"cannot write {data_dir}: {e}") from e
    finally:
        dd.close()
    return backup


__all__ = ["BACKUP_LOG_ID", "Backup", "BadBackup", "fetch", "load", "restore", "save"]
