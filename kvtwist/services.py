"""The services a node runs under twistd: its ports, its chain membership, its watchdog."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.replica import Replica
from kvtwist.coordinator import Coordinator
from kvtwist.port import listen
from kvtwist.watchdog import ReactorWatchdog

if TYPE_CHECKING:  # prometheus-client is loaded only with --metrics-port
    pass

log = Logger(namespace="kvtwist.node")

#: Seconds between attempts to reach ZooKeeper while it does not answer.
ZK_RETRY_DELAY = 2.0


def retry_zookeeper(reactor: Any, hosts: str, f: Failure, again: Callable[[], None]) -> Any:
    """Say that ZooKeeper did not answer, and call ``again`` a while later: a lone
    node and a cluster server keep running (refusing requests as "starting")
    and keep trying for as long as it takes."""
    log.warn(
        "cannot reach ZooKeeper at {hosts}: {e}; retrying in {s}s",
        hosts=hosts,
        e=f.getErrorMessage() or repr(f.value),
        s=ZK_RETRY_DELAY,
    )
    return reactor.callLater(ZK_RETRY_DELAY, again)


class ChainService(service.Service):
    """Connects to ZooKeeper and joins the chain once the node is listening.

    While ZooKeeper cannot be reached the node keeps running, answering
    clients with a retryable "not serving (starting)" error, and tries again.
    """

    def __init__(self, reactor: Any, replica: Replica, make_zk: Callable[[], Coordinator]) -> None:
        self.reactor = reactor
        self.replica = replica
        self.make_zk = make_zk
        self.zk: Coordinator | None = None
        self._retry: Any = None
        #: told every session event of every adapter, besides the replica (the metrics)
        self.state_watchers: list[Callable[[str], None]] = []

    def startService(self) -> None:
        super().startService()
        self._connect(self.replica.zk)

    def _connect(self, zk: Coordinator | None = None) -> None:
        """Start ``zk``, or a fresh adapter: a failed one cannot be started again."""
        self._retry = None
        zk = zk if zk is not None else self.make_zk()
        self.zk = self.replica.zk = zk
        zk.on_state(self.replica.zk_state)
        for watch in self.state_watchers:
            zk.on_state(watch)
        zk.on_gone(self.replica.znode_gone)
        zk.watch_members(self.replica.set_view)
        d = zk.start()
        d.addCallbacks(lambda _: self.replica.join(), self._failed)
        d.addErrback(lambda f: log.failure("joining the chain failed", f))

    def _failed(self, f: Failure) -> None:
        if not self.running or self.zk is None:
            return
        self.zk.stop()
        self._retry = retry_zookeeper(self.reactor, self.zk.hosts, f, self._connect)

    def stopService(self) -> Any:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self.replica.stop()
        return self.zk.stop() if self.zk is not None else None

    def drop_session(self) -> None:
        if self.zk is not None:
            self.zk.drop_session()

    def resume_session(self) -> Deferred[None] | None:
        return self.zk.resume_session() if self.zk is not None else None


class SessionOwner(Protocol):
    """What the watchdog needs: whoever holds the process's ZooKeeper session."""

    def drop_session(self) -> None:
        """Close it now, from any thread."""

    def resume_session(self) -> Deferred[None] | None:
        """Open a new one (None: there is none to resume)."""


class WatchdogService(service.Service):
    """Closes the ZooKeeper session of a node whose reactor stops turning (kvtwist.watchdog):
    a lone node's, or a cluster server's one session, shared by its chains."""

    def __init__(self, reactor: Any, owner: SessionOwner, session_timeout: float) -> None:
        self.owner = owner
        # three quarters: a loaded machine may stall a reactor for a second now and
        # then, and leaving the chain for that costs a rejoin
        self.watchdog = ReactorWatchdog(reactor, session_timeout * 0.75, self._drop, self._resume)

    def _drop(self) -> None:
        self.owner.drop_session()

    def _resume(self) -> None:
        if not self.running:
            return
        d = self.owner.resume_session()
        if d is not None:
            d.addErrback(
                lambda f: log.warn("new ZooKeeper session failed: {e}", e=f.getErrorMessage())
            )

    def startService(self) -> None:
        super().startService()
        self.watchdog.start()

    def stopService(self) -> None:
        super().stopService()
        self.watchdog.stop()


class ListeningService(service.Service):
    """Holds the client port, bound while the node is built.

    Binding before the reactor runs turns a taken port into one clear line and
    a non-zero exit, instead of a logged traceback and a node that never listens.
    """

    def __init__(
        self, reactor: Any, port: int, interface: str, factory: Any, tls: Any = None
    ) -> None:
        try:
            self.port = listen(reactor, port, factory, interface, tls)
        except CannotListenError as e:
            why = e.socketError
            raise SystemExit(f"kvtwist: cannot listen on {interface}:{port}: {why}") from None

    def stopService(self) -> Any:
        super().stopService()
        return self.port.stopListening()
