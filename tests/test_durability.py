"""Durable nodes with real ``twistd -n kvnode`` processes, data directories and ZooKeeper.

Each node runs in its own temporary directory, so its default data directory
(``kvtwist-data/<port>``) is private to it; a node restarted on the same
directory and port finds its data again.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

from kazoo.client import KazooClient
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from kvtwist import wire
from kvtwist.procs import ZooKeeperProcess
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.storage import wal
from tests.nodes import TWISTD, NodeProcess, RawClient, dump, wait_for
from tests.test_chain import SESSION, ChainCase
from tests.zkserver import zookeeper_available


def restart(n: NodeProcess) -> NodeProcess:
    """The same node (port, directory, options) started again after it died."""
    again = NodeProcess(port=n.port, args=n.args, directory=n.dir)
    again.start()
    return again


def put_many(port: int, n: int, prefix: str = "k") -> None:
    with RawClient(port) as c:
        replies = c.call(
            *[wire.req_put(f"{prefix}{i:05d}".encode(), f"v{i}".encode()) for i in range(n)]
        )
    for r in replies:
        assert r.opcode == wire.OP_PUT + 1, r


def wait_exit(n: NodeProcess, timeout: float = 20.0) -> int:
    return wait_for(lambda: n.exited, timeout, f"node {n.port} to exit")  # type: ignore[no-any-return]


class StandaloneDurabilityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.nodes: list[NodeProcess] = []

    def tearDown(self) -> None:
        for n in self.nodes:
            n.stop()
        for n in self.nodes:
            n.cleanup()

    def node(self, *args: str) -> NodeProcess:
        n = NodeProcess(args=list(args))
        self.nodes.append(n)
        return n

    def test_restart_after_kill_keeps_every_acknowledged_write(self) -> None:
        """A standalone node killed with SIGKILL comes back with everything it acknowledged."""
        n = self.node().start()
        put_many(n.port, 300)
        before = dump(n.port)
        n.signal(signal.SIGKILL)
        wait_exit(n)
        again = restart(n)
        self.nodes.append(again)
        self.assertEqual(dump(again.port), before)
        self.assertEqual(len(before or []), 300)
        self.assertIn("recovered", again.log())

    def test_in_memory_node_says_so_and_forgets(self) -> None:
        """--in-memory keeps nothing: the log says so and a restart starts empty."""
        n = self.node("--in-memory").start()
        put_many(n.port, 5)
        n.signal(signal.SIGKILL)
        wait_exit(n)
        again = restart(n)
        self.nodes.append(again)
        self.assertEqual(dump(again.port), [])
        self.assertIn("nothing is kept on disk", again.log())
        self.assertFalse((n.dir / "kvtwist-data").exists())

    def test_corrupt_log_refuses_to_start(self) -> None:
        """Damage inside the log makes the node exit with one line naming the file and offset."""
        n = self.node().start()
        put_many(n.port, 50)
        n.stop()
        [segment] = sorted((n.dir / "kvtwist-data" / str(n.port) / "wal").glob("*.log"))
        data = bytearray(segment.read_bytes())
        data[len(data) // 2] ^= 0xFF
        segment.write_bytes(bytes(data))
        again = NodeProcess(port=n.port, args=n.args, directory=n.dir)
        self.nodes.append(again)
        again.start(wait=False)
        self.assertNotEqual(wait_exit(again), 0)
        out = (n.dir / "stdout").read_text()
        self.assertIn(segment.name, out)
        self.assertIn("at byte", out)
        self.assertNotIn("Traceback", out)

    def test_torn_write_of_a_hostile_value_is_cut(self) -> None:
        """A power cut inside a value that embeds valid-looking records of the next op
        loses only that write: the node starts and serves every earlier one."""
        n = self.node().start()
        put_many(n.port, 50)
        before = dump(n.port)
        forged = Update(seq=52, epoch=1, is_put=True, key=b"k00000", data=b"forged")
        payload = forged.SerializeToString()
        value = (
            b"x"
            + struct.pack(">II", len(payload), zlib.crc32(payload))  # format version 1 framing
            + payload
            + wal.encode_records([forged], wal.new_salt())  # version 2, with a guessed salt
            + b"tail"
        )
        with RawClient(n.port) as c:
            [reply] = c.call(wire.req_put(b"evil", value))
        self.assertEqual(reply.opcode, wire.OP_PUT + 1)
        n.signal(signal.SIGKILL)
        wait_exit(n)
        [segment] = sorted((n.dir / "kvtwist-data" / str(n.port) / "wal").glob("*.log"))
        data = segment.read_bytes()
        self.assertTrue(data.endswith(value))
        segment.write_bytes(data[:-3])  # the last record cut short, as a power cut leaves it
        again = restart(n)
        self.nodes.append(again)
        self.assertEqual(dump(again.port), before)
        self.assertEqual(len(before or []), 50)
        self.assertIn("cut a torn record", again.log())

    def test_port_taken_exits_with_one_line(self) -> None:
        """A node whose port is taken exits non-zero at once instead of hanging."""
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        self.addCleanup(holder.close)
        n = NodeProcess(port=holder.getsockname()[1])
        self.nodes.append(n)
        started = time.monotonic()
        n.start(wait=False)
        self.assertNotEqual(wait_exit(n), 0)
        self.assertLess(time.monotonic() - started, 20)
        out = (n.dir / "stdout").read_text()
        self.assertIn("cannot listen", out)
        self.assertNotIn("Traceback", out)


class ChainDurabilityTests(ChainCase):
    def test_whole_chain_killed_and_restarted(self) -> None:
        """kill -9 of every node under a writer: after a restart every acknowledged write
        is there and the copies are identical."""
        nodes = self.chain(3)
        w, out = self.start_writer()
        self.wait_acks(out, 30)
        for n in nodes:
            n.signal(signal.SIGKILL)
        for n in nodes:
            wait_exit(n)
        acked_before = self.acked(out)
        restarted = [restart(n) for n in nodes]
        self.nodes.extend(restarted)
        wait_for(lambda: len(self.member_ports()) == 3, 60, "the chain to re-form")
        self.wait_acks(out, len(acked_before) + 20, 60)
        acks = self.stop_writer(w, out)
        self.assert_converged(restarted, acks)

    def test_zookeeper_pause_loses_nothing(self) -> None:
        """ZooKeeper stopped for 2.5 session timeouts under a writer: sessions expire, the
        chain re-forms from its last members and nothing acknowledged is lost."""
        zk = self.private_zookeeper()
        nodes = self.chain(3)
        w, out = self.start_writer()
        self.wait_acks(out, 30)
        os.kill(zk.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        time.sleep(2.5 * SESSION)  # the fault itself lasts this long
        os.kill(zk.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        resumed = time.monotonic()
        count = len(self.acked(out))
        self.wait_acks(out, count + 20, 60)
        self.recovery_s = time.monotonic() - resumed
        acks = self.stop_writer(w, out)
        wait_for(lambda: len(self.member_ports()) == 3, 60, "every node to rejoin")
        self.assert_converged(nodes, acks)

    def private_zookeeper(self) -> ZooKeeperProcess:
        why = zookeeper_available()
        if why:
            raise SkipTest(why)
        zk = ZooKeeperProcess()
        zk.start()
        self.addCleanup(zk.stop)
        self.zk = zk
        self.kazoo = KazooClient(zk.hosts)
        self.kazoo.start(15)
        self.addCleanup(self.kazoo.stop)
        return zk

    def test_zookeeper_killed_and_restarted_on_its_data(self) -> None:
        """ZooKeeper killed -9 under a writer and restarted on its data a few seconds
        later: the chain writes again and nothing acknowledged is lost."""
        zk = self.private_zookeeper()
        nodes = self.chain(3)
        w, out = self.start_writer()
        self.wait_acks(out, 30)
        zk.kill()
        time.sleep(1.5 * SESSION)  # the outage itself
        zk.restart()
        count = len(self.acked(out))
        self.wait_acks(out, count + 20, 60)
        acks = self.stop_writer(w, out)
        wait_for(lambda: len(self.member_ports()) == 3, 60, "every node to be a member")
        self.assert_converged(nodes, acks)

    def test_short_crash_catches_up_by_delta(self) -> None:
        """A middle node killed and restarted at once rejoins with only what it missed."""
        a, b, c = self.chain(3)
        w, out = self.start_writer()
        self.wait_acks(out, 30)
        b.signal(signal.SIGKILL)
        wait_exit(b)
        count = len(self.acked(out))
        self.wait_acks(out, count + 20, 30)
        again = restart(b)
        self.nodes.append(again)
        wait_for(
            lambda: "catch-up" in again.log() or "joining: state ready" in again.log(),
            60,
            "the restarted node to catch up",
        )
        wait_for(lambda: again.port in self.member_ports(), 60, "the restarted node to rejoin")
        self.wait_acks(out, len(self.acked(out)) + 10, 30)
        acks = self.stop_writer(w, out)
        self.assertTrue(any("by delta" in n.log() for n in (a, c)), "the tail sent a full copy")
        self.assert_converged([a, again, c], acks)

    def test_node_from_an_older_configuration_is_not_the_source(self) -> None:
        """A node removed from the chain, started alone after the others died, waits
        instead of serving its older copy."""
        a, b = self.chain(2)
        put_writer, out = self.start_writer()
        self.wait_acks(out, 10)
        b.stop()  # b leaves; a records itself alone, then commits more
        count = len(self.acked(out))
        self.wait_acks(out, count + 10)
        acks = self.stop_writer(put_writer, out)
        a.signal(signal.SIGKILL)
        wait_exit(a)
        wait_for(lambda: self.member_ports() == [], 30, "the chain to empty")
        old = restart(b)
        self.nodes.append(old)
        wait_for(lambda: "waiting for a node of" in old.log(), 30, "the old node to wait")
        self.assertEqual(self.member_ports(), [])
        status = subprocess.run(
            [
                str(Path(TWISTD).parent / "kvtwist-admin"),
                "--zk",
                self.zk.hosts,
                "--zk-root",
                self.root,
                "status",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertIn(f"127.0.0.1:{old.port}", status.stdout)
        self.assertIn("waiting", status.stdout)
        back = restart(a)
        self.nodes.append(back)
        wait_for(lambda: len(self.member_ports()) == 2, 60, "both to form the chain")
        self.assert_converged([back, old], acks)

    def test_operator_forces_a_restart_from_an_older_copy(self) -> None:
        """When no node of the last configuration comes back, ``kvtwist-admin force-start``
        lets a waiting node restart the chain from its own (older) copy."""
        a, b = self.chain(2)
        w, out = self.start_writer()
        self.wait_acks(out, 10)
        b.stop()
        self.wait_acks(out, len(self.acked(out)) + 10)
        self.stop_writer(w, out)
        a.signal(signal.SIGKILL)
        wait_exit(a)  # a, the only member of the last configuration, never comes back
        wait_for(lambda: self.member_ports() == [], 30, "the chain to empty")
        old = restart(b)
        self.nodes.append(old)
        wait_for(lambda: "waiting for a node of" in old.log(), 30, "the old node to wait")
        admin = str(Path(TWISTD).parent / "kvtwist-admin")
        forced = subprocess.run(
            [admin, "--zk", self.zk.hosts, "--zk-root", self.root, "force-start"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(forced.returncode, 0, forced.stderr)
        self.assertIn(f"127.0.0.1:{old.port}", forced.stdout)
        wait_for(lambda: self.member_ports() == [old.port], 30, "the forced node to start")
        with RawClient(old.port) as c:
            [reply] = c.call(wire.req_put(b"after", b"forced"))
        self.assertEqual(reply.opcode, wire.OP_PUT + 1, reply.error)

