"""Chain links in memory: liveness, frames bounded by bytes, snapshot backpressure, limits."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.link import (
    DEFAULT_LINK_TIMEOUT,
    ChainConnection,
    Link,
    LinkConfig,
    Side,
    largest_update,
    limits_problem,
)
from kvtwist.chain.replica import Replica
from kvtwist.chain.transfer import SnapshotReceiver, SnapshotSender, chunks
from kvtwist.proto.kvtwist_pb2 import ChainHello, Update
from kvtwist.server import Limits, NodeFactory
from kvtwist.store import InlineRunner, Store
from kvtwist.tree import BTree
from kvtwist.wire import FramedProtocol, Message

MB = 1024 * 1024


class Owner:
    """Stands in for the replica: records what the connection hands it."""

    address = "10.0.0.1:9000"

    def __init__(self, config: LinkConfig) -> None:
        self.link_config = config
        self.messages: list[Message] = []
        self.lost: list[Link] = []
        self.congestion: list[bool] = []

    def chain_message(self, link: Link, msg: Message) -> None:
        self.messages.append(msg)

    def link_lost(self, link: Link) -> None:
        self.lost.append(link)

    def link_congested(self, link: Link, full: bool) -> None:
        self.congestion.append(full)


class Wire:
    """One outgoing ChainConnection on a StringTransport, its Link, and a clock."""

    def __init__(
        self, side: Side = Side.SUCCESSOR, timeout: float = DEFAULT_LINK_TIMEOUT, **limits: int
    ) -> None:
        self.clock = MemoryReactorClock()
        self.owner = Owner(LinkConfig(timeout=timeout, client=wire.ClientLimits(**limits)))
        self.conn = ChainConnection(self.owner)
        self.link = Link(self.conn, side, self.clock, peer="node0000000002")
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)

    def sent(self) -> list[Message]:
        data = self.transport.value()
        self.transport.clear()
        return [wire.decode(p) for p in wire.FrameDecoder(1 << 31).feed(data)]

    def frames(self) -> list[int]:
        data = self.transport.value()
        self.transport.clear()
        return [len(p) + 4 for p in wire.FrameDecoder(1 << 31).feed(data)]

    def receive(self, msg: Message) -> None:
        self.conn.dataReceived(wire.frame(msg))

    def lose(self) -> None:
        """What the reactor does once a closed transport is gone."""
        if self.transport.disconnecting:
            self.conn.connectionLost()


def ping() -> Message:
    return Message(opcode=wire.OP_CHAIN_PING, c_type=wire.CT_CHAIN)


def ack(n: int) -> Message:
    return Message(opcode=wire.OP_CHAIN_ACK, c_type=wire.CT_CHAIN, op_n=n)


class LivenessTests(SynchronousTestCase):
    def test_heartbeat_keeps_idle_link_open(self) -> None:
        """An idle link sends PINGs; a peer that pings back keeps it open for a minute."""
        w = Wire(timeout=3.0)
        pings = 0
        for _ in range(120):
            w.clock.advance(0.5)
            pings += sum(m.opcode == wire.OP_CHAIN_PING for m in w.sent())
            w.receive(ping())
        self.assertGreater(pings, 10)
        self.assertFalse(w.link.closed)
        self.assertFalse(w.transport.disconnecting)

    def test_ping_does_not_reach_replica(self) -> None:
        """Heartbeats end at the link; other messages go on."""
        w = Wire()
        w.receive(ping())
        w.receive(ack(1))
        self.assertEqual([m.opcode for m in w.owner.messages], [wire.OP_CHAIN_ACK])

    def test_silence_closes(self) -> None:
        """Nothing received for the link timeout: the link closes and the replica hears of it."""
        w = Wire(timeout=3.0)
        w.clock.advance(2.0)
        self.assertFalse(w.link.closed)
        for _ in range(4):
            w.clock.advance(0.75)
        self.assertTrue(w.link.closed)
        self.assertTrue(w.transport.disconnecting)
        w.lose()
        self.assertEqual(w.owner.lost, [w.link])

    def test_unacknowledged_updates_time_out(self) -> None:
        """A successor that pings but never acknowledges a batch is cut off."""
        w = Wire(timeout=3.0)
        w.link.queue_update(Update(seq=1, is_put=True, key=b"k", data=b"v"))
        w.clock.advance(0)
        for _ in range(8):
            w.clock.advance(0.5)
            w.receive(ping())
        self.assertTrue(w.link.closed)

    def test_acknowledged_updates_keep_link(self) -> None:
        """Batches acknowledged in time leave the link open."""
        w = Wire(timeout=3.0)
        for seq in range(1, 21):
            w.link.queue_update(Update(seq=seq, is_put=True, key=b"k", data=b"v"))
            w.clock.advance(0.5)
            w.receive(ack(seq))
        self.assertFalse(w.link.closed)

    def test_incoming_link_is_watched(self) -> None:
        """A link on an accepted connection runs the link protocol: it also closes on silence."""
        clock = MemoryReactorClock()
        replica = AcceptingReplica(
            clock,
            Store(clock, InlineRunner()),
            "10.0.0.2:9000",
            zk=object(),
            link_config=LinkConfig(timeout=3.0),
        )
        proto = NodeFactory(clock, replica).buildProtocol(None)
        t = StringTransport()
        proto.makeConnection(t)
        hello = ChainHello(sender="node0000000001", config=1, address="10.0.0.1:9000")
        ping = Message(opcode=wire.OP_CHAIN_PING, c_type=wire.CT_CHAIN)
        # the PING arrives with the HELLO: the link protocol handles it, not the client one
        proto.dataReceived(
            wire.frame(Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN, hello=hello))
            + wire.frame(ping)[:3]
        )
        proto.dataReceived(wire.frame(ping)[3:])
        self.assertEqual(t.value(), b"")
        assert proto.chain is not None and proto.chain.link is not None
        link = proto.chain.link
        self.assertIs(t.producer, proto.chain)
        self.assertEqual(replica.accepted, [link])
        clock.advance(1.0)
        self.assertIn(
            wire.OP_CHAIN_PING, [wire.decode(p).opcode for p in wire.FrameDecoder().feed(t.value())]
        )
        for _ in range(8):
            clock.advance(0.5)
        self.assertTrue(link.closed)
        proto.connectionLost()
        self.assertEqual(replica.lost, [link, link])  # the watch's and the transport's


    def test_frames_after_the_hello_go_to_the_link(self) -> None:
        """An update sent with the HELLO, larger than a client frame, reaches the replica
        through the link: the link judges it by the chain's frame limit."""
        clock = MemoryReactorClock()
        limits = Limits(max_frame=1024)
        replica = AcceptingReplica(
            clock,
            Store(clock, InlineRunner()),
            "10.0.0.2:9000",
            zk=object(),
            link_config=LinkConfig(client=limits),
        )
        proto = NodeFactory(clock, replica, limits).buildProtocol(None)
        t = StringTransport()
        proto.makeConnection(t)
        hello = ChainHello(sender="node0000000001", config=1, address="10.0.0.1:9000")
        update = Message(opcode=wire.OP_CHAIN_UPDATE, c_type=wire.CT_CHAIN)
        update.updates.add(seq=1, is_put=True, key=b"k", data=b"v" * 5000)
        proto.dataReceived(
            wire.frame(Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN, hello=hello))
            + wire.frame(update)
        )
        self.assertEqual(t.value(), b"")
        self.assertFalse(t.disconnecting)
        self.assertEqual([m.updates[0].data for _, m in replica.messages], [b"v" * 5000])
        self.assertEqual([link for link, _ in replica.messages], replica.accepted)


class AcceptingReplica(Replica):
    """Takes every incoming link as its predecessor's, and records what becomes of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted: list[Link] = []
        self.lost: list[Link] = []
        self.messages: list[tuple[Link, Message]] = []

    def chain_message(self, link: Link, msg: Message) -> None:
        self.messages.append((link, msg))

    def incoming(self, conn: FramedProtocol, msg: Message) -> None:
        self.accepted.append(self.new_link(conn, Side.PREDECESSOR, peer=msg.hello.sender))

    def link_lost(self, link: Link) -> None:
        self.lost.append(link)


class FrameBoundTests(SynchronousTestCase):
    def test_batches_split_under_frame_limit(self) -> None:
        """Six 6 MB updates queued in one turn leave in frames under the peer's 16 MiB."""
        w = Wire()
        for seq in range(1, 7):
            w.link.queue_update(
                Update(seq=seq, is_put=True, key=f"k{seq}".encode(), data=b"x" * 6_000_000)
            )
        w.clock.advance(0)
        sizes = w.frames()
        self.assertGreater(len(sizes), 1)
        self.assertTrue(all(s <= wire.DEFAULT_MAX_FRAME for s in sizes), sizes)

    def test_split_follows_peer_limit(self) -> None:
        """The peer's max frame from its HELLO sets the split; every update still arrives once."""
        w = Wire(max_frame=1 * MB, max_value=100_000)
        hello = ChainHello(sender="node0000000002", max_frame=1 * MB, max_value=100_000)
        w.receive(Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN, hello=hello))
        for seq in range(1, 101):
            w.link.queue_update(Update(seq=seq, is_put=True, key=b"k", data=b"x" * 90_000))
        w.clock.advance(0)
        msgs = w.sent()
        self.assertTrue(all(m.ByteSize() + 4 <= 1 * MB for m in msgs))
        self.assertEqual([u.seq for m in msgs for u in m.updates], list(range(1, 101)))

    def test_resend_splits(self) -> None:
        """A 20,000-update resend of 1 KiB values goes out in frames under the limit."""
        w = Wire()
        for seq in range(1, 20_001):
            update = Update(seq=seq, is_put=True, key=f"{seq}".encode(), data=b"x" * 1024)
            w.link.queue_update(update)
        w.clock.advance(0)
        sizes = w.frames()
        self.assertGreater(len(sizes), 1)
        self.assertTrue(all(s <= wire.DEFAULT_MAX_FRAME for s in sizes))

    def test_limits_check(self) -> None:
        """A neighbour whose frame cannot carry our largest value is refused; equals pass."""
        own = LinkConfig(client=wire.ClientLimits(max_value=16 * MB))
        self.assertIsNone(limits_problem(own, ChainHello(max_frame=own.chain_frame)))
        small = ChainHello(max_frame=1 * MB, max_value=1 * MB)
        self.assertIn("--max-value", limits_problem(own, small) or "")
        c = own.client
        self.assertGreaterEqual(own.chain_frame, largest_update(c.max_key, c.max_value))

    def test_small_successor_refused_on_hello(self) -> None:
        """A successor's HELLO announcing too small a frame: ERROR to it, link closed."""
        w = Wire(max_value=16 * MB)
        hello = ChainHello(sender="node0000000002", max_frame=1 * MB, max_value=1 * MB)
        w.receive(Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN, hello=hello))
        self.assertEqual(w.owner.messages, [])
        self.assertEqual(w.sent()[-1].opcode, wire.OP_ERROR)
        self.assertTrue(w.link.closed)

    def test_hello_and_join_carry_limits(self) -> None:
        """Our HELLO and JOIN announce the frame we accept on chain links."""
        w = Wire()
        w.link.hello("node0000000001", 3)
        w.conn.sendMessage(Message(opcode=wire.OP_CHAIN_JOIN, c_type=wire.CT_CHAIN))
        frames = [m.hello.max_frame for m in w.sent()]
        self.assertEqual(frames, [w.owner.link_config.chain_frame] * 2)


class SnapshotTests(SynchronousTestCase):
    def tree(self, n: int, size: int) -> BTree:
        return BTree.from_sorted([f"k{i:06d}".encode() for i in range(n)], [b"v" * size] * n)

    def test_chunks_bounded_by_bytes(self) -> None:
        """20,000 entries of 900 B split into chunks of about a megabyte, none lost."""
        t = self.tree(20_000, 900)
        out = list(chunks(t, 1 * MB))
        self.assertGreater(len(out), 10)
        self.assertTrue(all(sum(e.ByteSize() for e in c) <= 1 * MB for c in out))
        self.assertEqual(sum(len(c) for c in out), 20_000)

    def test_big_entries_alone(self) -> None:
        """An entry larger than the chunk budget goes in a chunk of its own."""
        out = list(chunks(self.tree(3, 2 * MB), 1 * MB))
        self.assertEqual([len(c) for c in out], [1, 1, 1])

    def sender(self, w: Wire, tree: BTree, clients: list[Update]) -> list[bool]:
        done: list[bool] = []
        SnapshotSender(
            w.clock,
            InlineRunner(),
            w.link,
            tree,
            9,
            clients,
            lambda: not w.link.closed,
            lambda: done.append(True),
        ).start()
        return done

    def test_backpressure_pauses_sender(self) -> None:
        """While the transport is full no chunk is made; on resume the transfer completes."""
        w = Wire()
        tree = self.tree(5_000, 900)  # several chunks
        w.conn.pauseProducing()
        done = self.sender(w, tree, [])
        w.clock.advance(0)
        self.assertEqual(w.sent(), [])
        w.conn.resumeProducing()
        first = w.sent()
        self.assertEqual(len(first), 1)  # one chunk, then the reactor turns
        w.conn.pauseProducing()  # that chunk filled the buffer
        w.clock.pump([0] * 20)
        self.assertEqual(w.sent(), [])
        self.assertEqual(done, [])
        w.conn.resumeProducing()
        w.clock.pump([0] * 50)
        receiver = SnapshotReceiver()
        for m in first + w.sent():
            receiver.add(m.snapshot)
        self.assertEqual(done, [True])
        self.assertEqual(len(receiver.keys), 5_000)

    def test_client_rows_split(self) -> None:
        """A large duplicate-suppression table spans several chunks; every row arrives."""
        w = Wire(max_frame=1 * MB, max_value=100_000)
        hello = ChainHello(sender="node0000000002", max_frame=1 * MB, max_value=100_000)
        w.receive(Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN, hello=hello))
        rows = [Update(seq=i, client_id="c" * 200, request_id=i) for i in range(20_000)]
        done = self.sender(w, self.tree(10, 10), rows)
        w.clock.pump([0] * 50)
        msgs = w.sent()
        self.assertEqual(done, [True])
        self.assertTrue(all(m.ByteSize() + 4 <= 1 * MB for m in msgs))
        self.assertEqual([m.snapshot.done for m in msgs].count(True), 1)
        self.assertTrue(msgs[-1].snapshot.done)
        receiver = SnapshotReceiver()
        for m in msgs:
            receiver.add(m.snapshot)
        self.assertEqual(len(receiver.clients), 20_000)


class ServerLimitTests(SynchronousTestCase):
    def node(self, limits: Limits, zk: Any = None) -> tuple[NodeFactory, MemoryReactorClock]:
        clock = MemoryReactorClock()
        replica = Replica(clock, Store(clock, InlineRunner()), "10.0.0.2:9000", zk)
        return NodeFactory(clock, replica, limits), clock

    def call(self, factory: NodeFactory, *msgs: Message) -> list[Message]:
        proto = factory.buildProtocol(None)
        t = StringTransport()
        proto.makeConnection(t)
        proto.dataReceived(b"".join(wire.frame(m) for m in msgs))
        for _ in range(5):
            factory.reactor.advance(0)
        return [wire.decode(p) for p in wire.FrameDecoder(1 << 30).feed(t.value())]

    def test_client_id_limit(self) -> None:
        """A write with an over-long client_id is refused with a reason; 256 bytes pass."""
        f, _ = self.node(Limits())
        r = self.call(f, wire.req_put(b"k", b"v", client_id="c" * 257, request_id=1))
        self.assertEqual(r[0].opcode, wire.OP_ERROR)
        self.assertIn("client_id", r[0].error)
        r = self.call(f, wire.req_put(b"k", b"v", client_id="c" * 256, request_id=1))
        self.assertEqual(r[0].opcode, wire.OP_PUT + 1)

    def test_max_reply(self) -> None:
        """GETKEYS, GETVALUES and RANGE beyond --max-reply get an ERROR pointing to RANGE."""
        f, _ = self.node(Limits(max_reply=10_000))
        for i in range(100):
            self.call(f, wire.req_put(f"key{i:04d}".encode(), b"v" * 200))
        for req in (wire.req_getvalues(), wire.req_range()):
            [r] = self.call(f, req)
            self.assertEqual(r.opcode, wire.OP_ERROR)
            self.assertIn("RANGE", r.error)
        [r] = self.call(f, wire.req_getkeys())  # 100 short keys fit
        self.assertEqual(len(r.keys), 100)
        [r] = self.call(f, wire.req_range(None, None, 20))
        self.assertEqual(len(r.keys), 20)

    def test_chain_links_exempt_from_connection_limit(self) -> None:
        """At the client limit a chain HELLO is still taken; a client request is refused."""
        f, clock = self.node(Limits(max_connections=1), zk=object())
        reached: list[int] = []
        f.replica.incoming = lambda conn, msg: reached.append(msg.opcode)  # type: ignore
        self.call(f, wire.req_size())
        hello = Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN)
        self.call(f, hello)
        self.assertEqual(reached, [wire.OP_CHAIN_HELLO])
        self.assertEqual(len(f.connections), 1)
        [r] = self.call(f, wire.req_size())
        self.assertIn("too many connections", r.error)
