"""A node's data directory: the log, the snapshots, and the recovery that joins them."""

from __future__ import annotations

import gc
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kvtwist.storage import snapshot as snapfmt
from kvtwist.storage import wal
from kvtwist.storage.disk import Disk, DiskFile, DiskLock, RealDisk
from kvtwist.storage.records import (
    CannotTruncate,
    ClientRow,
    ClientTable,
    CorruptData,
    DiskError,
    FsyncPolicy,
    Record,
    Recovered,
    note_epoch,
)
from kvtwist.tree import BTree

T = TypeVar("T")


@dataclass
class _Segment:
    first: int  # seq of its first record (its name)
    path: str
    size: int  # bytes, header included
    last: int  # seq of its last record; first - 1 while empty
    head: int  # bytes of its header
    salt: bytes  # keys its record checks; empty: format version 1, read but never continued


def _new_log_id() -> int:
    return int.from_bytes(os.urandom(8), "big") >> 1 | 1


class DataDir:
    """The durable state of one node.

    Thread use: ``append``, ``sync``, ``truncate_after``, ``rewind``, ``reset``
    and ``begin_snapshot`` come from one writer thread; ``write_snapshot`` runs
    on another, and ``_lock`` guards the segment and snapshot lists they share.
    The writer touches the current segment's file without the lock: the
    snapshot side never deletes the current segment.
    """

    def __init__(
        self,
        path: str,
        fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
        disk: Disk | None = None,
        segment_bytes: int = 64 * 2**20,
        max_clients: int = 100_000,
    ) -> None:
        self.path = path
        self.fsync = FsyncPolicy(fsync)
        self.disk: Disk = disk if disk is not None else RealDisk()
        self.segment_bytes = segment_bytes
        self.max_clients = max_clients
        self.wal_dir = os.path.join(path, "wal")
        self.snap_dir = os.path.join(path, "snap")
        self.node_id = ""
        self.last_seq = 0
        self.epochs: list[tuple[int, int]] = []
        #: log bytes written since the seq of the newest snapshot begun
        self.wal_bytes_since_snapshot = 0
        self._lock = threading.RLock()
        self._meta_lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._file: DiskFile | None = None  # the last segment, open for appending
        self._snapshots: list[int] = []  # seqs of installed snapshots, ascending
        self._pending: dict[int, bool] = {}  # begun snapshots: seq -> still wanted
        self._log_id = 0
        self._broken: str | None = None
        self._dirlock: DiskLock | None = None

    # helpers

    def _io(self, what: str, path: str, f: Callable[[], T]) -> T:
        try:
            return f()
        except OSError as e:
            raise DiskError(path, what, e) from e

    def _write_atomic(self, path: str, data: bytes) -> None:
        """Temp file, fsync, rename, fsync the directory: all or nothing, and durable."""
        tmp = path + ".tmp"

        def run() -> None:
            f = self.disk.create(tmp)
            try:
                f.write(data)
                f.fsync()
            finally:
                f.close()
            self.disk.rename(tmp, path)
            self.disk.fsync_dir(os.path.dirname(path))

        self._io("cannot write", path, run)

    def _usable(self) -> None:
        if self._dirlock is None:
            raise RuntimeError(f"data directory {self.path} is not open")
        if self._broken is not None:
            raise DiskError(
                self.path,
                f"data directory unusable after an earlier failure ({self._broken}); reopen it:",
            )

    def _seg_path(self, first: int) -> str:
        return os.path.join(self.wal_dir, wal.segment_name(first))

    def _snap_path(self, seq: int) -> str:
        return os.path.join(self.snap_dir, snapfmt.snapshot_name(seq))

    # opening and recovery

    def open(self) -> Recovered:
        """Lock the directory, create what is missing, and recover the stored state."""
        disk = self.disk
        self._io("cannot create data directory", self.path, lambda: disk.makedirs(self.path))
        lock_path = os.path.join(self.path, "LOCK")
        try:
            self._dirlock = disk.lock(lock_path)
        except BlockingIOError as e:
            raise DiskError(
                lock_path, "data directory in use by another process: cannot lock"
            ) from e
        except OSError as e:
            raise DiskError(lock_path, "cannot lock", e) from e
        try:
            for d in (self.wal_dir, self.snap_dir):
                self._io("cannot create", d, lambda d=d: disk.makedirs(d))  # type: ignore[misc]
            self.node_id = self._load_node_id()
            self._broken = None
            return self._recover_without_gc()
        except BaseException:
            self._release()
            raise

    def _load_node_id(self) -> str:
        path = os.path.join(self.path, "node_id")
        if not self.disk.exists(path):
            node_id = uuid.uuid4().hex
            self._write_atomic(path, node_id.encode() + b"\n")
            return node_id
        raw = self._io("cannot read", path, lambda: self.disk.read(path))
        node_id = raw.decode("ascii", "replace").strip()
        if len(node_id) != 32 or any(c not in "0123456789abcdef" for c in node_id):
            raise CorruptData(path, 0, f"node id {raw[:40]!r} is not 32 hex digits")
        return node_id

    def _listdir(self, d: str) -> list[str]:
        return self._io("cannot list", d, lambda: self.disk.listdir(d))

    def _remove(self, path: str) -> None:
        self._io("cannot remove", path, lambda: self.disk.remove(path))

    def _recover_without_gc(self) -> Recovered:
        """Recover with the cyclic collector paused.

        Rebuilding allocates a node per key and no cycles; left on, the
        collector rescans the growing tree again and again and takes most of
        the recovery time.
        """
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._recover()
        finally:
            if was_enabled:
                gc.enable()

    def _recover(self) -> Recovered:
        disk = self.disk
        warnings: list[str] = []
        for name in self._listdir(self.snap_dir):
            if name.endswith(".tmp"):  # a snapshot that never got its rename
                self._remove(os.path.join(self.snap_dir, name))
        snaps = sorted(
            s
            for s in map(snapfmt.parse_snapshot_name, self._listdir(self.snap_dir))
            if s is not None
        )
        seg_firsts = sorted(
            s for s in map(wal.parse_segment_name, self._listdir(self.wal_dir)) if s is not None
        )
        if self._file is not None:
            self._file.close()
            self._file = None
        self._segments = []
        self._pending = {}
        if not snaps:
            if seg_firsts:
                raise CorruptData(
                    self._seg_path(seg_firsts[0]), 0, "log segments but no snapshot to replay onto"
                )
            return self._fresh()

        # the base: the newest snapshot that passes its checks
        bad: list[tuple[int, CorruptData, int | None]] = []
        base: snapfmt.Snapshot | None = None
        tree = BTree()
        for seq in reversed(snaps):
            path = self._snap_path(seq)
            data = self._io("cannot read", path, lambda path=path: disk.read(path))  # type: ignore[misc]
            try:
                snap = snapfmt.read_snapshot(data, path)
                if snap.seq != seq:
                    raise CorruptData(path, 20, f"header says seq {snap.seq}, name says {seq}")
                try:
                    tree = BTree.from_sorted(snap.keys, snap.values)
                except ValueError as e:
                    raise CorruptData(path, snapfmt.HEADER_SIZE, str(e)) from e
                base = snap
                break
            except CorruptData as e:
                try:
                    log_id: int | None = snapfmt.read_header(data, path)[0]
                except CorruptData:
                    log_id = None
                bad.append((seq, e, log_id))
                if log_id is None:
                    break  # whose history it was is unknown: nothing older can stand in
            finally:
                del data
        if base is None or any(log_id != base.log_id for _, _, log_id in bad):
            raise bad[0][1]
        self._log_id = base.log_id

        # the log segments of this history, in order
        segs: list[_Segment] = []
        for i, first in enumerate(seg_firsts):
            path = self._seg_path(first)
            head = self._io("cannot read", path, lambda path=path: disk.read(path, wal.HEADER_SIZE))  # type: ignore[misc]
            last_file = i == len(seg_firsts) - 1
            try:
                header = wal.decode_header(head, path)
            except CorruptData:
                size = self._io("cannot stat", path, lambda path=path: disk.size(path))  # type: ignore[misc]
                if last_file and size <= wal.header_size(head):
                    warnings.append(f"removed {path}: its creation was cut short ({size} bytes)")
                    self._remove(path)
                    continue
                raise
            if header.first_seq != first:
                raise CorruptData(
                    path, 20, f"header says first seq {header.first_seq}, name says {first}"
                )
            if header.log_id != base.log_id:
                warnings.append(f"removed {path}: left over from a history replaced by a snapshot")
                self._remove(path)
                continue
            segs.append(_Segment(first, path, 0, first - 1, header.size, header.salt))
        if warnings:
            self._io("cannot sync", self.wal_dir, lambda: disk.fsync_dir(self.wal_dir))

        # replay: from the segment holding base.seq + 1 on
        clients = ClientTable(self.max_clients, base.clients)
        epochs = list(base.epochs)
        start = 0
        for i, s in enumerate(segs):
            if s.first <= base.seq + 1:
                start = i
        if segs and segs[start].first > base.seq + 1:
            raise CorruptData(
                segs[start].path,
                0,
                f"log resumes at {segs[start].first}, snapshot ends at {base.seq}",
            )
        for i, s in enumerate(segs[:start]):
            s.last = segs[i + 1].first - 1  # covered by the snapshot: not read
        last_seq = base.seq
        expected = segs[start].first if segs else base.seq + 1
        wal_bytes = 0
        put, delete = tree.put, tree.delete
        for i in range(start, len(segs)):
            s = segs[i]
            if s.first != expected:
                raise CorruptData(
                    s.path, 0, f"segment starts at {s.first}, the log before ends at {expected - 1}"
                )
            data = self._io("cannot read", s.path, lambda p=s.path: disk.read(p))  # type: ignore[misc]
            scan = wal.scan_segment(data, s.path, last=i == len(segs) - 1)
            for off, u in scan.records:
                if u.seq != expected:
                    raise CorruptData(s.path, off, f"record seq {u.seq}, expected {expected}")
                expected += 1
                if u.seq > base.seq:
                    if u.is_put:
                        put(u.key, u.data)
                        found = True
                    else:
                        found = delete(u.key)
                    clients.note(u, found)
                    note_epoch(epochs, u.seq, u.epoch)
            if scan.torn is not None:
                warnings.append(
                    f"cut a torn record at {s.path} offset {scan.end} ({scan.torn};"
                    f" {len(data) - scan.end} bytes dropped)"
                )
                self._cut(s.path, scan.end)
            s.size = scan.end
            s.last = expected - 1
            if s.first > base.seq:
                wal_bytes += s.size - s.head
            del data
        last_seq = max(base.seq, expected - 1)
        newest_bad = max((seq for seq, _, _ in bad), default=0)
        if newest_bad > last_seq:
            raise bad[0][1]
        for seq, err, _ in bad:
            path = self._snap_path(seq)
            warnings.append(f"skipped snapshot {path} ({err}); set aside as {path}.corrupt")
            self._io("cannot rename", path, lambda path=path: disk.rename(path, path + ".corrupt"))  # type: ignore[misc]
        if bad:
            self._io("cannot sync", self.snap_dir, lambda: disk.fsync_dir(self.snap_dir))

        self._snapshots = [s for s in snaps if s not in {b for b, _, _ in bad}]
        self._segments = segs
        self.last_seq = last_seq
        self.epochs = epochs
        self.wal_bytes_since_snapshot = wal_bytes
        if segs and segs[-1].last == last_seq:
            self._file = self._io(
                "cannot open", segs[-1].path, lambda: disk.open_append(segs[-1].path)
            )
        else:
            self._new_segment()
        return Recovered(tree, last_seq, list(epochs), clients.client_rows(), base.seq, warnings)

    def _cut(self, path: str, size: int) -> None:
        def run() -> None:
            f = self.disk.open_append(path)
            try:
                f.truncate(size)
                f.fsync()
            finally:
                f.close()

        self._io("cannot cut the torn tail of", path, run)

    def _fresh(self) -> Recovered:
        """An empty directory: an empty snapshot at 0 starts its history."""
        self._log_id = _new_log_id()
        self._install(0, BTree(), [], [], self._log_id)
        self._snapshots = [0]
        self.last_seq = 0
        self.epochs = []
        self.wal_bytes_since_snapshot = 0
        self._new_segment()
        return Recovered(BTree(), 0, [], [], 0, [])

    # the log

    def _new_segment(self) -> None:
        """Start a segment at last_seq + 1 and make it current.

        The segment before it is fsynced first under every policy, so a crash
        can only ever lose a suffix of the log, never a piece before a later one.
        A failed fsync there breaks the directory, as in ``sync``.  An empty
        current segment (a version 1 one about to be continued) is replaced.
        """
        first = self.last_seq + 1
        path = self._seg_path(first)
        disk = self.disk
        salt = wal.new_salt()
        with self._lock:
            if self._file is not None:
                try:
                    self._file.fsync()
                except OSError as e:
                    self._broken = f"fsync failed: {e}"
                    raise DiskError(self._segments[-1].path, "cannot sync", e) from e
            try:
                f = disk.create(path)
            except OSError as e:
                raise DiskError(path, "cannot create", e) from e
            try:
                f.write(wal.encode_header(self._log_id, first, salt))
                f.fsync()
                disk.fsync_dir(self.wal_dir)
            except OSError as e:
                try:
                    f.close()
                    disk.remove(path)
                    disk.fsync_dir(self.wal_dir)
                except OSError as e2:
                    self._broken = f"cannot remove the unfinished segment {path}: {e2}"
                raise DiskError(path, "cannot start segment", e) from e
            if self._file is not None:
                self._file.close()
            self._file = f
            seg = _Segment(first, path, wal.HEADER_SIZE, first - 1, wal.HEADER_SIZE, salt)
            if self._segments and self._segments[-1].first == first:
                self._segments[-1] = seg
            else:
                self._segments.append(seg)

    def append(self, records: Sequence[Record]) -> None:
        """Log a batch of contiguous records; under ALWAYS, durably (one fsync) on return."""
        if not records:
            return
        self._usable()
        first = self.last_seq + 1
        for i, r in enumerate(records):
            if r.seq != first + i:
                raise ValueError(f"record {r.seq} where {first + i} was due")
        seg = self._segments[-1]
        if not seg.salt or (seg.size >= self.segment_bytes and seg.last >= seg.first):
            self._new_segment()
            seg = self._segments[-1]
        f = self._file
        assert f is not None
        data = wal.encode_records(records, seg.salt)
        try:
            f.write(data)
            if self.fsync is FsyncPolicy.ALWAYS:
                f.fsync()
        except OSError as e:
            try:
                f.truncate(seg.size)  # no partial batch may stay for later records to follow
            except OSError as e2:
                self._broken = f"cannot truncate {seg.path} back to {seg.size}: {e2}"
            raise DiskError(seg.path, "cannot append to", e) from e
        seg.size += len(data)
        seg.last = records[-1].seq
        self.last_seq = seg.last
        for r in records:
            note_epoch(self.epochs, r.seq, r.epoch)
        self.wal_bytes_since_snapshot += len(data)

    def sync(self) -> None:
        """Fsync the current segment now.

        A failure leaves it unknown which already-applied records survive, so
        the directory is marked broken: a reopen finds out from the disk.
        """
        self._usable()
        f = self._file
        assert f is not None
        try:
            f.fsync()
        except OSError as e:
            self._broken = f"fsync failed: {e}"
            raise DiskError(self._segments[-1].path, "cannot sync", e) from e

    def truncate_after(self, seq: int) -> None:
        """Drop every record after ``seq``, newest segment first so no gap can open."""
        self._usable()
        if seq >= self.last_seq:
            return
        with self._lock:
            if self._snapshots and seq < self._snapshots[-1]:
                raise CannotTruncate(
                    f"cannot drop the log after {seq}: snapshot {self._snapshots[-1]} includes it"
                )
            for p in self._pending:
                if p > seq:
                    self._pending[p] = False
            try:
                self._truncate_segments(seq)
            except OSError as e:
                self._broken = f"truncation to {seq} failed: {e}"
                raise DiskError(self.wal_dir, f"cannot truncate the log to {seq}", e) from e
        self.last_seq = seq
        self.epochs = [e for e in self.epochs if e[0] <= seq]
        newest = self._snapshots[-1] if self._snapshots else 0
        self.wal_bytes_since_snapshot = sum(
            s.size - s.head for s in self._segments if s.first > newest
        )

    def _truncate_segments(self, seq: int) -> None:
        disk = self.disk
        if self._file is not None:
            self._file.close()
            self._file = None
        while len(self._segments) > 1 and self._segments[-1].first > seq + 1:
            disk.remove(self._segments.pop().path)
        disk.fsync_dir(self.wal_dir)
        seg = self._segments[-1]
        if seg.first == seq + 1:
            offset = seg.head
        else:
            data = disk.read(seg.path)
            scan = wal.scan_segment(data, seg.path, last=True)
            offset = next((off for off, u in scan.records if u.seq == seq + 1), scan.end)
        f = disk.open_append(seg.path)
        self._file = f
        f.truncate(offset)
        f.fsync()
        seg.size = offset
        seg.last = seq

    def rewind(self, seq: int) -> Recovered:
        """Drop the log after ``seq`` and rebuild the state at ``seq`` from the disk."""
        self.truncate_after(seq)
        with self._lock:
            return self._recover_without_gc()

    def reset(
        self,
        tree: BTree,
        seq: int,
        epochs: Iterable[tuple[int, int]],
        clients: Sequence[ClientRow],
    ) -> None:
        """Replace everything with a transferred state: a new history starts at ``seq``.

        The snapshot carries a new log id, so should a crash stop the deletions
        below, recovery knows the surviving old segments for what they are.
        """
        self._usable()
        epochs = list(epochs)
        log_id = _new_log_id()
        with self._lock:
            for p in self._pending:
                self._pending[p] = False
            self._install(seq, tree, epochs, clients, log_id)
            try:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                for seg in reversed(self._segments):
                    self.disk.remove(seg.path)
                self._segments = []
                self.disk.fsync_dir(self.wal_dir)
                for old in self._snapshots:
                    if old != seq:
                        self.disk.remove(self._snap_path(old))
                self._snapshots = [seq]
                self.disk.fsync_dir(self.snap_dir)
            except OSError as e:
                self._broken = f"cannot clear the old log: {e}"
                raise DiskError(self.path, "cannot clear the old log in", e) from e
            self._log_id = log_id
            self.last_seq = seq
            self.epochs = epochs
            self.wal_bytes_since_snapshot = 0
            try:
                self._new_segment()
            except DiskError as e:
                self._broken = str(e)
                raise

    # snapshots

    def begin_snapshot(self) -> int:
        """Start a new segment at the snapshot's seq + 1; returns that seq (last_seq)."""
        self._usable()
        with self._lock:
            seg = self._segments[-1]
            if seg.last >= seg.first:
                self._new_segment()
            seq = self.last_seq
            self._pending[seq] = True
            self.wal_bytes_since_snapshot = 0
            return seq

    def write_snapshot(
        self,
        seq: int,
        tree: BTree,
        epochs: Iterable[tuple[int, int]],
        clients: Sequence[ClientRow],
    ) -> bool:
        """Write and install the snapshot at ``seq``; False if it is no longer wanted.

        A truncation or reset below ``seq`` since ``begin_snapshot`` makes the
        snapshot describe a history that is gone, so it is dropped.  Retention:
        the newest two snapshots and the log from the older of them on, so a
        newest snapshot that later fails its checks can be stood in for.
        """
        with self._lock:
            if seq not in self._pending:
                if seq > self.last_seq:
                    raise ValueError(f"snapshot at {seq} is past the log's end {self.last_seq}")
                self._pending[seq] = True
            if self._snapshots and seq <= self._snapshots[-1]:
                del self._pending[seq]
                return False
            log_id = self._log_id
        try:
            self._write_snapshot_file(seq, tree, list(epochs), clients, log_id, tmp_only=True)
        except BaseException:
            with self._lock:
                self._pending.pop(seq, None)
            raise
        path = self._snap_path(seq)
        with self._lock:
            wanted = self._pending.pop(seq, False) and self._log_id == log_id
            if not wanted:
                self._io("cannot remove", path + ".tmp", lambda: self.disk.remove(path + ".tmp"))
                return False
            self._io("cannot install", path, lambda: self._rename_sync(path + ".tmp", path))
            self._snapshots.append(seq)
            self._snapshots.sort()
            self._drop_old()
        return True

    def _rename_sync(self, src: str, dst: str) -> None:
        self.disk.rename(src, dst)
        self.disk.fsync_dir(os.path.dirname(dst))

    def _install(
        self,
        seq: int,
        tree: BTree,
        epochs: list[tuple[int, int]],
        clients: Sequence[ClientRow],
        log_id: int,
    ) -> None:
        self._write_snapshot_file(seq, tree, epochs, clients, log_id, tmp_only=False)

    def _write_snapshot_file(
        self,
        seq: int,
        tree: BTree,
        epochs: list[tuple[int, int]],
        clients: Sequence[ClientRow],
        log_id: int,
        tmp_only: bool,
    ) -> None:
        path = self._snap_path(seq)
        tmp = path + ".tmp"
        disk = self.disk
        try:
            f = disk.create(tmp)
            try:
                snapfmt.write_snapshot_file(f, log_id, seq, tree, epochs, clients)
                f.fsync()
            finally:
                f.close()
            if not tmp_only:
                self._rename_sync(tmp, path)
        except OSError as e:
            try:
                disk.remove(tmp)
            except OSError:
                pass  # removed at the next open
            raise DiskError(path, "cannot write snapshot", e) from e

    def _drop_old(self) -> None:
        """Keep two snapshots, and the segments holding records after the older one."""
        if len(self._snapshots) < 2:
            return
        keep = self._snapshots[-2]
        old, self._snapshots = self._snapshots[:-2], self._snapshots[-2:]
        segs = self._segments
        n = 0
        while n + 1 < len(segs) and segs[n + 1].first <= keep + 1:
            n += 1
        try:
            for o in old:
                self.disk.remove(self._snap_path(o))
            if old:
                self.disk.fsync_dir(self.snap_dir)
            for seg in segs[:n]:
                self.disk.remove(seg.path)
            del segs[:n]
            if n:
                self.disk.fsync_dir(self.wal_dir)
        except OSError as e:
            raise DiskError(
                self.path, "snapshot installed, but cannot remove old files in", e
            ) from e

    # small metadata

    def get_meta(self) -> dict:  # type: ignore[type-arg]
        path = os.path.join(self.path, "meta.json")
        with self._meta_lock:
            if not self.disk.exists(path):
                return {}
            raw = self._io("cannot read", path, lambda: self.disk.read(path))
        try:
            meta = json.loads(raw)
        except ValueError as e:
            raise CorruptData(path, 0, f"not JSON: {e}") from e
        if not isinstance(meta, dict):
            raise CorruptData(path, 0, "not a JSON object")
        return meta

    def set_meta(self, meta: dict) -> None:  # type: ignore[type-arg]
        path = os.path.join(self.path, "meta.json")
        data = json.dumps(meta, sort_keys=True).encode() + b"\n"
        with self._meta_lock:
            self._write_atomic(path, data)

    def close(self) -> None:
        """Fsync the log (a clean stop keeps everything written, under any policy), then let go.

        A failed fsync is raised once the files and the lock are released.
        """
        f = self._file
        try:
            if f is not None and self._broken is None and self._dirlock is not None:
                self._io("cannot sync", self._segments[-1].path, f.fsync)
        finally:
            self._release()

    def _release(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError:
                pass
        if self._dirlock is not None:
            lock, self._dirlock = self._dirlock, None
            lock.close()


__all__ = ["DataDir"]
