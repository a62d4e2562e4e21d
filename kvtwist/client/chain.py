"""A client of a whole chain: writes to the head, reads from the tail.

It follows the membership in ZooKeeper and rides through failover: a request
that meets a closed connection or a retryable ERROR is sent again, to the
head or tail of the newest configuration, until a deadline.  A retried write
carries the same client id and request number, and the ``resend`` flag, so
the head answers it with the first attempt's op number if that attempt
committed, instead of applying it twice (or refuses it when the chain can no
longer tell: see kvtwist.chain.dedup).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.client.api import Client
from kvtwist.client.protocol import ConnectionFailed, ConnectionPool, KVError
from kvtwist.membership import Membership
from kvtwist.tls import ClientTLS
from kvtwist.wire import Message
from kvtwist.zk import ZooKeeper

log = Logger(namespace="kvtwist.client")

#: Seconds a request keeps retrying by default.  A failover takes about the
#: failed node's ZooKeeper session timeout (10 s by default) before its znode
#: goes, then a relink; 30 s outlasts that with room to spare.
DEFAULT_DEADLINE = 30.0


class MembershipSource(Protocol):
    """What the client reads of ZooKeeper: the chain's members (a ZooKeeper adapter,
    or a chain of a cluster on a shared session, kvtwist.zk.cluster.ChainMembers)."""

    root: str
    hosts: str

    def members(self) -> Deferred[Membership]: ...

    def watch_members(self, callback: Any) -> None: ...

    def stop(self) -> Deferred[None]: ...


class ChainClient(Client):
    """Routes each request to the member that serves it, retrying across failover.

    ``deadline`` bounds each request, retries and connection attempts included
    (None: retry for ever).  ``tls`` and ``token`` apply to every member it
    connects to (see DirectClient.connect).

    ``chain`` names the chain in every request (``Message.chain``), for a
    chain of a cluster whose servers host many.  Such a client does not retry
    an ERROR that carries a ``map_version`` (the server does not serve that
    chain under the map it knows): it hands the reply back, for the cluster
    client to re-read the map and route again.
    """

    def __init__(
        self,
        reactor: Any,
        zk: MembershipSource,
        deadline: float | None = DEFAULT_DEADLINE,
        *,
        tls: ClientTLS | None = None,
        token: bytes | None = None,
        chain: str | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.zk = zk
        self.chain = chain
        self.deadline = deadline
        self.view: Membership | None = None
        self.pool = ConnectionPool(reactor, timeout=3, tls=tls, token=token)
        self._own_zk = False

    @classmethod
    def connect(
        cls,
        reactor: Any,
        hosts: str,
        root: str = "/chain",
        deadline: float | None = DEFAULT_DEADLINE,
        session_timeout: float = 10.0,
        *,
        tls: ClientTLS | None = None,
        token: bytes | None = None,
    ) -> Deferred[ChainClient]:
        """Connect to ZooKeeper and read the membership, giving up after ``deadline``.

        It only reads ZooKeeper (it does not even create the root), so it
        needs no ZooKeeper credentials where nodes protect the chain's znodes
        (``--zk-auth``).
        """
        zk = ZooKeeper(reactor, hosts, root, session_timeout, create_root=False)
        client = cls(reactor, zk, deadline, tls=tls, token=token)
        client._own_zk = True

        def started(_: Any) -> Deferred[ChainClient]:
            zk.watch_members(client._set_view)

            def first(view: Membership) -> ChainClient:
                client._set_view(view)
                return client

            return zk.members().addCallback(first)

        def failed(f: Failure) -> Failure:
            raise ConnectionFailed(f"cannot reach ZooKeeper at {hosts}: {f.getErrorMessage()}")

        # kazoo's start blocks a pool thread until it connects or times out, so
        # its own timeout is what keeps connecting within the deadline.
        start = zk.start() if deadline is None else zk.start(timeout=deadline)
        return start.addCallbacks(started, failed)

    def _set_view(self, view: Membership) -> None:
        if self.view is None or view.config >= self.view.config:
            self.view = view

    def _target(self, write: bool) -> tuple[str, int] | None:
        if self.view is None:
            return None
        member = self.view.head() if write else self.view.tail()
        return member.address if member is not None else None

    def _no_members(self) -> str:
        return f"the chain at {self.zk.root} has no members (ZooKeeper {self.zk.hosts})"

    def _send(self, msg: Message, write: bool) -> Deferred[Message]:
        if self.chain and msg.chain != self.chain:
            msg.chain = self.chain
        last_error = [self._no_members()]
        attempt = [0]
        sending = [msg]
        sent = [False]

        def again(_: Any = None) -> Deferred[Message]:
            target = self._target(write)
            if target is None:
                return retry(ConnectionFailed(self._no_members()))
            if sent[0] and write and sending[0] is msg:
                # an earlier attempt may have reached the head: say so
                sending[0] = Message()
                sending[0].CopyFrom(msg)
                sending[0].resend = True
            sent[0] = True
            d = self.pool.request(target, sending[0])
            d.addCallbacks(check, retry)
            return d

        def check(reply: Message) -> Any:
            if reply.opcode == wire.OP_ERROR and reply.retry and not reply.map_version:
                return retry(KVError(reply.error, True))
            return reply

        def retry(why: Any) -> Any:
            exc = why.value if isinstance(why, Failure) else why
            if not isinstance(exc, ConnectionFailed | KVError):
                return why
            if isinstance(exc, KVError) and not exc.retry:
                return why if isinstance(why, Failure) else Failure(exc)  # a refused token
            last_error[0] = str(exc)
            attempt[0] += 1
            delay = min(0.05 * 2 ** min(attempt[0], 4), 0.5)
            refresh = self.zk.members().addCallbacks(self._set_view, _unless_cancelled)
            refresh.addCallback(lambda _: deferLater(self.reactor, delay, lambda: None))
            return refresh.addCallback(again)

        d = again()
        if self.deadline is None:
            return d

        def gave_up(_: Any, seconds: float) -> Failure:
            return Failure(KVError(f"gave up after {seconds:g}s: {last_error[0]}", retry=True))

        # Cancelling on the deadline stops whatever is pending: a connection
        # attempt, a request in flight, a membership read or the back-off.
        return d.addTimeout(self.deadline, self.reactor, onTimeoutCancel=gave_up)

    def close(self) -> Deferred[None]:
        self.pool.close()
        if self._own_zk:
            return self.zk.stop()
        return defer.succeed(None)


def _unless_cancelled(f: Failure) -> Failure | None:
    """A failed membership refresh is retried later, but a cancellation must go through."""
    return f if f.check(defer.CancelledError) else None
