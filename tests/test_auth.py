"""Chain-link authentication in memory: the handshake, its failures, and the node's gate."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.auth import (
    AuthError,
    Initiator,
    Responder,
    auth_message,
    authenticate,
    load_key,
)
from kvtwist.chain.link import ChainConnection, LinkConfig
from kvtwist.chain.replica import Replica
from kvtwist.proto.kvtwist_pb2 import ChainAuth, ChainHello
from kvtwist.secretfile import KeyFileError
from kvtwist.server import HANDSHAKE_POOL, Limits, NodeFactory, NodeProtocol
from kvtwist.server.acceptor import Proof
from kvtwist.store import InlineRunner, Store
from kvtwist.wire import FramedProtocol, Message
from tests.fakes.chain import Net, Node, pump_between

KEY = b"k" * 32
OTHER = b"x" * 32


class KeyFileTests(SynchronousTestCase):
    def write(self, data: bytes, mode: int = 0o600) -> str:
        fd, path = tempfile.mkstemp()
        os.write(fd, data)
        os.close(fd)
        os.chmod(path, mode)
        self.addCleanup(os.unlink, path)
        return path

    def test_good_key(self) -> None:
        """A private file of 16+ bytes is the key, one trailing newline dropped."""
        self.assertEqual(load_key(self.write(b"a" * 20 + b"\n")), b"a" * 20)

    def test_refusals(self) -> None:
        """Empty, short, or group/world-readable files are refused with a reason."""
        for data, mode, why in [
            (b"", 0o600, "empty"),
            (b"short", 0o600, "at least 16"),
            (b"a" * 32, 0o644, "chmod 600"),
        ]:
            with self.assertRaises(KeyFileError) as cm:
                load_key(self.write(data, mode))
            self.assertIn(why, str(cm.exception))

    def test_missing(self) -> None:
        """A missing file is named in the error."""
        with self.assertRaises(KeyFileError):
            load_key("/nonexistent/cluster.key")


class HandshakeStateTests(SynchronousTestCase):
    """The two state machines directly, message by message."""

    def exchange(self, ikey: bytes, rkey: bytes) -> tuple[Initiator, Responder]:
        i = Initiator(ikey, "node0000000001", 7)
        r = Responder(rkey, "node0000000002")
        step3 = i.receive(r.receive(i.first()))
        assert step3 is not None
        step4 = r.receive(step3)
        self.assertIsNone(i.receive(step4))
        return i, r

    def test_success(self) -> None:
        """Same key: both sides learn the other's identity; the config is bound."""
        i, r = self.exchange(KEY, KEY)
        self.assertEqual((i.peer, r.peer, r.config), ("node0000000002", "node0000000001", 7))

    def test_wrong_key(self) -> None:
        """A responder with another key fails the initiator's check."""
        with self.assertRaises(AuthError):
            self.exchange(KEY, OTHER)

    def test_replayed_response(self) -> None:
        """A recorded step 3 replayed on a new handshake fails: the responder's nonce changed."""
        i = Initiator(KEY, "node0000000001", 7)
        r = Responder(KEY, "node0000000002")
        step1 = i.first()
        step3 = i.receive(r.receive(step1))
        assert step3 is not None
        r2 = Responder(KEY, "node0000000002")
        r2.receive(step1)
        with self.assertRaises(AuthError):
            r2.receive(step3)
        self.assertIsNone(r2.peer)

    def test_reflected_proof(self) -> None:
        """The responder's own proof sent back as the initiator's is refused (role label)."""
        r = Responder(KEY, "node0000000002")
        step2 = r.receive(ChainAuth(step=1, identity="node0000000001", nonce=b"n" * 32))
        with self.assertRaises(AuthError):
            r.receive(ChainAuth(step=3, mac=step2.mac))

    def test_reflected_challenge(self) -> None:
        """An initiator's challenge bounced to its own responder yields nothing it accepts."""
        i = Initiator(KEY, "node0000000001", 7)
        own = Responder(KEY, "node0000000001")
        first = i.first()
        with self.assertRaises(AuthError):  # claims our own identity
            own.receive(first)
        # with another claimed identity the proof binds the wrong names
        bounced = Responder(KEY, "node0000000001").receive(
            ChainAuth(step=1, identity="node0000000009", nonce=first.nonce, config=7)
        )
        with self.assertRaises(AuthError):
            i.receive(bounced)

    def test_out_of_order(self) -> None:
        """Step 3 before step 1, or step 1 twice, is refused."""
        with self.assertRaises(AuthError):
            Responder(KEY, "a").receive(ChainAuth(step=3, mac=b"0" * 32))
        r = Responder(KEY, "a")
        r.receive(ChainAuth(step=1, identity="b", nonce=b"n" * 32))
        with self.assertRaises(AuthError):
            r.receive(ChainAuth(step=1, identity="b", nonce=b"n" * 32))


class Recorder(FramedProtocol):
    """A FramedProtocol that keeps what reaches messageReceived."""

    def __init__(self) -> None:
        self.got: list[Message] = []

    def messageReceived(self, msg: Message) -> None:
        self.got.append(msg)


class ChainNode:
    """A chain-mode node (a fake ZooKeeper) whose replica records what reaches it."""

    def __init__(
        self, key: bytes | None, name: str = "node0000000002", limits: Limits | None = None
    ) -> None:
        self.clock = MemoryReactorClock()
        self.store = Store(self.clock, InlineRunner())
        self.replica = Replica(
            self.clock,
            self.store,
            "10.0.0.2:9000",
            zk=object(),
            link_config=LinkConfig(key=key, timeout=3.0),
        )
        self.replica.name = name
        self.reached: list[Message] = []
        self.replica.incoming = lambda conn, msg: self.reached.append(msg)  # type: ignore
        self.replica.chain_message = lambda link, msg: self.reached.append(msg)  # type: ignore
        self.factory = NodeFactory(self.clock, self.replica, limits)

    def connect(self) -> tuple[NodeProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        t = StringTransport()
        proto.makeConnection(t)
        return proto, t


def replies(t: StringTransport) -> list[Message]:
    out = [wire.decode(p) for p in wire.FrameDecoder(1 << 30).feed(t.value())]
    t.clear()
    return out


def forged_hello() -> Message:
    hello = ChainHello(sender="node0000000001", config=0, address="10.0.0.1:9000")
    return Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN, hello=hello)


def forged_update() -> Message:
    msg = Message(opcode=wire.OP_CHAIN_UPDATE, c_type=wire.CT_CHAIN)
    msg.hello.sender = "node0000000001"
    msg.updates.add(seq=1, is_put=True, key=b"evil", data=b"x")
    return msg


class EndToEndTests(SynchronousTestCase):
    """authenticate() on one end, the node's acceptor (its responder) on the other, over iosim."""

    def link(self, ikey: bytes, node_key: bytes | None, expect: str | None = None) -> Any:
        node = ChainNode(node_key)
        server = node.factory.buildProtocol(None)
        client = Recorder()
        pump = pump_between(server, client, node.clock)
        results: list[Any] = []
        d = authenticate(
            client, ikey, "node0000000001", 5, expect=expect, clock=node.clock, timeout=3.0
        )
        d.addBoth(results.append)
        client.sendMessage(forged_hello())  # held until the handshake ends
        pump.flush()
        return node, server, client, results

    def test_success(self) -> None:
        """Right key: identities learnt; a HELLO naming another config than the bound is refused."""
        node, server, client, results = self.link(KEY, KEY)
        self.assertEqual(results, ["node0000000002"])
        # the held HELLO names config 0, the handshake bound 5: refused, saying what it proved
        [refusal] = [m for m in client.got if m.opcode == wire.OP_ERROR]
        self.assertIn("authenticated as 'node0000000001' in config 5", refusal.error)
        self.assertEqual(node.reached, [])

    def test_held_hello_delivered(self) -> None:
        """A HELLO matching the authenticated identity and config reaches the replica."""
        node = ChainNode(KEY)
        server = node.factory.buildProtocol(None)
        client = Recorder()
        pump = pump_between(server, client, node.clock)
        authenticate(client, KEY, "node0000000001", 0, clock=node.clock)
        client.sendMessage(forged_hello())
        self.assertEqual(node.reached, [])  # held while the handshake runs
        pump.flush()
        self.assertEqual([m.opcode for m in node.reached], [wire.OP_CHAIN_HELLO])

    def test_wrong_key(self) -> None:
        """Wrong key: the initiator errbacks, the held HELLO never leaves, nothing reaches."""
        node, server, client, results = self.link(OTHER, KEY)
        self.assertEqual(len(results), 1)
        results[0].trap(AuthError)
        self.assertIsNone(node.factory.acceptor.proof(server))
        self.assertEqual(node.reached, [])

    def test_unexpected_peer(self) -> None:
        """A responder that is not the member we dialled is refused by the initiator."""
        node, server, client, results = self.link(KEY, KEY, expect="node0000000042")
        results[0].trap(AuthError)
        self.assertEqual(node.reached, [])

    def test_timeout(self) -> None:
        """No answer within the timeout: errback and close."""
        clock = MemoryReactorClock()
        client = Recorder()
        t = StringTransport()
        client.makeConnection(t)
        results: list[Any] = []
        authenticate(client, KEY, "a", 0, clock=clock, timeout=3.0).addBoth(results.append)
        clock.advance(3.0)
        results[0].trap(AuthError)
        self.assertTrue(t.disconnecting)


class GateTests(SynchronousTestCase):
    """A node's port with a key: nothing unauthenticated reaches the replica."""

    def test_forged_hello_and_update_refused(self) -> None:
        """A forged HELLO naming the real predecessor, then an UPDATE: ERROR, close, no effect."""
        node = ChainNode(KEY)
        proto, t = node.connect()
        proto.dataReceived(wire.frame(forged_hello()) + wire.frame(forged_update()))
        [r] = replies(t)
        self.assertEqual(r.opcode, wire.OP_ERROR)
        self.assertIn("before authentication", r.error)
        self.assertTrue(t.disconnecting)
        self.assertEqual(node.reached, [])
        self.assertEqual(node.replica.last_received, 0)

    def test_every_chain_opcode_refused(self) -> None:
        """ACK, JOIN, SNAPSHOT and PING before authentication are refused too."""
        for op in (
            wire.OP_CHAIN_ACK,
            wire.OP_CHAIN_JOIN,
            wire.OP_CHAIN_SNAPSHOT,
            wire.OP_CHAIN_PING,
        ):
            node = ChainNode(KEY)
            proto, t = node.connect()
            proto.dataReceived(wire.frame(Message(opcode=op, c_type=wire.CT_CHAIN)))
            self.assertEqual(replies(t)[0].opcode, wire.OP_ERROR, wire.op_name(op))
            self.assertEqual(node.reached, [])

    def test_truncated_exchange(self) -> None:
        """Step 1 and then silence: the responder gives up after the timeout."""
        node = ChainNode(KEY)
        proto, t = node.connect()
        first = Initiator(KEY, "node0000000001", 0).first()
        proto.dataReceived(wire.frame(auth_message(first)))
        self.assertEqual(replies(t)[0].auth.step, 2)
        proto.dataReceived(wire.frame(forged_hello()))  # instead of step 3
        self.assertEqual(replies(t)[0].opcode, wire.OP_ERROR)
        self.assertTrue(t.disconnecting)
        self.assertEqual(node.reached, [])

    def test_responder_timeout(self) -> None:
        """A handshake left half done is refused after the link timeout."""
        node = ChainNode(KEY)
        proto, t = node.connect()
        proto.dataReceived(wire.frame(auth_message(Initiator(KEY, "n1", 0).first())))
        replies(t)
        node.clock.advance(3.0)
        [r] = replies(t)
        self.assertIn("timed out", r.error)
        self.assertTrue(t.disconnecting)

    def test_identity_must_match_hello(self) -> None:
        """Authenticated as one node, a HELLO naming another is refused."""
        node = ChainNode(KEY)
        proto, t = node.connect()
        i = Initiator(KEY, "node0000000007", 0)
        proto.dataReceived(wire.frame(auth_message(i.first())))
        step3 = i.receive(replies(t)[0].auth)
        assert step3 is not None
        proto.dataReceived(wire.frame(auth_message(step3)))
        self.assertEqual(replies(t)[0].auth.step, 4)
        self.assertEqual(node.factory.acceptor.proof(proto), Proof("node0000000007", 0))
        proto.dataReceived(wire.frame(forged_hello()))  # names node0000000001
        self.assertEqual(replies(t)[0].opcode, wire.OP_ERROR)
        self.assertEqual(node.reached, [])

    def test_refusals_logged_rate_limited(self) -> None:
        """A flood of forged messages logs one line per interval, counting the rest."""
        node = ChainNode(KEY)
        for _ in range(5):
            proto, t = node.connect()
            proto.dataReceived(wire.frame(forged_hello()))
        self.assertEqual(node.factory.acceptor.refusals.suppressed, 4)

    def test_no_key_trusts_hello(self) -> None:
        """Without a key a HELLO goes to the replica as before."""
        node = ChainNode(None)
        proto, t = node.connect()
        proto.dataReceived(wire.frame(forged_hello()))
        self.assertEqual([m.opcode for m in node.reached], [wire.OP_CHAIN_HELLO])

    def test_auth_without_key_refused(self) -> None:
        """A node without a key refuses a handshake rather than pretending."""
        node = ChainNode(None)
        proto, t = node.connect()
        proto.dataReceived(wire.frame(auth_message(Initiator(KEY, "n1", 0).first())))
        self.assertIn("no cluster key", replies(t)[0].error)


def send(proto: NodeProtocol, t: StringTransport, msg: Message) -> list[Message]:
    """Deliver one frame; a connection the node closed is then lost, as a reactor would."""
    proto.dataReceived(wire.frame(msg))
    out = replies(t)
    if t.disconnecting:
        proto.connectionLost()
    return out


class HandshakePoolTests(SynchronousTestCase):
    """Unproven chain handshakes take a bounded pool, not client places or the chain reserve."""

    def setUp(self) -> None:
        self.node = ChainNode(KEY, limits=Limits(max_connections=8))

    def flood(self, n: int) -> list[tuple[NodeProtocol, StringTransport]]:
        """``n`` keyless strangers, each sending step 1 of a handshake; those left open."""
        step1 = auth_message(Initiator(OTHER, "node0000000001", 0).first())
        left = []
        for _ in range(n):
            proto, t = self.node.connect()
            if not t.disconnecting:
                send(proto, t, step1)
            if not t.disconnecting:
                left.append((proto, t))
        return left

    def stats(self) -> Message:
        proto, t = self.node.connect()
        [r] = send(proto, t, wire.req_stats())
        return r

    def test_keyless_step1_flood_is_bounded(self) -> None:
        """2,000 keyless step-1 connections: only the pool stays open (the newest), and a
        client is served."""
        left = [(p, t) for p, t in self.flood(2000) if not t.disconnecting]
        self.assertEqual(len(left), HANDSHAKE_POOL)
        self.assertEqual(set(self.node.factory.acceptor.pool), {p for p, _ in left})
        self.assertEqual(len(self.node.factory.connections), 0)
        r = self.stats()
        self.assertEqual(r.opcode, wire.OP_STATS + 1, r.error)

    def test_handshake_pool_times_out(self) -> None:
        """Half-done handshakes are closed after the link timeout, and the pool is free again."""
        flood = self.flood(100)
        left = [(p, t) for p, t in flood if not t.disconnecting]
        self.node.clock.advance(3.0)
        for _, t in left:
            self.assertTrue(t.disconnecting)
            self.assertIn("timed out", replies(t)[0].error)
        for proto, _ in flood:
            proto.connectionLost()
        self.assertEqual(len(self.node.factory.acceptor.pool), 0)
        again = [t for _, t in self.flood(100) if not t.disconnecting]
        self.assertEqual(len(again), HANDSHAKE_POOL)

    def test_proven_link_takes_the_chain_reserve(self) -> None:
        """With the pool full of strangers a member still gets in (it pushes out the oldest
        stranger) and, once proven, links outside the client limits."""
        for _ in range(8):
            self.node.connect()  # clients fill --max-connections
        strangers = self.flood(100)
        i = Initiator(KEY, "node0000000001", 0)
        proto, t = self.node.connect()
        [r] = send(proto, t, auth_message(i.first()))
        self.assertEqual(r.opcode, wire.OP_CHAIN_AUTH, r.error)
        step3 = i.receive(r.auth)
        assert step3 is not None
        send(proto, t, auth_message(step3))
        f = self.node.factory
        self.assertIsNotNone(f.acceptor.proof(proto))
        self.assertEqual((proto in f.acceptor.links, len(f.connections)), (True, 8))
        self.assertEqual(len(f.acceptor.pool), HANDSHAKE_POOL - 1)
        pushed = [t for _, t in strangers if t.disconnecting]
        self.assertIn("too many chain handshakes", replies(pushed[-1])[-1].error)


class KeyedNet(Net):
    """The in-memory chain of tests/fakes/chain.py, every node holding ``key``."""

    def __init__(self, keys: list[bytes]) -> None:
        super().__init__()
        self.keys = keys

    def add(self) -> Node:
        port = 9000 + len(self.nodes)
        node = Node(self, port, LinkConfig(key=self.keys[len(self.nodes) % len(self.keys)]))
        self.nodes[port] = node
        node.replica.join()
        self.settle()
        return node


class KeyedChainTests(SynchronousTestCase):
    def test_keyed_chain_commits(self) -> None:
        """Three nodes sharing a key link up, authenticated, and commit writes on all."""
        net = KeyedNet([KEY])
        a, b, c = net.chain(3)
        self.assertEqual([n.replica.role for n in (a, b, c)], ["head", "middle", "tail"])
        d = a.write(b"k", b"v")
        net.settle()
        self.assertEqual(self.successResultOf(d).op_n, 1)
        self.assertEqual(a.state(), c.state())
        self.assertEqual(c.state(), [(b"k", b"v")])
        # both ends of a link run the link protocol, each knowing whom it proved
        accepted = [p.serverIO.protocol.chain for p in net.pumps]
        dialled = [p.clientIO.protocol for p in net.pumps]
        for conns in (accepted, dialled):
            links = [x for x in conns if isinstance(x, ChainConnection) and x.link is not None]
            self.assertTrue(links and all(x.authenticated and x.peer_identity for x in links))

    def test_forged_predecessor_changes_nothing(self) -> None:
        """The issue's scenario: a stranger names the tail's predecessor and sends op 2 'evil'."""
        net = KeyedNet([KEY])
        a, b, c = net.chain(3)
        self.successResultOf_settled(net, a.write(b"k", b"v"))
        proto = c.factory.buildProtocol(None)
        t = StringTransport()
        proto.makeConnection(t)
        hello = ChainHello(sender=b.name, config=net.registry.config, last_op=1)
        forged = forged_update()
        forged.hello.sender = b.name or ""
        forged.updates[0].seq = 2
        proto.dataReceived(
            wire.frame(Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN, hello=hello))
            + wire.frame(forged)
        )
        self.assertEqual(replies(t)[0].opcode, wire.OP_ERROR)
        d = a.write(b"k2", b"real")
        net.settle()
        self.assertEqual(self.successResultOf(d).op_n, 2)
        self.assertEqual(c.state(), [(b"k", b"v"), (b"k2", b"real")])
        self.assertEqual(a.state(), c.state())

    def successResultOf_settled(self, net: Net, d: Any) -> Any:
        net.settle()
        return self.successResultOf(d)

    def test_wrong_key_never_links(self) -> None:
        """A node with another key cannot join: it stays outside and writes commit without it."""
        net = KeyedNet([KEY])
        a = net.add()
        net.keys = [OTHER]
        b = net.add()
        self.assertEqual(a.replica.role, "head+tail")
        self.assertNotEqual(b.replica.status, "member")
        d = a.write(b"k", b"v")
        net.settle()
        self.assertEqual(self.successResultOf(d).op_n, 1)
