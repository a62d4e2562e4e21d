"""A chain in memory: replicas wired by iosim pumps on one clock, no threads.

A :class:`Net` adds nodes that join through a shared
:class:`~tests.fakes.coordinator.Registry`; their links are iosim pumps,
settled until nothing moves.  ``blocked`` refuses chosen connections, ``kill``
crashes a node; ``cut_links``/``heal_links`` partition a node from the others,
``cut_zk``/``heal_zk`` from ZooKeeper, and ``expire_sessions`` ends the
session of a node cut off for longer than the session timeout.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from kvtwist.chain.link import LinkConfig
from kvtwist.chain.replica import Replica
from kvtwist.membership import Membership
from kvtwist.server import ClientConnections, NodeFactory
from kvtwist.store import InlineRunner, Store
from tests.fakes.coordinator import MemoryZooKeeper, Registry

__all__ = ["Net", "Node", "pump_between", "results", "settle"]


def pump_between(server: Any, client: Any, clock: Any) -> iosim.IOPump:
    """An in-memory connection from ``client`` to ``server`` (a node's protocol), on ``clock``."""
    return iosim.connect(
        server,
        iosim.makeFakeServer(server),
        client,
        iosim.makeFakeClient(client),
        greet=False,
        clock=clock,
    )


def settle(pumps: list[iosim.IOPump], clock: MemoryReactorClock, rounds: int = 200) -> None:
    """Pump every connection until nothing moves and no timer is due, letting the
    clock on 0.2 s at a time while only timers (reconnects, link flushes) can act."""
    for _ in range(rounds):
        moved = False
        for p in list(pumps):
            moved = p.pump() or moved
        clock.advance(0)
        if not moved and not clock.getDelayedCalls():
            return
        if not moved:
            clock.advance(0.2)


class Node:
    """One replica on the shared clock, its coordinator a MemoryZooKeeper on the Net's registry."""

    def __init__(self, net: Net, port: int, link_config: LinkConfig | None = None) -> None:
        self.net = net
        self.address = f"10.0.0.1:{port}"
        self.address_pair = ("10.0.0.1", port)
        self.port = port
        self.store = Store(net.clock, InlineRunner())
        self.zk = MemoryZooKeeper(net.registry, net.clock)
        clients = ClientConnections()
        self.replica = Replica(
            net.clock,
            self.store,
            self.address,
            self.zk,
            dial=self._connect,
            link_config=link_config,
            on_congestion=clients.congestion,
        )
        self.factory = NodeFactory(net.clock, self.replica, clients=clients)
        self.alive = True
        self.pumps: list[iosim.IOPump] = []
        self.zk.watch_members(self._view)

    def _view(self, view: Membership) -> None:
        if self.alive:
            self.replica.set_view(view)

    def _connect(self, host: str, port: int, protocol: Any) -> defer.Deferred[Any]:
        target = self.net.nodes.get(port)
        blocked = (self.port, port) in self.net.blocked
        if not self.alive or target is None or not target.alive or blocked:
            return defer.fail(ConnectionRefusedError())
        server = target.factory.buildProtocol(None)
        pump = pump_between(server, protocol, self.net.clock)
        self.pumps.append(pump)
        target.pumps.append(pump)
        self.net.pumps.append(pump)
        return defer.succeed(protocol)

    def __repr__(self) -> str:
        return f"<Node :{self.port} {self.replica.name or '-'}>"

    @property
    def name(self) -> str | None:
        return self.replica.name

    def write(self, key: bytes, value: bytes | None, client: str = "", req: int = 0) -> Any:
        return self.replica.write(value is not None, key, value or b"", client, req)

    def state(self) -> list[tuple[bytes, bytes]]:
        return self.replica.committed_tree.items()


class Net:
    """A few nodes on one clock, their links pumped until nothing moves."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.registry = Registry()
        self.nodes: dict[int, Node] = {}
        self.pumps: list[iosim.IOPump] = []
        self.blocked: set[tuple[int, int]] = set()  # (from port, to port) refused
        self.cut: set[tuple[int, int]] = set()  # what cut_links blocked

    def add(self) -> Node:
        port = 9000 + len(self.nodes)
        node = Node(self, port)
        self.nodes[port] = node
        node.replica.join()
        self.settle()
        return node

    def settle(self, rounds: int = 200) -> None:
        settle(self.pumps, self.clock, rounds)

    def kill(self, node: Node) -> None:
        """A crash: links drop, the znode goes once the session expires."""
        node.alive = False
        node.replica.stop()
        for p in node.pumps:
            p.serverIO.loseConnection()
            p.clientIO.loseConnection()
        node.replica.fence("killed", voluntary=False)
        self.expire(node)
        self.settle()

    def expire(self, node: Node) -> None:
        """ZooKeeper ends ``node``'s session: the znodes it created go."""
        mine = [m.name for m in self.registry.members if m.address == node.address_pair]
        for name in mine:
            self.registry.remove(name)

    # partitions

    def cut_links(self, node: Node) -> None:
        """``node`` and every other node stop reaching each other; open links drop."""
        for other in self.nodes.values():
            if other is node:
                continue
            for p in [p for p in node.pumps if p in other.pumps]:
                p.serverIO.loseConnection()
                p.clientIO.loseConnection()
            pair = {(node.port, other.port), (other.port, node.port)}
            self.blocked |= pair
            self.cut |= pair

    def heal_links(self) -> None:
        self.blocked -= self.cut
        self.cut.clear()

    def cut_zk(self, node: Node) -> None:
        if node.zk.cut_at is None:
            node.zk.cut()

    def heal_zk(self, node: Node, session: float) -> None:
        """ZooKeeper is reachable again: a cut longer than ``session`` lost the session."""
        zk = node.zk
        if zk.cut_at is None:
            return
        expired = self.clock.seconds() - zk.cut_at > session
        zk.cut_at = None
        if not node.alive:
            return
        if expired:
            self.expire(node)
            node.replica.zk_state("lost")
            node.replica.zk_state("connected")
        node.replica.set_view(self.registry.view())

    def expire_sessions(self, session: float) -> None:
        """ZooKeeper ends the session of a node cut off for longer than ``session``."""
        now = self.clock.seconds()
        for node in self.nodes.values():
            cut = node.zk.cut_at
            if cut is not None and now - cut > session:
                self.expire(node)

    def chain(self, n: int) -> list[Node]:
        return [self.add() for _ in range(n)]

    def order(self) -> list[Node]:
        by_name = {n.name: n for n in self.nodes.values() if n.alive}
        return [by_name[m.name] for m in self.registry.members if m.name in by_name]


def results(ds: list[defer.Deferred[Any]]) -> list[Any]:
    """What each Deferred has fired with so far (None if nothing), leaving it intact."""
    out = []
    for d in ds:
        box: list[Any] = []

        def seen(r: Any, box: list[Any] = box) -> Any:
            box.append(r)
            return r

        d.addBoth(seen)
        out.append(box[0] if box else None)
    return out
