"""Backups in memory and on local files: the file format, restore, BACKUP at a node.

The node side runs on StringTransport with inline tree work; the file side
writes into a temporary directory.  Starting a node from a restored directory
and a backup under a writer are in tests/test_backup_proc.py.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from contextlib import redirect_stderr, redirect_stdout

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import admin, wire
from kvtwist.backup import BACKUP_LOG_ID, Backup, BadBackup, fetch, load, restore, save
from kvtwist.chain.replica import Replica
from kvtwist.chain.transfer import SNAPSHOT_CHUNK_BYTES
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.server import NodeFactory
from kvtwist.storage import snapshot as snapfmt
from kvtwist.storage.datadir import DataDir
from kvtwist.storage.records import ClientRow
from kvtwist.store import InlineRunner, Store
from kvtwist.wire import Message
from tests.test_server import Conn, Harness


def sample() -> Backup:
    return Backup(
        seq=42,
        keys=[b"\x00bin\xff", b"a", b"b"],
        values=[b"one", b"", b"v" * 1000],
        epochs=[(1, 1), (30, 2)],
        clients=[ClientRow("c1", 7, 40, True), ClientRow("", 3, 0, False)],
    )


class FileTests(SynchronousTestCase):
    """The backup file: a snapshot file whose every byte is checked on reading."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "b.kvt")

    def _bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def _rewrite(self, data: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(data)

    def test_round_trip(self) -> None:
        """What save writes, load gives back: op, epoch history, keys, values, client rows."""
        b = sample()
        size = save(b, self.path)
        self.assertEqual(size, os.path.getsize(self.path))
        got = load(self.path)
        self.assertEqual(got, b)
        self.assertEqual(got.epoch, 2)

    def test_header_names_op_and_no_history(self) -> None:
        """The header carries the format version, log id 0 and the backup's op."""
        save(sample(), self.path)
        magic, version, log_id, seq = snapfmt.SNAP_HEADER.unpack_from(self._bytes())
        self.assertEqual(
            (magic, version, log_id, seq), (snapfmt.SNAP_MAGIC, 2, BACKUP_LOG_ID, 42)
        )

    def test_bad_checksum(self) -> None:
        """One flipped byte in a value is found (the record's crc32) and named."""
        save(sample(), self.path)
        data = bytearray(self._bytes())
        i = data.index(b"v" * 1000) + 500
        data[i] ^= 0x01
        self._rewrite(bytes(data))
        with self.assertRaises(BadBackup) as e:
            load(self.path)
        self.assertIn("checksum mismatch", str(e.exception))
        self.assertNotIn("\n", str(e.exception))

    def test_truncated(self) -> None:
        """A file cut anywhere, even just before its end, is refused."""
        save(sample(), self.path)
        whole = self._bytes()
        for cut in (0, 10, snapfmt.HEADER_SIZE, len(whole) // 2, len(whole) - 1):
            self._rewrite(whole[:cut])
            with self.assertRaises(BadBackup, msg=f"cut at {cut}"):
                load(self.path)

    def test_trailing_bytes(self) -> None:
        """Bytes after the trailer (two files concatenated, say) are refused too."""
        save(sample(), self.path)
        self._rewrite(self._bytes() + b"x")
        with self.assertRaises(BadBackup) as e:
            load(self.path)
        self.assertIn("after the trailer", str(e.exception))

    def test_wrong_version(self) -> None:
        """A format version this build does not know is refused, even with a sound header."""
        save(sample(), self.path)
        data = bytearray(self._bytes())
        struct.pack_into(">I", data, 8, 9)
        head = bytes(data[: snapfmt.HEADER_SIZE - 4])
        struct.pack_into(">I", data, snapfmt.HEADER_SIZE - 4, zlib.crc32(head))
        self._rewrite(bytes(data))
        with self.assertRaises(BadBackup) as e:
            load(self.path)
        self.assertIn("format version 9", str(e.exception))

    def test_not_a_backup(self) -> None:
        """Some other file is refused by its magic; a missing file by its name."""
        self._rewrite(b"hello world, this is no backup at all!")
        with self.assertRaises(BadBackup) as e:
            load(self.path)
        self.assertIn("not a snapshot", str(e.exception))
        with self.assertRaises(BadBackup) as e:
            load(self.path + ".missing")
        self.assertIn("cannot read", str(e.exception))


class RestoreTests(SynchronousTestCase):
    """restore: a data directory that recovers to exactly the backup's state."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.file = os.path.join(self.dir, "b.kvt")
        save(sample(), self.file)
        self.data = os.path.join(self.dir, "data")

    def _recovered(self) -> tuple[list[tuple[bytes, bytes]], int, list[tuple[int, int]], dict]:  # type: ignore[type-arg]
        dd = DataDir(self.data)
        try:
            rec = dd.open()
            return list(rec.tree.iter_items()), rec.last_seq, rec.epochs, dd.get_meta()
        finally:
            dd.close()

    def test_restore_recovers_the_backup(self) -> None:
        """A node opening the directory recovers the backup's keys, op and epochs."""
        b = restore(self.file, self.data)
        self.assertEqual(b.seq, 42)
        items, last, epochs, meta = self._recovered()
        self.assertEqual(items, list(zip(sample().keys, sample().values, strict=True)))
        self.assertEqual((last, epochs, meta), (42, [(1, 1), (30, 2)], {}))

    def test_refuses_non_empty_dir(self) -> None:
        """A directory holding anything is left alone without --force."""
        os.makedirs(self.data)
        with open(os.path.join(self.data, "keep"), "w") as f:
            f.write("x")
        with self.assertRaises(BadBackup) as e:
            restore(self.file, self.data)
        self.assertIn("not empty", str(e.exception))
        self.assertEqual(os.listdir(self.data), ["keep"])

    def test_force_replaces_a_data_dir(self) -> None:
        """With force, an old data directory's log and its member name give way."""
        dd = DataDir(self.data)
        dd.open()
        dd.append([Update(seq=1, is_put=True, key=b"old", data=b"x", epoch=1)])
        dd.set_meta({"name": "node0000000007"})
        dd.close()
        restore(self.file, self.data, force=True)
        items, last, _, meta = self._recovered()
        self.assertNotIn(b"old", dict(items))
        self.assertEqual((last, meta), (42, {}))

    def test_corrupt_file_leaves_dir_alone(self) -> None:
        """A corrupt file is refused before the directory is made."""
        with open(self.file, "r+b") as f:
            f.truncate(os.path.getsize(self.file) - 3)
        with self.assertRaises(BadBackup):
            restore(self.file, self.data)
        self.assertFalse(os.path.exists(self.data))


class CommandTests(SynchronousTestCase):
    """kvtwist-admin restore: one line and status 1 for a file that is not sound."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def _admin(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = admin.main(list(argv))
        return rc, out.getvalue(), err.getvalue()

    def test_restore_truncated_file(self) -> None:
        """A truncated backup: exit status 1, one line on stderr naming the file."""
        d = self.dir
        path = os.path.join(d, "b.kvt")
        save(sample(), path)
        with open(path, "r+b") as f:
            f.truncate(100)
        rc, out, err = self._admin("restore", path, "--data-dir", os.path.join(d, "x"))
        self.assertEqual((rc, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn(f"restore failed: {path} is not a sound backup", err)

    def test_restore_json(self) -> None:
        """-o json reports the op, epoch and keys restored."""
        d = self.dir
        path = os.path.join(d, "b.kvt")
        save(sample(), path)
        rc, out, _ = self._admin("restore", path, "--data-dir", os.path.join(d, "x"), "-o", "json")
        self.assertEqual(rc, 0)
        self.assertIn('"op": 42', out)
        self.assertIn('"epoch": 2', out)


class NodeTests(SynchronousTestCase):
    """BACKUP at a node: the committed state frozen at the first request, read in chunks."""

    def setUp(self) -> None:
        self.h = Harness()
        self.c = Conn(self.h)

    def _put(self, key: bytes, value: bytes) -> int:
        return self.c.one(wire.req_put(key, value)).op_n

    def test_backup_is_the_state_at_its_first_request(self) -> None:
        """Writes made while the chunks are read are not in the backup, nor is its op moved.

        Values big enough for several chunks, and a write after every chunk.
        """
        big = SNAPSHOT_CHUNK_BYTES // 2
        ops = {bytes([65 + i]): self._put(bytes([65 + i]), bytes([i]) * big) for i in range(5)}
        writer = Conn(self.h)
        asked = []

        def ask(msg: Message) -> Message:
            reply = self.c.one(msg)
            asked.append(msg.request_id)
            writer.one(wire.req_put(b"later%d" % len(asked), b"x"))
            writer.one(wire.req_del(b"A"))
            return reply

        b = fetch(ask)
        self.assertEqual(b.seq, max(ops.values()))
        self.assertEqual(b.keys, sorted(ops))
        self.assertEqual([len(v) for v in b.values], [big] * 5)
        self.assertGreater(len(asked), 2, "a single chunk proves nothing about freezing")
        self.assertEqual(asked, list(range(len(asked))))

    def test_client_rows_and_epochs_travel(self) -> None:
        """Retry rows of writes up to the backup's op come along, as in a state transfer."""
        m = wire.req_put(b"k", b"v")
        m.client_id, m.request_id = "writer-1", 5
        op = self.c.one(m).op_n
        b = fetch(self.c.one)
        self.assertIn(ClientRow("writer-1", 5, op, True), b.clients)

    def test_chunk_out_of_order(self) -> None:
        """An index that is not the one due is refused, naming the one due."""
        self._put(b"a", b"1")
        r = self.c.one(wire.req_backup(3))
        self.assertEqual(r.opcode, wire.OP_ERROR)
        self.assertIn("chunk 0 is due", r.error)
        self.assertEqual(self.c.one(wire.req_backup(0)).opcode, wire.OP_BACKUP + 1)
        r = self.c.one(wire.req_backup(2))
        self.assertIn("chunk 1 is due", r.error)

    def test_complete_backup_is_not_read_further(self) -> None:
        """After the chunk marked done, the next index is refused: start again at 0."""
        self._put(b"a", b"1")
        entries = self.c.one(wire.req_backup(0)).snapshot
        self.assertEqual((len(entries.entries), entries.done), (1, False))
        self.assertTrue(self.c.one(wire.req_backup(1)).snapshot.done)
        r = self.c.one(wire.req_backup(2))
        self.assertIn("complete", r.error)

    def test_refused_without_token(self) -> None:
        """A node with a client token refuses BACKUP until the token is shown."""
        h = Harness()
        h.factory.token = b"s3cret"
        c = Conn(h)
        r = c.one(wire.req_backup(0))
        self.assertEqual(r.opcode, wire.OP_ERROR)
        self.assertIn("authentication required", r.error)
        self.assertEqual(c.one(wire.req_auth(b"s3cret")).opcode, wire.OP_AUTH + 1)
        self.assertEqual(c.one(wire.req_backup(0)).opcode, wire.OP_BACKUP + 1)

    def test_refused_while_no_member(self) -> None:
        """A chain node that is not serving refuses, with retry set."""
        clock = MemoryReactorClock()
        replica = Replica(clock, Store(clock, InlineRunner()), "127.0.0.1:1", zk=object())
        h = Harness()
        h.factory = NodeFactory(clock, replica)
        r = Conn(h).one(wire.req_backup(0))
        self.assertEqual(r.opcode, wire.OP_ERROR)
        self.assertTrue(r.retry)
        self.assertIn("no backup while starting", r.error)
