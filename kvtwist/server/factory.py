"""The factory of a node's client port: what its connections share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.protocol import Factory

from kvtwist.chain.replica import Replica
from kvtwist.client.protocol import ConnectionPool
from kvtwist.logs import LogLimiter
from kvtwist.server.acceptor import ChainAcceptor
from kvtwist.server.dispatch import Dispatcher
from kvtwist.server.limits import Limits
from kvtwist.server.metrics import Metrics
from kvtwist.server.protocol import NodeProtocol


class Pausable(Protocol):
    """A client connection: it stops reading for a reason, and resumes."""

    def pause(self, reason: str) -> None: ...

    def resume(self, reason: str) -> None: ...


class ClientConnections(set[Pausable]):
    """The connections counted as clients (chain links are not), of the native port
    and the RESP port: made before the replica, which pauses them through
    ``congestion``."""

    def congestion(self, congested: bool) -> None:
        """The chain downstream is slow: stop taking requests from clients until it drains."""
        for conn in list(self):
            (conn.pause if congested else conn.resume)("chain")


class NodeFactory(Factory):
    """Builds the connections of the client port and holds what they share: the
    request dispatcher, the chain acceptor, the client set and the counters."""

    protocol = NodeProtocol  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        replica: Replica,
        limits: Limits | None = None,
        token: bytes | None = None,
        clients: ClientConnections | None = None,
        forwarder: ConnectionPool | None = None,
        observe: Callable[[int, float, int], None] | None = None,
    ) -> None:
        """``clients``: the set the replica's ``on_congestion`` pauses (a new one if
        none); ``forwarder`` relays requests to the head or tail (by default over
        the links' TLS, with ``token``: members share it); ``observe`` is told
        ``(opcode, seconds, count)`` per run of answered requests (the metrics)."""
        self.reactor = reactor
        self.replica = replica
        self.limits = limits or Limits()
        self.link_config = replica.link_config
        self.connections = clients if clients is not None else ClientConnections()
        self.token = token  # clients must show it first (--auth-token-file)
        self.token_refusals = LogLimiter(now=reactor.seconds)
        self.tls_refusals = LogLimiter(now=reactor.seconds)
        self.metrics = Metrics(observe=observe)
        self.forwarder = forwarder or ConnectionPool(reactor, tls=replica.link_tls, token=token)
        self.acceptor = ChainAcceptor(reactor, replica, self.link_config, self.connections)
        self.dispatcher = Dispatcher(
            replica, self.limits, self.metrics, self.forwarder, self.count_clients
        )

    def count_clients(self) -> int:
        return len(self.connections)
