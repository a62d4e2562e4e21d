"""The chain state machine in memory: nodes wired by iosim pumps, a clock, no threads.

These cover orderings that real processes make hard to hit: a failure while
updates are in flight, a retried write after a head failure, a join with
writes arriving during the state transfer, traffic from a stale predecessor.
Membership comes from a small in-memory registry standing in for ZooKeeper's
znode list (tests/fakes); the real ZooKeeper is exercised by tests/test_chain.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.replica import Unavailable, WriteResult
from kvtwist.proto.kvtwist_pb2 import ChainHello, Update
from kvtwist.wire import Message
from tests.fakes.chain import Net, Node, results


class ChainMachineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()

    def assertIdentical(self, nodes: list[Node]) -> list[tuple[bytes, bytes]]:
        states = [n.state() for n in nodes]
        for s in states[1:]:
            self.assertEqual(s, states[0])
        return states[0]

    def test_roles_and_commit(self) -> None:
        """Three joiners form head, middle, tail; a write commits on all before it is answered."""
        a, b, c = self.net.chain(3)
        self.assertEqual([n.replica.role for n in (a, b, c)], ["head", "middle", "tail"])
        d = a.write(b"k", b"v")
        box: list[Any] = []
        d.addBoth(box.append)
        self.assertEqual(box, [], "answered before the tail had it")
        self.net.settle()
        self.assertEqual(box, [WriteResult(1, True)])
        self.assertEqual(self.assertIdentical([a, b, c]), [(b"k", b"v")])

    def test_non_utf8_keys_replicate_and_transfer(self) -> None:
        """Keys that are not UTF-8 commit down the chain, are deleted there, and reach a
        joiner through state transfer, all in bytewise order."""
        a, b = self.net.chain(2)
        keys = [b"caf\xe9", b"\xff\x00", "café".encode(), b"k"]
        ds = [a.write(k, k + b"!", "cli", i) for i, k in enumerate(keys, 1)]
        ds.append(a.write(b"\x80", None))
        self.net.settle()
        self.assertEqual(results(ds)[-1], WriteResult(5, False))
        gone = a.write(b"\xff\x00", None)
        self.net.settle()
        self.assertEqual(self.successResultOf(gone), WriteResult(6, True))
        again = self._write_settled(a, b"caf\xe9", b"caf\xe9!", "cli", 1)  # a retry
        self.assertEqual(self.successResultOf(again).op_n, 1)
        c = self.net.add()
        self.assertEqual(c.replica.role, "tail")
        want = sorted((k, k + b"!") for k in keys if k != b"\xff\x00")
        self.assertEqual(self.assertIdentical([a, b, c]), want)
        self.assertEqual(c.replica.committed_tree.keys(), ["café".encode(), b"caf\xe9", b"k"])

    def test_only_head_orders_only_tail_reads(self) -> None:
        """A write at a non-head and a read at a non-tail are redirected, not served."""
        a, b, c = self.net.chain(3)
        self.assertIn("not the head", str(self.failureResultOf(b.write(b"k", b"v")).value))
        self.assertIn("not the tail", str(self.failureResultOf(a.replica.read_view()).value))
        self.successResultOf(c.replica.read_view())

    def test_tail_failure_commits_sent_list(self) -> None:
        """Writes the dead tail never acknowledged commit at the new tail."""
        a, b, c = self.net.chain(3)
        # cut the tail off before it can acknowledge anything
        c.alive = False
        for p in c.pumps:
            p.serverIO.loseConnection()
        ds = [a.write(f"k{i}".encode(), b"x") for i in range(5)]
        self.net.settle(rounds=10)  # less than the unreachable-successor timeout
        self.assertEqual([r for r in results(ds) if r is not None], [])
        self.net.kill(c)
        self.assertEqual([r.op_n for r in results(ds)], [1, 2, 3, 4, 5])
        self.assertEqual(b.replica.role, "tail")
        self.assertEqual(len(self.assertIdentical([a, b])), 5)

    def test_middle_failure_resends_suffix(self) -> None:
        """After the middle dies, the head re-sends what the new successor lacks, once."""
        a, b, c = self.net.chain(3)
        self.net.settle()
        # freeze the middle's link to the tail: writes reach the middle, no further
        for p in [p for p in c.pumps if p in b.pumps]:
            self.net.pumps.remove(p)
        ds = [a.write(f"k{i}".encode(), str(i).encode()) for i in range(10)]
        self.net.settle(rounds=10)  # less than the link timeout
        self.assertTrue(all(r is None for r in results(ds)))
        self.net.kill(b)
        self.assertEqual([r.op_n for r in results(ds)], list(range(1, 11)))
        state = self.assertIdentical([a, c])
        self.assertEqual(len(state), 10)
        self.assertEqual(c.replica.last_received, 10)

    def test_batch_in_flight_when_middle_dies(self) -> None:
        """A batch of writes from one connection, stuck past the middle, commits once it dies."""
        a, b, c = self.net.chain(3)
        self.net.settle()
        for p in [p for p in c.pumps if p in b.pumps]:
            self.net.pumps.remove(p)
        batch = [(True, b"k%d" % i, b"v%d" % i, "cli", i, 0, False) for i in range(20)]
        d = a.replica.write_many(batch)
        self.net.settle(rounds=10)
        self.assertNoResult(d)
        self.net.kill(b)
        outcomes = self.successResultOf(d)
        self.assertEqual([o.op_n for o in outcomes], list(range(1, 21)))
        self.assertEqual(len(self.assertIdentical([a, c])), 20)

    def test_batch_with_retries_of_committed_and_uncommitted_writes(self) -> None:
        """Retries in a batch, of a committed write and of one in flight, are not applied again."""
        a, b, c = self.net.chain(3)
        first = self.successResultOf(self._write_settled(a, b"k", b"v", "cli", 1))
        pending = a.replica.write_many([(True, b"p", b"1", "cli", 2, 0, False)])
        d = a.replica.write_many(
            [
                (True, b"k", b"v", "cli", 1, 0, True),
                (True, b"p", b"1", "cli", 2, 0, True),
                (True, b"n", b"2", "cli", 3, 0, False),
            ]
        )
        self.net.settle()
        self.assertEqual([o.op_n for o in self.successResultOf(pending)], [2])
        self.assertEqual([o.op_n for o in self.successResultOf(d)], [first.op_n, 2, 3])
        self.assertEqual(c.replica.last_received, 3, "a retry was applied again")

    def test_batch_at_a_fenced_head_fails_every_write(self) -> None:
        """A head fenced before its batch commits fails each write of it, retryably."""
        a, b, c = self.net.chain(3)
        self.net.settle()
        for p in [p for p in b.pumps if p in a.pumps]:
            self.net.pumps.remove(p)
        d = a.replica.write_many([(True, b"k%d" % i, b"v", "", 0, 0, False) for i in range(5)])
        self.net.settle(rounds=5)
        a.replica.fence("lost the session", voluntary=False)
        outcomes = self.successResultOf(d)
        self.assertEqual(len(outcomes), 5)
        for o in outcomes:
            self.assertIsInstance(o, Unavailable)

    def test_head_failure_continues_numbering(self) -> None:
        """The new head numbers writes after the last it received."""
        a, b, c = self.net.chain(3)
        self.successResultOf(self._write_settled(a, b"x", b"1"))
        self.successResultOf(self._write_settled(a, b"y", b"2"))
        self.net.kill(a)
        self.assertEqual(b.replica.role, "head")
        r = self.successResultOf(self._write_settled(b, b"z", b"3"))
        self.assertEqual(r.op_n, 3)
        self.assertEqual(len(self.assertIdentical([b, c])), 3)

    def test_retried_write_applied_once(self) -> None:
        """A write retried at the new head after the old head died returns its first op number."""
        a, b, c = self.net.chain(3)
        first = a.write(b"k", b"v", client="cli", req=7)
        self.net.settle()
        op = self.successResultOf(first).op_n
        self.net.kill(a)
        again = self.successResultOf(self._write_settled(b, b"k", b"v", "cli", 7))
        self.assertEqual(again.op_n, op)
        self.assertEqual(b.replica.last_received, op, "applied twice")
        other = self.successResultOf(self._write_settled(b, b"k", b"w", "cli", 8))
        self.assertEqual(other.op_n, op + 1)

    def test_join_during_writes(self) -> None:
        """Writes that arrive while a joiner copies the state reach it; all end identical."""
        a, b = self.net.chain(2)
        for i in range(50):
            a.write(f"pre{i:03d}".encode(), b"x")
        self.net.settle()
        port = 9000 + len(self.net.nodes)
        c = Node(self.net, port)
        self.net.nodes[port] = c
        c.replica.join()
        ds = [a.write(f"during{i:03d}".encode(), b"y") for i in range(20)]
        self.net.settle()
        self.assertEqual(c.replica.role, "tail")
        self.assertEqual(b.replica.role, "middle")
        self.assertTrue(all(isinstance(r, WriteResult) for r in results(ds)))
        self.assertEqual(len(self.assertIdentical([a, b, c])), 70)

    def test_joiner_serves_no_reads_before_handoff(self) -> None:
        """Before the old tail hands over, a registered joiner holds reads instead of serving."""
        (a,) = self.net.chain(1)
        port = 9000 + len(self.net.nodes)
        b = Node(self.net, port)
        self.net.nodes[port] = b
        b.replica.join()
        # pump only until the joiner registers, not until the handoff arrives
        for _ in range(50):
            for p in list(self.net.pumps):
                p.pump()
            self.net.clock.advance(0)
            if b.name is not None:
                break
        self.assertIsNotNone(b.name)
        self.assertTrue(b.replica.awaiting_handoff)
        held = b.replica.read_view()
        self.assertNoResult(held)
        self.net.settle()
        self.assertFalse(b.replica.awaiting_handoff)
        self.successResultOf(held)
        self.successResultOf(b.replica.read_view())

    def test_updates_from_stranger_refused(self) -> None:
        """Replication traffic from a node that is not our predecessor is refused."""
        a, b, c = self.net.chain(3)
        conn = c.factory.buildProtocol(None)
        transport = iosim.makeFakeServer(conn)
        conn.makeConnection(transport)
        hello = Message(
            opcode=wire.OP_CHAIN_HELLO,
            c_type=wire.CT_CHAIN,
            hello=ChainHello(sender=a.name or "", config=self.net.registry.config),
        )
        conn.dataReceived(wire.frame(hello))
        update = Message(
            opcode=wire.OP_CHAIN_UPDATE,
            c_type=wire.CT_CHAIN,
            hello=ChainHello(sender=a.name or ""),
            updates=[Update(seq=1, is_put=True, key=b"evil", data=b"x")],
        )
        conn.dataReceived(wire.frame(update))
        self.net.settle()
        self.assertEqual(c.state(), [])
        self.assertEqual(c.replica.last_received, 0)
        self.assertIn(b"not our predecessor", transport.getOutBuffer())

    def test_fenced_node_refuses(self) -> None:
        """A fenced node answers client requests with a retryable error."""
        (a,) = self.net.chain(1)
        a.replica.fence("test")
        f = self.failureResultOf(a.write(b"k", b"v"))
        self.assertIsInstance(f.value, Unavailable)
        self.failureResultOf(a.replica.read_view()).trap(Unavailable)

    def test_expired_lease_holds_tail_reads(self) -> None:
        """A tail whose ZooKeeper lease lapsed does not answer reads from its copy."""
        (a,) = self.net.chain(1)
        a.zk.lease = False
        d = a.replica.read_view()
        self.assertNoResult(d)
        a.zk.lease = True
        self.net.clock.advance(0.1)
        self.successResultOf(d)

    def _write_settled(
        self, node: Node, key: bytes, value: bytes, client: str = "", req: int = 0
    ) -> defer.Deferred[WriteResult]:
        d = node.write(key, value, client, req)
        self.net.settle()
        return d  # type: ignore[no-any-return]

    def test_slow_successor_pauses_intake(self) -> None:
        """A full send buffer toward the successor pauses client connections until it drains."""
        a, b = self.net.chain(2)
        client = a.factory.buildProtocol(None)
        transport = iosim.makeFakeServer(client)
        client.makeConnection(transport)
        assert a.replica.succ is not None
        a.replica.link_congested(a.replica.succ, True)
        self.assertTrue(a.replica.congested)
        self.assertTrue(client.inputPaused())
        a.replica.link_congested(a.replica.succ, False)
        self.assertFalse(a.replica.congested)
        self.assertFalse(client.inputPaused())

    def test_ack_from_stranger_refused(self) -> None:
        """An acknowledgement naming a node other than our successor is refused, commits nothing."""
        a, b, c = self.net.chain(3)
        d = a.write(b"k", b"v")
        assert a.replica.succ is not None
        a.replica.chain_message(
            a.replica.succ,
            Message(
                opcode=wire.OP_CHAIN_ACK,
                c_type=wire.CT_CHAIN,
                op_n=1,
                hello=ChainHello(sender=c.name or ""),
            ),
        )
        self.assertEqual(a.replica.committed_seq, 0)
        self.assertNoResult(d)
