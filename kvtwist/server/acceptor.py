"""Acceptance of incoming chain links: who may become one, and the hand-over.

A connection to the client port becomes a chain link by opening with a chain
opcode.  The acceptor decides whether it may: with a cluster key only after
the challenge-response (OP_CHAIN_AUTH, kvtwist.chain.auth), and only with a
HELLO or JOIN naming who the handshake proved.  Until then nothing reaches
the replica.  Strangers take places in a bounded handshake pool, proved links
in the chain reserve, so neither a flood of handshakes nor a full client
limit keeps a neighbour out.  An accepted connection hands its transport to a
:class:`~kvtwist.chain.link.ChainConnection`, the protocol every link runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.logger import Logger

from kvtwist import wire
from kvtwist.chain.auth import AuthError, Responder, auth_message
from kvtwist.chain.link import ChainConnection, LinkConfig, limits_problem
from kvtwist.chain.replica import Replica
from kvtwist.logs import LogLimiter
from kvtwist.server.chains import Chains
from kvtwist.server.limits import CHAIN_GRACE, CHAIN_RESERVE, HANDSHAKE_POOL
from kvtwist.tls import channel_binding
from kvtwist.wire import Message

log = Logger(namespace="kvtwist.server")

#: What a connection beyond the client limit may open with.
_OPENERS = (wire.OP_CHAIN_AUTH, wire.OP_CHAIN_HELLO, wire.OP_CHAIN_JOIN)


class Candidate(Protocol):
    """What the acceptor needs of a connection that may become a chain link."""

    transport: Any

    def peerName(self) -> str: ...

    def sendMessage(self, msg: Message) -> None:
        """Send at once, ahead of client replies not ready yet."""

    @property
    def closing(self) -> bool: ...

    @property
    def has_requests(self) -> bool:
        """Client requests are unanswered on it: chain traffic would break their order."""
        ...

    def answer(self, reply: Message) -> None:
        """Reply in its place among the client replies."""

    def close_with(self, reply: Message) -> None:
        """Send ``reply`` at once, then close."""

    def refuse_over_limit(self) -> None: ...

    def enter_chain(self, max_frame: int) -> None:
        """No client limits apply from now on; frames up to ``max_frame`` are taken."""

    def hand_over(self, conn: ChainConnection) -> bytes:
        """Give ``conn`` the transport; return what was received and not yet handled."""
        ...


@dataclass(frozen=True)
class Proof:
    """What a chain-link handshake proved: the peer's name and the configuration it bound."""

    identity: str
    config: int
    chain: str = ""


class ChainAcceptor:
    """Owns the handshake pool, the chain reserve and the proofs of one node's port."""

    def __init__(
        self,
        reactor: Any,
        chains: Chains,
        config: LinkConfig,
        clients: set[Any],
        pool_size: int = HANDSHAKE_POOL,
        reserve: int = CHAIN_RESERVE,
    ) -> None:
        """``clients``: the client connections, which a proved or proving link leaves."""
        self.reactor = reactor
        self.chains = chains
        self.config = config
        self.clients = clients
        self.pool_size = pool_size
        self.reserve = reserve
        #: unproven, oldest first: pool_size at most (an ordered set)
        self.pool: dict[Candidate, None] = {}
        self.links: set[Candidate] = set()  # proved chain links: places at most
        self.refusals = LogLimiter(now=reactor.seconds)
        self._grace: dict[Candidate, Any] = {}  # beyond the client limit: IDelayedCall
        self._responders: dict[Candidate, tuple[Responder, Any]] = {}  # and their timers
        self._proofs: dict[Candidate, Proof] = {}

    @staticmethod
    def identity(replica: Replica) -> str:
        """Who a replica is in a chain-link handshake: its znode name, or a joiner's name."""
        return replica.name or f"join:{replica.address}"

    def proof(self, conn: Candidate) -> Proof | None:
        return self._proofs.get(conn)

    # the pool

    def beyond_limit(self, conn: Candidate) -> None:
        """``conn`` came when the client places were full: it may still show it is a link."""
        self._enter_pool(conn)
        self._grace[conn] = self.reactor.callLater(CHAIN_GRACE, self._grace_over, conn)

    def _grace_over(self, conn: Candidate) -> None:
        self._grace.pop(conn, None)
        self.pool.pop(conn, None)
        conn.refuse_over_limit()

    def _enter_pool(self, conn: Candidate) -> None:
        """Give ``conn`` a place in the pool, pushing out the oldest if it is full."""
        pool = self.pool
        while len(pool) >= self.pool_size:
            oldest = next(iter(pool))
            pool.pop(oldest)
            self._push_out(oldest)
        pool[conn] = None

    def _push_out(self, conn: Candidate) -> None:
        """A newer stranger took the place of ``conn`` in the full pool."""
        timer = self._grace.pop(conn, None)
        if timer is not None:
            timer.cancel()
            conn.refuse_over_limit()
        else:
            self._refuse(conn, "too many chain handshakes at once", retry=True)

    @property
    def places(self) -> int:
        """Chain links the port takes: ``reserve`` for each chain served here.  A cluster
        server's every chain has its own neighbours and joiners, so one reserve for them
        all leaves the chains beyond the first few unable to link (and a joiner of one
        retrying for ever)."""
        return self.reserve * max(1, len(self.chains))

    def _become_chain(self, conn: Candidate) -> bool:
        """``conn`` carries chain traffic: it takes a place in the reserve (False and
        refused when none is left)."""
        self.clients.discard(conn)
        self.pool.pop(conn, None)
        if conn not in self.links:
            if len(self.links) >= self.places:
                self._refuse(conn, f"{self.places} chain links already open", retry=True)
                return False
            self.links.add(conn)
        conn.enter_chain(self.config.chain_frame)
        return True

    def lost(self, conn: Candidate) -> None:
        self.pool.pop(conn, None)
        self.links.discard(conn)
        self._proofs.pop(conn, None)
        timer = self._grace.pop(conn, None)
        responding = self._responders.pop(conn, None)
        for t in (timer, responding[1] if responding else None):
            if t is not None and t.active():
                t.cancel()

    # what arrives

    def admit(self, conn: Candidate, op: int) -> bool:
        """False (and refused) for a connection beyond the client limit that does
        not open a handshake; one that does keeps its place in the pool."""
        timer = self._grace.get(conn)
        if timer is None:
            return True
        if op not in _OPENERS:
            timer.cancel()
            self._grace_over(conn)
            return False
        # it stays in the pool until the handshake proves it, or fails
        timer.cancel()
        del self._grace[conn]
        return True

    def takes(self, conn: Candidate, op: int) -> bool:
        """Whether ``op`` on ``conn`` is the acceptor's to answer (not a client request's)."""
        return op in wire.CHAIN_OPS or conn in self._responders

    def receive(self, conn: Candidate, msg: Message) -> None:
        """A chain opcode (or anything during a handshake) on a connection that is no link yet."""
        op = msg.opcode
        keyed = self.config.key is not None
        if self.chains.standalone or conn.has_requests:
            self._refuse_in_order(conn, msg)
        elif op == wire.OP_CHAIN_AUTH:
            self._authenticate(conn, msg)
        elif keyed and conn not in self._proofs:
            self._refuse(conn, f"{wire.op_name(op)} before authentication")
        elif op == wire.OP_CHAIN_PING:
            pass  # authenticated, its HELLO or JOIN not sent yet
        elif op not in (wire.OP_CHAIN_HELLO, wire.OP_CHAIN_JOIN):
            self._refuse_in_order(conn, msg)
        elif self._opening_allowed(conn, msg) and self._become_chain(conn):
            self._link_up(conn, msg)

    def _opening_allowed(self, conn: Candidate, msg: Message) -> bool:
        """A HELLO or JOIN names who the handshake proved, and a JOIN's limits fit ours."""
        op = msg.opcode
        hello = msg.hello
        proof = self._proofs.get(conn)
        if self.chains.get(hello.chain) is None:
            why = f"{wire.op_name(op)} for chain {hello.chain!r}: not served here"
            self._refuse(conn, why, retry=True)
            return False
        if self.config.key is not None and proof is not None:
            if proof.chain != hello.chain:
                self._refuse(
                    conn,
                    f"{wire.op_name(op)} for chain {hello.chain!r}; "
                    f"authenticated for chain {proof.chain!r}",
                )
                return False
            # a joiner dials before it has a configuration of its own: its
            # handshake binds 0, and only a HELLO's configuration is checked
            is_hello = op == wire.OP_CHAIN_HELLO
            claimed = hello.sender if is_hello else f"join:{hello.address}"
            config_ok = hello.config == proof.config or not is_hello
            if claimed != proof.identity or not config_ok:
                self._refuse(
                    conn,
                    f"{wire.op_name(op)} names {claimed!r} in config {hello.config}; "
                    f"authenticated as {proof.identity!r} in config {proof.config}",
                )
                return False
        if op == wire.OP_CHAIN_JOIN:
            problem = limits_problem(self.config, hello)
            if problem is not None:
                log.error("join from {peer} refused: {why}", peer=conn.peerName(), why=problem)
                conn.close_with(wire.error_reply(problem, retry=False))
                return False
        return True

    def _link_up(self, conn: Candidate, msg: Message) -> None:
        """Hand the connection to the link protocol, and the link to the replica."""
        proof = self._proofs.get(conn)
        replica = self.chains.get(msg.hello.chain)
        assert replica is not None  # _opening_allowed checked it
        link = ChainConnection(
            replica,
            replica.link_config,
            peer_identity=proof.identity if proof is not None else None,
            peer_max_frame=msg.hello.max_frame,
        )
        rest = conn.hand_over(link)
        replica.incoming(link, msg)
        if rest:
            link.dataReceived(rest)

    def _authenticate(self, conn: Candidate, msg: Message) -> None:
        """The responder's side of the handshake (see kvtwist.chain.auth)."""
        key = self.config.key
        if key is None:
            self._refuse(conn, "this node has no cluster key (--cluster-key-file)")
            return
        if conn in self._proofs:
            self._refuse(conn, "already authenticated")
            return
        responding = self._responders.get(conn)
        if responding is None:
            replica = self.chains.get(msg.auth.chain)
            if replica is None:
                self._refuse(conn, f"chain {msg.auth.chain!r} is not served here", retry=True)
                return
            if conn in self.clients:
                # until it proves the key it is a stranger: it leaves the client
                # connections for the handshake pool, which bounds such strangers
                self.clients.discard(conn)
                self._enter_pool(conn)
            # over TLS the proof covers this session: it cannot be relayed
            responder = Responder(
                key, self.identity(replica), binding=channel_binding(conn.transport)
            )
            timer = self.reactor.callLater(
                self.config.timeout, self._refuse, conn, "authentication timed out"
            )
            responding = self._responders[conn] = (responder, timer)
        responder, timer = responding
        try:
            answer = responder.receive(msg.auth)
        except AuthError as e:
            self._refuse(conn, f"authentication failed: {e}")
            return
        conn.sendMessage(auth_message(answer))
        if responder.peer is not None:
            self._proofs[conn] = Proof(responder.peer, responder.config, responder.chain)
            del self._responders[conn]
            if timer.active():
                timer.cancel()
            if self._become_chain(conn):
                log.debug(
                    "{peer}: authenticated as {who}", peer=conn.peerName(), who=responder.peer
                )

    # refusals

    def _refuse_in_order(self, conn: Candidate, msg: Message) -> None:
        """A chain opcode from a client connection: an ERROR in its place among the replies."""
        log.warn(
            "{peer}: chain-internal {op} from a client connection; refused",
            peer=conn.peerName(),
            op=wire.op_name(msg.opcode),
        )
        reason = f"{wire.op_name(msg.opcode)} is chain-internal; refused"
        if self.chains.standalone:
            reason += " (a standalone node takes no chain links)"
        conn.answer(wire.error_reply(reason))

    def _refuse(self, conn: Candidate, reason: str, retry: bool = False) -> None:
        """Refuse an unauthenticated or failed chain peer: ERROR, a (rate-limited) log, close."""
        if conn.closing:
            return
        left_out = self.refusals.allow()
        if left_out is not None:
            log.warn(
                "{peer}: chain link refused: {reason}{more}",
                peer=conn.peerName(),
                reason=reason,
                more=f" ({left_out} more refusals not logged)" if left_out else "",
            )
        conn.close_with(wire.error_reply(f"refused: {reason}", retry=retry))
