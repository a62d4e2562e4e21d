"""The chain and its disks, in memory: log before forwarding, dropping writes the
chain never committed, and disks that fail.

Nodes are the in-memory ones of tests/fakes/chain.py; here their stores log
to a ``DataDir`` on a ``FakeDisk`` (or to nothing, with a runner whose jobs are
held back), so every ordering is deterministic.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.chain.replica import Replica, Unavailable
from kvtwist.storage import DataDir
from kvtwist.storage.fakedisk import FakeDisk
from kvtwist.store import InlineRunner, Store
from tests.fakes.chain import Net, Node


class HeldRunner:
    """Runs writer-thread jobs only when released: a disk that is slow to sync."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []

    def write(self, f: Callable[[], Any]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((f, d))
        return d

    read = InlineRunner.read

    def release(self) -> None:
        jobs, self.jobs = self.jobs, []
        for f, d in jobs:
            defer.maybeDeferred(f).chainDeferred(d)


def give_disk(node: Node, disk: FakeDisk) -> DataDir:
    """Make ``node`` log to a data directory on ``disk`` (before it joins)."""
    journal = DataDir(f"/data/{node.port}", disk=disk)  # type: ignore[arg-type]
    recovered = journal.open()
    store = Store(node.net.clock, InlineRunner(), journal)
    store.restore(recovered)
    node.store = node.replica.store = store
    return journal


def durable_chain(net: Net, n: int, disk: FakeDisk) -> list[Node]:
    nodes = []
    for _ in range(n):
        port = 9000 + len(net.nodes)
        node = Node(net, port)
        net.nodes[port] = node
        give_disk(node, disk)
        node.replica.join()
        net.settle()
        nodes.append(node)
    return nodes


def cut(net: Net, a: Node, b: Node) -> None:
    """No traffic between ``a`` and ``b`` from now on, in either direction."""
    for p in [p for p in a.pumps if p in b.pumps]:
        p.serverIO.loseConnection()
        p.clientIO.loseConnection()
    net.blocked |= {(a.port, b.port), (b.port, a.port)}


class ChainDiskTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()
        self.disk = FakeDisk()

    def settled_write(self, node: Node, key: bytes, value: bytes) -> Any:
        d = node.write(key, value)
        self.net.settle()
        return self.successResultOf(d)

    def test_update_goes_down_only_once_logged(self) -> None:
        """Until the writer thread has logged an update, the successor does not see it."""
        a, b = self.net.chain(2)
        held = HeldRunner()
        a.store.runner = held  # type: ignore[assignment]
        d = a.write(b"k", b"v")
        self.net.settle(rounds=5)
        self.assertEqual(a.replica.last_received, 1)
        self.assertEqual(b.replica.last_received, 0, "forwarded before it was on disk")
        self.assertNoResult(d)
        held.release()
        self.net.settle()
        self.assertEqual(b.replica.last_received, 1)
        self.assertEqual(self.successResultOf(d).op_n, 1)

    def test_old_head_drops_the_write_nobody_else_got(self) -> None:
        """A head that logged a write it could not pass on, then lost its session, drops
        that write when it rejoins; the op number it used names the new head's write."""
        a, b, c = durable_chain(self.net, 3, self.disk)
        for i in range(3):
            self.settled_write(a, f"k{i}".encode(), b"x")
        cut(self.net, a, b)
        orphan = a.write(b"orphan", b"never committed")
        self.net.settle(rounds=5)
        self.assertEqual(a.replica.last_received, 4)
        self.assertNoResult(orphan)
        # a's session expires: b becomes head with a new epoch and numbers op 4 itself
        self.net.registry.remove(a.name or "")
        a.replica.zk_state("lost")
        self.failureResultOf(orphan).trap(Unavailable)
        new = b.write(b"new", b"committed")
        self.net.settle()
        self.assertEqual(self.successResultOf(new).op_n, 4)
        self.assertEqual(a.replica.role, "tail", "the old head did not rejoin")
        self.assertEqual(a.replica.last_catch_up, "delta")
        states = [n.state() for n in (a, b, c)]
        self.assertEqual(states[0], states[1])
        self.assertEqual(states[0], states[2])
        self.assertIn((b"new", b"committed"), states[0])
        self.assertNotIn(b"orphan", dict(states[0]))
        self.assertEqual(a.replica.state.history.marks, c.replica.state.history.marks)
        # and its disk agrees: reopened, it holds what the chain holds
        assert a.store.journal is not None
        a.store.journal.close()
        again = DataDir(f"/data/{a.port}", disk=self.disk).open()  # type: ignore[arg-type]
        self.assertEqual(again.tree.items(), states[0])

    def test_standalone_disk_full_refuses_the_write_and_recovers(self) -> None:
        """A write the disk refuses is answered with a retryable error and not applied;
        once the disk has room, writes go on and nothing half-written remains."""
        journal = DataDir("/standalone", disk=self.disk)  # type: ignore[arg-type]
        store = Store(self.net.clock, InlineRunner(), journal)
        store.restore(journal.open())
        replica = Replica(self.net.clock, store)
        first = replica.write(True, b"a", b"1")
        self.net.clock.advance(0)
        self.assertEqual(self.successResultOf(first).op_n, 1)
        self.disk.fail("write", errno.ENOSPC, times=None)
        full = replica.write(True, b"b", b"2")
        self.net.clock.advance(0)
        f = self.failureResultOf(full)
        f.trap(Unavailable)
        self.assertIn("No space left", str(f.value))
        self.assertEqual(replica.committed_tree.items(), [(b"a", b"1")])
        self.disk.heal()
        again = replica.write(True, b"c", b"3")
        self.net.clock.advance(0)
        self.assertEqual(self.successResultOf(again).op_n, 2)
        journal.close()
        back = DataDir("/standalone", disk=self.disk).open()  # type: ignore[arg-type]
        self.assertEqual(back.tree.items(), [(b"a", b"1"), (b"c", b"3")])

    def test_member_with_a_failing_disk_leaves_and_the_chain_goes_on(self) -> None:
        """A middle node whose disk fails leaves the chain instead of stalling it."""
        a, b, c = durable_chain(self.net, 3, self.disk)
        self.settled_write(a, b"before", b"1")
        self.disk.fail("fsync", errno.EIO, times=None)
        # only b's files fail: give the others a healthy disk of their own
        for n in (a, c):
            n.store.journal = None
        d = a.write(b"during", b"2")
        self.net.settle()
        self.assertEqual(self.successResultOf(d).op_n, 2)
        self.assertNotIn(b.name, [m.name for m in self.net.registry.members])
        self.assertIn((b"during", b"2"), c.state())
        self.assertEqual(b.replica.status, "fenced")
        # the disk recovers: b comes back behind c with what it missed
        self.disk.heal()
        self.net.settle()
        self.assertEqual(b.replica.role, "tail")
        self.assertEqual(b.state(), c.state())


class ReadHeldRunner(InlineRunner):
    """Writes run at once; reads (such as producing snapshot chunks) wait for release."""

    def __init__(self) -> None:
        self.held = HeldRunner()

    def read(self, f: Callable[[], Any]) -> defer.Deferred[Any]:  # type: ignore[override]
        return self.held.write(f)


class BacklogBoundTests(SynchronousTestCase):
    def test_joiner_backlog_pauses_client_intake(self) -> None:
        """Writes that pile up for a joiner whose copy is not through count against the
        memory bound: beyond it client intake pauses, and it resumes once they are sent."""
        net = Net()
        (a,) = net.chain(1)
        for i in range(5):
            a.write(f"pre{i}".encode(), b"x")
        net.settle()
        a.replica.state.recent.clear()  # too old for a delta: the joiner needs a full copy
        runner = ReadHeldRunner()
        a.store.runner = runner
        a.replica.writes.intake.limit = 2_000
        j = Node(net, 9100)
        net.nodes[9100] = j
        j.replica.join()
        net.settle(rounds=5)
        ds = [a.write(f"during{i}".encode(), b"v" * 100) for i in range(20)]
        net.settle(rounds=5)
        self.assertGreater(a.replica.backlog_bytes, 2_000)
        self.assertTrue(a.replica.congested, "a stalled joiner's backlog grew without bound")
        runner.held.release()
        for _ in range(20):
            runner.held.release()
            net.settle(rounds=3)
        net.settle()
        self.assertEqual(a.replica.backlog_bytes, 0)
        self.assertFalse(a.replica.congested)
        self.assertEqual(j.replica.role, "tail")
        self.assertEqual(j.state(), a.state())
        self.assertEqual(len([d for d in ds if d.called]), 20)
