"""An in-memory cluster: the znodes of one cluster, and a fake session on them per process.

:class:`MemoryCluster` holds what ZooKeeper would (the map and its version,
the live servers, the election's candidates); each :class:`MemoryClusterStore`
is one process's session on it and implements
:class:`kvtwist.cluster.store.ClusterStore`.  Everything answers at once and
watch callbacks run synchronously, the first one from inside ``watch_*``
(code under test must cope with that as well as with the adapter's later
delivery).  ``expire()`` models a session loss: the store's ephemeral znodes
go, its election callbacks say lost, and ``reconnect()`` brings it back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from twisted.internet import defer

from kvtwist.cluster.shardmap import Server
from kvtwist.cluster.store import (
    ClusterStore,
    Election,
    MapCallback,
    MembersCallback,
    ServersCallback,
)

__all__ = ["MemoryCluster", "MemoryClusterStore"]


class MemoryCluster:
    """The cluster's znodes."""

    def __init__(self) -> None:
        self.map: tuple[bytes | None, int] = (None, -1)
        self.servers: dict[str, tuple[Server, MemoryClusterStore]] = {}
        self.loads: dict[str, bytes] = {}  # load/ID records
        self.candidates: list[_Candidate] = []
        self.seq = itertools.count()
        self.stores: list[MemoryClusterStore] = []
        self.writes = 0  # successful map writes
        self.requests: tuple[bytes | None, int] = (None, -1)
        #: chain id -> its members' addresses, head first, as ZooKeeper would list them
        self.members: dict[str, tuple[str, ...]] = {}

    def live(self) -> dict[str, Server]:
        return {sid: s for sid, (s, _) in sorted(self.servers.items())}

    def set_map(self, data: bytes | None) -> None:
        """Write the map behind everyone's back (the admin's create, a test's edit)."""
        self.map = (data, self.map[1] + 1 if self.map[0] is not None else 0)
        for store in list(self.stores):
            store.map_changed()

    def servers_changed(self) -> None:
        for store in list(self.stores):
            store.servers_changed()

    def set_requests(self, data: bytes | None) -> None:
        """Write the request record (the admin's edit); None deletes it."""
        self.requests = (data, -1 if data is None else self.requests[1] + 1)
        for store in list(self.stores):
            store.requests_changed()

    def set_members(self, chain: str, addresses: tuple[str, ...]) -> None:
        """A chain's member list changes (a replica registered or left)."""
        self.members[chain] = tuple(addresses)
        for store in list(self.stores):
            store.members_changed(chain)

    def elect(self) -> None:
        live = [c for c in self.candidates if c.store.connected and not c.cancelled]
        for c in live[1:]:
            c.lose()
        if live:
            live[0].win()


class _Candidate:
    def __init__(
        self, store: MemoryClusterStore, won: Callable[[], None], lost: Callable[[], None]
    ) -> None:
        self.store = store
        self.won_cb, self.lost_cb = won, lost
        self.winning = False
        self.cancelled = False

    def win(self) -> None:
        if not self.winning:
            self.winning = True
            self.won_cb()

    def lose(self) -> None:
        if self.winning:
            self.winning = False
            self.lost_cb()

    def cancel(self) -> defer.Deferred[None]:
        self.cancelled = True
        self.lose()
        cluster = self.store.cluster
        if self in cluster.candidates:
            cluster.candidates.remove(self)
            cluster.elect()
        return defer.succeed(None)


class MemoryClusterStore:
    """One session on a :class:`MemoryCluster`."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster
        self.connected = True
        self.map_callbacks: list[MapCallback] = []
        self.server_callbacks: list[ServersCallback] = []
        self.registered: dict[str, Server] = {}
        self.mine: list[_Candidate] = []
        self.failing_writes = 0  # so many write_map calls fail first
        self.request_callbacks: list[MapCallback] = []
        self.member_callbacks: list[tuple[str, MembersCallback]] = []
        cluster.stores.append(self)

    # -- the map

    def read_map(self, fresh: bool = False) -> defer.Deferred[tuple[bytes | None, int]]:
        if not self.connected:
            return defer.fail(ConnectionError("ZooKeeper unreachable"))
        return defer.succeed(self.cluster.map)

    def watch_map(self, callback: MapCallback) -> None:
        self.map_callbacks.append(callback)
        if self.connected:
            callback(*self.cluster.map)

    def map_changed(self) -> None:
        if self.connected:
            for callback in list(self.map_callbacks):
                callback(*self.cluster.map)

    def write_map(self, data: bytes, version: int) -> defer.Deferred[bool]:
        if not self.connected:
            return defer.fail(ConnectionError("ZooKeeper unreachable"))
        if self.failing_writes:
            self.failing_writes -= 1
            return defer.fail(ConnectionError("connection to ZooKeeper lost"))
        if self.cluster.map[0] is None or version != self.cluster.map[1]:
            return defer.succeed(False)
        self.cluster.writes += 1
        self.cluster.set_map(data)
        return defer.succeed(True)

    def write_load(self, server_id: str, data: bytes) -> defer.Deferred[None]:
        if not self.connected:
            return defer.fail(ConnectionError("ZooKeeper unreachable"))
        self.cluster.loads[server_id] = data
        return defer.succeed(None)

    def read_loads(self) -> defer.Deferred[dict[str, bytes]]:
        if not self.connected:
            return defer.fail(ConnectionError("ZooKeeper unreachable"))
        return defer.succeed(dict(self.cluster.loads))

    def watch_requests(self, callback: MapCallback) -> None:
        self.request_callbacks.append(callback)
        if self.connected:
            callback(*self.cluster.requests)

    def requests_changed(self) -> None:
        if self.connected:
            for callback in list(self.request_callbacks):
                callback(*self.cluster.requests)

    def write_requests(self, data: bytes, version: int) -> defer.Deferred[bool]:
        if not self.connected:
            return defer.fail(ConnectionError("ZooKeeper unreachable"))
        if version != self.cluster.requests[1] or (version < 0) != (self.cluster.requests[0]
                                                                    is None):
            return defer.succeed(False)
        self.cluster.set_requests(data)
        return defer.succeed(True)

    def watch_members(self, chain: str, callback: MembersCallback) -> Callable[[], None]:
        entry = (chain, callback)
        self.member_callbacks.append(entry)
        if self.connected:
            callback(self.cluster.members.get(chain, ()))

        def stop() -> None:
            if entry in self.member_callbacks:
                self.member_callbacks.remove(entry)

        return stop

    def members_changed(self, chain: str) -> None:
        if self.connected:
            for cid, callback in list(self.member_callbacks):
                if cid == chain:
                    callback(self.cluster.members.get(chain, ()))

    def create_cluster(self, map_data: bytes) -> defer.Deferred[bool]:
        if self.cluster.map[0] is not None:
            return defer.succeed(False)
        self.cluster.set_map(map_data)
        return defer.succeed(True)

    # -- servers

    def register_server(self, server: Server) -> defer.Deferred[None]:
        self.registered[server.id] = server
        if self.connected:
            self.cluster.servers[server.id] = (server, self)
            self.cluster.servers_changed()
        return defer.succeed(None)

    def unregister_server(self, server_id: str) -> defer.Deferred[None]:
        self.registered.pop(server_id, None)
        if self.cluster.servers.pop(server_id, None) is not None:
            self.cluster.servers_changed()
        return defer.succeed(None)

    def servers(self) -> defer.Deferred[dict[str, Server]]:
        return defer.succeed(self.cluster.live())

    def watch_servers(self, callback: ServersCallback) -> None:
        self.server_callbacks.append(callback)
        if self.connected:
            callback(self.cluster.live())

    def servers_changed(self) -> None:
        if self.connected:
            for callback in list(self.server_callbacks):
                callback(self.cluster.live())

    # -- the election

    def elect(
        self, candidate: str, won: Callable[[], None], lost: Callable[[], None]
    ) -> Election:
        c = _Candidate(self, won, lost)
        self.mine.append(c)
        self.cluster.candidates.append(c)
        self.cluster.elect()
        return c

    # -- the session

    def expire(self) -> None:
        """The session is lost: ephemeral znodes go, the election moves on."""
        self.connected = False
        for c in self.mine:
            c.lose()
            if c in self.cluster.candidates:
                self.cluster.candidates.remove(c)
        gone = [sid for sid, (_, store) in self.cluster.servers.items() if store is self]
        for sid in gone:
            del self.cluster.servers[sid]
        self.cluster.servers_changed()
        self.cluster.elect()

    def reconnect(self) -> None:
        """A new session: registrations and candidates made again, watches re-read."""
        self.connected = True
        for server in self.registered.values():
            self.cluster.servers[server.id] = (server, self)
        for c in self.mine:
            if not c.cancelled and c not in self.cluster.candidates:
                self.cluster.candidates.append(c)
        self.cluster.servers_changed()
        self.map_changed()
        self.requests_changed()
        self.cluster.elect()


def _provides_the_interface(cluster: MemoryCluster) -> ClusterStore:
    """Never called: mypy checks here that the fake offers all of ClusterStore."""
    return MemoryClusterStore(cluster)
