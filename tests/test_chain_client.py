"""The chain client's retry deadline, in memory: a fake membership, a fake pool, a clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.client.chain import DEFAULT_DEADLINE, ChainClient
from kvtwist.client.protocol import ConnectionFailed, KVError
from kvtwist.membership import Member, Membership
from kvtwist.wire import Message

#: The node's default ZooKeeper session timeout: how long a dead member's znode lingers.
NODE_SESSION_TIMEOUT = 10.0

ONE_MEMBER = Membership(1, (Member("node0000000001", 1, ("127.0.0.1", 9001)),))
NO_MEMBERS = Membership(0, ())


class FakeZooKeeper:
    """Answers membership reads from ``view`` at once."""

    root = "/chain"
    hosts = "127.0.0.1:2181"

    def __init__(self, view: Membership) -> None:
        self.view = view

    def members(self) -> Deferred[Membership]:
        return defer.succeed(self.view)


class FakePool:
    """Each request waits (a connection attempt that hangs) or fails until ``up``."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.up = False
        self.pending: list[Deferred[Message]] = []

    def request(self, target: tuple[str, int], msg: Message) -> Deferred[Message]:
        if self.up:
            return defer.succeed(wire.reply(msg.opcode, values=[b"v"]))
        if self.hang:
            d: Deferred[Message] = Deferred()
            self.pending.append(d)
            return d
        return defer.fail(ConnectionFailed("cannot connect to 127.0.0.1:9001: Connection refused"))

    def close(self) -> None:
        pass


def client(view: Membership, pool: FakePool, **kw: Any) -> tuple[ChainClient, Clock]:
    clock = Clock()
    c = ChainClient(clock, FakeZooKeeper(view), **kw)  # type: ignore[arg-type]
    c.pool = pool  # type: ignore[assignment]
    return c, clock


def outcome(d: Deferred[Any]) -> list[Any]:
    box: list[Any] = []
    d.addBoth(box.append)
    return box


class DeadlineTests(SynchronousTestCase):
    def test_hanging_connection_attempt_ends_at_the_deadline(self) -> None:
        """A connection attempt that never completes is abandoned when the deadline passes."""
        pool = FakePool(hang=True)
        c, clock = client(ONE_MEMBER, pool, deadline=3.0)
        c.view = ONE_MEMBER
        box = outcome(c.get("a"))
        clock.advance(2.9)
        self.assertEqual(box, [])
        clock.advance(0.2)
        self.assertEqual(len(box), 1)
        box[0].trap(KVError)
        self.assertTrue(str(box[0].value).startswith("gave up after 3s"), str(box[0].value))
        self.assertTrue(pool.pending[0].called)  # the attempt was cancelled

    def test_retries_stop_at_the_deadline(self) -> None:
        """Refused connections are retried with back-off until, not past, the deadline."""
        c, clock = client(ONE_MEMBER, FakePool(), deadline=2.0)
        c.view = ONE_MEMBER
        box = outcome(c.get("a"))
        clock.pump([0.1] * 19)
        self.assertEqual(box, [])
        clock.pump([0.1] * 2)
        self.assertEqual(len(box), 1)
        self.assertIn("Connection refused", str(box[0].value))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_members_says_so(self) -> None:
        """A root without members (a wrong --zk-root) is reported as such, not as no reply."""
        c, clock = client(NO_MEMBERS, FakePool(), deadline=1.0)
        c.view = NO_MEMBERS
        box = outcome(c.get("a"))
        clock.pump([0.1] * 11)
        self.assertEqual(
            str(box[0].value),
            "gave up after 1s: the chain at /chain has no members (ZooKeeper 127.0.0.1:2181)",
        )

    def test_default_deadline_outlasts_a_failover(self) -> None:
        """With the default deadline a request rides out a member gone for a session timeout."""
        pool = FakePool()
        c, clock = client(ONE_MEMBER, pool)
        c.view = ONE_MEMBER
        box = outcome(c.put("a", b"1"))
        clock.pump([0.5] * int((NODE_SESSION_TIMEOUT + 5) / 0.5))
        self.assertEqual(box, [])
        pool.up = True
        clock.advance(0.5)
        self.assertEqual(len(box), 1)
        self.assertEqual(box[0].op_n, 0)
        self.assertGreater(DEFAULT_DEADLINE, NODE_SESSION_TIMEOUT + 5)

    def test_no_deadline_keeps_trying(self) -> None:
        """deadline=None retries for as long as it takes."""
        pool = FakePool()
        c, clock = client(ONE_MEMBER, pool, deadline=None)
        c.view = ONE_MEMBER
        box = outcome(c.get("a"))
        clock.pump([0.5] * 400)
        self.assertEqual(box, [])
        pool.up = True
        clock.advance(0.5)
        self.assertEqual(box, [b"v"])


class CutOffFromZooKeeper(SynchronousTestCase):
    def test_keeps_its_last_view(self) -> None:
        """With every ZooKeeper read failing, reads still go to the tail it knew and writes
        to the head it knew, through a retry too: a client on a member's side of a partition."""
        view = Membership(
            4,
            (
                Member("node0000000001", 1, ("127.0.0.1", 9001)),
                Member("node0000000002", 2, ("127.0.0.1", 9002)),
            ),
        )

        class CutZooKeeper(FakeZooKeeper):
            def members(self) -> Deferred[Membership]:
                return defer.fail(ConnectionFailed("connection to ZooKeeper lost"))

        targets: list[tuple[str, int]] = []

        class OnceRefused(FakePool):
            def request(self, target: tuple[str, int], msg: Message) -> Deferred[Message]:
                targets.append(target)
                self.up = len(targets) > 1  # the first attempt meets a reset connection
                return super().request(target, msg)

        clock = Clock()
        c = ChainClient(clock, CutZooKeeper(view), deadline=5.0)  # type: ignore[arg-type]
        c.pool = OnceRefused()  # type: ignore[assignment]
        c._set_view(view)
        box = outcome(c.get("a"))
        clock.pump([0.1] * 5)
        self.assertEqual(box, [b"v"])
        self.assertEqual(targets, [("127.0.0.1", 9002)] * 2)
        outcome(c.put("a", b"x"))
        self.assertEqual(targets[-1], ("127.0.0.1", 9001))
        self.assertIs(c.view, view)
