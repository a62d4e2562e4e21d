"""Join races kvtwist-torture found, reproduced without randomness (in memory).

Both need orderings ZooKeeper allows but the in-memory registry of
tests/fakes/coordinator.py never produces: a znode exists before its creator has
the reply, and each node's watch fires at its own time.  ``Controlled`` hands
out those events one by one.

1. A joiner registers twice: the old tail, seeing the joiner's znode, adopts
   it and says hello again; the joiner, still "joining" (its register reply
   not yet in), takes that hello as the end of the backlog and registers again.
2. A stale read after a join: the joiner, named but with a view that lacks
   itself, refuses the old tail's next update; the old tail takes that as
   "joiner went away" and commits alone (its view still says tail), so the
   client is acknowledged; then the joiner, tail in ZooKeeper, accepts the old
   tail's hello and serves reads without that write.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.chain.outcomes import NotHere
from kvtwist.chain.replica import Unavailable
from kvtwist.membership import Membership
from tests.fakes.chain import Net, Node


class Controlled:
    """ZooKeeper's real freedom: each node's watch, and each reply, arrives when it arrives."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.queued: dict[int, list[Membership]] = {}
        self.registrations: list[tuple[defer.Deferred[str], str]] = []
        self.held_members: list[tuple[defer.Deferred[Membership], Node]] = []
        self.hold_members_of: set[int] = set()
        reg = net.registry

        def queue(view: Membership) -> None:
            for port in net.nodes:
                self.queued.setdefault(port, []).append(view)

        reg.deliver = queue

    def control(self, node: Node) -> None:
        zk = node.zk

        def register(address: str, record_version: int | None = None) -> defer.Deferred[str]:
            name = self.net.registry.add(address)  # the znode exists now...
            d: defer.Deferred[str] = defer.Deferred()
            self.registrations.append((d, name))  # ...the reply comes later
            return d

        def members() -> defer.Deferred[Membership]:
            if node.port not in self.hold_members_of:
                return defer.succeed(self.net.registry.view())
            d: defer.Deferred[Membership] = defer.Deferred()
            self.held_members.append((d, node))
            return d

        zk.overrides["register"] = register
        zk.overrides["members"] = members

    def deliver(self, node: Node) -> None:
        for view in self.queued.pop(node.port, []):
            node.replica.set_view(view)

    def reply_register(self) -> None:
        d, name = self.registrations.pop(0)
        d.callback(name)

    def reply_members(self) -> None:
        for d, _ in self.held_members:
            d.callback(self.net.registry.view())
        self.held_members.clear()
        self.hold_members_of.clear()


def pump(net: Net, rounds: int = 20) -> None:
    for _ in range(rounds):
        for p in list(net.pumps):
            p.pump()
        net.clock.advance(0)


def new_node(net: Net) -> Node:
    port = 9000 + len(net.nodes)
    node = Node(net, port)
    net.nodes[port] = node
    return node


class JoinRaces(SynchronousTestCase):
    def test_joiner_registers_once(self) -> None:
        """The old tail's second hello, on seeing the joiner's znode, must not re-register it."""
        net = Net()
        (a,) = net.chain(1)
        zk = Controlled(net)
        b = new_node(net)
        zk.control(b)
        b.replica.join()
        pump(net)  # state transfer, handoff hello: b creates its znode, the reply is pending
        self.assertEqual(len(zk.registrations), 1)
        zk.deliver(a)  # the old tail's watch fires first: it adopts b and says hello again
        pump(net)
        while zk.registrations:
            zk.reply_register()
        for n in (a, b):
            zk.deliver(n)
        pump(net)
        znodes = [m.name for m in net.registry.members if m.address == ("10.0.0.1", b.port)]
        self.assertEqual(len(znodes), 1, f"the joiner registered as {znodes}")

    def test_no_stale_read_after_join(self) -> None:
        """A write acknowledged during a join is visible at the new tail."""
        net = Net()
        a, t = net.chain(2)
        self.successResultOf(_settled(net, a.write(b"k", b"old")))
        zk = Controlled(net)
        j = new_node(net)
        zk.control(j)
        j.replica.join()
        pump(net)  # transfer + handoff: j's znode exists, the register reply is pending
        zk.hold_members_of.add(j.port)
        zk.reply_register()  # j knows its name; its next membership read is slow
        w = a.write(b"k", b"new")
        pump(net)  # the update travels a -> t -> j
        acked = self.successResultOf(w)  # acknowledged to the client
        for n in (a, t, j):
            zk.deliver(n)
        zk.reply_members()
        net.settle()
        self.assertEqual(j.replica.role, "tail")
        view = self.successResultOf(j.replica.read_view())
        self.assertEqual(
            view.tree.get(b"k"), b"new", f"tail serves a stale value after op {acked.op_n}".encode()
        )


def _settled(net: Net, d: Any) -> Any:
    net.settle()
    return d


class AdoptedJoinerTests(SynchronousTestCase):
    def test_joiner_acks_before_it_learns_its_name(self) -> None:
        """The old tail adopts the joiner's link on seeing its znode before the joiner has
        its registration reply: the joiner's acknowledgements, still unsigned, must not
        make the old tail refuse the link (found by the fault campaigns)."""
        net = Net()
        (a,) = net.chain(1)
        zk = Controlled(net)
        b = new_node(net)
        zk.control(b)
        b.replica.join()
        pump(net)
        self.assertEqual(len(zk.registrations), 1)
        zk.deliver(a)  # a adopts b's link; b does not know its name yet
        pump(net)
        w = a.write(b"k", b"v")
        pump(net)
        self.assertFalse(a.replica.succ is None or a.replica.succ.closed, "a refused b")
        self.assertEqual(self.successResultOf(w).op_n, 1)
        zk.reply_register()
        zk.deliver(b)
        net.settle()
        self.assertEqual(b.replica.role, "tail")
        self.assertEqual(b.state(), a.state())


class RestartedNodeTests(SynchronousTestCase):
    def test_restarted_head_clears_its_stale_registration(self) -> None:
        """A head restarted before its old session expired finds its old znode (its own
        address) at the head: it removes it, joins behind the tail, and writes go on
        (found by the campaigns: it forwarded writes to itself, behind themselves)."""
        net = Net()
        a, b, c = net.chain(3)
        self.successResultOf(_settled(net, a.write(b"k", b"1")))
        old = a.name
        a.alive = False  # SIGKILL: links drop, the znode stays until the session expires
        a.replica.stop()
        for p in a.pumps:
            p.serverIO.loseConnection()
            p.clientIO.loseConnection()
        net.settle(rounds=5)
        again = Node(net, a.port)  # the same address
        net.nodes[a.port] = again
        write = again.write(b"x", b"2")  # before it has joined: held, not forwarded
        self.assertNoResult(write)
        again.replica.join()
        net.settle()
        self.assertNotIn(old, [m.name for m in net.registry.members])
        self.assertEqual(again.replica.role, "tail")
        # a member now, it sends the write to the head, never to itself
        where = self.failureResultOf(write).value
        self.assertIsInstance(where, NotHere)
        self.assertEqual(where.target, b.replica.own_address)
        self.assertEqual(b.replica.role, "head")
        self.assertEqual(self.successResultOf(_settled(net, b.write(b"y", b"3"))).op_n, 2)
        self.assertEqual(again.state(), c.state())

    def test_no_request_is_forwarded_to_this_very_node(self) -> None:
        """A view naming this node's own address as head makes a write retryable here,
        never a forward to itself."""
        net = Net()
        a, b = net.chain(2)
        b.replica.own_address = a.replica.own_address  # as if b were a's restarted self
        f = self.failureResultOf(b.write(b"k", b"v"))
        self.assertIsInstance(f.value, Unavailable)
        self.assertIn("stale registration", str(f.value))
