"""The node's listening port, and the file descriptors a node needs.

Twisted's TCP port meets EMFILE by spending a reserved descriptor to accept
and close what waits, one log line per connection; on ENFILE, ENOBUFS or
ENOMEM (or with that descriptor spent) it just tries again at the next
reactor turn, and since the listening socket stays readable the reactor
spins on it.  ``NodePort`` keeps Twisted's recovery but then stops accepting
for a short back-off, so that the descriptors connections give back go to
the log, snapshots, ZooKeeper and chain links first, says so in one
rate-limited line, and accepts again.
"""

from __future__ import annotations

import errno
import resource
import socket
from typing import Any, cast

from twisted.internet import tcp
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import provider

from kvtwist.logs import LogLimiter
from kvtwist.server import CHAIN_RESERVE, HANDSHAKE_POOL, Limits

log = Logger(namespace="kvtwist.port")

#: accept() failures that mean the process or the system is short of resources.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: The first pause in accepting after such a failure, and the longest.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0

#: Descriptors a node holds beside its connections: ZooKeeper's socket and
#: kazoo's wake-up pipes, the reactor's, the log segment and data directory, a
#: snapshot being written or read, outgoing chain links and forwarded
#: requests, the log file.
ZOOKEEPER_FDS = 8
STORAGE_FDS = 8
#: Room for what else a process opens (TLS, kazoo's reconnects, the reserve
#: Twisted keeps for EMFILE), and for refused connections not yet closed.
HEADROOM = 64


def descriptors_needed(limits: Limits) -> int:
    """The descriptor limit a node's own limits add up to (docs/limits.md)."""
    return (
        limits.max_connections
        + HANDSHAKE_POOL
        + CHAIN_RESERVE
        + ZOOKEEPER_FDS
        + STORAGE_FDS
        + HEADROOM
    )


def check_descriptor_limit(limits: Limits) -> str | None:
    """A warning when RLIMIT_NOFILE is below what the limits need, else None."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = descriptors_needed(limits)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    return (
        f"the descriptor limit (RLIMIT_NOFILE {soft}) is below the {need} that "
        f"--max-connections {limits.max_connections} needs (docs/limits.md): raise it "
        "(ulimit -n, LimitNOFILE=) or lower --max-connections"
    )


class _Listener(socket.socket):
    """The listening socket; remembers the first resource error an accept() met."""

    failure: int | None = None

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return super().accept()
        except OSError as e:
            if self.failure is None and e.errno in OUT_OF_RESOURCES:
                self.failure = e.errno
            raise


@provider(ILogObserver)
def _quiet_accept_log(event: dict[str, Any]) -> None:
    """Twisted's accept-failure lines (one per closed connection): NodePort says it once."""
    text = str(event.get("log_format", ""))
    if "EMFILE" in text or text.startswith("Could not accept"):
        return
    globalLogPublisher(event)


class NodePort(tcp.Port):
    """A TCP port that pauses accepting while the process is out of descriptors."""

    _logger = Logger(observer=_quiet_accept_log)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backoff = 0.0  # the current pause; 0 while accepting goes well
        self.paused_times = 0
        self._resume: Any = None
        self._limiter = LogLimiter(now=self.reactor.seconds)

    def createInternetSocket(self) -> socket.socket:
        s = super().createInternetSocket()
        return _Listener(s.family, s.type, s.proto, s.detach())

    def doRead(self) -> None:
        sock = cast(_Listener, self.socket)
        sock.failure = None
        super().doRead()
        failure = sock.failure
        if failure is None:
            self.backoff = 0.0
        elif self.connected and not self.disconnecting:
            self._pause(failure)

    def _pause(self, failure: int) -> None:
        self.stopReading()
        self.backoff = min(self.backoff * 2, BACKOFF_MAX) if self.backoff else BACKOFF_FIRST
        self.paused_times += 1
        left_out = self._limiter.allow()
        if left_out is not None:
            log.warn(
                "out of file descriptors accepting on port {port} ({err}): not accepting "
                "for {s}s; connections wait in the backlog{more}",
                port=self._realPortNumber,
                err=errno.errorcode.get(failure, failure),
                s=self.backoff,
                more=f" ({left_out} more pauses not logged)" if left_out else "",
            )
        self._resume = self.reactor.callLater(self.backoff, self._accept_again)

    def _accept_again(self) -> None:
        self._resume = None
        if self.connected and not self.disconnecting:
            self.startReading()

    def connectionLost(self, reason: Any) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        super().connectionLost(reason)


def listen(reactor: Any, port: int, factory: Any, interface: str, tls: Any = None) -> NodePort:
    """Listen as reactor.listenTCP (or listenSSL with ``tls``) does, on a NodePort."""
    if tls is not None:  # TLS only: a plain client's first bytes fail the handshake
        factory = TLSMemoryBIOFactory(tls, False, factory)
    p = NodePort(port, factory, interface=interface, reactor=reactor)
    p.startListening()
    if tls is not None:
        p._type = "TLS"
    return p
