"""Mixed chains in memory: a member that does not speak kvtwist (an original C server).

The foreign member is the stand-in of tests/foreign_server.py, served over
iosim pumps beside the in-memory nodes of tests/fakes/chain.py.  Real
processes and a real ZooKeeper are in tests/test_foreign_chain.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.chain.foreign import Verdict, examine
from kvtwist.chain.record import ChainRecord
from kvtwist.chain.replica import Replica
from kvtwist.membership import Member
from kvtwist.server import NodeFactory
from kvtwist.store import InlineRunner, Store
from tests.fakes.chain import Net, Node, pump_between, results
from tests.foreign_server import OriginalFactory, OriginalServer, drop

FOREIGN_LINE = "does not speak kvtwist's chain protocol"


class Silent(Protocol):
    """Takes everything, answers nothing: a member that is alive but stuck."""


class Hangup(Protocol):
    """Closes every connection at once: a node stopping, or one that crashed."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()


class ProbeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.pumps: list[iosim.IOPump] = []

    def connector(self, *factories: Factory | None) -> Any:
        """Each connection goes to the next factory; None refuses it."""
        queue = list(factories)

        def connect(host: str, port: int, proto: Any) -> defer.Deferred[Any]:
            factory = queue.pop(0) if len(queue) > 1 else queue[0]
            if factory is None:
                return defer.fail(ConnectionRefusedError())
            server = factory.buildProtocol(None)
            self.pumps.append(pump_between(server, proto, self.clock))
            return defer.succeed(proto)

        return connect

    def verdict(self, *factories: Factory | None, timeout: float = 3.0) -> tuple[Verdict, str]:
        d = examine(self.connector(*factories), self.clock, ("127.0.0.1", 1), timeout)
        for _ in range(50):
            for p in self.pumps:
                p.pump()
            self.clock.advance(0.1)
        result: tuple[Verdict, str] = self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [], "a timer left behind")
        return result

    def kvtwist_node(self, token: bytes | None = None) -> Factory:
        replica = Replica(self.clock, Store(self.clock, InlineRunner()), "127.0.0.1:1")
        return NodeFactory(self.clock, replica, token=token)

    def test_kvtwist_node_answers_as_kvtwist(self) -> None:
        """A kvtwist node, with or without a client token, is recognised as one."""
        self.assertEqual(self.verdict(self.kvtwist_node())[0], Verdict.KVTWIST)
        self.assertEqual(self.verdict(self.kvtwist_node(token=b"t"))[0], Verdict.KVTWIST)

    def test_original_server_is_foreign_and_untouched(self) -> None:
        """The original server answers the question as the original does, and takes no harm."""
        server = OriginalServer(drop)
        verdict, why = self.verdict(OriginalFactory(server))
        self.assertEqual(verdict, Verdict.FOREIGN)
        self.assertIn("without kvtwist's fields", why)
        self.assertEqual(server.bad, [], "the question was not an original request")

    def test_unreachable_or_silent_member_is_unknown(self) -> None:
        """A member that cannot be reached, or does not answer, is not judged foreign."""
        self.assertEqual(self.verdict(None)[0], Verdict.UNKNOWN)
        verdict, why = self.verdict(Factory.forProtocol(Silent), timeout=1.0)
        self.assertEqual(verdict, Verdict.UNKNOWN)
        self.assertIn("no answer", why)

    def test_one_hangup_is_not_enough(self) -> None:
        """A connection closed without an answer once (a node restarting) is asked again;
        only a second silence makes the member foreign."""
        hangup = Factory.forProtocol(Hangup)
        self.assertEqual(self.verdict(hangup, self.kvtwist_node())[0], Verdict.KVTWIST)
        self.assertEqual(self.verdict(hangup, None)[0], Verdict.UNKNOWN)
        self.assertEqual(self.verdict(hangup, hangup)[0], Verdict.FOREIGN)


class ForeignNode:
    """An original server among the in-memory nodes."""

    def __init__(self, net: Net, port: int, position: int | None = None) -> None:
        self.server = OriginalServer(drop)
        self.factory = OriginalFactory(self.server)
        self.alive = True
        self.pumps: list[iosim.IOPump] = []
        self.port = port
        address = f"10.0.0.9:{port}"
        net.nodes[port] = self  # type: ignore[assignment]
        if position is None:
            self.name = net.registry.add(address)
        else:
            # registered before the kvtwist members that follow it and never removed
            self.name = f"node{9000 + port:010d}"
            net.registry.members.insert(position, Member(self.name, -1, ("10.0.0.9", port)))
            net.registry.changed()


class MixedChainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "kvtwist.chain":
                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def write_all(self, node: Node, n: int, prefix: str = "k") -> list[Any]:
        ds = [node.write(f"{prefix}{i:03d}".encode(), b"v") for i in range(n)]
        self.net.settle()
        out = results(ds)
        self.assertTrue(all(hasattr(r, "op_n") for r in out), out)
        return out

    def names(self) -> list[str]:
        return [m.name for m in self.net.registry.members]

    def record_names(self) -> frozenset[str]:
        return ChainRecord.decode(*self.net.registry.record).names

    def assert_left_out(self, foreign: ForeignNode) -> None:
        self.assertNotIn(foreign.name, self.names())
        self.assertEqual(foreign.server.bad, [], "a chain frame reached the original server")
        said = [line for line in self.lines if FOREIGN_LINE in line]
        self.assertEqual(len(said), 1, said)
        self.assertIn(foreign.name, said[0])

    def test_foreign_tail_is_left_out(self) -> None:
        """An original server registering behind a chain with data: the tail asks it,
        deletes its znode, and the chain keeps its data and takes writes."""
        a, b = self.net.chain(2)
        first = self.write_all(a, 5)
        foreign = ForeignNode(self.net, 9500)
        self.net.settle()
        self.assert_left_out(foreign)
        later = self.write_all(a, 5, prefix="after")
        self.assertEqual(later[0].op_n, first[-1].op_n + 1)
        self.assertEqual(b.replica.role, "tail")
        self.assertEqual(len(b.state()), 10)
        self.assertEqual(self.record_names(), {a.name, b.name})

    def test_foreign_member_in_the_middle(self) -> None:
        """A foreign member between two kvtwist members is left out; writes go on."""
        a, b = self.net.chain(2)
        self.write_all(a, 3)
        foreign = ForeignNode(self.net, 9500, position=1)
        self.net.settle()
        self.assert_left_out(foreign)
        self.write_all(a, 3, prefix="after")
        self.assertEqual(len(b.state()), 6)
        self.assertEqual(self.record_names(), {a.name, b.name})

    def test_foreign_head_is_left_out_by_its_successor(self) -> None:
        """A foreign member ahead of the chain never links: its kvtwist successor asks it
        after a link timeout, deletes its znode and is head again."""
        a, b = self.net.chain(2)
        self.write_all(a, 3)
        foreign = ForeignNode(self.net, 9500, position=0)
        self.net.settle()
        self.assert_left_out(foreign)
        self.assertEqual(a.replica.role, "head")
        self.write_all(a, 3, prefix="after")
        self.assertEqual(len(b.state()), 6)
        self.assertEqual(self.record_names(), {a.name, b.name})

    def test_predecessor_that_cannot_link_is_not_foreign(self) -> None:
        """A kvtwist predecessor that cannot reach us is asked, answers as kvtwist and
        stays; it is the predecessor that removes us, as for any unreachable successor."""
        a, b = self.net.chain(2)
        self.write_all(a, 2)
        for p in [p for p in b.pumps if p in a.pumps]:
            p.serverIO.loseConnection()
            p.clientIO.loseConnection()
        self.net.blocked.add((a.port, b.port))
        self.net.settle()
        self.assertIn(a.name, self.names())
        self.assertEqual([line for line in self.lines if FOREIGN_LINE in line], [])

    def test_joiner_leaves_a_foreign_only_root_alone_and_waits(self) -> None:
        """A node started into a root whose only member is an original server (no kvtwist
        record): it sends it no chain frame, does not remove it, and waits."""
        foreign = ForeignNode(self.net, 9500)
        n = Node(self.net, 9000)
        self.net.nodes[9000] = n
        n.replica.join()
        self.net.settle()
        self.assertEqual(n.replica.status, "waiting")
        self.assertIn("do not speak kvtwist", n.replica.life.why)
        self.assertIn(foreign.name, n.replica.life.why)
        self.assertEqual(self.names(), [foreign.name])
        self.assertEqual(foreign.server.bad, [])
        self.failureResultOf(n.write(b"k", b"v"))
        self.net.clock.advance(5)
        self.net.settle()
        self.assertEqual(n.replica.status, "waiting")
        self.assertEqual(foreign.server.bad, [], "asked again and again")

    def test_member_restarts_past_a_foreign_tail_with_its_data(self) -> None:
        """The chain's last member comes back to find an original server registered in
        its root: it deletes its znode and restarts the chain from its own copy."""
        a = self.net.add()
        self.write_all(a, 5)
        a.zk.connected = False  # ZooKeeper away: it cannot rejoin yet
        self.net.registry.remove(a.name or "")
        a.replica.zk_state("lost")
        self.net.settle()
        foreign = ForeignNode(self.net, 9500)
        a.zk.connected = True
        a.replica.zk_state("connected")
        self.net.settle()
        self.assert_left_out(foreign)
        self.assertEqual(a.replica.role, "head+tail")
        self.assertEqual(len(a.state()), 5)
        self.write_all(a, 1, prefix="after")
