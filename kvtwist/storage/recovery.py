"""Recovery of a data directory: the state a crash (or a clean stop) left on disk.

Apart from DataDir because it is a one-shot job with its own steps (see the
package docstring, "Recovery"): find the files, choose the snapshot, find the
segments of its history, replay them, repair a torn tail, set aside snapshots
that failed.  It returns what it recovered and leaves DataDir to continue the
log from there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kvtwist.chain.group import apply_group
from kvtwist.storage import snapshot as snapfmt
from kvtwist.storage import wal
from kvtwist.storage.disk import Disk
from kvtwist.storage.files import Layout, Segment, disk_call
from kvtwist.storage.records import ClientTable, CorruptData, Recovered, note_epoch
from kvtwist.tree import BTree

__all__ = ["Found", "Recovery", "RecoveredDir"]


@dataclass
class Found:
    """The snapshots and segments a directory holds, by seq, ascending."""

    snapshots: list[int]
    segments: list[int]


@dataclass
class RecoveredDir:
    """What DataDir continues from: the state, and the files that hold it."""

    recovered: Recovered
    log_id: int
    segments: list[Segment]
    snapshots: list[int]  # installed and sound
    wal_bytes: int  # log bytes after the snapshot recovered from


@dataclass
class _Bad:
    """A snapshot that failed its checks, and whose history its header names."""

    seq: int
    error: CorruptData
    log_id: int | None  # None: not even the header is sound


@dataclass
class _Base:
    """The snapshot replay starts from, and the newer ones that failed."""

    snap: snapfmt.Snapshot
    tree: BTree
    bad: list[_Bad]


@dataclass
class _Replay:
    """What replaying the log builds on top of the base."""

    tree: BTree
    clients: ClientTable
    epochs: list[tuple[int, int]]
    wal_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


class Recovery:
    """Reads (and repairs) one data directory; ``find`` then ``recover``."""

    def __init__(self, disk: Disk, layout: Layout, max_clients: int) -> None:
        self.disk = disk
        self.layout = layout
        self.max_clients = max_clients
        self.warnings: list[str] = []

    def _read(self, path: str) -> bytes:
        return disk_call("cannot read", path, lambda: self.disk.read(path))

    def _remove(self, path: str) -> None:
        disk_call("cannot remove", path, lambda: self.disk.remove(path))

    def _listdir(self, d: str) -> list[str]:
        return disk_call("cannot list", d, lambda: self.disk.listdir(d))

    # -- the steps ---------------------------------------------------------------

    def find(self) -> Found:
        """List snapshots and segments, removing snapshots that never got their rename."""
        snap_dir = self.layout.snap_dir
        for name in self._listdir(snap_dir):
            if name.endswith(".tmp"):
                self._remove(os.path.join(snap_dir, name))
        snaps = sorted(
            s for s in map(snapfmt.parse_snapshot_name, self._listdir(snap_dir)) if s is not None
        )
        wal_dir = self.layout.wal_dir
        firsts = sorted(
            s for s in map(wal.parse_segment_name, self._listdir(wal_dir)) if s is not None
        )
        return Found(snaps, firsts)

    def recover(self, found: Found) -> RecoveredDir | None:
        """The state of ``found``; None for a directory that holds nothing yet."""
        if not found.snapshots:
            if found.segments:
                raise CorruptData(
                    self.layout.segment(found.segments[0]),
                    0,
                    "log segments but no snapshot to replay onto",
                )
            return None
        base = self.choose_base(found.snapshots)
        segs = self.segments_of(base.snap.log_id, found.segments)
        replay = _Replay(
            base.tree, ClientTable(self.max_clients, base.snap.clients), list(base.snap.epochs)
        )
        last_seq = self.replay(segs, base.snap.seq, replay)
        self.set_aside(base.bad, last_seq)
        bad = {b.seq for b in base.bad}
        recovered = Recovered(
            replay.tree,
            last_seq,
            list(replay.epochs),
            replay.clients.client_rows(),
            base.snap.seq,
            self.warnings,
        )
        return RecoveredDir(
            recovered,
            base.snap.log_id,
            segs,
            [s for s in found.snapshots if s not in bad],
            replay.wal_bytes,
        )

    def choose_base(self, snaps: list[int]) -> _Base:
        """The newest snapshot that passes its checks, and the newer ones that did not.

        A failed snapshot whose header names no history ends the search: no
        older one can be known to stand in for it.  Nor can one of another history.
        """
        bad: list[_Bad] = []
        for seq in reversed(snaps):
            loaded = self._load_snapshot(seq)
            if isinstance(loaded, _Bad):
                bad.append(loaded)
                if loaded.log_id is None:
                    break
                continue
            snap, tree = loaded
            if any(b.log_id != snap.log_id for b in bad):
                break
            return _Base(snap, tree, bad)
        raise bad[0].error

    def _load_snapshot(self, seq: int) -> tuple[snapfmt.Snapshot, BTree] | _Bad:
        """The snapshot at ``seq`` and its tree, or why it fails its checks."""
        path = self.layout.snapshot(seq)
        data = self._read(path)
        try:
            snap = snapfmt.read_snapshot(data, path)
            if snap.seq != seq:
                raise CorruptData(path, 20, f"header says seq {snap.seq}, name says {seq}")
            try:
                return snap, BTree.from_sorted(snap.keys, snap.values)
            except ValueError as e:
                raise CorruptData(path, snapfmt.HEADER_SIZE, str(e)) from e
        except CorruptData as e:
            try:
                log_id: int | None = snapfmt.read_header(data, path)[0]
            except CorruptData:
                log_id = None
            return _Bad(seq, e, log_id)

    def segments_of(self, log_id: int, firsts: list[int]) -> list[Segment]:
        """The segments of history ``log_id``, in order, with their headers checked.

        Removes a last segment whose creation was cut short and segments left
        over from a history a transferred snapshot replaced.
        """
        segs: list[Segment] = []
        removed = False
        for i, first in enumerate(firsts):
            path = self.layout.segment(first)
            head = disk_call(
                "cannot read",
                path,
                lambda path=path: self.disk.read(path, wal.HEADER_SIZE),  # type: ignore[misc]
            )
            try:
                header = wal.decode_header(head, path)
            except CorruptData:
                size = disk_call("cannot stat", path, lambda path=path: self.disk.size(path))  # type: ignore[misc]
                if i == len(firsts) - 1 and size <= wal.header_size(head):
                    self.warnings.append(
                        f"removed {path}: its creation was cut short ({size} bytes)"
                    )
                    self._remove(path)
                    removed = True
                    continue
                raise
            if header.first_seq != first:
                raise CorruptData(
                    path, 20, f"header says first seq {header.first_seq}, name says {first}"
                )
            if header.log_id != log_id:
                self.warnings.append(
                    f"removed {path}: left over from a history replaced by a snapshot"
                )
                self._remove(path)
                removed = True
                continue
            segs.append(Segment(first, path, 0, first - 1, header.size, header.salt))
        if removed:
            wal_dir = self.layout.wal_dir
            disk_call("cannot sync", wal_dir, lambda: self.disk.fsync_dir(wal_dir))
        return segs

    def replay(self, segs: list[Segment], base_seq: int, into: _Replay) -> int:
        """Apply the log after ``base_seq`` onto ``into``; the last seq recovered.

        Fills in every segment's ``size`` and ``last``.
        """
        start = self._first_to_read(segs, base_seq)
        expected = segs[start].first if segs else base_seq + 1
        for i in range(start, len(segs)):
            expected = self._replay_segment(segs[i], i == len(segs) - 1, expected, base_seq, into)
        return max(base_seq, expected - 1)

    def _first_to_read(self, segs: list[Segment], base_seq: int) -> int:
        """The index of the segment holding ``base_seq + 1``; those before it are not read."""
        start = 0
        for i, s in enumerate(segs):
            if s.first <= base_seq + 1:
                start = i
        if segs and segs[start].first > base_seq + 1:
            raise CorruptData(
                segs[start].path,
                0,
                f"log resumes at {segs[start].first}, snapshot ends at {base_seq}",
            )
        for i, s in enumerate(segs[:start]):
            s.last = segs[i + 1].first - 1  # covered by the snapshot
        return start

    def _replay_segment(
        self, s: Segment, last_file: bool, expected: int, base_seq: int, into: _Replay
    ) -> int:
        """Apply one segment's records after ``base_seq``; the seq due next."""
        if s.first != expected:
            raise CorruptData(
                s.path, 0, f"segment starts at {s.first}, the log before ends at {expected - 1}"
            )
        data = self._read(s.path)
        scan = wal.scan_segment(data, s.path, last=last_file)
        put, delete = into.tree.put, into.tree.delete
        clients, epochs = into.clients, into.epochs
        for off, u in scan.records:
            if u.seq != expected:
                raise CorruptData(s.path, off, f"record seq {u.seq}, expected {expected}")
            expected += 1
            if u.seq > base_seq:
                if u.group:
                    apply_group(into.tree, u)
                    found = True
                elif u.is_put:
                    put(u.key, u.data)
                    found = True
                else:
                    found = delete(u.key)
                clients.note(u, found)
                note_epoch(epochs, u.seq, u.epoch)
        if scan.torn is not None:
            self.repair_torn_tail(s.path, scan, len(data))
        s.size = scan.end
        s.last = expected - 1
        if s.first > base_seq:
            into.wal_bytes += s.size - s.head
        return expected

    def repair_torn_tail(self, path: str, scan: wal.Scan, size: int) -> None:
        """Cut a torn write off the last segment, durably, and say so."""
        self.warnings.append(
            f"cut a torn record at {path} offset {scan.end} ({scan.torn};"
            f" {size - scan.end} bytes dropped)"
        )

        def run() -> None:
            f = self.disk.open_append(path)
            try:
                f.truncate(scan.end)
                f.fsync()
            finally:
                f.close()

        disk_call("cannot cut the torn tail of", path, run)

    def set_aside(self, bad: list[_Bad], last_seq: int) -> None:
        """Rename the failed snapshots ``.corrupt``, once the log recovered reaches past them."""
        newest_bad = max((b.seq for b in bad), default=0)
        if newest_bad > last_seq:
            raise bad[0].error
        for b in bad:
            path = self.layout.snapshot(b.seq)
            self.warnings.append(
                f"skipped snapshot {path} ({b.error}); set aside as {path}.corrupt"
            )
            disk_call(
                "cannot rename",
                path,
                lambda path=path: self.disk.rename(path, path + ".corrupt"),  # type: ignore[misc]
            )
        if bad:
            snap_dir = self.layout.snap_dir
            disk_call("cannot sync", snap_dir, lambda: self.disk.fsync_dir(snap_dir))
