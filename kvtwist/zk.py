"""The ZooKeeper adapter shared by chain nodes and clients.

kazoo is blocking and calls back on its own threads; everything here hands
Twisted code only Deferreds and reactor-thread callbacks.  The kazoo traps this
module is built around:

* A connection-state listener runs on kazoo's connection thread and must not
  block or call ZooKeeper (that deadlocks), so the listener only hops to the
  reactor with ``callFromThread`` and all work is started from there.
* Watches are one-shot and can be lost across SUSPENDED -> CONNECTED (kazoo
  fires and forgets them when the connection drops), so the membership is
  re-read, and the watch re-armed, after every watch event and every reconnect.
* Ephemeral nodes die with the session (LOST) and are not recreated for us:
  whoever registered must register again when ``on_state`` says "lost".

The chain layout and its values (:class:`Member`, :class:`Membership`, the
address format) are in :mod:`kvtwist.membership`; the lease arithmetic is
:class:`kvtwist.lease.Lease`.  This module holds only the I/O.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    LockTimeout,
    NodeExistsError,
    NoNodeError,
)
from kazoo.protocol.states import KazooState
from kazoo.security import ACL, Permissions, make_acl, make_digest_acl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import clock
from kvtwist.lease import LEASE_FRACTION, PROBES_PER_SESSION, Lease
from kvtwist.membership import (
    MEMBER_PREFIX,
    Member,
    Membership,
    parse_address,
    parse_seq,
    validate_root,
)

__all__ = [
    "RegistrationRaced",
    "ZooKeeper",
    "digest_acl",
    "open_to_writes",
]

_log = Logger()

# kazoo logs every connection attempt at INFO; keep it to warnings unless the
# application configured the "kazoo" logger itself.
if logging.getLogger("kazoo").level == logging.NOTSET:
    logging.getLogger("kazoo").setLevel(logging.WARNING)

_T = TypeVar("_T")

# Re-reading a membership whose children keep vanishing mid-read gives up after
# this many attempts and returns what it has (a watch event follows anyway).
_MAX_READ_ATTEMPTS = 5
# Delay before retrying a failed membership read (e.g. while disconnected).
_REFRESH_RETRY_DELAY = 0.5
#: Reopening a session after the watchdog closed it: kazoo's own timeout for
#: one attempt, and the back-off between attempts.
RESUME_TIMEOUT = 15.0
RESUME_FIRST_DELAY = 0.5
RESUME_MAX_DELAY = 10.0


# ---------------------------------------------------------------------------
# ACLs
# ---------------------------------------------------------------------------


def digest_acl(auth: str) -> list[ACL]:
    """The ACL for ``USER:PASSWORD``: everything for that digest identity, READ for anyone.

    Reads stay open so that clients without credentials (the original C
    client, the chain client) still find the head and the tail.
    """
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ValueError("needs the form USER:PASSWORD, both non-empty")
    return [make_digest_acl(user, password, all=True), make_acl("world", "anyone", read=True)]


def open_to_writes(acl: list[ACL]) -> bool:
    """Whether ``acl`` lets anyone at all (world:anyone) create, delete or write."""
    changes = Permissions.CREATE | Permissions.DELETE | Permissions.WRITE | Permissions.ADMIN
    return any(entry.id.scheme == "world" and entry.perms & changes for entry in acl)


def hook_negotiated_timeout(client: KazooClient, record: Callable[[float], None]) -> bool:
    """Have ``record(seconds)`` called with the session timeout the server grants ``client``.

    The one place that touches kazoo's internals: kazoo keeps the negotiated
    timeout in a local variable only; its connection's ``_connect`` returns
    ``read_timeout = negotiated * 2/3`` (ms) before any request of the session
    can be sent, so wrapping it records the value in time.  False, and nothing
    recorded, if kazoo's internals differ: the adapter then keeps to the
    requested timeout (safe whenever the server grants at least that).
    tests/test_zk.py fails when that happens.
    """
    connection = getattr(client, "_connection", None)
    original = getattr(connection, "_connect", None)
    if connection is None or original is None:
        return False

    def _connect(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        try:
            record(float(result[0]) * 1.5 / 1000.0)
        except (TypeError, ValueError, IndexError):
            pass
        return result

    connection._connect = _connect
    return True


class RegistrationRaced(Exception):
    """A conditional registration found the chain record changed."""


class _Watch:
    """A watch_members callback and the last Membership it was given."""

    __slots__ = ("callback", "last")

    def __init__(self, callback: Callable[[Membership], None]) -> None:
        self.callback = callback
        self.last: Membership | None = None


_STATE_NAMES = {
    KazooState.CONNECTED: "connected",
    KazooState.SUSPENDED: "suspended",
    KazooState.LOST: "lost",
}


# ---------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------


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
    ) -> None:
        """``auth`` (``USER:PASSWORD``): log in with digest auth, and create every
        znode with :func:`digest_acl`, so only holders of it change the chain.

        ``create_root=False`` for readers (the chain client): a root they
        created would carry no ACL, and a missing root reads as no members.
        """
        if session_timeout <= 0:
            raise ValueError(f"session_timeout must be positive, not {session_timeout!r}")
        self._reactor = reactor
        self.hosts = hosts
        self.root = validate_root(root)
        self.session_timeout = float(session_timeout)
        self.protected = auth is not None
        self.create_root = create_root
        self._client = KazooClient(
            hosts=hosts,
            timeout=self.session_timeout,
            auth_data=[("digest", auth)] if auth is not None else None,
            default_acl=digest_acl(auth) if auth is not None else None,
            # Reconnect forever and quickly: a chain node that gives up on
            # ZooKeeper is useless, and a slow retry risks session expiry.
            connection_retry={
                "max_tries": -1,
                "delay": 0.05,
                "backoff": 2,
                "max_delay": max(0.1, min(1.0, self.session_timeout / 4)),
            },
        )
        self._negotiated_timeout: float | None = None
        hook_negotiated_timeout(self._client, self._negotiated)
        self._client.add_listener(self._kazoo_listener)

        self._started = False
        self._stopped = False
        self._state = "lost"
        self._state_callbacks: list[Callable[[str], None]] = []
        self._watches: list[_Watch] = []
        self._membership: Membership | None = None
        self._refreshing = False
        self._refresh_again = False
        self._retry_call: Any = None
        self._lease = Lease(self.lease_length)
        # our member znode, once registered: the lease holds only while it exists
        self._lease_path: str | None = None
        self._gone_callbacks: list[Callable[[str], None]] = []
        self._probe_in_flight = False
        self._lease_timer: Any = None
        self._pending_locks: set[Any] = set()
        self._resuming: Deferred[None] | None = None
        self.resume_timeout = RESUME_TIMEOUT

    # -- plumbing -----------------------------------------------------------

    @property
    def client(self) -> KazooClient:
        """The underlying KazooClient (blocking: use it only through call())."""
        return self._client

    @property
    def state(self) -> str:
        """The last state delivered on the reactor: connected/suspended/lost."""
        return self._state

    @property
    def connected(self) -> bool:
        """Whether kazoo holds a live connection now (not the last event delivered)."""
        return not self._stopped and bool(self._client.connected)

    @property
    def membership(self) -> Membership | None:
        """The last Membership read by the watch, if any."""
        return self._membership

    def call(self, f: Callable[..., _T], *args: Any, **kw: Any) -> Deferred[_T]:
        """Run a blocking (kazoo) call in the reactor's thread pool."""
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args, **kw)

    def start(self, timeout: float = 15.0) -> Deferred[None]:
        """Connect (in a thread: kazoo's start blocks) and create the root.

        Fails with kazoo's timeout error if no server answers within ``timeout``.
        """
        if self._started:
            raise RuntimeError("ZooKeeper adapter already started")
        self._started = True
        self._lease_tick()
        def started(open_paths: list[str]) -> None:
            for path in open_paths:
                _log.warn(
                    "{path} lets anyone change it (it was created without --zk-auth): "
                    "anyone can then change the chain's membership or record; set its ACL "
                    "by hand, see docs/security.md",
                    path=path,
                )

        def failed(failure: Failure) -> Failure:
            self._stop_lease_timer()
            return failure

        return self.call(self._start_in_thread, timeout).addCallbacks(started, failed)

    def _start_in_thread(self, timeout: float) -> list[str]:
        """Connect and create the root; the chain's znodes a protected node found open.

        The root, the record, the join lock and the waiting list all decide
        who is in the chain: any of them left writable by anyone undoes
        ``--zk-auth``.
        """
        self._client.start(timeout=timeout)
        if not self.create_root:
            return []
        try:
            self._client.ensure_path(self.root)
            if not self.protected:
                return []
            open_paths = []
            for path in [self.root] + [self.sibling_path(s) for s in ("state", "join", "waiting")]:
                try:
                    acl = self._client.get_acls(path)[0]
                except NoNodeError:
                    continue  # created with our ACL when first needed
                if open_to_writes(acl):
                    open_paths.append(path)
            return open_paths
        except BaseException:
            self._client.stop()
            self._client.close()
            raise

    def stop(self) -> Deferred[None]:
        """Close the session cleanly, so our ephemeral nodes vanish at once.

        No state callbacks are delivered after stop() (the closing "lost" is
        ours, not news); pending lock acquisitions fail.
        """
        if self._stopped:
            return succeed(None)
        self._stopped = True
        self._stop_lease_timer()
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        for lock in list(self._pending_locks):
            lock.cancel()
        return self.call(self._stop_in_thread)

    def _stop_in_thread(self) -> None:
        self._client.remove_listener(self._kazoo_listener)
        self._client.stop()
        self._client.close()

    def drop_session(self) -> None:
        """Close the session now, from any thread (the reactor watchdog's).

        Our ephemeral znodes go at once, as after a crash; "lost" follows on
        the reactor once it turns.
        """
        if not self._stopped:
            self._client.stop()

    def resume_session(self) -> Deferred[None]:
        """Open a new session after drop_session, for as long as it takes; "connected" follows.

        kazoo's ``start`` gives up after ``resume_timeout`` and stops the
        client; a node that stopped trying would stay fenced until restarted,
        so attempts go on, backing off up to ``RESUME_MAX_DELAY``, until one
        opens a session or the adapter is stopped.  Fires once a session is
        open (or at stop).
        """
        if self._resuming is not None:
            return self._resuming
        done: Deferred[None] = Deferred()
        self._resuming = done
        delay = RESUME_FIRST_DELAY

        def attempt() -> None:
            if self._stopped:
                finish(None)
                return
            self.call(self._client.start, self.resume_timeout).addCallbacks(finish, failed)

        def failed(f: Failure) -> None:
            nonlocal delay
            if self._stopped:
                finish(None)
                return
            _log.warn(
                "cannot open a new ZooKeeper session at {hosts}: {e}; retrying in {s:.1f}s",
                hosts=self.hosts,
                e=f.getErrorMessage() or repr(f.value),
                s=delay,
            )
            self._reactor.callLater(delay, attempt)
            delay = min(delay * 2, RESUME_MAX_DELAY)

        def finish(_: object) -> None:
            self._resuming = None
            done.callback(None)

        attempt()
        return done

    # -- connection state ----------------------------------------------------

    def _kazoo_listener(self, state: str) -> None:
        # On kazoo's connection thread: never block, never call ZooKeeper here.
        name = _STATE_NAMES.get(state)
        if name is not None:
            self._reactor.callFromThread(self._state_changed, name)

    def _state_changed(self, name: str) -> None:
        if self._stopped or name == self._state:
            return
        self._state = name
        if name == "connected":
            # Renew the lease straight away and re-arm watches that the
            # disconnection may have dropped.
            self._probe()
            self._schedule_refresh()
        for callback in list(self._state_callbacks):
            try:
                callback(name)
            except Exception:
                _log.failure("ZooKeeper state callback {callback!r} failed", callback=callback)

    def on_state(self, callback: Callable[[str], None]) -> None:
        """Call ``callback("connected" | "suspended" | "lost")`` on the reactor.

        "lost" means the session expired: our ephemeral nodes (registration,
        locks) are gone and must be recreated by the caller once "connected"
        follows (kazoo reconnects with a new session by itself).
        """
        self._state_callbacks.append(callback)

    # -- membership ------------------------------------------------------------

    def members(self) -> Deferred[Membership]:
        """Read the current Membership once (no watch)."""
        return self.call(self._read_members_once)

    def _read_members_once(self) -> Membership:
        try:
            return self._read_membership(None)
        except NoNodeError:
            if self.create_root:
                raise
            return Membership(config=-1, members=())  # a reader's root nobody made yet

    def _read_membership(self, watch: Callable[[Any], None] | None) -> Membership:
        """Blocking: children + cversion, then every member's data, consistently.

        If a child vanishes between the listing and its data read, the listing
        is stale, so it is re-read (a bounded number of times); if it keeps
        changing we return the latest partial view, and the watch (if any)
        delivers the settled one.
        """
        client = self._client
        for attempt in range(_MAX_READ_ATTEMPTS):
            children, stat = client.get_children(self.root, watch=watch, include_data=True)
            names = [name for name in children if parse_seq(name) >= 0]
            pending = [(name, client.get_async(f"{self.root}/{name}")) for name in names]
            members: list[Member] = []
            vanished = False
            for name, result in pending:
                try:
                    data, _stat = result.get()
                except NoNodeError:
                    vanished = True
                    continue
                members.append(Member.from_znode(name, data))
            if not vanished or attempt == _MAX_READ_ATTEMPTS - 1:
                members.sort(key=lambda m: (m.seq, m.name))
                return Membership(config=stat.cversion, members=tuple(members))
        raise AssertionError("unreachable")

    def _read_membership_watched(self) -> Membership:
        """Blocking: read with a child watch; if the root is gone, watch for it."""
        try:
            return self._read_membership(self._on_watch_event)
        except NoNodeError:
            if self._client.exists(self.root, watch=self._on_watch_event) is None:
                return Membership(config=-1, members=())
            return self._read_membership(self._on_watch_event)

    def _on_watch_event(self, event: Any) -> None:
        # On kazoo's event thread: hop to the reactor and do the work there.
        self._reactor.callFromThread(self._schedule_refresh)

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
        self._watches.append(_Watch(callback))
        self._schedule_refresh()  # never calls back synchronously

    def _schedule_refresh(self) -> None:
        if self._stopped or not self._started or not self._watches:
            return
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        self._refresh_again = False
        d = self.call(self._read_membership_watched)
        d.addCallbacks(self._deliver, self._refresh_failed)
        d.addBoth(self._refresh_done)

    def _deliver(self, membership: Membership) -> None:
        if self._stopped:
            return
        last = self._membership
        if last is not None and 0 <= membership.config < last.config:
            return  # never go back in time (see watch_members)
        self._membership = membership
        for watch in list(self._watches):
            if watch.last == membership:
                continue
            watch.last = membership
            try:
                watch.callback(membership)
            except Exception:
                _log.failure("membership callback {callback!r} failed", callback=watch.callback)

    def _refresh_failed(self, failure: Failure) -> None:
        if self._stopped:
            return
        if not failure.check(KazooException):
            _log.failure("reading the chain membership failed", failure)
        # Usually a connection loss: the "connected" event re-reads as well,
        # but retrying covers any failure that no state change will follow.
        if self._retry_call is None or not self._retry_call.active():
            self._retry_call = self._reactor.callLater(_REFRESH_RETRY_DELAY, self._schedule_refresh)

    def _refresh_done(self, _: object) -> None:
        self._refreshing = False
        if self._refresh_again:
            self._schedule_refresh()

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
        data = address.encode("ascii")
        if parse_address(data) is None:
            raise ValueError(f"not a host:port address: {address!r}")
        # The original C servers end the address with a NUL, and the original
        # client relies on it when it reads a member's data.
        data += b"\x00"
        return self.call(self._register_in_thread, data, record_version)

    def _register_in_thread(self, data: bytes, record_version: int | None) -> str:
        path = f"{self.root}/{MEMBER_PREFIX}"
        if record_version is None:
            created = self._client.create(path, data, ephemeral=True, sequence=True)
        else:
            t = self._client.transaction()
            t.check(self.sibling_path("state"), record_version)
            t.create(path, data, ephemeral=True, sequence=True)
            check, created = t.commit()
            if isinstance(check, Exception) or isinstance(created, Exception):
                raise RegistrationRaced(
                    "the chain record changed while we caught up (the tail may have "
                    "given up on us); joining again"
                )
        return str(created).rsplit("/", 1)[1]

    def bump_record(self) -> Deferred[int]:
        """Rewrite the chain record unchanged, so its version moves on: any
        registration that names the old version now fails.  Fires with the new
        version (-1 when there is no record: nobody can register against it)."""
        return self.call(self._bump_in_thread)

    def _bump_in_thread(self) -> int:
        path = self.sibling_path("state")
        while True:
            try:
                data, stat = self._client.get(path)
            except NoNodeError:
                return -1
            try:
                return int(self._client.set(path, data, version=stat.version).version)
            except BadVersionError:
                continue

    def unregister(self, name: str) -> Deferred[None]:
        """Leave the chain by deleting our member node (already gone is fine)."""
        if not name or "/" in name:
            raise ValueError(f"not a member name: {name!r}")
        return self.call(self._delete_quietly, f"{self.root}/{name}")

    def _delete_quietly(self, path: str) -> None:
        try:
            self._client.delete(path)
        except NoNodeError:
            pass

    def remove_member(self, name: str) -> Deferred[None]:
        """Delete another member's znode (a successor we cannot reach): it then
        sees itself gone, leaves and joins again."""
        return self.unregister(name)

    # -- the chain record ------------------------------------------------------

    def sibling_path(self, suffix: str) -> str:
        """``{root}-{suffix}``: beside the root, never under it (every child of
        the root is read as a chain member)."""
        if not suffix or "/" in suffix:
            raise ValueError(f"suffix must be a non-empty name without '/': {suffix!r}")
        return validate_root(f"{self.root}-{suffix}")

    def read_record(self) -> Deferred[tuple[bytes | None, int]]:
        """The persistent chain record: ``(data, version)``, ``(None, -1)`` if absent."""
        return self.call(self._read_record_in_thread)

    def _read_record_in_thread(self) -> tuple[bytes | None, int]:
        try:
            data, stat = self._client.get(self.sibling_path("state"))
        except NoNodeError:
            return None, -1
        return data, stat.version

    def write_record(self, data: bytes, version: int) -> Deferred[bool]:
        """Compare-and-set the chain record; False when someone changed it first.

        ``version`` -1 creates it.
        """
        return self.call(self._write_record_in_thread, data, version)

    def _write_record_in_thread(self, data: bytes, version: int) -> bool:
        path = self.sibling_path("state")
        try:
            if version < 0:
                self._client.create(path, data, makepath=True)
            else:
                self._client.set(path, data, version=version)
        except (BadVersionError, NodeExistsError, NoNodeError):
            return False
        return True

    # -- nodes waiting for the last configuration --------------------------------

    def advertise_waiting(self, node_id: str, data: bytes) -> Deferred[None]:
        """Say (ephemerally) that this node waits to restart an empty chain, and with what."""
        return self.call(self._advertise_in_thread, node_id, data)

    def _advertise_in_thread(self, node_id: str, data: bytes) -> None:
        path = f"{self.sibling_path('waiting')}/{node_id}"
        try:
            self._client.create(path, data, ephemeral=True, makepath=True)
        except NodeExistsError:
            self._client.set(path, data)

    def withdraw_waiting(self, node_id: str) -> Deferred[None]:
        return self.call(self._delete_quietly, f"{self.sibling_path('waiting')}/{node_id}")

    def waiting(self) -> Deferred[dict[str, bytes]]:
        """Every waiting node's advertisement, by node id."""
        return self.call(self._waiting_in_thread)

    def _waiting_in_thread(self) -> dict[str, bytes]:
        base = self.sibling_path("waiting")
        try:
            names = self._client.get_children(base)
        except NoNodeError:
            return {}
        out: dict[str, bytes] = {}
        for name in names:
            try:
                out[name] = self._client.get(f"{base}/{name}")[0]
            except NoNodeError:
                pass
        return out

    # -- lock --------------------------------------------------------------------

    def lock_path(self, path_suffix: str = "join") -> str:
        """Where lock(path_suffix) lives: a sibling of the root."""
        return self.sibling_path(path_suffix)

    def lock(
        self, path_suffix: str = "join", timeout: float | None = None
    ) -> Deferred[Callable[[], Deferred[None]]]:
        """Take kazoo's Lock at ``{root}-{path_suffix}``; fires with a release().

        Waiting happens on a dedicated thread, not the reactor's pool, so long
        waits cannot starve other blocking calls.  Fails with kazoo's
        LockTimeout after ``timeout`` seconds; cancelling the Deferred abandons
        the attempt.  The lock is an ephemeral node: it is lost with the session.
        """
        path = self.lock_path(path_suffix)
        lock = self._client.Lock(path)
        d: Deferred[Callable[[], Deferred[None]]] = Deferred(lambda _: lock.cancel())
        self._pending_locks.add(lock)
        thread = threading.Thread(
            target=self._acquire_in_thread,
            args=(lock, timeout, d),
            name=f"kvtwist-zk-lock {path}",
            daemon=True,
        )
        thread.start()
        return d

    def _acquire_in_thread(self, lock: Any, timeout: float | None, d: Deferred[Any]) -> None:
        result: Failure | None
        try:
            if not lock.acquire(blocking=True, timeout=timeout):
                raise LockTimeout(f"lock {lock.path} not acquired within {timeout} s")
        except BaseException:
            result = Failure()
        else:
            result = None
        self._reactor.callFromThread(self._lock_done, lock, d, result)

    def _lock_done(self, lock: Any, d: Deferred[Any], failure: Failure | None) -> None:
        self._pending_locks.discard(lock)
        if d.called:  # cancelled while we waited
            if failure is None:
                self.call(lock.release).addErrback(lambda _: None)
            return
        if failure is not None:
            d.errback(failure)
        else:
            released: Deferred[None] | None = None

            def release() -> Deferred[None]:
                nonlocal released
                if released is None:
                    released = self.call(lock.release).addCallback(lambda _: None)
                    return released
                return succeed(None)

            d.callback(release)

    # -- fencing lease --------------------------------------------------------------

    def _negotiated(self, seconds: float) -> None:
        """The server granted a session timeout of ``seconds``: the lease follows it.

        Called on kazoo's connection thread; two plain assignments, read on the reactor.
        """
        self._negotiated_timeout = seconds
        self._lease.length = self.lease_length

    @property
    def effective_session_timeout(self) -> float:
        """The smaller of the requested and the negotiated session timeout."""
        negotiated = self._negotiated_timeout
        if negotiated is not None and 0 < negotiated < self.session_timeout:
            return negotiated
        return self.session_timeout

    @property
    def lease_length(self) -> float:
        """Seconds a lease lasts past the send time of the probe that renewed it."""
        return self.effective_session_timeout * LEASE_FRACTION

    @property
    def lease_expires_at(self) -> float | None:
        """``clock.now()`` at which the lease ends; None without a lease."""
        return self._lease.expires_at if self._lease_held() else None

    def _lease_held(self) -> bool:
        """Whether the lease was renewed in the session kazoo has now."""
        client_id = self._client.client_id
        return self._lease.held_by(None if client_id is None else client_id[0])

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
        return self._lease_held() and self._client.connected and self._lease.valid(clock.now())

    def lease_member(self, name: str | None) -> None:
        """Tie the lease to our member znode ``name`` from now on (None: the session only)."""
        self._lease_path = f"{self.root}/{name}" if name else None

    def on_gone(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(name)`` on the reactor when a probe finds our member znode gone."""
        self._gone_callbacks.append(callback)

    def _lease_tick(self) -> None:
        """Probe every effective_session_timeout / PROBES_PER_SESSION seconds.

        A self-rescheduling callLater rather than a LoopingCall, so the period
        follows the negotiated timeout once the server has granted one.
        """
        self._lease_timer = None
        if self._stopped:
            return
        self._probe()
        self._lease_timer = self._reactor.callLater(
            self.effective_session_timeout / PROBES_PER_SESSION, self._lease_tick
        )

    def _stop_lease_timer(self) -> None:
        if self._lease_timer is not None and self._lease_timer.active():
            self._lease_timer.cancel()
        self._lease_timer = None

    def _probe(self) -> None:
        """Send one cheap round-trip; on success the lease counts from its send time."""
        if self._stopped or self._probe_in_flight:
            return
        client_id = self._client.client_id
        if client_id is None:
            return
        session_id = client_id[0]
        path = self._lease_path
        sent = clock.now()  # before the request leaves: conservative
        self._probe_in_flight = True
        d = self.call(self._probe_in_thread, session_id, path)

        def answered(outcome: str) -> None:
            if outcome == "ok":
                self._lease.renew(session_id, sent)
            elif outcome == "gone" and path == self._lease_path and path is not None:
                self._lease.void()
                name = path.rsplit("/", 1)[1]
                for callback in list(self._gone_callbacks):
                    try:
                        callback(name)
                    except Exception:
                        _log.failure("znode-gone callback {callback!r} failed", callback=callback)

        def done(result: object) -> None:
            self._probe_in_flight = False

        d.addCallbacks(answered, lambda _: None)
        d.addBoth(done)

    def _probe_in_thread(self, session_id: int, path: str | None) -> str:
        """"ok", "gone" (our znode was deleted) or "other" (the session changed meanwhile)."""
        if path is None:
            self._client.exists(self.root)
            found = True
        else:
            # a follower may lag the leader: sync first (it flushes the whole
            # session's channel), so that a deletion committed before this
            # probe left is seen by it
            self._client.sync(self.root)
            found = self._client.exists(path) is not None
        # Only an answer within the same session counts: a request that was
        # queued across a session loss may be answered by the new session.
        client_id = self._client.client_id
        if client_id is None or client_id[0] != session_id:
            return "other"
        return "ok" if found else "gone"
