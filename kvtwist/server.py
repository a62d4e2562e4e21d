"""The client-facing Protocol and Factory, and request dispatch.

A connection may pipeline: each request gets a slot in a FIFO as it arrives,
the slot is filled when its answer is ready (tree work runs on threads, writes
wait for commitment), and answers leave in request order.  Every answer is a
frame: validation failures, unreachable peers and internal errors all become
ERROR replies with a reason; nothing a client sends can take the node down.
"""

from __future__ import annotations

import hmac
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist import wire
from kvtwist.chain.auth import AuthError, Responder, auth_message
from kvtwist.chain.core import WriteRequest
from kvtwist.chain.link import MAX_CLIENT_ID, Link, LinkConfig, limits_problem
from kvtwist.chain.outcomes import Refused, WriteResult
from kvtwist.chain.replica import NotHere, ReadView, Replica, Unavailable
from kvtwist.client.protocol import ConnectionPool
from kvtwist.logs import LogLimiter
from kvtwist.nodestats import add_operations_fields
from kvtwist.proto.kvtwist_pb2 import OpStats
from kvtwist.proto.kvtwist_pb2 import Stats as StatsMsg
from kvtwist.tls import TLS_ERRORS, channel_binding, tls_reason
from kvtwist.tree import BTree
from kvtwist.wire import FramedProtocol, Message

log = Logger(namespace="kvtwist.server")

DEFAULT_MAX_KEY = wire.DEFAULT_MAX_KEY
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_RANGE_LIMIT = 10_000
DEFAULT_MAX_PENDING = 1024
DEFAULT_MAX_INFLIGHT = 64
DEFAULT_MAX_REPLY = 64 * 1024 * 1024
DEFAULT_REPLY_BUDGET = 64 * 1024 * 1024
#: Chain links that proved themselves (or, without a cluster key, said HELLO or
#: JOIN): neighbours, joiners, links being replaced.  They do not count as clients.
CHAIN_RESERVE = 16
#: Connections in a chain handshake not yet proved, and connections beyond
#: --max-connections not yet in one: strangers may fill this, and only this.
#: A newcomer to a full pool pushes out its oldest member, so keeping a member
#: out takes a steady stream of connections, not 16 idle ones.
HANDSHAKE_POOL = 16
#: How long a connection beyond the limit has to open a handshake.
CHAIN_GRACE = 1.0
MAX_HOPS = 2
BIG_READS = frozenset({wire.OP_GETKEYS, wire.OP_GETVALUES, wire.OP_RANGE})


def _as_list(frame: bytes) -> list[bytes]:
    return [frame]


def _is_write(msg: Message) -> bool:
    return msg.opcode in wire.WRITE_OPS


def _is_plain_get(msg: Message) -> bool:
    """A GET of the committed state (not of this node's own copy): the batched read path."""
    return msg.opcode == wire.OP_GET and not msg.local


class BadRequest(Exception):
    """The request is malformed; the reason goes back to the client."""


@dataclass
class Limits(wire.ClientLimits):
    """What a node allows its clients: the sizes of ``wire.ClientLimits`` (its chain
    links size their frames by them), connections, pending requests and replies."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    range_limit: int = DEFAULT_RANGE_LIMIT
    max_pending: int = DEFAULT_MAX_PENDING
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    idle_timeout: float | None = None
    max_reply: int = DEFAULT_MAX_REPLY
    #: Bytes of replies a connection may hold being built or waiting for their turn.
    reply_budget: int = DEFAULT_REPLY_BUDGET


@dataclass
class OpCounter:
    count: int = 0
    errors: int = 0
    total_s: float = 0.0


@dataclass
class Metrics:
    started: float = field(default_factory=time.monotonic)
    ops: dict[int, OpCounter] = field(default_factory=dict)  # by opcode

    def record(self, op: int, seconds: float, error: bool) -> None:
        self.record_many(op, seconds, 1, 1 if error else 0)

    def record_many(self, op: int, seconds: float, count: int, errors: int) -> None:
        """``count`` requests of one kind answered together, each in ``seconds``."""
        c = self.ops.get(op)
        if c is None:
            c = self.ops[op] = OpCounter()
        c.count += count
        c.total_s += seconds * count
        c.errors += errors


@implementer(IPushProducer)
class NodeProtocol(FramedProtocol, TimeoutMixin):
    """One client connection (or, after a chain hello, a replication link).

    Memory per connection is bounded: the connection stops reading while its
    replies back up in the transport (a client that does not read), while too
    many of its requests are unanswered, and while the chain downstream is
    congested; it reads again once the cause is gone.

    With a cluster key, a connection becomes a chain link only after the
    challenge-response (OP_CHAIN_AUTH); until then every chain opcode is
    refused and the connection closed, and nothing reaches the replica.

    With a client token, every client request is refused until the
    connection has shown the token (OP_AUTH); a wrong token closes it.
    """

    factory: NodeFactory

    def __init__(self) -> None:
        self.link: Link | None = None
        self.authenticated = False
        self.peer_identity: str | None = None  # proved by the handshake
        self.peer_config = 0  # the configuration number the handshake bound
        self.peer_max_frame = 0  # from the opening HELLO or JOIN
        self._responder: Responder | None = None
        self._auth_timer: Any = None
        self._over_limit: Any = None  # a timer while this connection is beyond the limit
        self._slots: deque[list[Any]] = deque()  # [frame or None]
        self._writes = 0  # started and not yet answered
        self._reads = 0
        self._held: deque[tuple[Message, list[Any]]] = deque()  # not started yet
        self._reply_bytes = 0  # held for reads running (see _reply_cost) and replies not yet sent
        self._closing = False
        self._draining = False
        self._pause_reasons: set[str] = set()
        self.logged_in = False  # showed the client token (or none is needed)

    def connectionMade(self) -> None:
        self.max_frame = self.factory.limits.max_frame
        super().connectionMade()
        f = self.factory
        self.logged_in = f.token is None
        self.callLater = f.reactor.callLater  # type: ignore[method-assign]  # the node clock
        if f.limits.idle_timeout:
            self.setTimeout(f.limits.idle_timeout)
        if len(f.connections) >= f.limits.max_connections:
            # chain links do not count: a few more may show that they are one
            if f.replica.standalone:
                self._refuse_over_limit()
                return
            f.enter_pool(self)
            self._over_limit = f.reactor.callLater(CHAIN_GRACE, self._refuse_over_limit)
        else:
            f.connections.add(self)
        self.transport.registerProducer(self, True)
        if f.replica.congested:
            self.pause("chain")

    @property
    def link_config(self) -> LinkConfig:
        return self.factory.link_config

    def _refuse_over_limit(self) -> None:
        f = self.factory
        f.handshaking.pop(self, None)
        self._over_limit = None
        log.warn(
            "{peer}: refused, {n} connections already open (limit)",
            peer=self.peerName(),
            n=len(f.connections),
        )
        self.sendMessage(
            wire.error_reply(f"too many connections (limit {f.limits.max_connections})", retry=True)
        )
        self._closing = True
        self.disconnect()

    def push_out(self) -> None:
        """A newer stranger took our place in the full handshake pool."""
        if self._over_limit is not None:
            self._over_limit.cancel()
            self._refuse_over_limit()
        else:
            self._refuse_chain("too many chain handshakes at once", retry=True)

    def _become_chain(self) -> bool:
        """This connection carries chain traffic: no client limits apply to it.

        It takes a place in the chain reserve; False (and refused) when none is left.
        """
        f = self.factory
        f.connections.discard(self)
        f.handshaking.pop(self, None)
        if self not in f.links:
            if len(f.links) >= CHAIN_RESERVE:
                self._refuse_chain(f"{CHAIN_RESERVE} chain links already open", retry=True)
                return False
            f.links.add(self)
        self.setTimeout(None)
        self.max_frame = self._decoder.max_frame = f.link_config.chain_frame
        self.resume("chain")
        return True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(*TLS_ERRORS) and self.link is None and not self.authenticated:
            left_out = self.factory.tls_refusals.allow()
            if left_out is not None:
                log.info(
                    "{peer}: TLS handshake failed ({why}): a plain client?{more}",
                    peer=self.peerName(),
                    why=tls_reason(reason.value),
                    more=f" ({left_out} more not logged)" if left_out else "",
                )
        self.factory.connections.discard(self)
        self.factory.handshaking.pop(self, None)
        self.factory.links.discard(self)
        self._closing = True
        self.setTimeout(None)
        for timer in (self._over_limit, self._auth_timer):
            if timer is not None and timer.active():
                timer.cancel()
        if self.link is not None:
            self.link.lost()
            self.factory.replica.link_lost(self.link)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        if self.link is not None:
            return  # chain links watch themselves (heartbeats and the link timeout)
        log.info(
            "{peer}: idle for {s}s; closing",
            peer=self.peerName(),
            s=self.factory.limits.idle_timeout,
        )
        self.sendMessage(wire.error_reply("idle timeout; closing"))
        self._closing = True
        self.disconnect()

    # flow control

    def pause(self, reason: str) -> None:
        if not self._pause_reasons and self.transport is not None:
            self.transport.pauseProducing()
        self._pause_reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._pause_reasons:
            self._pause_reasons.discard(reason)
            if not self._pause_reasons and self.transport is not None and not self._closing:
                self.transport.resumeProducing()
                self.drain()
            if reason == "output":
                self._pump()

    def inputPaused(self) -> bool:
        return bool(self._pause_reasons)

    def pauseProducing(self) -> None:
        """The transport's send buffer is full."""
        if self.link is not None:
            self.link.congested(True)
            self.factory.replica.link_congested(self.link, True)
        else:
            self.pause("output")

    def resumeProducing(self) -> None:
        if self.link is not None:
            self.link.congested(False)
            self.factory.replica.link_congested(self.link, False)
        else:
            self.resume("output")

    def stopProducing(self) -> None:
        self._closing = True

    def messageReceived(self, msg: Message) -> None:
        link = self.link
        if link is not None:
            if link.received(msg):
                self.factory.replica.chain_message(link, msg)
            return
        op = msg.opcode
        if self._over_limit is not None:
            if op not in (wire.OP_CHAIN_AUTH, wire.OP_CHAIN_HELLO, wire.OP_CHAIN_JOIN):
                self._refuse_over_limit()
                return
            # it stays in the handshake pool until the handshake proves it, or fails
            self._over_limit.cancel()
            self._over_limit = None
        if op in wire.CHAIN_OPS or self._responder is not None:
            self._chain_request(msg)
            return
        if op == wire.OP_AUTH:
            self._log_in(msg)
            return
        if not self.logged_in:
            self.factory.metrics.record(op, 0.0, True)
            self._answer(
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

    def _answer(self, reply: Message) -> None:
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
        token = f.token
        if token is None or hmac.compare_digest(bytes(msg.token), token):
            self.logged_in = True
            f.metrics.record(wire.OP_AUTH, 0.0, False)
            self._answer(wire.reply(wire.OP_AUTH, c_type=wire.CT_NONE))
            return
        f.metrics.record(wire.OP_AUTH, 0.0, True)
        left_out = f.token_refusals.allow()
        if left_out is not None:
            log.warn(
                "{peer}: wrong client token; closing{more}",
                peer=self.peerName(),
                more=f" ({left_out} more refusals not logged)" if left_out else "",
            )
        self.logged_in = False
        self._answer(wire.error_reply("authentication failed: wrong token"))
        self._closing = True
        self.disconnect()

    # chain links

    def _chain_request(self, msg: Message) -> None:
        """A chain opcode on a connection that is no link yet."""
        f = self.factory
        op = msg.opcode
        keyed = f.link_config.key is not None
        if f.replica.standalone or self._slots:
            self._refuse_in_order(msg)
        elif op == wire.OP_CHAIN_AUTH:
            self._authenticate(msg)
        elif keyed and not self.authenticated:
            self._refuse_chain(f"{wire.op_name(op)} before authentication")
        elif op == wire.OP_CHAIN_PING:
            pass  # authenticated, its HELLO or JOIN not sent yet
        elif op not in (wire.OP_CHAIN_HELLO, wire.OP_CHAIN_JOIN):
            self._refuse_in_order(msg)
        else:
            hello = msg.hello
            if keyed:
                # a joiner dials before it has a configuration of its own: its
                # handshake binds 0, and only a HELLO's configuration is checked
                is_hello = op == wire.OP_CHAIN_HELLO
                claimed = hello.sender if is_hello else f"join:{hello.address}"
                config_ok = hello.config == self.peer_config or not is_hello
                if claimed != self.peer_identity or not config_ok:
                    self._refuse_chain(
                        f"{wire.op_name(op)} names {claimed!r} in config {hello.config}; "
                        f"authenticated as {self.peer_identity!r} in config {self.peer_config}"
                    )
                    return
            if op == wire.OP_CHAIN_JOIN:
                problem = limits_problem(f.link_config, hello)
                if problem is not None:
                    log.error("join from {peer} refused: {why}", peer=self.peerName(), why=problem)
                    self.sendMessage(wire.error_reply(problem, retry=False))
                    self._closing = True
                    self.disconnect()
                    return
            self.peer_max_frame = hello.max_frame
            if self._become_chain():
                f.replica.incoming(self, msg)

    def _refuse_in_order(self, msg: Message) -> None:
        """A chain opcode from a client connection: an ERROR in its place among the replies."""
        log.warn(
            "{peer}: chain-internal {op} from a client connection; refused",
            peer=self.peerName(),
            op=wire.op_name(msg.opcode),
        )
        reason = f"{wire.op_name(msg.opcode)} is chain-internal; refused"
        if self.factory.replica.standalone:
            reason += " (a standalone node takes no chain links)"
        self._answer(wire.error_reply(reason))

    def _refuse_chain(self, reason: str, retry: bool = False) -> None:
        """Refuse an unauthenticated or failed chain peer: ERROR, a (rate-limited) log, close."""
        if self._closing:
            return
        left_out = self.factory.refusals.allow()
        if left_out is not None:
            log.warn(
                "{peer}: chain link refused: {reason}{more}",
                peer=self.peerName(),
                reason=reason,
                more=f" ({left_out} more refusals not logged)" if left_out else "",
            )
        self.sendMessage(wire.error_reply(f"refused: {reason}", retry=retry))
        self._closing = True
        self.disconnect()

    def _authenticate(self, msg: Message) -> None:
        """The responder's side of the handshake (see kvtwist.chain.auth)."""
        f = self.factory
        key = f.link_config.key
        if key is None:
            self._refuse_chain("this node has no cluster key (--cluster-key-file)")
            return
        if self.authenticated:
            self._refuse_chain("already authenticated")
            return
        if self._responder is None:
            if self in f.connections:
                # until it proves the key it is a stranger: it leaves the client
                # connections for the handshake pool, which bounds such strangers
                f.connections.discard(self)
                f.enter_pool(self)
            # over TLS the proof covers this session: it cannot be relayed
            self._responder = Responder(key, f.identity(), binding=channel_binding(self.transport))
            self._auth_timer = f.reactor.callLater(
                f.link_config.timeout, self._refuse_chain, "authentication timed out"
            )
        try:
            answer = self._responder.receive(msg.auth)
        except AuthError as e:
            self._refuse_chain(f"authentication failed: {e}")
            return
        self.sendMessage(auth_message(answer))
        if self._responder.peer is not None:
            self.authenticated = True
            self.peer_identity = self._responder.peer
            self.peer_config = self._responder.config
            self._responder = None
            if self._auth_timer.active():
                self._auth_timer.cancel()
            if not self._become_chain():
                return
            log.debug(
                "{peer}: authenticated as {who}", peer=self.peerName(), who=self.peer_identity
            )

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
                self.factory.write_many(msgs, self.peerName).addCallback(
                    self._done_many, slots, True
                )
            elif self._writes:
                return
            elif _is_plain_get(msg):
                # consecutive GETs: one job and one Deferred for all of them
                msgs, slots = self._take_run(_is_plain_get, window - self._reads)
                self._reads += len(msgs)
                # the run may fill what is left of the budget: nothing else starts meanwhile
                room = budget - self._reply_bytes
                self._reply_bytes += room
                self.factory.get_many(msgs, self.peerName, room).addCallback(
                    self._done_gets, msgs, slots, room
                )
            else:
                held.popleft()
                self._reads += 1
                cost = _reply_cost(op, limits)
                self._reply_bytes += cost
                self.factory.handle(msg, self.peerName).addCallback(_as_list).addCallback(
                    self._done_many, [slot], False, cost
                )

    def _take_run(
        self, belongs: Callable[[Message], bool], room: int
    ) -> tuple[list[Message], list[list[Any]]]:
        """The held requests in front that ``belongs`` accepts, at least one, up to ``room``."""
        held = self._held
        msgs: list[Message] = []
        slots: list[list[Any]] = []
        while held and len(msgs) < room:
            msg, slot = held[0]
            if msgs and not belongs(msg):
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
        self._answer(wire.error_reply(f"undecodable message ({len(payload)} bytes)"))

    def _flush(self) -> None:
        slots = self._slots
        out = []
        while slots and slots[0][0] is not None:
            out.append(slots.popleft()[0])
        self._reply_bytes -= sum(map(len, out))
        if out and self.transport is not None and not self._closing:
            self.transport.writeSequence(out)
        if len(slots) < self.factory.limits.max_pending // 2:
            self.resume("pending")


class NodeFactory(Factory):
    """Validates requests, sends each where it belongs, and keeps the counters."""

    protocol = NodeProtocol  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        replica: Replica,
        limits: Limits | None = None,
        link_config: LinkConfig | None = None,
        token: bytes | None = None,
    ) -> None:
        self.reactor = reactor
        self.replica = replica
        self.store = replica.store
        self.limits = limits or Limits()
        self.link_config = link_config or LinkConfig(client=self.limits)
        # outgoing links (ChainConnection) take theirs from the replica
        replica.link_config = self.link_config
        replica.link_timeout = self.link_config.timeout
        self.connections: set[NodeProtocol] = set()  # client connections
        #: unproven, oldest first: HANDSHAKE_POOL at most (an ordered set)
        self.handshaking: dict[NodeProtocol, None] = {}
        self.links: set[NodeProtocol] = set()  # proven chain links: CHAIN_RESERVE at most
        self.refusals = LogLimiter(now=reactor.seconds)
        self.token = token  # clients must show it first (--auth-token-file)
        self.token_refusals = LogLimiter(now=reactor.seconds)
        self.tls_refusals = LogLimiter(now=reactor.seconds)
        self.metrics = Metrics()
        # requests relayed to the head or tail go to the port the links use:
        # the same TLS, and this node's token (members share it)
        self.forwarder = ConnectionPool(reactor, tls=replica.link_tls, token=token)
        replica.on_congestion = self.congestion

    def enter_pool(self, conn: NodeProtocol) -> None:
        """Give ``conn`` a place in the handshake pool, pushing out the oldest if it is full."""
        pool = self.handshaking
        while len(pool) >= HANDSHAKE_POOL:
            oldest = next(iter(pool))
            pool.pop(oldest)
            oldest.push_out()
        pool[conn] = None

    def identity(self) -> str:
        """Who this node is in a chain-link handshake: its znode name, or a joiner's name."""
        return self.replica.name or f"join:{self.replica.address}"

    def congestion(self, congested: bool) -> None:
        """The chain downstream is slow: stop taking requests from clients until it drains."""
        for conn in list(self.connections):
            if conn.link is None:
                (conn.pause if congested else conn.resume)("chain")

    def handle(self, msg: Message, peer: Callable[[], str]) -> Deferred[bytes]:
        """Answer one request with a complete reply frame; never fails."""
        start = time.perf_counter()
        try:
            result = self._dispatch(msg)
        except Exception:
            answer = self._failed(Failure(), msg, start, peer)
            return answer if isinstance(answer, Deferred) else defer.succeed(answer)
        if isinstance(result, bytes):
            return defer.succeed(self._answered(result, msg.opcode, start))
        return result.addCallbacks(
            self._answered,
            self._failed,
            callbackArgs=(msg.opcode, start),
            errbackArgs=(msg, start, peer),
        )

    def get_many(
        self, msgs: list[Message], peer: Callable[[], str], room: int | None = None
    ) -> Deferred[list[bytes]]:
        """Answer GETs that arrived together with one reader job; never fails.

        Each GET is validated on its own (a bad one gets its ERROR in its
        place); when this node does not serve reads now, each goes the way of
        any other request (forwarded to the tail, or waiting for this node).
        With ``room``, replies are built only while their values fit in it (at
        least one): the answer then covers the first GETs only, and the caller
        asks again for the rest.
        """
        start = time.perf_counter()
        try:
            view = self.replica.serving_view()
        except Exception:
            view = None
        if view is None:
            return defer.gatherResults([self.handle(m, peer) for m in msgs])
        keys: list[bytes | None] = []
        errors: dict[int, bytes] = {}
        for i, msg in enumerate(msgs):
            try:
                keys.append(self._key(msg, wire.CT_KEY, msg.keys[0] if msg.keys else None))
            except BadRequest as e:
                keys.append(None)
                errors[i] = wire.frame(wire.error_reply(str(e)))
                log.debug("{peer}: bad GET: {e}", peer=peer(), e=e)
        tree = view.tree
        reply = wire.get_reply_frame

        def run() -> list[bytes]:
            get = tree.get
            if not errors:
                found = [get(k) for k in keys]  # type: ignore[arg-type]
            else:
                found = [None if k is None else get(k) for k in keys]
            if room is not None and sum(map(len, filter(None, found))) > room:
                found = found[: _within(found, room)]  # values are shared, not copied yet
            if not errors:
                return [reply(v) for v in found]
            return [errors[i] if keys[i] is None else reply(v) for i, v in enumerate(found)]

        def answered(frames: list[bytes]) -> list[bytes]:
            n = len(frames)
            bad = len(errors) if n == len(msgs) else sum(i < n for i in errors)
            self.metrics.record_many(wire.OP_GET, time.perf_counter() - start, n, bad)
            return frames

        def failed(f: Failure) -> list[bytes]:
            log.failure("{peer}: GET failed", f, peer=peer())
            self.metrics.record_many(wire.OP_GET, time.perf_counter() - start, len(msgs), len(msgs))
            return [wire.frame(wire.error_reply(f"internal error: {f.getErrorMessage()}"))] * len(
                msgs
            )

        return self.store.read(run).addCallbacks(answered, failed)

    def _answered(self, data: bytes, op: int, start: float) -> bytes:
        self.metrics.record(op, time.perf_counter() - start, False)
        return data

    def _failed(
        self, f: Failure, msg: Message, start: float, peer: Callable[[], str]
    ) -> bytes | Deferred[bytes]:
        """An ERROR reply for a failed request, or the answer of the member it belongs to."""
        op = msg.opcode
        if f.check(NotHere):
            forwarded = self._forward(f.value, msg)  # type: ignore[arg-type]
            if forwarded is not None:
                return forwarded.addCallback(self._answered, op, start)
        if f.check(BadRequest, Refused):
            log.debug(
                "{peer}: bad {op}: {e}", peer=peer(), op=wire.op_name(op), e=f.getErrorMessage()
            )
            reply = wire.error_reply(f.getErrorMessage())
        elif f.check(Unavailable, NotHere):
            reply = wire.error_reply(f.getErrorMessage(), retry=True)
        else:
            log.failure("{peer}: {op} failed", f, peer=peer(), op=wire.op_name(op))
            reply = wire.error_reply(f"internal error: {f.getErrorMessage()}")
        self.metrics.record(op, time.perf_counter() - start, True)
        return wire.frame(reply)

    def _forward(self, exc: NotHere, msg: Message) -> Deferred[bytes] | None:
        """Relay a request to the head or tail; None when it may not travel further."""
        if exc.target is None or msg.hops >= MAX_HOPS:
            return None
        fwd = Message()
        fwd.CopyFrom(msg)
        fwd.hops += 1

        def unreachable(f: Failure) -> bytes:
            return wire.frame(
                wire.error_reply(f"the {exc.role} is unreachable: {f.getErrorMessage()}", True)
            )

        return self.forwarder.request(exc.target, fwd).addCallbacks(wire.frame, unreachable)

    # dispatch

    def _write_request(self, msg: Message) -> WriteRequest:
        """Validate a PUT or DEL; raise BadRequest with the reason."""
        op = msg.opcode
        client_id = msg.client_id
        if len(client_id) > MAX_CLIENT_ID // 4:
            size = len(client_id.encode())
            if size > MAX_CLIENT_ID:
                raise BadRequest(f"client_id of {size} bytes exceeds the limit of {MAX_CLIENT_ID}")
        dedup = (client_id, msg.request_id, msg.ack_below, msg.resend)
        if client_id and msg.ack_below > msg.request_id:
            raise BadRequest(f"ack_below {msg.ack_below} is above request_id {msg.request_id}")
        if op == wire.OP_PUT:
            self._ctype(msg, wire.CT_ENTRY)
            if not msg.HasField("entry"):
                raise BadRequest("PUT needs an entry")
            entry = msg.entry
            key = self._key(msg, wire.CT_ENTRY, entry.key)
            data = entry.data
            if len(data) > self.limits.max_value:
                raise BadRequest(
                    f"value of {len(data)} bytes exceeds the limit of {self.limits.max_value}"
                )
            return True, key, data, *dedup
        key = self._key(msg, wire.CT_KEY, msg.keys[0] if msg.keys else None)
        return False, key, b"", *dedup

    def write_many(self, msgs: list[Message], peer: Callable[[], str]) -> Deferred[list[bytes]]:
        """Answer PUTs and DELs that arrived together: numbered and logged as one batch.

        A bad one gets its ERROR in its place; at a node that is not the
        head, each goes the way of any other request (forwarded to the head).
        """
        replica = self.replica
        if replica.fenced or not replica.is_head:
            return defer.gatherResults([self.handle(m, peer) for m in msgs])
        start = time.perf_counter()
        frames: list[Any] = [None] * len(msgs)
        requests = []
        index = []
        for i, msg in enumerate(msgs):
            try:
                requests.append(self._write_request(msg))
            except BadRequest as e:
                frames[i] = self._failed(Failure(e), msg, start, peer)
                continue
            index.append(i)

        def answered(outcomes: list[WriteResult | Exception]) -> Any:
            metrics = self.metrics
            elapsed = time.perf_counter() - start
            for i, o in zip(index, outcomes, strict=True):
                msg = msgs[i]
                if isinstance(o, Exception):
                    frames[i] = self._failed(Failure(o), msg, start, peer)
                    continue
                op = msg.opcode
                found = o.found if op == wire.OP_DEL else None
                frames[i] = wire.write_reply_frame(op, o.op_n, found)
                metrics.record(op, elapsed, False)
            if any(isinstance(f, Deferred) for f in frames):
                return defer.gatherResults(
                    [f if isinstance(f, Deferred) else defer.succeed(f) for f in frames]
                )
            return frames

        if not requests:
            return defer.succeed(frames)
        return replica.write_many(requests).addCallback(answered)

    def _dispatch(self, msg: Message) -> Deferred[bytes] | bytes:
        op = msg.opcode
        if op in wire.WRITE_OPS:
            request = self._write_request(msg)
            return self.replica.write(*request).addCallback(
                lambda r: wire.write_reply_frame(op, r.op_n, r.found if op == wire.OP_DEL else None)
            )
        if op == wire.OP_STATS:
            self._ctype(msg, wire.CT_NONE)
            return wire.frame(self._stats())
        reader = self._reader(msg)
        big = op in BIG_READS
        view: ReadView | None
        if msg.local:
            view = ReadView(self.replica.committed_tree, self.replica.committed_seq)
        else:
            view = self.replica.serving_view()
        if view is None:  # this tail is not ready yet: wait for it, bounded
            return self.replica.read_view().addCallback(
                lambda v: self.store.read(lambda: reader(v), big=big)
            )
        return self.store.read(lambda: reader(view), big=big)

    def _ctype(self, msg: Message, want: int) -> None:
        if msg.c_type != want:
            raise BadRequest(
                f"{wire.op_name(msg.opcode)} needs c_type {wire.Message.CType.Name(want)}"  # type: ignore[arg-type]
                f", got {msg.c_type}"
            )

    def _key(self, msg: Message, ctype: int, key: bytes | None) -> bytes:
        self._ctype(msg, ctype)
        if key is None:
            raise BadRequest(f"{wire.op_name(msg.opcode)} needs a key")
        if not key:
            raise BadRequest("the key is empty")
        size = len(key)
        if size > self.limits.max_key:
            raise BadRequest(f"key of {size} bytes exceeds the limit of {self.limits.max_key}")
        return key

    def _reader(self, msg: Message) -> Callable[[ReadView], bytes]:
        """Validate a read here; return the work to do on a reader thread."""
        op = msg.opcode
        if op == wire.OP_GET:
            key = self._key(msg, wire.CT_KEY, msg.keys[0] if msg.keys else None)

            return lambda v: wire.get_reply_frame(v.tree.get(key))
        if op in (wire.OP_SIZE, wire.OP_HEIGHT):
            self._ctype(msg, wire.CT_NONE)
            if op == wire.OP_SIZE:
                return lambda v: wire.frame(wire.result_reply(op, len(v.tree)))
            return lambda v: wire.frame(wire.result_reply(op, v.tree.height()))
        max_reply = self.limits.max_reply
        if op == wire.OP_GETKEYS:
            self._ctype(msg, wire.CT_NONE)

            def getkeys(v: ReadView) -> bytes:
                keys = v.tree.listing(False, max_reply, _ELEMENT_OVERHEAD)
                if keys is None:
                    raise _too_big(op, max_reply)
                return wire.frame(wire.reply(op, c_type=wire.CT_KEYS, keys=keys))

            return getkeys
        if op == wire.OP_GETVALUES:
            self._ctype(msg, wire.CT_NONE)

            def getvalues(v: ReadView) -> bytes:
                values = v.tree.listing(True, max_reply, _ELEMENT_OVERHEAD)
                if values is None:
                    raise _too_big(op, max_reply)
                return wire.frame(wire.reply(op, c_type=wire.CT_VALUES, values=values))

            return getvalues
        if op == wire.OP_VERIFY:
            self._ctype(msg, wire.CT_RESULT)
            n = msg.op_n if msg.op_n else msg.result
            if n <= 0:
                raise BadRequest(f"VERIFY needs an op number > 0, got {n}")
            return lambda v: wire.frame(wire.result_reply(op, 1 if n <= v.seq else 0))
        if op == wire.OP_RANGE:
            self._ctype(msg, wire.CT_RANGE)
            spec = msg.range
            start = spec.start if spec.HasField("start") else None
            stop = spec.stop if spec.HasField("stop") else None
            limit = min(spec.limit or self.limits.range_limit, self.limits.range_limit)

            def scan(v: ReadView) -> bytes:
                items = v.tree.range(start, stop, limit)
                _bounded(op, (len(k) + len(d) for k, d in items), max_reply)
                return wire.frame(
                    wire.reply(
                        op,
                        c_type=wire.CT_ENTRIES,
                        keys=[k for k, _ in items],
                        values=[d for _, d in items],
                    )
                )

            return scan
        if op == wire.OP_ERROR or op % 10 == 1:
            raise BadRequest(f"opcode {op} is a reply, not a request")
        if op == wire.OP_BAD:
            raise BadRequest("opcode BAD (0) is no request (an empty frame reads as one)")
        raise BadRequest(f"unknown opcode {op}")

    def _stats(self) -> Message:
        r = self.replica
        tree: BTree = r.committed_tree
        stats = StatsMsg(
            keys=len(tree),
            height=tree.height(),
            connections=len(self.connections),
            uptime_s=time.monotonic() - self.metrics.started,
            last_op=r.committed_seq,
            role=r.role,
        )
        for name, c in sorted((wire.op_name(op), c) for op, c in self.metrics.ops.items()):
            mean = c.total_s / c.count * 1e6 if c.count else 0.0
            stats.ops.append(OpStats(op=name, count=c.count, mean_service_us=mean, errors=c.errors))
        add_operations_fields(stats, r)
        return wire.reply(wire.OP_STATS, c_type=wire.CT_STATS, stats=stats)


#: Bytes a repeated field's element costs beyond its contents (tag, length), at most.
_ELEMENT_OVERHEAD = 6


def _reply_cost(op: int, limits: Limits) -> int:
    """The reply bytes a request started alone may build: what it holds of the budget."""
    if op in BIG_READS:
        return limits.max_reply
    if op == wire.OP_GET:  # one read on its own (local, or not served here)
        return limits.max_value
    return 0


def _within(values: list[bytes | None], room: int) -> int:
    """How many of ``values``, from the first, fit in ``room`` bytes (at least one)."""
    total = 0
    for n, v in enumerate(values, 1):
        total += len(v) if v else 0
        if total > room:
            return max(n - 1, 1)
    return len(values)


def _too_big(op: int, max_reply: int) -> BadRequest:
    return BadRequest(
        f"the {wire.op_name(op)} reply would exceed {max_reply} bytes (--max-reply); "
        "page through the keys with RANGE and a smaller limit"
    )


def _bounded(op: int, sizes: Any, max_reply: int) -> None:
    """Refuse a listing whose reply would exceed ``max_reply`` bytes, before building it."""
    total = 0
    for n in sizes:
        total += n + _ELEMENT_OVERHEAD
        if total > max_reply:
            raise _too_big(op, max_reply)
