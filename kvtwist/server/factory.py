"""The factory of a node's client port: what its connections share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from kvtwist.chain.link import LinkConfig
from kvtwist.chain.replica import Replica
from kvtwist.client.protocol import ConnectionPool
from kvtwist.logs import LogLimiter
from kvtwist.server.acceptor import ChainAcceptor
from kvtwist.server.chains import Chains, Router
from kvtwist.server.dispatch import Dispatcher
from kvtwist.server.limits import Limits
from kvtwist.server.metrics import Metrics
from kvtwist.server.protocol import NodeProtocol
from kvtwist.server.token import TokenCheck
from kvtwist.tls import tls_reason

log = Logger(namespace="kvtwist.server")


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
    request router, the chain acceptor, the client set and the counters.

    A lone node serves one replica; a cluster server many (:class:`Chains`),
    on this one port, each request and link going to the chain it names.
    """

    protocol = NodeProtocol  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        replica: Replica | Chains,
        limits: Limits | None = None,
        token: bytes | None = None,
        clients: ClientConnections | None = None,
        forwarder: ConnectionPool | None = None,
        observe: Callable[[int, float, int], None] | None = None,
        link_config: LinkConfig | None = None,
    ) -> None:
        """``clients``: the set the replica's ``on_congestion`` pauses (a new one if
        none); ``forwarder`` relays requests to the head or tail (by default over
        the links' TLS, with ``token``: members share it); ``observe`` is told
        ``(opcode, seconds, count)`` per run of answered requests (the metrics);
        ``link_config``: what incoming links are judged by (by default, a
        replica's: a cluster server that serves no chain yet passes its own)."""
        self.reactor = reactor
        self.chains = replica if isinstance(replica, Chains) else Chains.lone(replica)
        self.limits = limits or Limits()
        self.connections = clients if clients is not None else ClientConnections()
        self.token = token  # clients must show it first (--auth-token-file)
        self.token_check = TokenCheck(token, reactor.seconds)
        self.tls_refusals = LogLimiter(now=reactor.seconds)
        self.metrics = Metrics(observe=observe)
        if link_config is None:
            link_config = link_settings(self.chains)
        link_tls = next((r.link_tls for _, r in self.chains), None)
        self.forwarder = forwarder or ConnectionPool(reactor, tls=link_tls, token=token)
        self.acceptor = ChainAcceptor(reactor, self.chains, link_config, self.connections)
        self.dispatcher = Router(self.chains, self._dispatcher)

    def _dispatcher(self, replica: Replica) -> Dispatcher:
        return Dispatcher(
            replica,
            self.limits,
            self.metrics,
            self.forwarder,
            self.count_clients,
            lambda: self.chains.map_version,
        )

    @property
    def replica(self) -> Replica:
        """A lone node's replica."""
        only = self.chains.only
        if only is None:
            raise AttributeError("a cluster server has no one replica")
        return only

    def count_clients(self) -> int:
        return len(self.connections)

    def tls_failed(self, peer: str, why: BaseException | None) -> None:
        """A connection that never got through its TLS handshake: a plain client, most
        likely; said at a bounded rate, so a port scan cannot flood the log."""
        left_out = self.tls_refusals.allow()
        if left_out is not None:
            log.info(
                "{peer}: TLS handshake failed ({why}): a plain client?{more}",
                peer=peer,
                why=tls_reason(why),
                more=f" ({left_out} more not logged)" if left_out else "",
            )


def link_settings(chains: Chains) -> LinkConfig:
    """What the port's acceptor judges links by: every chain's links share the
    key, the timeout and the limits, so any chain's settings serve (defaults
    for a server that serves none yet)."""
    for _, replica in chains:
        return replace(replica.link_config, chain="")
    return LinkConfig()
