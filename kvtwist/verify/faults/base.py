"""What every family of faults shares: the node as the nemesis sees it, a fault in
progress, and the campaign's side of the bargain (``World``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Protocol

from kvtwist.procs import NodeProcess, ZooKeeperProcess
from kvtwist.verify.proxy import ProxyControl

#: The proxy's name for the sticky clients' connections, and their ZooKeeper route.
STICKY = "sticky"
STICKY_ZK = "sticky-zk"

ROLES = ("head", "middle", "tail")


@dataclass(eq=False)
class Node:
    """A node process and what the nemesis did to it."""

    label: str
    proc: NodeProcess
    state: str = "running"  # running | paused | dead | down (crashed, to be restarted)
    advertised: int = 0  # the port in ZooKeeper (its proxy's), if not its own

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def address_port(self) -> int:
        return self.advertised or self.proc.port

    @property
    def zk_route(self) -> str:
        return f"{self.label}-zk"


#: (role, znode, node) of each member running untouched, head first.
Healthy = list[tuple[str, str, Node]]


class World(Protocol):
    """What the nemesis needs of the campaign."""

    rng: Random
    report_dir: Path
    session_timeout: float
    keys: int
    seed: int
    stranger_results: list[dict[str, Any]]

    # read only: the campaign keeps them in its parts
    @property
    def nodes(self) -> list[Node]: ...
    @property
    def zk(self) -> ZooKeeperProcess | None: ...
    @property
    def proxy(self) -> ProxyControl | None: ...
    @property
    def sticky_clients(self) -> int: ...

    def members(self) -> list[tuple[str, int]]: ...
    def node_of(self, port: int) -> Node | None: ...
    def start_node(self) -> Node: ...
    def restart_node(self, node: Node) -> None: ...
    def event(self, kind: str, label: str, **extra: Any) -> None: ...
    def config(self) -> int: ...
    def replace_later(self) -> None: ...
    def target_nodes(self) -> int: ...


@dataclass(eq=False)
class Active:
    """A fault in progress: whom it holds and how it ends."""

    kind: str
    targets: list[Node]
    whole: bool  # holds the whole cluster: nothing else may start meanwhile
    end_at: float | None = None
    finish: Callable[[], None] | None = None
    poll: Callable[[float], bool] | None = None  # True once it is over
    parts: list[Active] = field(default_factory=list)


def read_bytes_from(path: Path, offset: int) -> bytes:
    """The file from a little before ``offset``: a record written across it is seen whole."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, offset - 256))
            return f.read()
    except OSError:
        return b""


def file_size(path: Path) -> int:
    """0 for a file not there yet: a node's log appears only once it runs."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_from(path: Path, offset: int) -> str:
    """A node's log since ``offset``, as text; empty while it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
