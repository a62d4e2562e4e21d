"""The data directory: log framing, recovery rules, crashes, disk errors, snapshots."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import struct
import tempfile
import threading
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.storage import (
    CannotTruncate,
    ClientRow,
    CorruptData,
    DataDir,
    DiskError,
    FsyncPolicy,
    LogRecord,
    Recovered,
    wal,
)
from kvtwist.storage.fakedisk import Crashed, FakeDisk
from kvtwist.store import InlineRunner, Store, Write
from kvtwist.tree import BTree
from tests.test_chain_disk import HeldRunner

D = "/data"
SEG1 = f"{D}/wal/{1:020d}.log"


def put(seq: int, key: bytes, data: bytes = b"v", epoch: int = 1, **kw: object) -> LogRecord:
    return LogRecord(seq, True, key, data, epoch, **kw)  # type: ignore[arg-type]


def delete(seq: int, key: bytes, epoch: int = 1, **kw: object) -> LogRecord:
    return LogRecord(seq, False, key, epoch=epoch, **kw)  # type: ignore[arg-type]


def puts(first: int, n: int, epoch: int = 1) -> list[LogRecord]:
    return [put(s, f"k{s:04d}".encode(), f"v{s}".encode(), epoch) for s in range(first, first + n)]


def v1_records(records: list[LogRecord]) -> bytes:
    """Records framed as format version 1 wrote them: [u32 length][u32 crc32][payload]."""
    out = b""
    for r in records:
        u = Update(seq=r.seq, epoch=r.epoch, is_put=r.is_put, key=r.key, data=r.data)
        p = u.SerializeToString()
        out += struct.pack(">II", len(p), zlib.crc32(p)) + p
    return out


def v1_header(log_id: int, first: int) -> bytes:
    head = struct.pack(">8sIQQ", b"KVTWAL\r\n", 1, log_id, first)
    return head + struct.pack(">I", zlib.crc32(head))


class DiskCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.disk = FakeDisk()
        self.dirs: list[DataDir] = []

    def tearDown(self) -> None:
        for d in self.dirs:
            d.close()

    def open(self, **kw: object) -> tuple[DataDir, Recovered]:
        dd = DataDir(D, disk=self.disk, **kw)  # type: ignore[arg-type]
        self.dirs.append(dd)
        return dd, dd.open()

    def reopen(self, dd: DataDir, crash: bool = True, **kw: object) -> tuple[DataDir, Recovered]:
        if crash:
            self.disk.crash()  # first: the dead process closes nothing cleanly
        dd.close()
        return self.open(**kw)


class LogTests(DiskCase):
    def test_records_round_trip(self) -> None:
        """Appended batches come back: tree, last seq, epoch boundaries, client rows."""
        dd, r = self.open()
        self.assertEqual((r.last_seq, r.tree.items(), r.warnings), (0, [], []))
        dd.append([put(1, b"a", b"1", client_id="c1", request_id=7), put(2, b"b", b"2")])
        dd.append([delete(3, b"a", epoch=2, client_id="c1", request_id=8)])
        dd.append([delete(4, b"zz", epoch=2, client_id="c2", request_id=1)])
        self.assertEqual((dd.last_seq, dd.epochs), (4, [(1, 1), (3, 2)]))
        _, r = self.reopen(dd)
        self.assertEqual(r.tree.items(), [(b"b", b"2")])
        self.assertEqual(r.last_seq, 4)
        self.assertEqual(r.epochs, [(1, 1), (3, 2)])
        self.assertEqual(
            r.clients,
            [
                ClientRow("c1", 7, 1, True),
                ClientRow("c1", 8, 3, True),
                ClientRow("c2", 1, 4, False),
            ],
        )

    def test_framing(self) -> None:
        """A v2 segment: header with a salt, then [u32 length][salted BLAKE2b-64][Update]."""
        dd, _ = self.open()
        dd.append([put(1, b"key", b"data", epoch=5, client_id="c", request_id=3)])
        raw = self.disk.contents(SEG1)
        self.assertEqual(raw[:8], b"KVTWAL\r\n")
        self.assertEqual(struct.unpack_from(">I", raw, 8)[0], 2)
        salt = raw[28:44]
        length, check = struct.unpack_from(">I8s", raw, wal.HEADER_SIZE)
        payload = raw[wal.HEADER_SIZE + 12 :]
        mac = hashlib.blake2b(payload, key=salt, digest_size=8).digest()
        self.assertEqual((len(payload), mac), (length, check))
        u = Update.FromString(payload)
        self.assertEqual(
            (u.seq, u.epoch, u.is_put, u.key, u.data, u.client_id, u.request_id),
            (1, 5, True, b"key", b"data", "c", 3),
        )

    def test_contiguous_only(self) -> None:
        """A batch that does not continue the log is refused before anything is written."""
        dd, _ = self.open()
        dd.append(puts(1, 2))
        with self.assertRaises(ValueError):
            dd.append([put(4, b"x")])
        with self.assertRaises(ValueError):
            dd.append([put(3, b"x"), put(5, b"y")])
        self.assertEqual(dd.last_seq, 2)

    def test_rotation(self) -> None:
        """Past segment_bytes a new segment starts, named by its first seq; all replay."""
        dd, _ = self.open(segment_bytes=200)
        for s in range(1, 31):
            dd.append(puts(s, 1))
        names = self.disk.listdir(f"{D}/wal")
        self.assertGreater(len(names), 3)
        firsts = [int(n[:20]) for n in names]
        self.assertEqual(firsts[0], 1)
        _, r = self.reopen(dd, segment_bytes=200)
        self.assertEqual(r.last_seq, 30)
        self.assertEqual(r.tree.keys(), [f"k{s:04d}".encode() for s in range(1, 31)])

    def test_group_commit(self) -> None:
        """Under ALWAYS a batch of any size costs one fsync."""
        dd, _ = self.open()
        before = self.disk.fsyncs
        dd.append(puts(1, 50))
        self.assertEqual(self.disk.fsyncs - before, 1)


class TornTailTests(DiskCase):
    def _torn(self, cut: int) -> None:
        dd, _ = self.open()
        dd.append(puts(1, 3))
        whole = self.disk.contents(SEG1)
        dd.append(puts(4, 1))
        full = self.disk.contents(SEG1)
        self.disk.put(SEG1, full[: len(full) - cut])
        _, r = self.reopen(dd)
        self.assertEqual(r.last_seq, 3)
        self.assertEqual(len(r.warnings), 1)
        self.assertIn(f"cut a torn record at {SEG1} offset {len(whole)}", r.warnings[0])
        self.assertEqual(self.disk.contents(SEG1), whole)

    def test_short_payload(self) -> None:
        """A last record missing payload bytes is cut off with a warning."""
        self._torn(3)

    def test_update_logged_as_it_is(self) -> None:
        """A replicated Update is logged byte for byte as the LogRecord of the same write."""
        fields = dict(seq=7, is_put=True, key=b"caf\xe9", data=b"\x00v", epoch=3)
        ids = dict(client_id="c", request_id=9)
        salt = wal.new_salt()
        as_record = wal.encode_records([LogRecord(**fields, **ids)], salt)  # type: ignore[arg-type]
        self.assertEqual(wal.encode_records([Update(**fields, **ids)], salt), as_record)  # type: ignore[arg-type]

    def test_short_header(self) -> None:
        """A last record missing part of its length/crc header is cut off."""
        full = wal.encode_records(puts(4, 1), wal.new_salt())
        self._torn(len(full) - 5)

    def test_bad_crc_at_end(self) -> None:
        """A whole last record with a wrong checksum and nothing after it is a tear."""
        dd, _ = self.open()
        dd.append(puts(1, 2))
        full = bytearray(self.disk.contents(SEG1))
        full[-1] ^= 0xFF
        self.disk.put(SEG1, bytes(full))
        _, r = self.reopen(dd)
        self.assertEqual(r.last_seq, 1)
        self.assertIn("checksum", r.warnings[0])

    def test_zero_filled_tail(self) -> None:
        """Zeros where a batch never landed (a file extended but not written) are cut."""
        dd, _ = self.open()
        dd.append(puts(1, 2))
        self.disk.put(SEG1, self.disk.contents(SEG1) + bytes(100))
        _, r = self.reopen(dd)
        self.assertEqual(r.last_seq, 2)
        self.assertEqual(len(r.warnings), 1)
        dd2 = self.dirs[-1]
        dd2.append(puts(3, 1))
        _, r = self.reopen(dd2)
        self.assertEqual((r.last_seq, r.warnings), (3, []))


class HostileValueTests(DiskCase):
    """A client controls every byte of a value: none of them may decide torn against corrupt."""

    def _torn_hostile(self, value: bytes) -> None:
        dd, _ = self.open()
        dd.append(puts(1, 50))
        whole = self.disk.contents(SEG1)
        dd.append([put(51, b"evil", value)])
        full = self.disk.contents(SEG1)
        self.disk.put(SEG1, full[: len(full) - 3])  # the power cut kept all but the last bytes
        _, r = self.reopen(dd)
        self.assertEqual(r.last_seq, 50)
        self.assertEqual(len(r.tree), 50)
        self.assertIn(f"cut a torn record at {SEG1} offset {len(whole)}", r.warnings[0])
        self.assertEqual(self.disk.contents(SEG1), whole)
        self.dirs[-1].append(puts(51, 1))
        _, r = self.reopen(self.dirs[-1])
        self.assertEqual((r.last_seq, r.warnings), (51, []))

    def _forged(self, first: int, n: int) -> bytes:
        """Records of the next ops in every framing an attacker could write without the salt."""
        guess = wal.new_salt()
        return v1_records(puts(first, n)) + wal.encode_records(puts(first, n), guess)

    def test_value_embedding_the_next_record(self) -> None:
        """A torn write of a value holding a valid-looking record of the next op is cut."""
        self._torn_hostile(self._forged(52, 1) + b"tail")

    def test_value_embedding_several_records(self) -> None:
        """A torn value packed with forged records of the ops after it is still a torn tail."""
        self._torn_hostile(b"x" + self._forged(52, 20) * 3 + b"tail")

    def test_value_embedding_a_segment_header(self) -> None:
        """A value holding whole segment headers (this log's id) and records after them is cut."""
        dd, _ = self.open()
        log_id = wal.decode_header(self.disk.contents(SEG1), SEG1).log_id
        dd.close()
        salt = wal.new_salt()
        value = (
            v1_header(log_id, 52)
            + v1_records(puts(52, 3))
            + wal.encode_header(log_id, 52, salt)
            + wal.encode_records(puts(52, 3), salt)
            + b"tail"
        )
        self._torn_hostile(value)

    def test_damage_before_a_hostile_value_is_refused(self) -> None:
        """Real damage with records after it is refused, hostile values in the log or not."""
        dd, _ = self.open()
        dd.append(puts(1, 1))
        off = len(self.disk.contents(SEG1))
        dd.append(puts(2, 1))
        dd.append([put(3, b"evil", self._forged(4, 2))])
        raw = bytearray(self.disk.contents(SEG1))
        raw[off + 14] ^= 0x40
        self.disk.put(SEG1, bytes(raw))
        dd.close()
        e = self.assertRaises(CorruptData, self.open)
        self.assertEqual((e.path, e.offset), (SEG1, off))


class FormatV1Tests(DiskCase):
    """Segments written by format version 1 are read; new records go to version 2 segments."""

    def _v1_log(self, records: bytes) -> int:
        dd, _ = self.open()
        log_id = wal.decode_header(self.disk.contents(SEG1), SEG1).log_id
        dd.close()
        self.disk.put(SEG1, v1_header(log_id, 1) + records)
        return log_id

    def test_v1_segment_read_then_continued_in_v2(self) -> None:
        """A v1 log replays; the next append starts a v2 segment instead of extending it."""
        self._v1_log(v1_records(puts(1, 3)))
        dd, r = self.open()
        self.assertEqual((r.last_seq, len(r.tree), r.warnings), (3, 3, []))
        dd.append(puts(4, 2))
        seg4 = f"{D}/wal/{4:020d}.log"
        self.assertEqual(wal.decode_header(self.disk.contents(seg4), seg4).version, 2)
        self.assertEqual(wal.decode_header(self.disk.contents(SEG1), SEG1).version, 1)
        _, r = self.reopen(dd)
        self.assertEqual((r.last_seq, len(r.tree), r.warnings), (5, 5, []))

    def test_v1_torn_tail_is_cut(self) -> None:
        """A torn last record of a v1 segment is cut as before."""
        whole = v1_records(puts(1, 3))
        self._v1_log(whole + v1_records(puts(4, 1))[:-2])
        _, r = self.open()
        self.assertEqual(r.last_seq, 3)
        self.assertIn("cut a torn record", r.warnings[0])

    def test_empty_v1_segment_is_replaced(self) -> None:
        """An empty v1 segment is rewritten as v2 at the first append, under the same name."""
        self._v1_log(b"")
        dd, r = self.open()
        dd.append(puts(1, 2))
        self.assertEqual(self.disk.listdir(f"{D}/wal"), [f"{1:020d}.log"])
        self.assertEqual(wal.decode_header(self.disk.contents(SEG1), SEG1).version, 2)
        _, r = self.reopen(dd)
        self.assertEqual((r.last_seq, r.warnings), (2, []))

    def test_truncate_into_v1_then_append(self) -> None:
        """Truncating back into a v1 segment, then appending, keeps a readable log."""
        self._v1_log(v1_records(puts(1, 5)))
        dd, _ = self.open()
        dd.append(puts(6, 2))
        dd.truncate_after(3)
        dd.append([put(4, b"new")])
        _, r = self.reopen(dd)
        self.assertEqual((r.last_seq, r.warnings), (4, []))
        self.assertIn(b"new", r.tree)
        self.assertNotIn(b"k0004", r.tree)


class CorruptionTests(DiskCase):
    def test_middle_record(self) -> None:
        """A bad record with valid records after it is refused, naming file and offset."""
        dd, _ = self.open()
        dd.append(puts(1, 1))
        off = len(self.disk.contents(SEG1))
        dd.append(puts(2, 3))
        raw = bytearray(self.disk.contents(SEG1))
        raw[off + 10] ^= 0x40
        self.disk.put(SEG1, bytes(raw))
        dd.close()
        e = self.assertRaises(CorruptData, self.open)
        self.assertEqual((e.path, e.offset), (SEG1, off))
        self.assertIn(SEG1, str(e))
        self.assertIn(f"byte {off}", str(e))
        self.assertNotIn("\n", str(e))

    def test_big_length_in_middle(self) -> None:
        """A length field bent to run past the end is not taken for a tear when records follow."""
        dd, _ = self.open()
        dd.append(puts(1, 1))
        off = len(self.disk.contents(SEG1))
        dd.append(puts(2, 5))
        raw = bytearray(self.disk.contents(SEG1))
        raw[off : off + 4] = struct.pack(">I", 10_000)
        self.disk.put(SEG1, bytes(raw))
        dd.close()
        e = self.assertRaises(CorruptData, self.open)
        self.assertEqual(e.offset, off)

    def test_bad_record_in_earlier_segment(self) -> None:
        """A tear-like tail is corruption when it is not in the last segment."""
        dd, _ = self.open(segment_bytes=100)
        for s in range(1, 8):
            dd.append(puts(s, 1))
        raw = self.disk.contents(SEG1)
        self.disk.put(SEG1, raw[:-2])
        dd.close()
        e = self.assertRaises(CorruptData, self.open, segment_bytes=100)
        self.assertEqual(e.path, SEG1)

    def test_gap_between_segments(self) -> None:
        """A missing segment in the middle is refused."""
        dd, _ = self.open(segment_bytes=100)
        for s in range(1, 10):
            dd.append(puts(s, 1))
        names = self.disk.listdir(f"{D}/wal")
        self.assertGreaterEqual(len(names), 3)
        self.disk.remove(f"{D}/wal/{names[1]}")
        self.disk.fsync_dir(f"{D}/wal")
        dd.close()
        e = self.assertRaises(CorruptData, self.open, segment_bytes=100)
        self.assertEqual(e.path, f"{D}/wal/{names[2]}")
        self.assertIn("segment starts at", str(e))

    def test_seq_gap_inside_segment(self) -> None:
        """A record whose seq skips one is refused even though its checksum is fine."""
        dd, _ = self.open()
        dd.append(puts(1, 2))
        raw = self.disk.contents(SEG1)
        raw += wal.encode_records(puts(4, 1), wal.decode_header(raw, SEG1).salt)
        self.disk.put(SEG1, raw)
        dd.close()
        e = self.assertRaises(CorruptData, self.open)
        self.assertIn("record seq 4, expected 3", str(e))

    def test_bad_segment_header(self) -> None:
        """A segment whose header fails its checksum is refused."""
        dd, _ = self.open()
        dd.append(puts(1, 2))
        raw = bytearray(self.disk.contents(SEG1))
        raw[12] ^= 1
        self.disk.put(SEG1, bytes(raw))
        dd.close()
        e = self.assertRaises(CorruptData, self.open)
        self.assertEqual((e.path, e.offset), (SEG1, 0))

    def test_log_without_snapshot(self) -> None:
        """Segments with no snapshot at all cannot be replayed onto anything."""
        dd, _ = self.open()
        dd.append(puts(1, 2))
        dd.close()
        self.disk.remove(f"{D}/snap/{0:020d}.snap")
        e = self.assertRaises(CorruptData, self.open)
        self.assertIn("no snapshot", str(e))

    def test_corrupt_snapshot_without_fallback(self) -> None:
        """A bad snapshot whose history the log cannot rebuild is refused, not skipped."""
        dd, _ = self.open()
        dd.append(puts(1, 5))
        seq = dd.begin_snapshot()
        tree = BTree.from_sorted([f"k{s:04d}".encode() for s in range(1, 6)], [b"v"] * 5)
        dd.write_snapshot(seq, tree, dd.epochs, [])
        dd.begin_snapshot()
        dd.append(puts(6, 5))
        seq = dd.begin_snapshot()
        self.assertTrue(dd.write_snapshot(seq, tree, dd.epochs, []))
        # now snapshots 5 and 10 remain; the log before 5 is gone
        path = f"{D}/snap/{5:020d}.snap"
        raw = bytearray(self.disk.contents(path))
        raw[40] ^= 1
        self.disk.put(path, bytes(raw))
        path10 = f"{D}/snap/{10:020d}.snap"
        raw = bytearray(self.disk.contents(path10))
        raw[40] ^= 1
        self.disk.put(path10, bytes(raw))
        dd.close()
        e = self.assertRaises(CorruptData, self.open)
        self.assertEqual(e.path, path10)


class SnapshotTests(DiskCase):
    def _state(self, dd: DataDir, recs: list[LogRecord]) -> BTree:
        t = BTree()
        for r in recs:
            if r.is_put:
                t.put(r.key, r.data)
            else:
                t.delete(r.key)
        return t

    def test_snapshot_then_log(self) -> None:
        """A snapshot plus the log after it rebuilds the state; the covered log is dropped."""
        dd, _ = self.open(segment_bytes=150)
        recs = puts(1, 20) + [delete(21, b"k0003", client_id="c", request_id=1)]
        dd.append(recs)
        seq = dd.begin_snapshot()
        self.assertEqual(seq, 21)
        self.assertEqual(dd.wal_bytes_since_snapshot, 0)
        clients = [ClientRow("c", 1, 21, True)]
        self.assertTrue(dd.write_snapshot(seq, self._state(dd, recs), dd.epochs, clients))
        more = [put(22, b"k0001", b"new", epoch=3), delete(23, b"k0002", epoch=3)]
        dd.append(more)
        self.assertGreater(dd.wal_bytes_since_snapshot, 0)
        seq = dd.begin_snapshot()
        self.assertTrue(dd.write_snapshot(seq, self._state(dd, recs + more), dd.epochs, clients))
        dd.append([put(24, b"z")])
        _, r = self.reopen(dd, segment_bytes=150)
        self.assertEqual(r.snapshot_seq, 23)
        self.assertEqual(r.tree.items(), self._state(dd, recs + more + [put(24, b"z")]).items())
        self.assertEqual(r.epochs, [(1, 1), (22, 3), (24, 1)])
        self.assertEqual(r.clients, clients)
        # retention: snapshots 21 and 23; segments from 22 on
        self.assertEqual(self.disk.listdir(f"{D}/snap"), [f"{21:020d}.snap", f"{23:020d}.snap"])
        self.assertEqual([int(n[:20]) for n in self.disk.listdir(f"{D}/wal")], [22, 24])

    def test_corrupt_newest_snapshot_falls_back(self) -> None:
        """A bad newest snapshot is skipped (warning) if the older one plus the log reach it."""
        dd, _ = self.open()
        recs = puts(1, 5)
        dd.append(recs)
        seq = dd.begin_snapshot()
        dd.write_snapshot(seq, self._state(dd, recs), dd.epochs, [])
        dd.append(puts(6, 5))
        seq = dd.begin_snapshot()
        dd.write_snapshot(seq, self._state(dd, recs + puts(6, 5)), dd.epochs, [])
        dd.append(puts(11, 1))
        path = f"{D}/snap/{10:020d}.snap"
        raw = bytearray(self.disk.contents(path))
        raw[50] ^= 1
        self.disk.put(path, bytes(raw))
        _, r = self.reopen(dd)
        self.assertEqual((r.snapshot_seq, r.last_seq), (5, 11))
        self.assertEqual(r.tree.keys(), [f"k{s:04d}".encode() for s in range(1, 12)])
        self.assertIn(f"skipped snapshot {path}", r.warnings[0])
        self.assertTrue(self.disk.exists(path + ".corrupt"))

    def test_large_snapshot_batches(self) -> None:
        """A snapshot bigger than one record's batch splits into several and reads back."""
        keys = [f"key{i:07d}".encode() for i in range(40_000)]
        values = [b"x" * 32] * len(keys)
        tree = BTree.from_sorted(keys, values)
        dd, _ = self.open()
        dd.reset(tree, 40_000, [(1, 1)], [ClientRow(f"c{i}", i, i, i % 2 == 0) for i in range(5)])
        _, r = self.reopen(dd)
        self.assertEqual(r.tree.keys(), keys)
        self.assertEqual(r.tree.values(), values)
        self.assertEqual(r.clients[3], ClientRow("c3", 3, 3, False))
        self.assertEqual((r.last_seq, r.epochs), (40_000, [(1, 1)]))

    def test_concurrent_with_appends(self) -> None:
        """Appends go on while a snapshot is being written on another thread."""
        dd, _ = self.open(fsync=FsyncPolicy.NEVER)
        recs = puts(1, 10)
        dd.append(recs)
        seq = dd.begin_snapshot()
        tree = self._state(dd, recs)
        self.disk.hold_fsync()
        result: list[bool] = []
        t = threading.Thread(
            target=lambda: result.append(dd.write_snapshot(seq, tree, [(1, 1)], []))
        )
        t.start()
        self.assertTrue(self.disk.fsync_waiting.wait(10))
        for s in range(11, 111):
            dd.append(puts(s, 1))
        self.assertTrue(t.is_alive())
        self.disk.release_fsync()
        t.join(10)
        self.assertEqual(result, [True])
        dd.sync()
        _, r = self.reopen(dd)
        self.assertEqual((r.snapshot_seq, r.last_seq), (10, 110))
        self.assertEqual(len(r.tree), 110)

    def test_truncation_cancels_pending_snapshot(self) -> None:
        """A snapshot begun past a later truncation point is not installed."""
        dd, _ = self.open()
        dd.append(puts(1, 10))
        seq = dd.begin_snapshot()
        dd.truncate_after(7)
        self.assertFalse(dd.write_snapshot(seq, BTree(), [], []))
        self.assertEqual(self.disk.listdir(f"{D}/snap"), [f"{0:020d}.snap"])


class ByteKeyTests(DiskCase):
    """Keys are any bytes on disk too; snapshots written when keys were text still read."""

    KEYS = [b"\x00", b"a", b"caf\xe9", "café".encode(), "日本".encode(), b"\xff\xfe"]

    def test_non_utf8_keys_round_trip(self) -> None:
        """Keys that are not UTF-8 survive a snapshot and a log replay, in bytewise order."""
        tree = BTree.from_sorted(sorted(self.KEYS), [k + b"!" for k in sorted(self.KEYS)])
        dd, _ = self.open()
        dd.reset(tree, 10, [(1, 1)], [])
        dd.append([put(11, b"\x80"), delete(12, b"caf\xe9")])
        at12 = tree.copy()
        at12.put(b"\x80", b"v")
        at12.delete(b"caf\xe9")
        seq = dd.begin_snapshot()
        self.assertTrue(dd.write_snapshot(seq, at12, dd.epochs, []))
        dd.append([put(13, b"caf\xe9", b"back")])
        _, r = self.reopen(dd)
        want = {k: k + b"!" for k in self.KEYS} | {b"\x80": b"v", b"caf\xe9": b"back"}
        self.assertEqual(r.tree.items(), sorted(want.items()))
        r.tree.check()
        raw = self.disk.contents(f"{D}/snap/{12:020d}.snap")
        self.assertEqual(struct.unpack_from(">I", raw, 8), (2,))  # the format with byte keys

    def test_reads_text_key_snapshot(self) -> None:
        """A version 1 snapshot (keys as one UTF-8 string, lengths in code points) recovers.

        Its keys come back as their UTF-8 bytes, so a data directory written
        before keys were bytes opens unchanged and later writes replay on it.
        """
        dd, _ = self.open()
        dd.reset(BTree(), 7, [(1, 3)], [])
        path = f"{D}/snap/{7:020d}.snap"
        log_id = struct.unpack_from(">Q", self.disk.contents(path), 12)[0]
        keys = ["a", "café", "zz", "日本", "\U0001f600"]  # code point order
        values = [k.encode() * 2 for k in keys]
        self.disk.put(path, text_key_snapshot(log_id, 7, keys, values, [(1, 3)]))
        dd.append([put(8, b"caf\xe9", epoch=3)])
        _, r = self.reopen(dd)
        want = [(k.encode(), v) for k, v in zip(keys, values, strict=True)]
        want.insert(2, (b"caf\xe9", b"v"))  # b"caf\xe9" sorts between "café" and "zz"
        self.assertEqual((r.last_seq, r.epochs, r.warnings), (8, [(1, 3)], []))
        self.assertEqual(r.tree.items(), want)
        r.tree.check()


def text_key_snapshot(
    log_id: int, seq: int, keys: list[str], values: list[bytes], epochs: list[tuple[int, int]]
) -> bytes:
    """A snapshot file in format version 1, built by hand from its documented layout."""

    def record(body: bytes) -> bytes:
        return struct.pack(">II", len(body), zlib.crc32(body)) + body

    head = struct.pack(">8sIQQ", b"KVTSNAP\n", 1, log_id, seq)
    out = head + struct.pack(">I", zlib.crc32(head))
    kb = "".join(keys).encode()
    n = len(keys)
    out += record(
        struct.pack(">BII", 1, n, len(kb))
        + struct.pack(f">{n}I", *map(len, keys))  # code points, not bytes
        + struct.pack(f">{n}I", *map(len, values))
        + kb
        + b"".join(values)
    )
    out += record(
        struct.pack(">BI", 2, len(epochs)) + b"".join(struct.pack(">QQ", *e) for e in epochs)
    )
    return out + record(struct.pack(">BQIII", 255, n, len(epochs), 0, zlib.crc32(out)))


class TruncateTests(DiskCase):
    def test_truncate_after(self) -> None:
        """Records after seq are dropped for good; the log continues from there."""
        dd, _ = self.open(segment_bytes=120)
        dd.append(puts(1, 3))
        dd.append(puts(4, 4, epoch=2))
        dd.append(puts(8, 3, epoch=3))
        dd.truncate_after(5)
        self.assertEqual((dd.last_seq, dd.epochs), (5, [(1, 1), (4, 2)]))
        dd.append([put(6, b"new", epoch=4)])
        _, r = self.reopen(dd, segment_bytes=120)
        self.assertEqual(r.last_seq, 6)
        self.assertEqual(r.tree.keys(), [b"k0001", b"k0002", b"k0003", b"k0004", b"k0005", b"new"])
        self.assertEqual(r.epochs, [(1, 1), (4, 2), (6, 4)])

    def test_truncate_at_snapshot(self) -> None:
        """Truncating to exactly the snapshot's seq empties the log after it."""
        dd, _ = self.open()
        dd.append(puts(1, 3))
        seq = dd.begin_snapshot()
        dd.write_snapshot(
            seq,
            BTree.from_sorted([b"k0001", b"k0002", b"k0003"], [b"v1", b"v2", b"v3"]),
            [(1, 1)],
            [],
        )
        dd.append(puts(4, 3))
        dd.truncate_after(3)
        _, r = self.reopen(dd)
        self.assertEqual((r.last_seq, len(r.tree)), (3, 3))

    def test_cannot_truncate_below_snapshot(self) -> None:
        """Records already folded into the newest snapshot cannot be dropped."""
        dd, _ = self.open()
        dd.append(puts(1, 5))
        seq = dd.begin_snapshot()
        dd.write_snapshot(seq, BTree(), [], [])
        self.assertRaises(CannotTruncate, dd.truncate_after, 4)
        self.assertEqual(dd.last_seq, 5)

    def test_rewind(self) -> None:
        """rewind returns the state at seq as rebuilt from the disk."""
        dd, _ = self.open()
        dd.append([put(1, b"a", client_id="c", request_id=1), put(2, b"b")])
        dd.append([delete(3, b"a", epoch=2), put(4, b"c", epoch=2)])
        r = dd.rewind(2)
        self.assertEqual((r.last_seq, r.tree.keys(), r.epochs), (2, [b"a", b"b"], [(1, 1)]))
        self.assertEqual(r.clients, [ClientRow("c", 1, 1, True)])
        dd.append([put(3, b"d")])
        self.assertEqual(dd.last_seq, 3)


class ResetTests(DiskCase):
    def test_reset(self) -> None:
        """A transferred state replaces the log; the log continues at seq + 1."""
        dd, _ = self.open(segment_bytes=100)
        for s in range(1, 10):
            dd.append(puts(s, 1))
        tree = BTree.from_sorted([b"x", b"y"], [b"1", b"2"])
        dd.reset(tree, 500, [(400, 7)], [ClientRow("c", 9, 499, True)])
        self.assertEqual(self.disk.listdir(f"{D}/wal"), [f"{501:020d}.log"])
        self.assertEqual(self.disk.listdir(f"{D}/snap"), [f"{500:020d}.snap"])
        dd.append([put(501, b"z", epoch=7)])
        _, r = self.reopen(dd, segment_bytes=100)
        self.assertEqual((r.last_seq, r.snapshot_seq), (501, 500))
        self.assertEqual(r.tree.items(), [(b"x", b"1"), (b"y", b"2"), (b"z", b"v")])
        self.assertEqual(r.epochs, [(400, 7)])
        self.assertEqual(r.clients, [ClientRow("c", 9, 499, True)])

    def test_crash_anywhere_in_reset(self) -> None:
        """A crash at any step of a reset leaves the old state or the new one, never a mix."""
        old_keys = [f"k{s:04d}".encode() for s in range(1, 10)]
        n = 1
        outcomes = set()
        while True:
            self.disk = FakeDisk()
            dd, _ = self.open(segment_bytes=100)
            for s in range(1, 10):
                dd.append(puts(s, 1))
            # the old history's segment named 6 collides with nothing; the new one starts at 6
            self.disk.crash_after(n)
            try:
                dd.reset(BTree.from_sorted([b"new"], [b"!"]), 5, [], [])
                done = True
            except Crashed:
                done = False
            _, r = self.reopen(dd, segment_bytes=100)
            state = (r.last_seq, r.tree.keys())
            self.assertIn(state, [(9, old_keys), (5, [b"new"])], f"crash at step {n}")
            outcomes.add(state[0])
            if done:
                break
            n += 1
        self.assertEqual(outcomes, {9, 5})


class FsyncTests(DiskCase):
    def test_append_waits_for_fsync(self) -> None:
        """Under ALWAYS, append returns only after its fsync: held back, it does not return."""
        dd, _ = self.open()
        self.disk.hold_fsync()
        t = threading.Thread(target=dd.append, args=(puts(1, 3),))
        t.start()
        self.assertTrue(self.disk.fsync_waiting.wait(10))
        self.assertTrue(t.is_alive())
        self.assertEqual(len(self.disk.synced(SEG1)), wal.HEADER_SIZE)
        self.disk.release_fsync()
        t.join(10)
        self.assertFalse(t.is_alive())
        self.assertEqual(self.disk.synced(SEG1), self.disk.contents(SEG1))

    def test_interval(self) -> None:
        """Under INTERVAL appends are not synced until sync(); a crash before it loses them."""
        dd, _ = self.open(fsync=FsyncPolicy.INTERVAL)
        dd.append(puts(1, 2))
        dd.sync()
        before = self.disk.fsyncs
        dd.append(puts(3, 2))
        self.assertEqual(self.disk.fsyncs, before)
        _, r = self.reopen(dd, fsync=FsyncPolicy.INTERVAL)
        self.assertEqual(r.last_seq, 2)

    def test_clean_close_syncs(self) -> None:
        """Under INTERVAL and NEVER a clean close fsyncs the log: a power cut then loses nothing."""
        for policy in (FsyncPolicy.INTERVAL, FsyncPolicy.NEVER):
            self.disk = FakeDisk()
            dd, _ = self.open(fsync=policy)
            dd.append(puts(1, 3))
            dd.close()
            self.disk.crash()
            _, r = self.open(fsync=policy)
            self.assertEqual(r.last_seq, 3, policy)

    def test_rotation_syncs_old_segment_under_never(self) -> None:
        """Under NEVER a segment is synced before the next starts, so a crash keeps a prefix."""
        dd, _ = self.open(fsync=FsyncPolicy.NEVER, segment_bytes=100)
        for s in range(1, 12):
            dd.append(puts(s, 1))
        _, r = self.reopen(dd, fsync=FsyncPolicy.NEVER, segment_bytes=100)
        self.assertGreater(r.last_seq, 0)
        self.assertLess(r.last_seq, 11)
        self.assertEqual(r.tree.keys(), [f"k{s:04d}".encode() for s in range(1, r.last_seq + 1)])


class DiskErrorTests(DiskCase):
    def test_enospc_on_write(self) -> None:
        """A full disk fails the batch, leaves no partial bytes, and later appends work."""
        dd, _ = self.open()
        dd.append(puts(1, 2))
        size = len(self.disk.contents(SEG1))
        self.disk.fail("write", errno.ENOSPC, partial=True)
        e = self.assertRaises(DiskError, dd.append, puts(3, 2))
        self.assertIn("ENOSPC", str(e))
        self.assertIn(SEG1, str(e))
        self.assertEqual(dd.last_seq, 2)
        self.assertEqual(len(self.disk.contents(SEG1)), size)
        dd.append([put(3, b"after")])
        _, r = self.reopen(dd)
        self.assertEqual((r.last_seq, r.warnings), (3, []))
        self.assertIn(b"after", r.tree)
        self.assertNotIn(b"k0003", r.tree)

    def test_eio_on_fsync(self) -> None:
        """A failed fsync fails the batch; the log is cut back and goes on."""
        dd, _ = self.open()
        dd.append(puts(1, 1))
        self.disk.fail("fsync", errno.EIO)
        e = self.assertRaises(DiskError, dd.append, puts(2, 1))
        self.assertIn("EIO", str(e))
        self.assertEqual(dd.last_seq, 1)
        dd.append([put(2, b"b")])
        _, r = self.reopen(dd)
        self.assertEqual(r.tree.keys(), [b"b", b"k0001"])

    def test_failed_cutback_breaks(self) -> None:
        """When the cut back after a failure fails too, every later append fails until reopened."""
        dd, _ = self.open()
        dd.append(puts(1, 1))
        self.disk.fail("write", errno.EIO, partial=True)
        self.disk.fail("truncate", errno.EIO)
        self.assertRaises(DiskError, dd.append, puts(2, 1))
        e = self.assertRaises(DiskError, dd.append, puts(2, 1))
        self.assertIn("reopen", str(e))
        self.assertRaises(DiskError, dd.sync)
        _, r = self.reopen(dd, crash=False)
        self.assertEqual(r.last_seq, 1)
        self.assertEqual(len(r.warnings), 1)  # the half-written record was cut

    def test_erofs_on_rotation(self) -> None:
        """A read-only disk at rotation fails the batch before anything is written."""
        dd, _ = self.open(segment_bytes=60)
        dd.append(puts(1, 2))
        self.disk.fail("create", errno.EROFS, times=None)
        e = self.assertRaises(DiskError, dd.append, puts(3, 1))
        self.assertIn("EROFS", str(e))
        self.assertEqual(dd.last_seq, 2)
        self.disk.heal()
        dd.append(puts(3, 1))
        _, r = self.reopen(dd, segment_bytes=60)
        self.assertEqual(r.last_seq, 3)

    def test_failed_rotation_sync_breaks(self) -> None:
        """A failed fsync of the segment left behind at rotation breaks the directory, as sync()."""
        dd, _ = self.open(fsync=FsyncPolicy.INTERVAL, segment_bytes=60)
        dd.append(puts(1, 2))
        self.disk.fail("fsync", errno.EIO)
        e = self.assertRaises(DiskError, dd.append, puts(3, 1))
        self.assertIn("EIO", str(e))
        e = self.assertRaises(DiskError, dd.append, puts(3, 1))
        self.assertIn("reopen", str(e))
        self.assertRaises(DiskError, dd.sync)
        self.assertEqual(dd.last_seq, 2)

    def test_failed_sync_breaks(self) -> None:
        """A failed timer fsync leaves unknown bytes behind: the directory refuses more work."""
        dd, _ = self.open(fsync=FsyncPolicy.INTERVAL)
        dd.append(puts(1, 1))
        self.disk.fail("fsync", errno.EIO)
        self.assertRaises(DiskError, dd.sync)
        self.assertRaises(DiskError, dd.append, puts(2, 1))


class CrashModelTests(SynchronousTestCase):
    """Random operations, a crash at a random disk call, and recovery against a model."""

    ops = st.lists(
        st.one_of(
            st.tuples(
                st.just("append"),
                st.lists(
                    st.tuples(st.booleans(), st.integers(0, 15), st.integers(0, 3)),
                    min_size=1,
                    max_size=4,
                ),
            ),
            st.tuples(st.just("snapshot"), st.just([])),
            st.tuples(st.just("truncate"), st.just([])),
        ),
        max_size=25,
    )

    def _crash_run(self, policy: FsyncPolicy, ops: list, crash_at: int, trunc_pick: int) -> None:
        disk = FakeDisk()
        dd = DataDir(D, fsync=policy, disk=disk, segment_bytes=160)
        dd.open()
        history: list[dict[str, bytes]] = [{}]  # state at each seq of the current log
        snap_seq = 0
        disk.crash_after(crash_at)
        low = high = 0  # the seqs recovery may end at
        try:
            for op, args in ops:
                cur = dict(history[-1])
                if op == "append":
                    recs = []
                    for i, (is_put, k, e) in enumerate(args):
                        seq = len(history) - 1 + i + 1
                        key = f"k{k}".encode()
                        if is_put:
                            recs.append(put(seq, key, f"{seq}".encode(), epoch=e))
                        else:
                            recs.append(delete(seq, key, epoch=e))
                    new_states = []
                    for r in recs:
                        if r.is_put:
                            cur[r.key] = r.data
                        else:
                            cur.pop(r.key, None)
                        new_states.append(dict(cur))
                    low = len(history) - 1 if policy is FsyncPolicy.ALWAYS else 0
                    high = len(history) - 1 + len(recs)
                    history.extend(new_states)
                    dd.append(recs)
                    if policy is FsyncPolicy.ALWAYS:
                        low = high
                elif op == "snapshot":
                    seq = dd.begin_snapshot()
                    tree = BTree.from_sorted(
                        sorted(history[seq]), [history[seq][k] for k in sorted(history[seq])]
                    )
                    dd.write_snapshot(seq, tree, dd.epochs, [])
                    snap_seq = seq
                else:
                    last = len(history) - 1
                    target = snap_seq + trunc_pick % (last - snap_seq + 1)
                    low = min(low, target) if policy is not FsyncPolicy.ALWAYS else target
                    dd.truncate_after(target)
                    del history[target + 1 :]
                    high = target
                    if policy is FsyncPolicy.ALWAYS:
                        low = target
            disk.crash_after(10**9)
        except Crashed:
            pass
        disk.crash()
        dd.close()
        dd2 = DataDir(D, fsync=policy, disk=disk, segment_bytes=160)
        r = dd2.open()
        dd2.close()
        # a crash inside a truncation may leave any prefix between target and the old end
        self.assertLessEqual(low, r.last_seq)
        self.assertLessEqual(r.last_seq, max(high, len(history) - 1))
        if r.last_seq < len(history):
            self.assertEqual(dict(r.tree.items()), history[r.last_seq])
        r.tree.check()

    @settings(max_examples=60, deadline=None)
    @given(ops, st.integers(1, 120), st.integers(0, 1000))
    def test_always(self, ops: list, crash_at: int, pick: int) -> None:
        """Under ALWAYS every append that returned is recovered exactly."""
        self._crash_run(FsyncPolicy.ALWAYS, ops, crash_at, pick)

    @settings(max_examples=60, deadline=None)
    @given(ops, st.integers(1, 120), st.integers(0, 1000))
    def test_never(self, ops: list, crash_at: int, pick: int) -> None:
        """Under NEVER recovery yields some prefix of what was appended, never garbage."""
        self._crash_run(FsyncPolicy.NEVER, ops, crash_at, pick)


class DirectoryTests(DiskCase):
    def test_second_open_refused(self) -> None:
        """A directory open in one place cannot be opened again until closed."""
        dd, _ = self.open()
        e = self.assertRaises(DiskError, self.open)
        self.assertIn("in use", str(e))
        dd.close()
        self.open()

    def test_node_id_and_meta(self) -> None:
        """The node id is made once and kept; meta survives a crash once set."""
        dd, _ = self.open()
        node_id = dd.node_id
        self.assertEqual(len(node_id), 32)
        self.assertEqual(dd.get_meta(), {})
        dd.set_meta({"znode": "n-0000000007", "epoch": 3})
        dd2, _ = self.reopen(dd)
        self.assertEqual(dd2.node_id, node_id)
        self.assertEqual(dd2.get_meta(), {"znode": "n-0000000007", "epoch": 3})


class RealDiskTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(self.tmp))

    def test_round_trip(self) -> None:
        """On a real directory: append, snapshot, append, reopen."""
        path = os.path.join(self.tmp, "d")
        dd = DataDir(path, segment_bytes=200)
        dd.open()
        dd.append(puts(1, 10))
        seq = dd.begin_snapshot()
        tree = BTree.from_sorted(
            [f"k{s:04d}".encode() for s in range(1, 11)], [f"v{s}".encode() for s in range(1, 11)]
        )
        self.assertTrue(dd.write_snapshot(seq, tree, dd.epochs, []))
        dd.append([delete(11, b"k0001")])
        dd.close()
        dd = DataDir(path)
        r = dd.open()
        dd.close()
        self.assertEqual((r.snapshot_seq, r.last_seq, len(r.tree)), (10, 11, 9))
        self.assertEqual(r.tree.get(b"k0002"), b"v2")

    def test_lock_is_exclusive(self) -> None:
        """flock on LOCK: a second opener of the same directory fails with a clear error."""
        path = os.path.join(self.tmp, "d")
        dd = DataDir(path)
        dd.open()
        other = DataDir(path)
        e = self.assertRaises(DiskError, other.open)
        self.assertIn("in use by another process", str(e))
        dd.close()
        other.open()
        other.close()


class StoreJournalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.disk = FakeDisk()
        self.journal = DataDir(D, disk=self.disk)
        self.journal.open()
        self.clock = Clock()
        self.store = Store(self.clock, InlineRunner(), self.journal, snapshot_bytes=10**9)

    def tearDown(self) -> None:
        self.journal.close()

    def _apply(self, *ws: Write) -> list:
        """Each write's outcome: what it applied, or the Failure it met."""
        outcomes: list = []
        self.store.apply_many(list(ws)).addCallback(outcomes.extend)
        self.clock.advance(0)
        return [Failure(o) if isinstance(o, Exception) else o for o in outcomes]

    def test_writes_are_logged(self) -> None:
        """Applied writes are in the journal, with epoch and client identity."""
        out = self._apply(LogRecord(1, True, b"a", b"1", epoch=4, client_id="c", request_id=2))
        self.assertEqual(out[0].seq, 1)
        self.journal.close()
        self.disk.crash()
        j = DataDir(D, disk=self.disk)
        r = j.open()
        j.close()
        self.assertEqual((r.tree.items(), r.epochs), ([(b"a", b"1")], [(1, 4)]))
        self.assertEqual(r.clients, [ClientRow("c", 2, 1, True)])

    def test_failed_append_fails_writes(self) -> None:
        """A disk error fails every write of the batch and leaves the tree untouched."""
        self._apply(LogRecord(1, True, b"a", b"1"))
        self.disk.fail("write", errno.ENOSPC)
        out = self._apply(LogRecord(2, True, b"b", b"2"), LogRecord(3, False, b"a"))
        self.assertEqual(len(out), 2)
        for f in out:
            self.assertIsInstance(f.value, DiskError)
        self.assertEqual(self.store.last_applied, 1)
        self.assertEqual(self.store._tree.items(), [(b"a", b"1")])
        out = self._apply(LogRecord(2, True, b"b", b"2"))
        self.assertEqual(out[0].tree.items(), [(b"a", b"1"), (b"b", b"2")])

    def test_restore_and_load(self) -> None:
        """restore starts from a recovered state; load resets the journal to the new state."""
        self._apply(LogRecord(1, True, b"a", b"1"), LogRecord(2, True, b"b", b"2"))
        r = self.journal.rewind(1)
        self.store.restore(r)
        self.assertEqual((self.store.last_applied, self.store._tree.keys()), (1, [b"a"]))
        loaded: list = []
        self.store.load([b"x"], [b"9"], 70, [(60, 2)], [ClientRow("c", 1, 70, True)]).addCallback(
            loaded.append
        )
        self.assertEqual(loaded[0].items(), [(b"x", b"9")])
        self.assertEqual((self.journal.last_seq, self.journal.epochs), (70, [(60, 2)]))
        out = self._apply(LogRecord(71, True, b"y", b"8", epoch=2))
        self.assertEqual(out[0].seq, 71)

    def test_snapshot_at_threshold(self) -> None:
        """Past snapshot_bytes of log, a snapshot of the applied state is written."""
        self.store.snapshot_bytes = 100
        self._apply(
            *[
                LogRecord(s, True, f"k{s}".encode(), b"v" * 20, client_id="c", request_id=s)
                for s in range(1, 5)
            ]
        )
        self.assertIn(f"{4:020d}.snap", self.disk.listdir(f"{D}/snap"))
        self.assertEqual(self.journal.wal_bytes_since_snapshot, 0)
        self.journal.close()
        j = DataDir(D, disk=self.disk)
        r = j.open()
        j.close()
        self.assertEqual((r.snapshot_seq, len(r.tree), len(r.clients)), (4, 4, 4))

    def test_sync_timer(self) -> None:
        """The interval timer fsyncs the journal on schedule."""
        self.journal.fsync = FsyncPolicy.INTERVAL
        self._apply(LogRecord(1, True, b"a", b"1"))
        seg = f"{D}/wal/{1:020d}.log"
        self.assertNotEqual(self.disk.synced(seg), self.disk.contents(seg))
        self.store.start_sync_timer(1.0)
        self.addCleanup(self.store.stop_sync_timer)
        self.clock.advance(1.0)
        self.assertEqual(self.disk.synced(seg), self.disk.contents(seg))


class NodeShutdownTests(SynchronousTestCase):
    def test_node_closes_its_data_directory_at_shutdown(self) -> None:
        """A node built by twistd closes (so fsyncs) its data directory once it has shut down."""
        from twisted.internet.testing import MemoryReactorClock

        from kvtwist import tap

        path = tempfile.mkdtemp(prefix="kvtwist-shutdown-")
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        options = tap.Options()
        from kvtwist.procs import free_port

        port = str(free_port())
        options.parseOptions(["--data-dir", path, "--fsync", "interval", "--port", port])
        class Reactor(MemoryReactorClock):
            """A memory reactor whose threads' callbacks run at once."""

            def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
                f(*a, **kw)

        reactor = Reactor()
        tap.build(options, reactor=reactor)
        for phase in ("before", "during", "after"):
            for f, args, kw in reactor.triggers.get(phase, {}).get("shutdown", []):
                f(*args, **kw)
        again = DataDir(path)
        self.assertEqual(again.open().last_seq, 0)  # the lock was let go
        again.close()


class InlineWriteTests(SynchronousTestCase):
    """A store without a journal applies small batches on the reactor, in order with its writer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.writer = HeldRunner()
        self.store = Store(self.clock, self.writer, inline_writes=2)  # type: ignore[arg-type]

    def _writes(self, first: int, n: int) -> list[Write]:
        return [LogRecord(first + i, True, b"k%d" % (first + i), b"v") for i in range(n)]

    def test_small_batch_skips_the_writer(self) -> None:
        """A batch within the limit is applied at the end of the turn, the writer never asked."""
        got: list[Any] = []
        self.store.apply_many(self._writes(1, 2)).addCallback(got.extend)
        self.clock.advance(0)
        self.assertEqual([a.seq for a in got], [1, 2])
        self.assertEqual(self.writer.jobs, [])
        self.assertEqual(self.store.last_applied, 2)

    def test_big_batch_goes_to_the_writer(self) -> None:
        """A batch over the limit (a joiner's catch-up) is the writer's, off the reactor."""
        got: list[Any] = []
        self.store.apply_many(self._writes(1, 3)).addCallback(got.extend)
        self.clock.advance(0)
        self.assertEqual((got, len(self.writer.jobs)), ([], 1))
        self.writer.release()
        self.assertEqual([a.seq for a in got], [1, 2, 3])

    def test_small_batch_waits_behind_the_writer(self) -> None:
        """While the writer holds a job (a load, a big batch), a small batch queues behind it
        instead of overtaking it on the reactor."""
        first: list[Any] = []
        second: list[Any] = []
        self.store.load([b"a"], [b"1"], 10)
        self.store.apply_many([LogRecord(11, True, b"b", b"2")]).addCallback(first.extend)
        self.clock.advance(0)
        self.assertEqual(first, [])
        self.writer.release()  # the load, then the batch that waited for it
        self.clock.advance(0)
        self.writer.release()
        self.clock.advance(0)
        self.assertEqual([a.seq for a in first], [11])
        self.store.apply_many([LogRecord(12, True, b"c", b"3")]).addCallback(second.extend)
        self.clock.advance(0)
        self.assertEqual([a.seq for a in second], [12])
        self.assertEqual(self.writer.jobs, [])
        self.assertEqual(
            self.store._tree.items(), [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
        )

    def test_a_journal_turns_it_off(self) -> None:
        """With a journal every batch is logged on the writer thread, whatever the setting."""
        disk = FakeDisk()
        journal = DataDir(D, disk=disk)  # type: ignore[arg-type]
        journal.open()
        store = Store(self.clock, self.writer, journal, inline_writes=100)  # type: ignore[arg-type]
        store.apply_many(self._writes(1, 1))
        self.clock.advance(0)
        self.assertEqual(len(self.writer.jobs), 1)
        self.writer.release()
        journal.close()
