"""One replication link between neighbours of the chain.

The same TCP connection carries updates downstream and acknowledgements
upstream, so a link is FIFO both ways.  Which end connected does not matter:
a joining node dials its predecessor, every other predecessor dials its
successor.  Updates and acknowledgements queued in one reactor turn leave
together, in frames no larger than the receiving side accepts.

A link watches itself: it sends heartbeats while idle and closes when the
peer has been silent, or has left a batch of updates unacknowledged, for the
link timeout.  The replica then sees ``link_lost`` as for any lost connection.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist import wire
from kvtwist.chain.auth import authenticate
from kvtwist.proto.kvtwist_pb2 import ChainHello, SnapshotChunk, Update
from kvtwist.wire import FramedProtocol, Message

log = Logger(namespace="kvtwist.chain")

DEFAULT_LINK_TIMEOUT = 3.0
#: Longest client_id a write may carry (it is replicated and kept for dedup).
MAX_CLIENT_ID = 256
#: Bytes one update may need beyond its key and value: op numbers, ids, tags.
UPDATE_OVERHEAD = 256 + MAX_CLIENT_ID
#: Bytes a chain frame may need beyond its updates or entries: opcode, sender stamp.
FRAME_OVERHEAD = 4096


def largest_update(max_key: int, max_value: int) -> int:
    """Encoded size of the largest update a node with these client limits can make."""
    return max_key + max_value + UPDATE_OVERHEAD


@dataclass(frozen=True)
class LinkConfig:
    """What every chain link of a node needs to know: its limits, timeout and key."""

    timeout: float = DEFAULT_LINK_TIMEOUT
    key: bytes | None = None
    #: what the node takes from clients (the server's own Limits): updates are that big
    client: wire.ClientLimits = field(default_factory=wire.ClientLimits)
    #: the longest read lease this node may hold (LEASE_FRACTION of its session timeout)
    lease: float = 0.0
    #: the chain the links are for, on a server hosting many ("" for a lone node's)
    chain: str = ""

    @property
    def chain_frame(self) -> int:
        """The largest frame accepted on a chain link: room for our largest update."""
        c = self.client
        return max(c.max_frame, largest_update(c.max_key, c.max_value) + FRAME_OVERHEAD)

    def stamp(self, hello: ChainHello) -> None:
        """Announce our limits and our lease in a HELLO or JOIN."""
        hello.max_frame = self.chain_frame
        hello.max_value = self.client.max_value
        hello.lease_ms = round(self.lease * 1000)
        hello.chain = self.chain


def limits_problem(own: LinkConfig, peer: ChainHello) -> str | None:
    """Why a neighbour announcing ``peer``'s limits cannot take our updates; None if it can.

    A peer that announces nothing (an older build) is not judged.
    """
    if not peer.max_frame:
        return None
    c = own.client
    need = largest_update(c.max_key, c.max_value) + FRAME_OVERHEAD
    if peer.max_frame < need:
        return (
            f"peer accepts chain frames of at most {peer.max_frame} bytes; values of up to "
            f"{c.max_value} bytes need {need}: give every node the same --max-value"
        )
    return None


#: A joiner's acknowledgements may take this many link timeouts (it loads its copy first).
JOINER_ACK_FACTOR = 10


class Side(enum.Enum):
    """What the far end is to us."""

    SUCCESSOR = "successor"  # we send updates, it acknowledges
    PREDECESSOR = "predecessor"  # it sends updates, we acknowledge


class Link:
    """Chain state of one connection: the peer's name, side, outgoing batches and liveness."""

    def __init__(self, conn: FramedProtocol, side: Side, reactor: Any, peer: str = "") -> None:
        self.conn = conn
        self.side = side
        self.reactor = reactor
        self.peer = peer  # znode name, or "join:<address>" for a joiner
        self.ready = False  # hello exchanged
        self.closed = False
        self.joining = False  # a state transfer runs on this link
        self.joined = False  # it began as a joiner's link, adopted as our successor's
        self.on_dead: Callable[[Link], None] | None = None  # called when a timeout kills it
        # who we are on this link, stamped on every batch of updates
        self.local_name = ""
        self.config = 0
        self.settings: LinkConfig = getattr(conn, "link_config", None) or LinkConfig()
        #: the receiving side's frame limit, from its HELLO or JOIN
        self.peer_max_frame: int = getattr(conn, "peer_max_frame", 0) or wire.DEFAULT_MAX_FRAME
        self._updates: list[Update] = []
        self._ack = 0
        self._flush: Any = None  # an IDelayedCall
        # liveness
        self._last_in = self._last_out = reactor.seconds()
        self._unacked: deque[tuple[int, float]] = deque()  # (last op of a batch, sent at)
        self._watch: Any = None
        # round trips: a probe (PING with request_id) is echoed (PING with op_n)
        self.rtt: float | None = None  # seconds, the last probe's round trip
        self.on_rtt: Callable[[Link, float], None] | None = None
        self._probe = 0  # the probe in flight, 0: none
        self._probe_sent = 0.0
        self._probes = 0
        # backpressure
        self.write_full = False
        self._writable: list[Deferred[None]] = []
        conn.link = self  # type: ignore[attr-defined]
        if conn.transport is not None and conn.handshake is None:
            self.start_watch()

    def __repr__(self) -> str:
        return f"<Link {self.side.value} {self.peer or '?'} ready={self.ready}>"

    def send(self, msg: Message) -> None:
        if not self.closed:
            self._flush_now()
            self._out(msg)

    def _out(self, msg: Message) -> None:
        self._last_out = self.reactor.seconds()
        self.conn.sendMessage(msg)

    def hello(
        self, sender: str, config: int, address: str = "", last_op: int = 0, epoch: int = 0
    ) -> None:
        hello = ChainHello(
            sender=sender, config=config, address=address, last_op=last_op, epoch=epoch
        )
        self.settings.stamp(hello)
        self.send(Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN, hello=hello))

    def snapshot(self, chunk: SnapshotChunk) -> None:
        self.send(Message(opcode=wire.OP_CHAIN_SNAPSHOT, c_type=wire.CT_CHAIN, snapshot=chunk))

    def queue_update(self, u: Update) -> None:
        self._updates.append(u)
        self._schedule()

    def queue_ack(self, seq: int) -> None:
        if seq > self._ack:
            self._ack = seq
            self._schedule()

    def _schedule(self) -> None:
        if self._flush is None and not self.closed:
            self._flush = self.reactor.callLater(0, self._flush_now)

    @property
    def frame_budget(self) -> int:
        """Bytes of updates or entries one frame to the peer may carry."""
        return max(1, self.peer_max_frame - FRAME_OVERHEAD)

    def _flush_now(self) -> None:
        if self._flush is not None:
            if self._flush.active():
                self._flush.cancel()
            self._flush = None
        if self.closed:
            return
        if self._updates:
            updates, self._updates = self._updates, []
            budget = self.frame_budget
            batch: list[bytes] = []
            size = 0
            last = 0
            for u in updates:
                blob = u.SerializeToString()
                n = len(blob) + 16  # the field's tag and length
                if batch and size + n > budget:
                    self._send_updates(batch, last)
                    batch, size = [], 0
                batch.append(blob)
                size += n
                last = u.seq
            self._send_updates(batch, last)
        if self._ack:
            ack, self._ack = self._ack, 0
            stamp = ChainHello(sender=self.local_name, config=self.config)
            self._out(
                Message(opcode=wire.OP_CHAIN_ACK, c_type=wire.CT_CHAIN, op_n=ack, hello=stamp)
            )

    def _send_updates(self, batch: list[bytes], last: int) -> None:
        """One UPDATE frame of serialized updates, assembled without copying them into a Message."""
        stamp = ChainHello(sender=self.local_name, config=self.config)
        head = Message(opcode=wire.OP_CHAIN_UPDATE, c_type=wire.CT_CHAIN, hello=stamp)
        self._last_out = self.reactor.seconds()
        self.conn.sendFrame(wire.assemble(head, wire.UPDATES_FIELD, batch))
        if self.side is Side.SUCCESSOR:
            self._unacked.append((last, self.reactor.seconds()))

    # what arrives

    def received(self, msg: Message) -> bool:
        """See every message from the peer first; False when it goes no further.

        Heartbeats end here, acknowledgements settle the unacknowledged batches,
        and a HELLO tells the peer's limits (a successor that cannot take our
        largest update is refused).
        """
        self._last_in = self.reactor.seconds()
        op = msg.opcode
        if op == wire.OP_CHAIN_PING:
            self._ping(msg)
            return False
        if op == wire.OP_CHAIN_ACK and self.side is Side.SUCCESSOR:
            unacked = self._unacked
            while unacked and unacked[0][0] <= msg.op_n:
                unacked.popleft()
        elif op == wire.OP_CHAIN_HELLO and msg.hello.max_frame:
            self.peer_max_frame = msg.hello.max_frame
            problem = (
                limits_problem(self.settings, msg.hello) if self.side is Side.SUCCESSOR else None
            )
            if problem is not None:
                log.error("refusing to link with {peer}: {why}", peer=self.peer, why=problem)
                self.refuse(problem, retry=False)
                return False
        return True

    def _ping(self, msg: Message) -> None:
        """Echo a probe at once; time the echo of our own.

        A peer that does not echo (an older kvtwist) leaves ``rtt`` unknown.
        """
        if msg.request_id:
            self._out(Message(opcode=wire.OP_CHAIN_PING, c_type=wire.CT_CHAIN, op_n=msg.request_id))
        elif msg.op_n and msg.op_n == self._probe:
            self._probe = 0
            self.rtt = rtt = self.reactor.seconds() - self._probe_sent
            if self.on_rtt is not None:
                self.on_rtt(self, rtt)

    def unacked_age(self) -> float:
        """Seconds the oldest batch sent here has waited for its acknowledgement (0: none)."""
        if not self._unacked:
            return 0.0
        return max(0.0, self.reactor.seconds() - self._unacked[0][1])

    # liveness

    def start_watch(self) -> None:
        """Begin heartbeats and silence checks (once the connection carries chain traffic)."""
        if self._watch is None and not self.closed:
            self._last_in = self._last_out = self.reactor.seconds()
            self._watch = self.reactor.callLater(self.settings.timeout / 4, self._check)

    def _check(self) -> None:
        self._watch = None
        if self.closed:
            return
        now = self.reactor.seconds()
        timeout = self.settings.timeout
        if now - self._last_in >= timeout:
            log.warn(
                "nothing from {peer} for {s:.1f}s; closing the link",
                peer=self.peer or self.conn.peerName(),
                s=now - self._last_in,
            )
            self._die()
            return
        # a joiner acknowledges only once its copy is loaded (and on disk): it is
        # judged by its heartbeats, with a longer allowance for acknowledgements
        ack_timeout = timeout * (JOINER_ACK_FACTOR if self.peer.startswith("join:") else 1)
        if self._unacked and now - self._unacked[0][1] >= ack_timeout:
            seq, sent = self._unacked[0]
            log.warn(
                "{peer} has not acknowledged op {seq} sent {s:.1f}s ago; closing the link",
                peer=self.peer,
                seq=seq,
                s=now - sent,
            )
            self._die()
            return
        if self.ready and (not self._probe or now - self._probe_sent >= timeout):
            # one probe at a time, every check: it is the heartbeat too
            self._probes += 1
            self._probe, self._probe_sent = self._probes, now
            probe = Message(opcode=wire.OP_CHAIN_PING, c_type=wire.CT_CHAIN, request_id=self._probe)
            self.send(probe)
        elif now - self._last_out >= timeout / 3:
            self.send(Message(opcode=wire.OP_CHAIN_PING, c_type=wire.CT_CHAIN))
        self._watch = self.reactor.callLater(timeout / 4, self._check)

    # backpressure

    def congested(self, full: bool) -> None:
        """The transport's send buffer filled up (or drained)."""
        self.write_full = full
        if not full:
            self._wake_writers()

    def writable(self) -> Deferred[None]:
        """Fires once the send buffer has room (at once if it has), or the link closed."""
        if not self.write_full or self.closed or self.conn.transport is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._writable.append(d)
        return d

    def _wake_writers(self) -> None:
        waiters, self._writable = self._writable, []
        for d in waiters:
            d.callback(None)

    # ending

    def refuse(self, reason: str, retry: bool = True) -> None:
        """Tell the peer why, then close."""
        if not self.closed:
            self.conn.sendMessage(wire.error_reply(reason, retry))
        self.close()

    def _die(self) -> None:
        """Give up on a silent peer: abort, and tell the owner now rather than when
        (or if) the transport reports the loss."""
        self.close(abort=True)
        if self.on_dead is not None:
            self.on_dead(self)

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self._flush_now()
        self.closed = True
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        self._wake_writers()
        self.conn.disconnect(abort=abort)

    def lost(self) -> None:
        """The connection is gone: stop watching it and release anyone waiting to write."""
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        self._wake_writers()


class LinkOwner(Protocol):
    """What a connection hands its link's traffic to: the replica."""

    def chain_message(self, link: Link, msg: Message) -> None: ...

    def link_lost(self, link: Link) -> None: ...

    def link_congested(self, link: Link, full: bool) -> None: ...


@implementer(IPushProducer)
class ChainConnection(FramedProtocol):
    """A replication connection, whichever end dialled; everything it receives
    goes to the replica.

    A dialled one (``connectionMade``) authenticates first with a cluster key:
    what the replica sends meanwhile (its HELLO or JOIN) is held until the peer
    has proved the key and is the member the link was opened to.  An accepted
    one is handed the transport of a connection on which the node's acceptor
    has already proved the peer and heard its HELLO or JOIN (that connection
    then relays the transport's bytes and its loss here); its Link comes from
    the replica.  Both ends run the same code, so a link behaves alike
    whoever opened it.
    """

    def __init__(
        self,
        replica: LinkOwner,
        config: LinkConfig | None = None,
        peer_identity: str | None = None,
        peer_max_frame: int = 0,
    ) -> None:
        """``peer_identity``: who the acceptor's handshake proved (None: no handshake);
        ``peer_max_frame``: from the peer's opening HELLO or JOIN."""
        self.replica = replica
        self.link_config: LinkConfig = (
            config or getattr(replica, "link_config", None) or LinkConfig()
        )
        self.max_frame = self.link_config.chain_frame
        self.link: Link | None = None
        self.authenticated = peer_identity is not None
        self.peer_identity: str | None = peer_identity
        self.peer_max_frame = peer_max_frame

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.registerProducer(self, True)
        key = self.link_config.key
        link = self.link
        if key is None or link is None:
            if link is not None:
                link.start_watch()
            return
        identity = link.local_name or f"join:{getattr(self.replica, 'address', '')}"
        authenticate(
            self,
            key,
            identity,
            link.config,
            expect=link.peer or None,
            clock=link.reactor,
            timeout=self.link_config.timeout,
            chain=self.link_config.chain,
        ).addCallbacks(self._authenticated, lambda _: None)  # it closed the connection

    def _authenticated(self, peer: str) -> None:
        self.authenticated = True
        self.peer_identity = peer
        if self.link is not None:
            self.link.start_watch()

    def sendMessage(self, msg: Message) -> None:
        if msg.opcode in (wire.OP_CHAIN_HELLO, wire.OP_CHAIN_JOIN) and not msg.hello.max_frame:
            self.link_config.stamp(msg.hello)
        super().sendMessage(msg)

    def pauseProducing(self) -> None:
        if self.link is not None:
            self.link.congested(True)
            self.replica.link_congested(self.link, True)

    def resumeProducing(self) -> None:
        if self.link is not None:
            self.link.congested(False)
            self.replica.link_congested(self.link, False)

    def stopProducing(self) -> None:
        pass

    def messageReceived(self, msg: Message) -> None:
        if self.link is not None and self.link.received(msg):
            self.replica.chain_message(self.link, msg)

    def badFrame(self, payload: bytes, exc: Exception) -> None:
        self.log.warn("undecodable frame on chain link {link}: {e}", link=self.link, e=exc)
        if self.link is not None:
            self.link.close()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.link is not None:
            self.link.lost()
            self.replica.link_lost(self.link)
