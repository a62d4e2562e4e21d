"""What the controller, the admin and the clients ask of ZooKeeper for a cluster, as a
typed interface.

The kazoo implementation is :class:`kvtwist.zk.cluster.ZooKeeperClusterStore`;
the unit tests use the in-memory ``tests.fakes.cluster.MemoryClusterStore``.
Every method is called on the reactor thread and every callback runs there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred

from kvtwist.cluster.shardmap import Server

__all__ = ["ClusterStore", "Election", "MapCallback", "MembersCallback", "ServersCallback"]

#: ``(data, version)`` of the map znode; ``(None, -1)`` when there is none
MapCallback = Callable[[bytes | None, int], None]
#: every live server, by id
ServersCallback = Callable[[dict[str, Server]], None]
#: a chain's member znodes' ``host:port``, head first
MembersCallback = Callable[[tuple[str, ...]], None]


class Election(Protocol):
    """A place in the controller election, until :meth:`cancel`."""

    def cancel(self) -> Deferred[None]:
        """Leave the election (losing first if it was won)."""
        ...


class ClusterStore(Protocol):
    """One cluster's znodes (``ClusterPaths``): the map, the request record, the live
    servers, the chains' member lists, the election."""

    def read_map(self, fresh: bool = False) -> Deferred[tuple[bytes | None, int]]:
        """The map record and its znode version; ``(None, -1)`` before the cluster exists."""
        ...

    def watch_map(self, callback: MapCallback) -> None:
        """Call ``callback(data, version)`` with the map now (soon, never from inside
        this call) and after every change; a version older than one delivered is skipped."""
        ...

    def write_map(self, data: bytes, version: int) -> Deferred[bool]:
        """Compare-and-set the map: False when its znode version is no longer ``version``."""
        ...

    def watch_requests(self, callback: MapCallback) -> None:
        """As :meth:`watch_map`, for the request record (``requests``); ``(None, -1)``
        while there is none."""
        ...

    def write_requests(self, data: bytes, version: int) -> Deferred[bool]:
        """Compare-and-set the request record: False when its znode version is no
        longer ``version`` (or it is gone)."""
        ...

    def watch_members(self, chain: str, callback: MembersCallback) -> Callable[[], None]:
        """Call ``callback(addresses)`` with chain ``chain``'s members now (soon) and
        after every change, until the function returned is called."""
        ...

    def create_cluster(self, map_data: bytes) -> Deferred[bool]:
        """Create the root, ``servers``, ``chains``, ``controller`` (those absent) and the
        map, only if there is no map yet: False (no map written) when there is."""
        ...

    def register_server(self, server: Server) -> Deferred[None]:
        """An ephemeral ``servers/ID`` with ``server.encode()``; made again after a
        session loss, until :meth:`unregister_server`."""
        ...

    def unregister_server(self, server_id: str) -> Deferred[None]:
        """Delete our ``servers/ID`` (already gone is fine) and stop making it again."""
        ...

    def servers(self) -> Deferred[dict[str, Server]]:
        """The live servers now, by id (records that do not decode are left out)."""
        ...

    def watch_servers(self, callback: ServersCallback) -> None:
        """Call ``callback(servers)`` with the live servers now (soon) and after every change."""
        ...

    def write_load(self, server_id: str, data: bytes) -> Deferred[None]:
        """Set ``load/ID`` (persistent, made if absent) to ``data``."""
        ...

    def read_loads(self) -> Deferred[dict[str, bytes]]:
        """Every server's ``load/ID`` record, by server id (none yet: empty)."""
        ...

    def elect(
        self, candidate: str, won: Callable[[], None], lost: Callable[[], None]
    ) -> Election:
        """Stand in the controller election as ``candidate``.

        ``won()`` when this candidate is the lowest of the live ones; ``lost()``
        when it may no longer be (the session is suspended or lost: stop
        deciding at once).  After a loss it stands again on its own, and
        ``won()`` may follow again once the session is back.
        """
        ...
