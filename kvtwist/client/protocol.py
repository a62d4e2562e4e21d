"""The client end of a connection: pipelined requests matched to replies in order.

Used by the client library, by the shell, and by nodes that forward a client's
request to the head or the tail.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from kvtwist import wire
from kvtwist.tls import TLS_ERRORS, ClientTLS, tls_reason
from kvtwist.wire import FramedProtocol, FrameTooLarge, Message

#: Replies can be much larger than requests (GETKEYS of a big store).
CLIENT_MAX_FRAME = 1024 * 1024 * 1024


class KVError(Exception):
    """The server answered ERROR; ``retry`` says whether trying again may help."""

    def __init__(self, reason: str, retry: bool = False) -> None:
        super().__init__(reason or "server replied ERROR without a reason")
        self.reason = reason
        self.retry = retry


class ConnectionFailed(Exception):
    """The connection failed or closed before the reply arrived."""


@implementer(IHandshakeListener)
class ClientProtocol(FramedProtocol):
    """Sends requests as they come and fires their Deferreds as replies arrive.

    The server answers a connection's requests in order, so a FIFO of pending
    Deferreds is all the matching needed.
    """

    max_frame = CLIENT_MAX_FRAME

    def __init__(self) -> None:
        self._pending: deque[Deferred[Message]] = deque()
        self.connected_d: Deferred[ClientProtocol] = Deferred()
        #: over TLS: fires once the node's certificate was accepted, fails if it was not
        self.secured_d: Deferred[ClientProtocol] = Deferred()
        self.closed_d: Deferred[None] = Deferred()
        self._lost: Failure | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected_d.callback(self)

    def handshakeCompleted(self) -> None:
        if not self.secured_d.called:
            self.secured_d.callback(self)

    def request(self, msg: Message) -> Deferred[Message]:
        """Send ``msg``; the Deferred fires with the reply (ERROR replies included)."""
        if self._lost is not None or self.transport is None:
            why = "connection closed" if self._lost is not None else "not connected"
            return defer.fail(ConnectionFailed(why))
        d: Deferred[Message] = Deferred()
        self._pending.append(d)
        self.sendMessage(msg)
        return d

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def messageReceived(self, msg: Message) -> None:
        if not self._pending:
            self.log.warn("{peer}: unsolicited reply dropped", peer=self.peerName())
            return
        self._pending.popleft().callback(msg)

    def frameTooLarge(self, exc: FrameTooLarge) -> None:
        self._fail_all(ConnectionFailed(f"reply too large: {exc}"))
        assert self.transport is not None
        self.transport.loseConnection()

    def badFrame(self, payload: bytes, exc: Exception) -> None:
        if self._pending:
            self._pending.popleft().errback(KVError(f"undecodable reply: {exc}"))

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, deque()
        for d in pending:
            d.errback(exc)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = reason
        if reason.check(*TLS_ERRORS):
            stage = "connection lost" if self.secured_d.called else "TLS handshake failed"
            why = f"{stage}: {tls_reason(reason.value)}"
        elif reason.check(ConnectionDone, ConnectionLost):
            why = "connection closed by the server"
        else:
            why = f"connection lost: {reason.getErrorMessage()}"
        self._fail_all(ConnectionFailed(why))
        if not self.secured_d.called:
            self.secured_d.errback(ConnectionFailed(why))
            self.secured_d.addErrback(lambda _: None)  # nobody waits on a plain connection
        if not self.closed_d.called:
            self.closed_d.callback(None)

    def close(self) -> Deferred[None]:
        if self.transport is not None and self._lost is None:
            self.transport.loseConnection()
        return self.closed_d


def connect_failed(target: tuple[str, int], f: Failure) -> ConnectionFailed:
    """``cannot connect to 127.0.0.1:9000: Connection refused``: short, for people."""
    host, port = target
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    exc = f.value
    if isinstance(exc, neterror.TimeoutError):
        reason = "connection timed out"
    elif isinstance(exc, neterror.ConnectError) and exc.args and exc.args[0]:
        reason = str(exc.args[0]).rstrip(".")
    elif isinstance(exc, neterror.ConnectError):
        reason = (exc.__doc__ or type(exc).__name__).strip().splitlines()[0].rstrip(".")
    else:
        reason = f.getErrorMessage().rstrip(".") or type(exc).__name__
    return ConnectionFailed(f"cannot connect to {where}: {reason}")


class _Quiet(Factory):
    """A factory for one outgoing connection that does not log "Starting factory"
    and "Stopping factory" for every (re)connection attempt."""

    noisy = False

    def __init__(self, protocol: Any) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self.protocol_instance


def connect_quietly(ep: Any, protocol: Any) -> Deferred[Any]:
    """``connectProtocol``, without two log lines per attempt."""
    return ep.connect(_Quiet(protocol))


def endpoint(
    reactor: Any, host: str, port: int, timeout: float, tls: ClientTLS | None = None
) -> Any:
    """A TCP client endpoint for an IPv4 or IPv6 literal or a name; over TLS with ``tls``."""
    if ":" in host:
        ep: Any = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        ep = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if tls is None:
        return ep
    try:
        # TLS batches small writes on a clock: this reactor's, not the global one
        # (a private reactor would otherwise never flush them)
        return wrapClientTLS(tls.creator(host), ep, clock=reactor)
    except TypeError:  # a Twisted whose wrapClientTLS takes no clock
        return wrapClientTLS(tls.creator(host), ep)


def ready(
    proto: ClientProtocol, tls: ClientTLS | None, token: bytes | None
) -> Deferred[ClientProtocol]:
    """A fresh connection made usable: TLS handshake done (with ``tls``), then logged in."""
    secured = proto.secured_d if tls is not None else defer.succeed(proto)
    return secured.addCallback(login, token)


def login(proto: ClientProtocol, token: bytes | None) -> Deferred[ClientProtocol]:
    """Prove ``token`` on a fresh connection (OP_AUTH); fires with ``proto`` once accepted.

    A refused token fails with KVError (the node closes the connection).
    """
    if token is None:
        return defer.succeed(proto)

    def accepted(reply: Message) -> ClientProtocol:
        if reply.opcode == wire.OP_ERROR:
            proto.close()
            raise KVError(reply.error, reply.retry)
        return proto

    return proto.request(wire.req_auth(token)).addCallback(accepted)


def check(reply: Message) -> Message:
    """Raise KVError for an ERROR reply, else return it."""
    if reply.opcode == wire.OP_ERROR:
        raise KVError(reply.error, reply.retry)
    return reply


class ConnectionPool:
    """One shared connection per address, opened on first use and dropped when it closes.

    Serves the chain client (head and tail connections) and nodes forwarding
    requests to the head or the tail.
    """

    def __init__(
        self,
        reactor: Any,
        timeout: float = 5.0,
        tls: ClientTLS | None = None,
        token: bytes | None = None,
    ) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.tls = tls
        self.token = token
        self._ready: dict[tuple[str, int], ClientProtocol] = {}
        self._connecting: dict[tuple[str, int], list[Deferred[ClientProtocol]]] = {}

    def get(self, target: tuple[str, int]) -> Deferred[ClientProtocol]:
        p = self._ready.get(target)
        if p is not None and p._lost is None and p.transport is not None:
            return defer.succeed(p)
        d: Deferred[ClientProtocol] = Deferred()
        waiters = self._connecting.get(target)
        if waiters is not None:
            waiters.append(d)
            return d
        self._connecting[target] = [d]
        proto = ClientProtocol()
        ep = endpoint(self.reactor, target[0], target[1], self.timeout, self.tls)
        connected = connect_quietly(ep, proto)
        connected.addErrback(lambda f: Failure(connect_failed(target, f)))
        connected.addCallback(ready, self.tls, self.token)
        connected.addCallbacks(
            self._connected, self._failed, callbackArgs=(target,), errbackArgs=(target,)
        )
        return d

    def _connected(self, p: ClientProtocol, target: tuple[str, int]) -> None:
        self._ready[target] = p
        p.closed_d.addBoth(
            lambda _: self._ready.pop(target, None) if self._ready.get(target) is p else None
        )
        for d in self._connecting.pop(target, []):
            d.callback(p)

    def _failed(self, f: Failure, target: tuple[str, int]) -> None:
        for d in self._connecting.pop(target, []):
            d.errback(f.value)

    def request(self, target: tuple[str, int], msg: Message) -> Deferred[Message]:
        return self.get(target).addCallback(lambda p: p.request(msg))

    def close(self) -> None:
        for p in list(self._ready.values()):
            p.close()
        self._ready.clear()
