"""The data directory's files as DataDir and its recovery both handle them.

Kept apart from both so that recovery (which only reads and repairs) and the
writing side agree on one layout, one way to turn an ``OSError`` into a
``DiskError`` naming the file, and one way to replace a file durably.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kvtwist.storage import snapshot as snapfmt
from kvtwist.storage import wal
from kvtwist.storage.disk import Disk
from kvtwist.storage.records import ClientRow, CorruptData, DiskError
from kvtwist.tree import BTree

T = TypeVar("T")


@dataclass
class Segment:
    """One log segment as the directory knows it between appends."""

    first: int  # seq of its first record (its name)
    path: str
    size: int  # bytes, header included
    last: int  # seq of its last record; first - 1 while empty
    head: int  # bytes of its header
    salt: bytes  # keys its record checks; empty: format version 1, read but never continued


@dataclass(frozen=True)
class Layout:
    """Where each file of a data directory lives (see the package docstring)."""

    path: str

    @property
    def wal_dir(self) -> str:
        return os.path.join(self.path, "wal")

    @property
    def snap_dir(self) -> str:
        return os.path.join(self.path, "snap")

    def segment(self, first: int) -> str:
        return os.path.join(self.wal_dir, wal.segment_name(first))

    def snapshot(self, seq: int) -> str:
        return os.path.join(self.snap_dir, snapfmt.snapshot_name(seq))


def new_log_id() -> int:
    """A random, non-zero id for a new history."""
    return int.from_bytes(os.urandom(8), "big") >> 1 | 1


def disk_call(what: str, path: str, f: Callable[[], T]) -> T:
    """``f()``, with an OSError raised as a DiskError saying what failed on which path."""
    try:
        return f()
    except OSError as e:
        raise DiskError(path, what, e) from e


def write_atomic(disk: Disk, path: str, data: bytes) -> None:
    """Temp file, fsync, rename, fsync the directory: all or nothing, and durable."""
    tmp = path + ".tmp"

    def run() -> None:
        f = disk.create(tmp)
        try:
            f.write(data)
            f.fsync()
        finally:
            f.close()
        disk.rename(tmp, path)
        disk.fsync_dir(os.path.dirname(path))

    disk_call("cannot write", path, run)


def rename_sync(disk: Disk, src: str, dst: str) -> None:
    """Rename and fsync the directory, so the new name survives a crash."""
    disk.rename(src, dst)
    disk.fsync_dir(os.path.dirname(dst))


def write_snapshot_file(
    disk: Disk,
    path: str,
    log_id: int,
    seq: int,
    tree: BTree,
    epochs: list[tuple[int, int]],
    clients: Sequence[ClientRow],
    tmp_only: bool,
) -> None:
    """Write the snapshot to ``path.tmp`` and fsync it; unless ``tmp_only``, install it too.

    ``tmp_only`` lets the caller decide, under its lock, whether the snapshot
    is still wanted before it takes its name.
    """
    tmp = path + ".tmp"
    try:
        f = disk.create(tmp)
        try:
            snapfmt.write_snapshot_file(f, log_id, seq, tree, epochs, clients)
            f.fsync()
        finally:
            f.close()
        if not tmp_only:
            rename_sync(disk, tmp, path)
    except OSError as e:
        try:
            disk.remove(tmp)
        except OSError:
            pass  # removed at the next open
        raise DiskError(path, "cannot write snapshot", e) from e


def load_node_id(disk: Disk, path: str) -> str:
    """The node id stored at ``path``, created on first use: a node's stable identity."""
    if not disk.exists(path):
        node_id = uuid.uuid4().hex
        write_atomic(disk, path, node_id.encode() + b"\n")
        return node_id
    raw = disk_call("cannot read", path, lambda: disk.read(path))
    node_id = raw.decode("ascii", "replace").strip()
    if len(node_id) != 32 or any(c not in "0123456789abcdef" for c in node_id):
        raise CorruptData(path, 0, f"node id {raw[:40]!r} is not 32 hex digits")
    return node_id


class MetaFile:
    """The chain code's small JSON object, replaced atomically; safe from any thread."""

    def __init__(self, disk: Disk, path: str) -> None:
        self.disk = disk
        self.path = path
        self._lock = threading.Lock()

    def get(self) -> dict:  # type: ignore[type-arg]
        path = self.path
        with self._lock:
            if not self.disk.exists(path):
                return {}
            raw = disk_call("cannot read", path, lambda: self.disk.read(path))
        try:
            meta = json.loads(raw)
        except ValueError as e:
            raise CorruptData(path, 0, f"not JSON: {e}") from e
        if not isinstance(meta, dict):
            raise CorruptData(path, 0, "not a JSON object")
        return meta

    def set(self, meta: dict) -> None:  # type: ignore[type-arg]
        data = json.dumps(meta, sort_keys=True).encode() + b"\n"
        with self._lock:
            write_atomic(self.disk, self.path, data)
