"""A node's data directory: the log and the snapshots, continued from what recovery found."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kvtwist.storage import wal
from kvtwist.storage.disk import Disk, DiskFile, DiskLock, RealDisk
from kvtwist.storage.files import (
    Layout,
    MetaFile,
    Segment,
    disk_call,
    load_node_id,
    new_log_id,
    rename_sync,
    write_snapshot_file,
)
from kvtwist.storage.records import (
    CannotTruncate,
    ClientRow,
    DiskError,
    FsyncPolicy,
    Record,
    Recovered,
    note_epoch,
)
from kvtwist.storage.recovery import Recovery
from kvtwist.tree import BTree


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
        on_batch: Callable[[int], None] | None = None,
        on_fsync: Callable[[float], None] | None = None,
    ) -> None:
        """``on_batch`` and ``on_fsync`` are told each appended batch's records and
        each fsync's seconds (the metrics); they run on the writer thread, so
        they must be thread-safe."""
        self.path = path
        self.fsync = FsyncPolicy(fsync)
        self.disk: Disk = disk if disk is not None else RealDisk()
        self.segment_bytes = segment_bytes
        self.max_clients = max_clients
        self.layout = Layout(path)
        self.wal_dir = self.layout.wal_dir
        self.snap_dir = self.layout.snap_dir
        self.node_id = ""
        self.last_seq = 0
        self.epochs: list[tuple[int, int]] = []
        #: log bytes written since the seq of the newest snapshot begun
        self.wal_bytes_since_snapshot = 0
        self.on_batch = on_batch
        self.on_fsync = on_fsync
        self._lock = threading.RLock()
        self._meta = MetaFile(self.disk, os.path.join(path, "meta.json"))
        self._segments: list[Segment] = []
        self._file: DiskFile | None = None  # the last segment, open for appending
        self._snapshots: list[int] = []  # seqs of installed snapshots, ascending
        self._pending: dict[int, bool] = {}  # begun snapshots: seq -> still wanted
        self._log_id = 0
        self._broken: str | None = None
        self._dirlock: DiskLock | None = None

    # helpers

    def _usable(self) -> None:
        if self._dirlock is None:
            raise RuntimeError(f"data directory {self.path} is not open")
        if self._broken is not None:
            raise DiskError(
                self.path,
                f"data directory unusable after an earlier failure ({self._broken}); reopen it:",
            )

    def _seg_path(self, first: int) -> str:
        return self.layout.segment(first)

    def _snap_path(self, seq: int) -> str:
        return self.layout.snapshot(seq)

    # opening and recovery

    def open(self) -> Recovered:
        """Lock the directory, create what is missing, and recover the stored state."""
        disk = self.disk
        disk_call("cannot create data directory", self.path, lambda: disk.makedirs(self.path))
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
                disk_call("cannot create", d, lambda d=d: disk.makedirs(d))  # type: ignore[misc]
            self.node_id = load_node_id(disk, os.path.join(self.path, "node_id"))
            self._broken = None
            return self._recover_without_gc()
        except BaseException:
            self._release()
            raise

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
        """Recover what the disk holds, and continue its log from there."""
        recovery = Recovery(self.disk, self.layout, self.max_clients)
        found = recovery.find()
        if self._file is not None:
            self._file.close()
            self._file = None
        self._segments = []
        self._pending = {}
        state = recovery.recover(found)
        if state is None:
            return self._fresh()
        self._log_id = state.log_id
        self._snapshots = state.snapshots
        self._segments = segs = state.segments
        self.last_seq = state.recovered.last_seq
        self.epochs = list(state.recovered.epochs)
        self.wal_bytes_since_snapshot = state.wal_bytes
        if segs and segs[-1].last == self.last_seq:
            self._file = disk_call(
                "cannot open", segs[-1].path, lambda: self.disk.open_append(segs[-1].path)
            )
        else:
            self._new_segment()
        return state.recovered

    def _fresh(self) -> Recovered:
        """An empty directory: an empty snapshot at 0 starts its history."""
        self._log_id = new_log_id()
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
            seg = Segment(first, path, wal.HEADER_SIZE, first - 1, wal.HEADER_SIZE, salt)
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
                self._timed_fsync(f)
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
        if self.on_batch is not None:
            self.on_batch(len(records))

    def _timed_fsync(self, f: Any) -> None:
        observe = self.on_fsync
        if observe is None:
            f.fsync()
            return
        started = time.perf_counter()
        f.fsync()
        observe(time.perf_counter() - started)

    def sync(self) -> None:
        """Fsync the current segment now.

        A failure leaves it unknown which already-applied records survive, so
        the directory is marked broken: a reopen finds out from the disk.
        """
        self._usable()
        f = self._file
        assert f is not None
        try:
            self._timed_fsync(f)
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
        log_id = new_log_id()
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
                disk_call("cannot remove", path + ".tmp", lambda: self.disk.remove(path + ".tmp"))
                return False
            disk_call("cannot install", path, lambda: rename_sync(self.disk, path + ".tmp", path))
            self._snapshots.append(seq)
            self._snapshots.sort()
            self._drop_old()
        return True

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
        write_snapshot_file(
            self.disk, self._snap_path(seq), log_id, seq, tree, epochs, clients, tmp_only
        )

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
        return self._meta.get()

    def set_meta(self, meta: dict) -> None:  # type: ignore[type-arg]
        self._meta.set(meta)

    def close(self) -> None:
        """Fsync the log (a clean stop keeps everything written, under any policy), then let go.

        A failed fsync is raised once the files and the lock are released.
        """
        f = self._file
        try:
            if f is not None and self._broken is None and self._dirlock is not None:
                disk_call("cannot sync", self._segments[-1].path, f.fsync)
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
