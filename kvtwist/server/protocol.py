"""The protocol of a connection to the client port.

A connection may pipeline: each request gets a slot in a FIFO as it arrives,
the slot is filled when its answer is ready (tree work runs on threads, writes
wait for commitment), and answers leave in request order.  Every answer is a
frame: validation failures, unreachable peers and internal errors all become
ERROR replies with a reason; nothing a client sends can take the node down.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist import wire
from kvtwist.chain.link import ChainConnection
from kvtwist.flow import ReadPauses
from kvtwist.sendnow import send_now
from kvtwist.server.backup import BackupCursor, backup_step
from kvtwist.server.requests import batched_get, reply_cost
from kvtwist.tls import TLS_ERRORS
from kvtwist.wire import FramedProtocol, Message

if TYPE_CHECKING:
    from kvtwist.server.factory import NodeFactory

log = Logger(namespace="kvtwist.server")


def _as_list(frame: bytes) -> list[bytes]:
    return [frame]


def _is_write(msg: Message) -> bool:
    return msg.opcode in wire.WRITE_OPS


@implementer(IPushProducer)
class NodeProtocol(ReadPauses, FramedProtocol, TimeoutMixin):
    """One client connection, until the node accepts it as a chain link.

    Memory per connection is bounded: the connection stops reading while its
    replies back up in the transport (a client that does not read), while too
    many of its requests are unanswered, and while the chain downstream is
    congested; it reads again once the cause is gone.

    Chain opcodes go to the node's acceptor (kvtwist.server.acceptor), which
    decides whether this connection may become a link; once it is one, its
    transport belongs to a ChainConnection, the protocol of every link, and
    this one only relays to it what the transport delivers.

    With a client token, every client request is refused until the
    connection has shown the token (OP_AUTH); a wrong token closes it.
    """

    factory: NodeFactory

    def __init__(self) -> None:
        self.chain: ChainConnection | None = None  # the link this connection became
        self._slots: deque[list[Any]] = deque()  # [frame or None]
        self._writes = 0  # started and not yet answered
        self._reads = 0
        self._held: deque[tuple[Message, list[Any]]] = deque()  # not started yet
        self._reply_bytes = 0  # held for reads running (see reply_cost) and replies not yet sent
        self._closing = False
        self._draining = False
        self._pause_reasons: set[str] = set()
        self.logged_in = False  # showed the client token (or none is needed)
        #: the BACKUPs being read on this connection, by chain (a lone node's is "")
        self._backups: dict[str, BackupCursor] = {}

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> Any:
        """The idle timeout runs on the node's clock."""
        return self.factory.reactor.callLater(delay, f, *args)

    def connectionMade(self) -> None:
        self.max_frame = self.factory.limits.max_frame
        super().connectionMade()
        f = self.factory
        self.logged_in = f.token is None
        if f.limits.idle_timeout:
            self.setTimeout(f.limits.idle_timeout)
        if len(f.connections) >= f.limits.max_connections:
            # chain links do not count: a few more may show that they are one
            if f.chains.standalone:
                self.refuse_over_limit()
                return
            f.acceptor.beyond_limit(self)
        else:
            f.connections.add(self)
        self.transport.registerProducer(self, True)
        if f.chains.congested:
            self.pause("chain")

    def refuse_over_limit(self) -> None:
        f = self.factory
        f.metrics.connections_refused += 1
        log.warn(
            "{peer}: refused, {n} connections already open (limit)",
            peer=self.peerName(),
            n=len(f.connections),
        )
        self.close_with(
            wire.error_reply(f"too many connections (limit {f.limits.max_connections})", retry=True)
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        f = self.factory
        proved = f.acceptor.proof(self) is not None
        if reason.check(*TLS_ERRORS) and self.chain is None and not proved:
            f.tls_failed(str(self.peerName()), reason.value)
        f.connections.discard(self)
        f.acceptor.lost(self)
        self._closing = True
        self.setTimeout(None)
        if self.chain is not None:
            self.chain.connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.chain is not None:
            self.chain.dataReceived(data)
            return
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        if self.chain is not None:
            return  # chain links watch themselves (heartbeats and the link timeout)
        log.info(
            "{peer}: idle for {s}s; closing",
            peer=self.peerName(),
            s=self.factory.limits.idle_timeout,
        )
        self.close_with(wire.error_reply("idle timeout; closing"))

    # becoming a chain link (what kvtwist.server.acceptor asks of a connection)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def has_requests(self) -> bool:
        return bool(self._slots)

    def close_with(self, reply: Message) -> None:
        self.sendMessage(reply)
        self._closing = True
        self.disconnect()

    def enter_chain(self, max_frame: int) -> None:
        self.setTimeout(None)
        self.max_frame = self._decoder.max_frame = max_frame
        self.resume("chain")

    def hand_over(self, conn: ChainConnection) -> bytes:
        """From now on ``conn`` carries this connection: the transport, its producer, and
        (returned, framed as they came) the bytes received and not yet handled."""
        t = self.transport
        if getattr(t, "producer", None) is not None:
            t.unregisterProducer()
        if self._pause_reasons:
            self._pause_reasons.clear()
            t.resumeProducing()
        rest = b"".join(wire.HEADER.pack(len(p)) + p for p in self._inbox)
        rest += self._decoder.take()
        self._inbox.clear()
        self._too_large = None  # the link's decoder judges that frame by its own limit
        self.chain = conn
        conn.makeConnection(t)
        return rest

    # flow control

    def resumed(self, reason: str, reading: bool) -> None:
        if reading:
            self.drain()
        if reason == "output":
            self._pump()

    def messageReceived(self, msg: Message) -> None:
        op = msg.opcode
        acceptor = self.factory.acceptor
        if not acceptor.admit(self, op):
            return
        if acceptor.takes(self, op):
            acceptor.receive(self, msg)
            return
        if op == wire.OP_AUTH:
            self._log_in(msg)
            return
        if not self.logged_in:
            self.factory.metrics.record(op, 0.0, True)
            self.answer(
                wire.error_reply("authentication required: send the client token (AUTH) first")
            )
            return
        slot: list[Any] = [None]
        self._slots.append(slot)
        self._held.append((msg, slot))
        if len(self._slots) >= self.factory.limits.max_pending:
            self.pause("pending")
        if not self._draining:
            self._pump()

    def drain(self) -> None:
        """Decode everything received, then start it: reads that arrived together share a job."""
        self._draining = True
        try:
            super().drain()
        finally:
            self._draining = False
        self._pump()

    # client token

    def answer(self, reply: Message) -> None:
        """A reply decided at once, in its place among the replies."""
        frame = wire.frame(reply)
        self._reply_bytes += len(frame)
        self._slots.append([frame])
        self._flush()

    def _log_in(self, msg: Message) -> None:
        """OP_AUTH: accept the right token; refuse a wrong one and close (logged, rate-limited).

        A node without a token accepts any, so a client configured with one
        works against it too.
        """
        f = self.factory
        if f.token_check.accepts(bytes(msg.token), str(self.peerName())):
            self.logged_in = True
            f.metrics.record(wire.OP_AUTH, 0.0, False)
            self.answer(wire.reply(wire.OP_AUTH, c_type=wire.CT_NONE))
            return
        f.metrics.record(wire.OP_AUTH, 0.0, True)
        self.logged_in = False
        self.answer(wire.error_reply("authentication failed: wrong token"))
        self._closing = True
        self.disconnect()

    # requests

    def _pump(self) -> None:
        """Start held requests in order; a read waits for the writes sent before it.

        Consecutive writes go out together (the writer keeps their order) and
        consecutive reads run in parallel, but a read never overtakes an earlier
        write of its connection, nor a write an earlier read.  At most
        ``max_inflight`` run at once, and none start while the client is not
        reading its replies, nor while its replies take up its reply budget (a
        listing counts at --max-reply while it runs; one may always run alone):
        that bounds the reply bytes a connection can pin.
        """
        held = self._held
        limits = self.factory.limits
        window = limits.max_inflight
        budget = limits.reply_budget
        while (
            held
            and self._reads + self._writes < window
            and "output" not in self._pause_reasons
            and (self._reply_bytes < budget or not self._reply_bytes)
        ):
            msg, slot = held[0]
            op = msg.opcode
            if op in wire.WRITE_OPS:
                if self._reads:
                    return
                # consecutive writes: numbered, logged and answered as one batch
                msgs, slots = self._take_run(_is_write, window - self._writes)
                self._writes += len(msgs)
                self.factory.dispatcher.write_many(msgs, self.peerName).addCallback(
                    self._done_many, slots, True
                )
            elif self._writes:
                return
            elif batched_get(msg):
                # consecutive GETs: one job and one Deferred for all of them
                # (of every chain a server hosts: the router answers them together)
                msgs, slots = self._take_run(batched_get, window - self._reads, True)
                self._reads += len(msgs)
                # the run may fill what is left of the budget: nothing else starts meanwhile
                room = budget - self._reply_bytes
                self._reply_bytes += room
                self.factory.dispatcher.get_many(msgs, self.peerName, room).addCallback(
                    self._done_gets, msgs, slots, room
                )
            else:
                held.popleft()
                self._reads += 1
                cost = reply_cost(msg, limits)
                self._reply_bytes += cost
                handler = self._backup_step if op == wire.OP_BACKUP else None
                self.factory.dispatcher.handle(msg, self.peerName, handler).addCallback(
                    _as_list
                ).addCallback(self._done_many, [slot], False, cost)

    def _backup_step(self, msg: Message) -> Deferred[bytes]:
        """BACKUP: the next chunk of this connection's backup (index 0 starts one)."""
        replica = self.factory.chains.get(msg.chain)
        assert replica is not None  # the router answered a chain not served here
        cursor, d = backup_step(self._backups.get(msg.chain), msg, replica, replica.store.runner)
        self._backups[msg.chain] = cursor
        return d

    def _take_run(
        self, belongs: Callable[[Message], bool], room: int, chains: bool = False
    ) -> tuple[list[Message], list[list[Any]]]:
        """The held requests in front that ``belongs`` accepts, at least one, up to ``room``,
        all of one chain (a server hosting many answers each run from one chain) unless
        the run may mix ``chains``."""
        held = self._held
        msgs: list[Message] = []
        slots: list[list[Any]] = []
        while held and len(msgs) < room:
            msg, slot = held[0]
            if msgs and (not belongs(msg) or (not chains and msg.chain != msgs[0].chain)):
                break
            held.popleft()
            msgs.append(msg)
            slots.append(slot)
        return msgs, slots

    def _done_many(
        self, frames: list[bytes], slots: list[list[Any]], write: bool, reserved: int = 0
    ) -> None:
        if write:
            self._writes -= len(slots)
        else:
            self._reads -= len(slots)
        self._reply_bytes += sum(map(len, frames)) - reserved
        for slot, data in zip(slots, frames, strict=True):
            slot[0] = data
        self._flush()
        self._pump()

    def _done_gets(
        self, frames: list[bytes], msgs: list[Message], slots: list[list[Any]], room: int
    ) -> None:
        """A run of GETs answered, maybe in part (the reply budget): the rest wait in front."""
        n = len(frames)
        if n < len(msgs):
            self._reads -= len(msgs) - n
            self._held.extendleft(reversed(list(zip(msgs[n:], slots[n:], strict=True))))
        self._done_many(frames, slots[:n], False, room)

    def badFrame(self, payload: bytes, exc: Exception) -> None:
        log.warn(
            "{peer}: undecodable frame of {n} bytes: {e}",
            peer=self.peerName(),
            n=len(payload),
            e=exc,
        )
        self.factory.metrics.record(wire.OP_BAD, 0.0, True)
        self.answer(wire.error_reply(f"undecodable message ({len(payload)} bytes)"))

    def _flush(self) -> None:
        slots = self._slots
        out = []
        while slots and slots[0][0] is not None:
            out.append(slots.popleft()[0])
        self._reply_bytes -= sum(map(len, out))
        if out and self.transport is not None and not self._closing:
            send_now(self.transport, out[0] if len(out) == 1 else b"".join(out))
        if len(slots) < self.factory.limits.max_pending // 2:
            self.resume("pending")
