"""``ZooKeeper``: the pieces of the adapter put together behind the Coordinator interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, SessionExpiredError
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from kvtwist.membership import Membership, validate_root
from kvtwist.zk.acl import warn_open
from kvtwist.zk.locks import Locks
from kvtwist.zk.members import MembershipWatch
from kvtwist.zk.probes import LeaseProbes
from kvtwist.zk.records import ChainWrites
from kvtwist.zk.session import Session

__all__ = ["ZooKeeper"]

_T = TypeVar("_T")


class ZooKeeper:
    """kazoo behind Deferreds: chain membership, a join lock and a fencing lease.

    ``reactor`` must provide IReactorTime, IReactorThreads and
    IReactorFromThreads (any real reactor does).  All callbacks registered here
    run on the reactor thread; all methods must be called from it.
    """

    def __init__(
        self,
        reactor: Any,
        hosts: str,
        root: str = "/chain",
        session_timeout: float = 10.0,
        auth: str | None = None,
        create_root: bool = True,
        session: Session | None = None,
    ) -> None:
        """``auth`` (``USER:PASSWORD``): log in with digest auth, and create every
        znode with :func:`kvtwist.zk.digest_acl`, so only holders of it change the chain.

        ``create_root=False`` for readers (the chain client): a root they
        created would carry no ACL, and a missing root reads as no members.

        ``session``: share a session opened elsewhere (a server hosting many
        chains has one session for all of them): ``start`` then only prepares
        the root, ``stop`` deletes what this adapter created and leaves the
        session open, and the session's events reach this adapter's callbacks
        only until it stops.
        """
        if session_timeout <= 0:
            raise ValueError(f"session_timeout must be positive, not {session_timeout!r}")
        self.hosts = hosts
        self.root = validate_root(root)
        self.protected = auth is not None
        self.create_root = create_root
        self.shared = session is not None
        self._stopped = False
        self._own: set[str] = set()  # ephemeral znodes this adapter made on a shared session
        self._session = session or Session(reactor, hosts, session_timeout, auth)
        self._members = MembershipWatch(self._session, self.root, create_root)
        self._writes = ChainWrites(self._session, self.root, self.protected, create_root)
        self._locks = Locks(self._session, self.root)
        self._probes = LeaseProbes(self._session, self.root)
        # on reconnecting: renew the lease straight away and re-arm watches
        # that the disconnection may have dropped
        self._session.when_connected(self._while_running(self._probes.probe))
        self._session.when_connected(self._while_running(self._members.refresh))
        # on stopping: pending lock acquisitions fail
        if not self.shared:
            self._session.when_stopping(self._halt)

    def _while_running(self, f: Callable[[], None]) -> Callable[[], None]:
        def call() -> None:
            if not self._stopped:
                f()

        return call

    def _halt(self) -> None:
        self._stopped = True
        self._probes.stop()
        self._members.stop()
        self._locks.cancel_all()

    # -- the session ------------------------------------------------------------

    @property
    def session(self) -> Session:
        """The session, for adapters of other roots to share (see ``session=``)."""
        return self._session

    @property
    def client(self) -> KazooClient:
        """The underlying KazooClient (blocking: use it only through call())."""
        return self._session.client

    @property
    def session_timeout(self) -> float:
        """The session timeout asked for."""
        return self._session.session_timeout

    @property
    def resume_timeout(self) -> float:
        """kazoo's timeout for one attempt of resume_session."""
        return self._session.resume_timeout

    @resume_timeout.setter
    def resume_timeout(self, seconds: float) -> None:
        self._session.resume_timeout = seconds

    @property
    def state(self) -> str:
        """The last state delivered on the reactor: connected/suspended/lost."""
        return self._session.state

    @property
    def connected(self) -> bool:
        """Whether kazoo holds a live connection now (not the last event delivered)."""
        return self._session.connected

    @property
    def effective_session_timeout(self) -> float:
        """The smaller of the requested and the negotiated session timeout."""
        return self._session.effective_session_timeout

    def call(self, f: Callable[..., _T], *args: Any, **kw: Any) -> Deferred[_T]:
        """Run a blocking (kazoo) call in the reactor's thread pool."""
        return self._session.call(f, *args, **kw)

    def start(self, timeout: float = 15.0) -> Deferred[None]:
        """Connect (in a thread: kazoo's start blocks) and create the root.

        Fails with kazoo's timeout error if no server answers within ``timeout``.
        """
        if self.shared:
            self._probes.start()
            return self._session.call(self._writes.prepare_root).addCallback(lambda _: None)
        self._session.begin()
        self._probes.start()

        def failed(failure: Failure) -> Failure:
            self._probes.stop()
            return failure

        d = self._session.call(self._session.open, timeout, self._writes.prepare_root)
        return d.addCallbacks(warn_open, failed)

    def stop(self) -> Deferred[None]:
        """Close the session cleanly, so our ephemeral nodes vanish at once.

        No state callbacks are delivered after stop() (the closing "lost" is
        ours, not news); pending lock acquisitions fail.  On a shared session
        the znodes this adapter made are deleted instead, and the session stays.
        """
        if not self.shared:
            return self._session.stop()
        if self._stopped:
            return succeed(None)
        self._halt()
        own, self._own = sorted(self._own), set()
        return self._session.call(self._delete_all, own)

    def _delete_all(self, paths: list[str]) -> None:
        """Blocking: delete our ephemeral znodes; a session already closed took them along
        (or will, at its expiry).  With the connection lost meanwhile, the rest are left
        to the session's end, and a member znode left behind is removed by the chain's
        own rule for a successor that does not answer (kvtwist.chain.membership)."""
        for path in paths:
            try:
                self._writes.delete_quietly(path)
            except (ConnectionClosedError, SessionExpiredError, ConnectionLoss):
                return

    def drop_session(self) -> None:
        """Close the session now, from any thread (the reactor watchdog's).

        Our ephemeral znodes go at once, as after a crash; "lost" follows on
        the reactor once it turns.
        """
        self._session.drop()

    def resume_session(self) -> Deferred[None]:
        """Open a new session after drop_session, for as long as it takes; "connected" follows.

        Attempts go on, backing off, until one opens a session or the adapter
        is stopped (see :meth:`kvtwist.zk.session.Session.resume`).
        """
        return self._session.resume()

    def on_state(self, callback: Callable[[str], None]) -> None:
        """Call ``callback("connected" | "suspended" | "lost")`` on the reactor.

        "lost" means the session expired: our ephemeral nodes (registration,
        locks) are gone and must be recreated by the caller once "connected"
        follows (kazoo reconnects with a new session by itself).
        """
        def deliver(state: str) -> None:
            if not self._stopped:
                callback(state)

        self._session.on_state(deliver)

    # -- membership ------------------------------------------------------------

    @property
    def membership(self) -> Membership | None:
        """The last Membership read by the watch, if any."""
        return self._members.membership

    def members(self) -> Deferred[Membership]:
        """Read the current Membership once (no watch)."""
        return self._members.members()

    def watch_members(self, callback: Callable[[Membership], None]) -> None:
        """Call ``callback(membership)`` on the reactor whenever it changes.

        The first call (soon, never from inside watch_members) delivers the
        current membership.  The child watch is re-armed on every read and the
        membership re-read after every watch event and every reconnect, so no
        change is missed even though ZooKeeper watches are one-shot.  A
        snapshot equal to the one this callback last got is skipped, and so is
        one older (lower config) than the last one delivered: after a session
        loss kazoo may reach a server that lags the one we read before.  A
        deleted root is reported as ``Membership(config=-1, members=())``.
        """
        self._members.watch(callback)

    # -- registration -----------------------------------------------------------

    def register(self, address: str, record_version: int | None = None) -> Deferred[str]:
        """Join the chain as an ephemeral sequential member; fires with its name.

        With ``record_version`` the member is created only if the chain record
        still has that version (one transaction): a tail that gave up on this
        joiner bumps the record, so a joiner it dropped can never register
        late, behind writes the tail then committed alone (RegistrationRaced).

        The node is tied to our session: after "lost" it is gone and the caller
        must register again (it will get a new, later, sequence number: tail).
        """
        return self._writes.register(address, record_version).addCallback(self._made, self.root)

    def bump_record(self) -> Deferred[int]:
        """Rewrite the chain record unchanged, so its version moves on: any
        registration that names the old version now fails.  Fires with the new
        version (-1 when there is no record: nobody can register against it)."""
        return self._writes.bump_record()

    def unregister(self, name: str) -> Deferred[None]:
        """Leave the chain by deleting our member node (already gone is fine)."""
        self._own.discard(f"{self.root}/{name}")
        return self._writes.unregister(name)

    def remove_member(self, name: str) -> Deferred[None]:
        """Delete another member's znode (a successor we cannot reach): it then
        sees itself gone, leaves and joins again."""
        return self._writes.unregister(name)

    def _made(self, name: str, parent: str) -> str:
        """An ephemeral znode of ours: on a shared session, deleted when we stop."""
        if self.shared:
            self._own.add(f"{parent}/{name}")
        return name

    # -- the chain record and the waiting list ------------------------------------

    def sibling_path(self, suffix: str) -> str:
        """``{root}-{suffix}``: beside the root, never under it (every child of
        the root is read as a chain member)."""
        return self._writes.sibling_path(suffix)

    def read_record(self) -> Deferred[tuple[bytes | None, int]]:
        """The persistent chain record: ``(data, version)``, ``(None, -1)`` if absent."""
        return self._writes.read_record()

    def write_record(self, data: bytes, version: int) -> Deferred[bool]:
        """Compare-and-set the chain record; False when someone changed it first.

        ``version`` -1 creates it.
        """
        return self._writes.write_record(data, version)

    def advertise_waiting(self, node_id: str, data: bytes) -> Deferred[None]:
        """Say (ephemerally) that this node waits to restart an empty chain, and with what."""
        path = f"{self.sibling_path('waiting')}/{node_id}"
        return self._writes.advertise_waiting(node_id, data).addCallback(
            lambda _: self._own.add(path)
        )

    def withdraw_waiting(self, node_id: str) -> Deferred[None]:
        """No longer waiting (already withdrawn is fine)."""
        return self._writes.withdraw_waiting(node_id)

    def waiting(self) -> Deferred[dict[str, bytes]]:
        """Every waiting node's advertisement, by node id."""
        return self._writes.waiting()

    # -- lock --------------------------------------------------------------------

    def lock_path(self, path_suffix: str = "join") -> str:
        """Where lock(path_suffix) lives: a sibling of the root."""
        return self._locks.lock_path(path_suffix)

    def lock(
        self, path_suffix: str = "join", timeout: float | None = None
    ) -> Deferred[Callable[[], Deferred[None]]]:
        """Take kazoo's Lock at ``{root}-{path_suffix}``; fires with a release().

        Waiting happens on a dedicated thread, not the reactor's pool, so long
        waits cannot starve other blocking calls.  Fails with kazoo's
        LockTimeout after ``timeout`` seconds; cancelling the Deferred abandons
        the attempt.  The lock is an ephemeral node: it is lost with the session.
        """
        return self._locks.lock(path_suffix, timeout)

    # -- fencing lease --------------------------------------------------------------

    @property
    def lease_length(self) -> float:
        """Seconds a lease lasts past the send time of the probe that renewed it."""
        return self._probes.lease_length

    @property
    def lease_expires_at(self) -> float | None:
        """``clock.now()`` at which the lease ends; None without a lease."""
        return self._probes.expires_at

    def lease_valid(self) -> bool:
        """True iff we are connected, our session is surely alive and our znode surely there.

        ZooKeeper cannot expire a session earlier than session_timeout after a
        request it received, and the lease counts from *before* the last
        acknowledged probe was sent, for only LEASE_FRACTION of the timeout.
        So while it holds, no other node can have replaced us.  After a pause
        longer than that (SIGSTOP, swapping) it is expired the moment we
        resume, before kazoo even notices the session is gone.

        Once :meth:`lease_member` names our member znode, a probe renews the
        lease only if a linearized read (``sync`` then ``exists``) still finds
        that znode: a member whose znode another member deleted (a
        predecessor that could not reach it) loses its lease within
        :attr:`lease_length` of the deletion, even if it never hears of it.
        """
        return self._probes.valid()

    def lease_member(self, name: str | None) -> None:
        """Tie the lease to our member znode ``name`` from now on (None: the session only)."""
        self._probes.member(name)

    def on_gone(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(name)`` on the reactor when a probe finds our member znode gone."""
        self._probes.on_gone(callback)
