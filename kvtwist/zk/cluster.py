"""A cluster's znodes through kazoo: the :class:`~kvtwist.cluster.store.ClusterStore`
implementation, and chain membership views that share one session.

Everything runs over a :class:`~kvtwist.zk.session.Session` given at
construction, so a server's one ZooKeeper session serves its chains and the
cluster alike.  The blocking helpers (``*_sync``) take a plain KazooClient, so
the admin command, which has no reactor, writes and reads exactly the same
znodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.cluster.shardmap import BadMap, ClusterPaths, Server
from kvtwist.cluster.store import (
    ClusterStore,
    Election,
    MapCallback,
    MembersCallback,
    ServersCallback,
)
from kvtwist.membership import Membership, format_address
from kvtwist.zk.members import MembershipWatch
from kvtwist.zk.session import Session

__all__ = [
    "ChainMembers",
    "ZooKeeperClusterStore",
    "create_cluster_sync",
    "open_session",
    "read_map_sync",
    "read_requests_sync",
    "servers_sync",
    "write_requests_sync",
]

_log = Logger(namespace="kvtwist.zk")

#: Delay before re-reading after a failed read, or retrying a registration
#: that found its znode still held by a session of ours that has not expired yet.
RETRY_DELAY = 0.5
#: the election's candidate znodes: ``controller/n_<seq>``
CANDIDATE_PREFIX = "n_"


# -- blocking helpers (a plain KazooClient) -----------------------------------


def create_cluster_sync(client: KazooClient, paths: ClusterPaths, map_data: bytes) -> bool:
    """Blocking: the cluster's znodes, the map last and only if there is none: False then.

    The map's creation is the one step that decides; the others may exist
    already (a server that registered before the cluster was created makes
    ``servers``).
    """
    for path in (paths.servers, paths.chains, paths.controller):
        client.ensure_path(path)
    try:
        client.create(paths.map, map_data)
    except NodeExistsError:
        return False
    return True


def read_map_sync(
    client: KazooClient,
    paths: ClusterPaths,
    watch: Callable[[Any], None] | None = None,
    fresh: bool = False,
) -> tuple[bytes | None, int]:
    """Blocking: ``(data, version)`` of the map; ``(None, -1)`` if absent (then
    ``watch`` waits for its creation).  ``fresh``: after a sync, so the read sees
    every write ZooKeeper acknowledged before it began."""
    if fresh:
        client.sync(paths.map)
    return _read_record(client, paths.map, watch)


def read_requests_sync(
    client: KazooClient, paths: ClusterPaths, watch: Callable[[Any], None] | None = None
) -> tuple[bytes | None, int]:
    """Blocking: ``(data, version)`` of the request record; ``(None, -1)`` if absent."""
    return _read_record(client, paths.requests, watch)


def _read_record(
    client: KazooClient, path: str, watch: Callable[[Any], None] | None
) -> tuple[bytes | None, int]:
    """``(data, version)`` of ``path``, or ``(None, -1)`` with ``watch`` set on its
    creation (a get that finds nothing sets no watch: exists does)."""
    try:
        data, stat = client.get(path, watch=watch)
    except NoNodeError:
        if client.exists(path, watch=watch) is None:
            return None, -1
        data, stat = client.get(path, watch=watch)
    return data, stat.version


def write_requests_sync(
    client: KazooClient, paths: ClusterPaths, data: bytes, version: int
) -> bool:
    """Blocking: compare-and-set the request record (``version`` -1: create it, only
    if absent); False when another write came first."""
    try:
        if version < 0:
            client.create(paths.requests, data)
        else:
            client.set(paths.requests, data, version=version)
    except (BadVersionError, NoNodeError, NodeExistsError):
        return False
    return True


def loads_sync(client: KazooClient, paths: ClusterPaths) -> dict[str, bytes]:
    """Blocking: every server's load record (kvtwist.cluster.load), by server id."""
    out = {}
    try:
        names = client.get_children(paths.loads)
    except NoNodeError:
        return {}
    for name in names:
        try:
            out[name] = client.get(f"{paths.loads}/{name}")[0]
        except NoNodeError:
            continue
    return out


def servers_sync(
    client: KazooClient, paths: ClusterPaths, watch: Callable[[Any], None] | None = None
) -> dict[str, Server]:
    """Blocking: every live server that decodes, by id; none if ``servers`` is absent."""
    try:
        names = client.get_children(paths.servers, watch=watch)
    except NoNodeError:
        if client.exists(paths.servers, watch=watch) is None:
            return {}
        names = client.get_children(paths.servers, watch=watch)
    pending = [(n, client.get_async(f"{paths.servers}/{n}")) for n in names]
    out: dict[str, Server] = {}
    for name, result in pending:
        try:
            out[name] = Server.decode(name, result.get()[0])
        except (NoNodeError, BadMap):
            continue  # gone meanwhile, or not a server's record
    return out


def open_session(
    reactor: Any,
    hosts: str,
    timeout: float = 15.0,
    session_timeout: float = 10.0,
    auth: str | None = None,
) -> Deferred[Session]:
    """A started Session; fails with kazoo's timeout when no server answers in ``timeout``."""
    session = Session(reactor, hosts, session_timeout, auth)
    session.begin()
    return session.call(session.open, timeout, lambda: None).addCallback(lambda _: session)


# -- watched reads -------------------------------------------------------------


class _WatchedRead:
    """One value read under a one-shot watch, re-read after every event and every
    reconnect (kazoo drops watches with the connection), at most one read at once."""

    def __init__(self, session: Session, read: Callable[[Callable[[Any], None]], Any]) -> None:
        self._session = session
        self._read = read
        self._callbacks: list[Callable[[Any], None]] = []
        self._busy = False
        self._again = False
        self._retry: Any = None
        session.when_connected(self.refresh)
        session.when_stopping(self._stop)

    def add(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)
        self.refresh()

    def _event(self, _: Any) -> None:
        self._session.reactor.callFromThread(self.refresh)  # on kazoo's thread

    def refresh(self) -> None:
        if self._session.stopped or not self._callbacks:
            return
        if self._busy:
            self._again = True
            return
        self._busy, self._again = True, False
        d = self._session.call(self._read, self._event)
        d.addCallbacks(self._deliver, self._failed)
        d.addBoth(self._done)

    def _deliver(self, value: Any) -> None:
        if self._session.stopped:
            return
        for callback in list(self._callbacks):
            try:
                callback(value)
            except Exception:
                _log.failure("cluster watch callback {callback!r} failed", callback=callback)

    def _failed(self, f: Failure) -> None:
        if self._session.stopped:
            return
        if not f.check(KazooException):
            _log.failure("reading the cluster's znodes failed", f)
        if self._retry is None or not self._retry.active():
            self._retry = self._session.reactor.callLater(RETRY_DELAY, self.refresh)

    def _done(self, _: object) -> None:
        self._busy = False
        if self._again:
            self.refresh()

    def _stop(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()


def _forward_only(callback: MapCallback) -> Callable[[tuple[bytes | None, int]], None]:
    """``callback`` for each new ``(data, version)``, never an older version again (a
    lagging server read after a reconnect) nor the same one twice."""
    last = [-2]

    def deliver(value: tuple[bytes | None, int]) -> None:
        data, version = value
        if version < last[0] and version >= 0:
            return
        if version == last[0] and last[0] >= 0:
            return
        last[0] = version
        callback(data, version)

    return deliver


class _Candidate:
    """A place in the election: an ephemeral sequential znode; lowest wins."""

    def __init__(
        self,
        store: ZooKeeperClusterStore,
        candidate: str,
        won: Callable[[], None],
        lost: Callable[[], None],
    ) -> None:
        self.store = store
        self.data = candidate.encode()
        self.won_cb, self.lost_cb = won, lost
        self.name: str | None = None
        self.winning = False
        self.cancelled = False
        self.watch = _WatchedRead(store.session, self._standing)
        store.session.on_state(self._state)
        self.watch.add(self._decide)

    def _standing(self, watch: Callable[[Any], None]) -> bool:
        """Blocking: make our znode if we have none (or it went with a session),
        then whether it is the lowest."""
        client = self.store.session.client
        base = self.store.paths.controller
        if self.cancelled:
            return False
        if self.name is None or client.exists(f"{base}/{self.name}") is None:
            client.ensure_path(base)
            path = client.create(
                f"{base}/{CANDIDATE_PREFIX}", self.data, ephemeral=True, sequence=True
            )
            self.name = path.rsplit("/", 1)[1]
        names = sorted(n for n in client.get_children(base, watch=watch)
                       if n.startswith(CANDIDATE_PREFIX))
        return bool(names) and names[0] == self.name

    def _decide(self, lowest: bool) -> None:
        if self.cancelled or not self.store.session.connected:
            return
        if lowest and not self.winning:
            self.winning = True
            self.won_cb()
        elif not lowest and self.winning:
            self._lose()

    def _lose(self) -> None:
        if self.winning:
            self.winning = False
            self.lost_cb()

    def _state(self, state: str) -> None:
        if state != "connected":
            self._lose()  # suspended: it may be lost; lost: another may win now

    def cancel(self) -> Deferred[None]:
        self.cancelled = True
        self._lose()
        name = self.name
        if name is None or self.store.session.stopped:
            return succeed(None)
        return self.store.session.call(
            _delete_quietly, self.store.session.client, f"{self.store.paths.controller}/{name}"
        )


def _delete_quietly(client: KazooClient, path: str) -> None:
    try:
        client.delete(path)
    except NoNodeError:
        pass


class ZooKeeperClusterStore:
    """:class:`~kvtwist.cluster.store.ClusterStore` for cluster ``paths`` over ``session``."""

    def __init__(self, session: Session, paths: ClusterPaths) -> None:
        self.session = session
        self.paths = paths
        self._map_watch = _WatchedRead(session, self._read_map_watched)
        self._servers_watch = _WatchedRead(session, self._servers_watched)
        self._requests_watch = _WatchedRead(session, self._read_requests_watched)
        self._chain_watches: dict[str, MembershipWatch] = {}
        self._registered: dict[str, Server] = {}
        session.on_state(self._state)

    # -- the map -------------------------------------------------------------------

    def read_map(self, fresh: bool = False) -> Deferred[tuple[bytes | None, int]]:
        return self.session.call(read_map_sync, self.session.client, self.paths, None, fresh)

    def _read_map_watched(self, watch: Callable[[Any], None]) -> tuple[bytes | None, int]:
        return read_map_sync(self.session.client, self.paths, watch)

    def watch_map(self, callback: MapCallback) -> None:
        self._map_watch.add(_forward_only(callback))

    # -- the request record and the chains' members ----------------------------------

    def _read_requests_watched(self, watch: Callable[[Any], None]) -> tuple[bytes | None, int]:
        return read_requests_sync(self.session.client, self.paths, watch)

    def watch_requests(self, callback: MapCallback) -> None:
        self._requests_watch.add(_forward_only(callback))

    def write_requests(self, data: bytes, version: int) -> Deferred[bool]:
        return self.session.call(
            write_requests_sync, self.session.client, self.paths, data, version
        )

    def watch_members(self, chain: str, callback: MembersCallback) -> Callable[[], None]:
        watch = self._chain_watches.get(chain)
        if watch is None:  # one per chain, kept: a controller elected again reuses it
            watch = MembershipWatch(self.session, self.paths.chain(chain), create_root=False)
            self._chain_watches[chain] = watch
            self.session.when_connected(watch.refresh)
            self.session.when_stopping(watch.stop)
        stopped = [False]

        def deliver(membership: Membership) -> None:
            if not stopped[0]:
                callback(tuple(format_address(m.address) for m in membership.members
                               if m.address is not None))

        def stop() -> None:
            stopped[0] = True
            watch.unwatch(deliver)

        watch.watch(deliver)  # reads again, so a later watcher gets the list too
        return stop

    def write_map(self, data: bytes, version: int) -> Deferred[bool]:
        def write() -> bool:
            try:
                self.session.client.set(self.paths.map, data, version=version)
            except (BadVersionError, NoNodeError):
                return False
            return True

        return self.session.call(write)

    def create_cluster(self, map_data: bytes) -> Deferred[bool]:
        return self.session.call(create_cluster_sync, self.session.client, self.paths, map_data)

    # -- the shards' loads -------------------------------------------------------------

    def write_load(self, server_id: str, data: bytes) -> Deferred[None]:
        path = self.paths.load(server_id)

        def write() -> None:
            try:
                self.session.client.set(path, data)
            except NoNodeError:
                self.session.client.create(path, data, makepath=True)

        return self.session.call(write)

    def read_loads(self) -> Deferred[dict[str, bytes]]:
        return self.session.call(lambda: loads_sync(self.session.client, self.paths))

    # -- servers ---------------------------------------------------------------------

    def register_server(self, server: Server) -> Deferred[None]:
        self._registered[server.id] = server
        return self._register(server)

    def _register(self, server: Server) -> Deferred[None]:
        done: Deferred[None] = Deferred()

        def attempt() -> None:
            if self._registered.get(server.id) != server or self.session.stopped:
                done.callback(None)
                return
            self.session.call(self._register_sync, server).addCallbacks(finished, failed)

        def finished(created: bool) -> None:
            if created:
                done.callback(None)
            else:  # still held by an earlier session of this server: it expires soon
                self.session.reactor.callLater(RETRY_DELAY, attempt)

        def failed(f: Failure) -> None:
            if f.check(KazooException) and not self.session.stopped:
                self.session.reactor.callLater(RETRY_DELAY, attempt)
            else:
                done.errback(f)

        attempt()
        return done

    def _register_sync(self, server: Server) -> bool:
        """Blocking: True once ``servers/ID`` is ours (made now, or already ours)."""
        client = self.session.client
        path = self.paths.server(server.id)
        try:
            client.create(path, server.encode(), ephemeral=True, makepath=True)
            return True
        except NodeExistsError:
            stat = client.exists(path)
            return stat is not None and stat.ephemeralOwner == self.session.session_id()

    def unregister_server(self, server_id: str) -> Deferred[None]:
        self._registered.pop(server_id, None)
        return self.session.call(_delete_quietly, self.session.client, self.paths.server(server_id))

    def _state(self, state: str) -> None:
        if state == "connected":
            for server in list(self._registered.values()):
                self._register(server).addErrback(
                    lambda f: _log.failure("registering the server again failed", f)
                )

    def servers(self) -> Deferred[dict[str, Server]]:
        return self.session.call(servers_sync, self.session.client, self.paths)

    def _servers_watched(self, watch: Callable[[Any], None]) -> dict[str, Server]:
        return servers_sync(self.session.client, self.paths, watch)

    def watch_servers(self, callback: ServersCallback) -> None:
        self._servers_watch.add(callback)

    # -- the election ------------------------------------------------------------------

    def elect(
        self, candidate: str, won: Callable[[], None], lost: Callable[[], None]
    ) -> Election:
        return _Candidate(self, candidate, won, lost)


class ChainMembers:
    """One chain's membership (``ClusterPaths.chain(id)``) read and watched over a
    shared session: what :class:`~kvtwist.client.chain.ChainClient` asks of ZooKeeper."""

    def __init__(self, session: Session, root: str) -> None:
        self.root = root
        self.hosts = session.hosts
        self._watch = MembershipWatch(session, root, create_root=False)
        session.when_connected(self._watch.refresh)
        session.when_stopping(self._watch.stop)

    def members(self) -> Deferred[Membership]:
        return self._watch.members()

    def watch_members(self, callback: Callable[[Membership], None]) -> None:
        self._watch.watch(callback)

    def stop(self) -> Deferred[None]:
        """Nothing of its own to close: the session is the owner's."""
        self._watch.stop()
        return succeed(None)


def _provides_the_interface(session: Session, paths: ClusterPaths) -> ClusterStore:
    """Never called: mypy checks here that the adapter offers all of ClusterStore."""
    return ZooKeeperClusterStore(session, paths)
