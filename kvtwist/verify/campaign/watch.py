"""The nodes' own failures during a campaign: a node that exits without our signal, or
stays outside the chain with nothing holding it; each is a finding, and is replaced so
the nemesis keeps enough members to fault."""

from __future__ import annotations

import time
from random import Random

from kvtwist.verify.campaign.cluster import Cluster
from kvtwist.verify.campaign.log import Log
from kvtwist.verify.faults.base import Active

#: A replacement for a killed node starts this long after the kill (seconds).
REPLACE_DELAY = (0.5, 2.0)
#: A running node no fault holds that the chain has not listed for this long (seconds)
#: is stranded: a rejoin after any fault takes a few seconds, a slowed state transfer
#: about five.
STRANDED_AFTER = 20.0


class OutsideWatch:
    """Which running nodes have stayed outside the chain for too long.

    Without it a node that never rejoins holds the nemesis back for the rest of
    the campaign (member faults need three healthy members): it is reported,
    stopped and replaced instead, so the other kinds keep coming.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since: dict[str, float] = {}

    def update(self, now: float, running: list[str], members: set[str]) -> list[str]:
        """The labels outside for longer than the limit (each reported once)."""
        for label in list(self.since):
            if label not in running or label in members:
                del self.since[label]
        out = []
        for label in running:
            if label not in members and now - self.since.setdefault(label, now) > self.limit:
                out.append(label)
                del self.since[label]
        return out

    def reset(self) -> None:
        """Everyone starts afresh (after a fault of the whole cluster)."""
        self.since.clear()


class Watch:
    """Unexpected exits and stranded nodes, as findings, and the replacements they call for."""

    def __init__(self, cluster: Cluster, log: Log, rng: Random) -> None:
        self.cluster = cluster
        self.log = log
        self.rng = rng
        self.unexpected_exits: list[str] = []
        self.stranded: list[str] = []
        self.outside = OutsideWatch(STRANDED_AFTER)
        self.last_outside_check = 0.0
        self.replace_at = 0.0

    def replace_later(self) -> None:
        self.replace_at = time.monotonic() + self.rng.uniform(*REPLACE_DELAY)

    def check_exits(self) -> None:
        """A node that ends without our signal crashed: a finding in itself."""
        for n in self.cluster.nodes:
            if n.state in ("running", "paused") and n.proc.exited is not None:
                n.state = "dead"
                self.unexpected_exits.append(f"{n.label} (port {n.port}) exit {n.proc.exited}")
                self.log.event("exit", f"{n.label} EXITED ({n.proc.exited})", node=n.label)
                self.replace_later()

    def check_stranded(self, active: list[Active]) -> None:
        """Stop and replace a running node the chain has left out for too long (a finding).

        ``active``: the faults in progress, whose targets are not counted as left out.
        """
        wall = time.monotonic()
        if wall - self.last_outside_check < 1.0:
            return
        self.last_outside_check = wall
        if any(a.whole for a in active):
            self.outside.reset()  # ZooKeeper may be down, and everyone rejoins afterwards
            return
        members = self.cluster.members()
        if not members:
            return  # unknown now, or empty for a moment: no verdict
        listed = {self.cluster.label_of(port) for _, port in members}
        # a node a fault holds (a cut link, a pause) is not untouched: it has the
        # whole limit again once the fault is over
        touched = {n.label for a in active for n in a.targets}
        nodes = self.cluster.nodes
        running = [n.label for n in nodes if n.state == "running" and n.label not in touched]
        for label in self.outside.update(wall, running, listed):
            node = next(n for n in nodes if n.label == label)
            self.stranded.append(f"{label} (port {node.port}) at {self.log.now():.1f}s")
            self.log.event(
                "stranded",
                f"{label} STRANDED: running but outside the chain for {STRANDED_AFTER:g}s; "
                "stopped, a replacement joins",
                node=label,
            )
            node.proc.stop()
            node.state = "dead"
            self.replace_later()

    def replace(self, target: int) -> None:
        """A node started for one that died, once its delay is over."""
        alive = [n for n in self.cluster.nodes if n.state != "dead"]
        if len(alive) < target and time.monotonic() >= self.replace_at:
            n = self.cluster.start_node()
            self.log.event("start", f"start {n.label}", node=n.label)
