"""Partitions that leave a member, and the clients that reach it, on the wrong side.

In memory (tests/fakes/chain.py's ``Net``, one clock): a member cut off
from its neighbours and from ZooKeeper keeps its last view and, for as long
as its lease lasts, may answer the reads of clients that still reach it.  The
chain may go on without it only once that lease is surely over
(docs/protocol.md, "Timing").  Each test here failed on the code before the
rule was kept.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.chain.link import LinkConfig
from kvtwist.chain.membership import CLOCK_RATE_BOUND, REMOVAL_MARGIN, VIEW_RETRY_DELAY
from kvtwist.chain.outcomes import NotHere, Unavailable, WriteResult
from kvtwist.chain.reads import READ_WAIT
from kvtwist.chain.replica import MEMBER_WAIT
from kvtwist.chain.serving import LIMBO_RETRY_DELAY
from tests.fakes.chain import Net, Node, results


def cut_link(net: Net, a: Node, b: Node) -> None:
    """Drop the connections between ``a`` and ``b`` and refuse new ones both ways."""
    for p in [p for p in a.pumps if p in b.pumps]:
        p.serverIO.loseConnection()
        p.clientIO.loseConnection()
    net.blocked |= {(a.port, b.port), (b.port, a.port)}


def run_for(net: Net, seconds: float, step: float, each: Any) -> None:
    """Advance the clock in ``step``s for ``seconds``, pumping, and call ``each()`` every step."""
    end = net.clock.seconds() + seconds
    while net.clock.seconds() < end:
        for p in list(net.pumps):
            p.pump()
        net.clock.advance(step)
        each()


def read_value(node: Node, key: bytes) -> bytes | None:
    """What the node answers a client's read with now; None when it does not serve."""
    if not node.replica.serving_reads:
        return None
    return node.replica.committed_tree.get(key)


class TailPartitionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()

    def test_removed_tail_serves_no_stale_read_after_a_commit(self) -> None:
        """A tail cut off from its predecessor, and from ZooKeeper just before the
        predecessor removes it, never answers a read with a value older than a
        write the chain has acknowledged meanwhile."""
        a, b, c = self.net.chain(3)
        first = a.write(b"k", b"v1")
        self.net.settle()
        self.assertEqual(self.successResultOf(first).op_n, 1)
        cut_link(self.net, b, c)
        t0 = self.net.clock.seconds()
        d = a.write(b"k", b"v2")
        acked: list[float] = []
        d.addCallback(lambda r: acked.append(self.net.clock.seconds()) or r)
        stale: list[float] = []

        def look() -> None:
            if acked and read_value(c, b"k") == b"v1":
                stale.append(self.net.clock.seconds())
            # the tail loses ZooKeeper a little before b gives up on it
            if c.zk.cut_at is None and self.net.clock.seconds() - t0 > 2.5:
                c.zk.cut()

        run_for(self.net, 15.0, 0.05, look)
        self.assertTrue(acked, "the write never committed without the cut-off tail")
        self.assertEqual(stale, [], "the removed tail answered reads older than a commit")
        self.assertEqual(self.successResultOf(d).op_n, 2)
        self.assertFalse(c.replica.serving_reads)

    def test_predecessor_holds_for_the_successor_lease_it_was_told(self) -> None:
        """A successor that holds a longer lease than its predecessor says so in its
        HELLO; the predecessor's hold after removing it covers that lease."""
        a, b = self.net.chain(2)
        self.net.kill(b)
        c = Node(self.net, 9100, LinkConfig(lease=9.0))
        self.net.nodes[c.port] = c
        c.replica.join()
        self.net.settle()
        self.assertEqual(c.replica.role, "tail")
        rate = CLOCK_RATE_BOUND
        self.assertGreaterEqual(
            a.replica.members.removal_wait(), 9.0 * (1 + rate) / (1 - rate) + REMOVAL_MARGIN
        )
        cut_link(self.net, a, c)
        c.zk.cut()
        d = a.write(b"k", b"v")
        # a removes c one link timeout after the cut; c may serve for 9 s more
        run_for(self.net, a.replica.link_timeout + 9.0, 0.1, lambda: None)
        self.assertNoResult(d)
        run_for(self.net, 3.0, 0.1, lambda: None)
        self.assertEqual(self.successResultOf(d).op_n, 1)

    def test_removed_member_whose_confirming_read_fails_stops_serving(self) -> None:
        """A member that sees a view without itself, and whose fresh read fails,
        tries again and leaves the chain, instead of acting as head and tail."""
        a, b, c = self.net.chain(3)
        c.zk.failing_reads = 1
        name = c.name
        assert name is not None
        self.net.registry.remove(name)  # b removed it, say
        self.assertFalse(c.replica.fenced, "the failed read decided nothing")
        self.net.clock.advance(VIEW_RETRY_DELAY)
        self.assertTrue(c.replica.fenced)
        self.assertFalse(c.replica.serving_reads)

    def test_member_whose_znode_is_gone_loses_its_lease(self) -> None:
        """Once a linearized read finds a member's znode gone, its lease no longer
        holds, and the probe's word fences it even if no view ever says so."""
        a, b, c = self.net.chain(3)
        name = c.name
        assert name is not None
        self.assertEqual(c.zk.lease_name, name)
        self.assertTrue(c.replica.serving_reads)
        c.zk.failing_reads = 100  # it never manages to read a view
        self.net.registry.members = [m for m in self.net.registry.members if m.name != name]
        self.assertFalse(c.zk.lease_valid())
        self.assertFalse(c.replica.serving_reads)
        c.replica.znode_gone(name)
        self.assertTrue(c.replica.fenced)
        self.assertIsNone(c.zk.lease_name)

    def test_chain_restarted_empty_holds_for_the_members_before_it(self) -> None:
        """A node that restarts an empty chain from its copy waits out the leases of
        the members that vanished before it serves or commits."""
        (a,) = self.net.chain(1)
        first = a.write(b"k", b"v")
        self.net.settle()
        self.assertEqual(self.successResultOf(first).op_n, 1)
        self.net.registry.remove(a.name or "")
        a.replica.zk_state("lost")
        self.net.settle(rounds=3)
        self.assertEqual(a.replica.role, "head+tail")
        self.assertTrue(a.replica.tail_held())
        read = a.replica.read_view()
        self.assertNoResult(read)
        self.net.clock.advance(a.replica.members.removal_wait())
        self.successResultOf(read)


    def test_removal_of_unknown_outcome_holds_a_session_longer(self) -> None:
        """When ZooKeeper's answer to the deletion is lost (it may still have been
        applied), the predecessor holds a session timeout longer than for an
        acknowledged one."""
        a, b, c = self.net.chain(3)
        registry = self.net.registry

        def lost_answer(name: str) -> defer.Deferred[None]:
            registry.remove(name)  # applied, but the answer never came
            return defer.fail(ConnectionRefusedError("connection to ZooKeeper lost"))

        b.zk.overrides["remove_member"] = lost_answer
        cut_link(self.net, b, c)
        start = self.net.clock.seconds()
        removed_at: list[float] = []

        def look() -> None:
            if not removed_at and c.name not in registry.view():
                removed_at.append(self.net.clock.seconds())

        run_for(self.net, b.replica.link_timeout + 1.0, 0.05, look)
        self.assertTrue(removed_at, "b never removed its successor")
        held = b.replica.tail_hold_until - removed_at[0]
        wait = b.replica.members.removal_wait() + b.replica.session_timeout()
        self.assertGreaterEqual(held, wait - 0.1)
        self.assertLess(removed_at[0] - start, b.replica.link_timeout + 1.0)

    def test_new_tail_serves_nothing_older_than_it_applied(self) -> None:
        """A middle that becomes tail while the chain record cannot be updated (so it
        cannot commit yet) serves no read until it has committed what it applied: the
        tail before it may have served those writes (found by the simulation)."""
        a, b, c = self.net.chain(3)
        d = a.write(b"k", b"v1")
        self.net.settle()
        self.successResultOf(d)
        # the next write reaches b, which cannot tell whether c (the tail) got it
        # and served it before it went away
        cut_link(self.net, b, c)
        second = a.write(b"k", b"v2")
        self.net.settle(rounds=5)
        self.assertNoResult(second)
        self.assertGreater(b.replica.applied_seq, b.replica.committed_seq)

        def unreachable(data: bytes, version: int) -> defer.Deferred[bool]:
            return defer.fail(ConnectionRefusedError("ZooKeeper unreachable"))

        b.zk.overrides["write_record"] = unreachable
        self.net.kill(c)
        self.assertEqual(b.replica.role, "tail")
        self.assertLess(b.replica.committed_seq, b.replica.applied_seq)
        self.assertFalse(b.replica.serving_reads)

    def test_a_hold_is_never_shortened_by_another(self) -> None:
        """The answer to one removal ends the hold that waited for it, never a longer
        hold for something else (another removal of unknown outcome, a restart)."""
        (a,) = self.net.chain(1)
        now = self.net.clock.seconds()
        a.replica.hold_tail(10.0, "removed x")
        a.replica.hold_tail(30.0, "removed y")
        a.replica.hold_tail(2.0, "removed y")  # y's deletion answered
        self.assertEqual(a.replica.tail_hold_until, now + 10.0)
        a.replica.hold_tail(1.0, "removed x")
        self.assertEqual(a.replica.tail_hold_until, now + 2.0)
        self.net.clock.advance(2.0)
        self.assertFalse(a.replica.tail_held())

    def test_reads_wait_out_a_hold_longer_than_the_read_wait(self) -> None:
        """A read at a tail holding for a removed member waits for the hold to end, even
        past READ_WAIT, and is then served (not refused)."""
        (a,) = self.net.chain(1)
        a.replica.hold_tail(READ_WAIT + 3.0)
        read = a.replica.read_view()
        self.net.clock.advance(READ_WAIT + 1.0)
        self.assertNoResult(read)
        self.net.clock.advance(2.5)
        self.successResultOf(read)


class BecomingMemberTests(SynchronousTestCase):
    """A node on its way into the chain holds requests instead of refusing them."""

    def setUp(self) -> None:
        self.net = Net()

    def _joiner_until_registered(self) -> Node:
        port = 9000 + len(self.net.nodes)
        b = Node(self.net, port)
        self.net.nodes[port] = b
        return b

    def test_requests_at_a_joining_node_wait_for_it(self) -> None:
        """A write and a read sent to a node still joining are answered once it is
        a member (the write goes to the head, the read is served), not refused."""
        (a,) = self.net.chain(1)
        first = a.write(b"k", b"v")
        self.net.settle()
        self.successResultOf(first)
        b = self._joiner_until_registered()
        write = b.write(b"x", b"1")
        read = b.replica.read_view()
        self.assertNoResult(write)
        self.assertNoResult(read)
        b.replica.join()
        self.net.settle()
        self.assertEqual(b.replica.role, "tail")
        where = self.failureResultOf(write).value
        self.assertIsInstance(where, NotHere)
        self.assertEqual(where.target, a.replica.own_address)
        view = self.successResultOf(read)
        self.assertEqual(view.tree.get(b"k"), b"v")

    def test_dropped_joiner_limbo_retries_with_a_delay(self) -> None:
        """A tail that dropped a joiner and cannot read the membership (ZooKeeper
        unreachable) looks again after a delay, not in a tight loop."""
        (a,) = self.net.chain(1)
        reads = a.zk.read_times
        reads.clear()
        a.zk.failing_reads = 3
        a.replica.joiner_limbo = "10.0.0.9:9"
        voiding = a.replica.life.begin("voiding a dropped joiner")
        a.replica.join_server.end_limbo("10.0.0.9:9", voiding)
        self.assertEqual(len(reads), 1)
        self.net.clock.advance(LIMBO_RETRY_DELAY)
        self.assertEqual(len(reads), 2)
        for _ in range(3):
            self.net.clock.advance(LIMBO_RETRY_DELAY)
        self.assertIsNone(a.replica.joiner_limbo)  # it read the view in the end

    def test_held_request_is_refused_after_member_wait(self) -> None:
        """A node that does not become a member within MEMBER_WAIT answers the held
        request with a retryable error."""
        b = self._joiner_until_registered()
        d = b.write(b"x", b"1")
        self.net.clock.advance(MEMBER_WAIT - 0.1)
        self.assertNoResult(d)
        self.net.clock.advance(0.2)
        self.assertIsInstance(self.failureResultOf(d).value, Unavailable)

    def test_batch_at_a_registering_node_waits(self) -> None:
        """Writes that arrive together at a node still registering all wait and then
        go their way."""
        (a,) = self.net.chain(1)
        b = self._joiner_until_registered()
        ds = b.replica.write_many([(True, b"k%d" % i, b"v", "", 0, 0, False) for i in range(3)])
        self.assertNoResult(ds)
        b.replica.join()
        self.net.settle()
        outcomes = self.successResultOf(ds)
        self.assertTrue(all(isinstance(o, NotHere) for o in outcomes), outcomes)
        # and the head takes them
        done = [a.write(b"k%d" % i, b"v") for i in range(3)]
        self.net.settle()
        self.assertTrue(all(isinstance(r, WriteResult) for r in results(done)))





class ReadWaitTests(SynchronousTestCase):
    def test_a_wake_for_another_change_does_not_refuse_a_waiting_read(self) -> None:
        """A read waiting for the tail to serve (here: the predecessor's handoff) is
        woken by an unrelated change first; it waits on, and is answered once the
        tail serves, instead of being refused as "not ready"."""
        net = Net()
        _, tail = net.chain(2)
        tail.replica.awaiting_handoff = True
        d = tail.replica.read_view()
        tail.replica.reads.wake()  # as a new view does, before the handoff
        net.clock.advance(0.01)
        self.assertEqual(results([d]), [None])  # still waiting, not refused
        tail.replica.awaiting_handoff = False
        tail.replica.reads.wake()
        [view] = results([d])
        self.assertEqual(view.seq, tail.replica.committed_seq)
