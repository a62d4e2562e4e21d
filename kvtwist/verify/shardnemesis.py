"""The nemesis of ``kvtwist-torture --cluster``: the chain nemesis's loop and rotation
(kvtwist.verify.nemesis) over a table of cluster faults.

Kinds (``--nemesis KIND[,KIND...]`` with ``--cluster``):

- ``crash-restart``: SIGKILL one server, or every server once all is calm, and
  restart it on its data directory 0.5-2 s later.
- ``pause``, ``short-pause``: SIGSTOP a server for 1.5-2.5 (0.2-0.6) session
  timeouts: every chain it serves loses (or keeps) it at once.
- ``zk-pause``, ``zk-restart``: ZooKeeper paused, or killed and restarted on its data.
- ``split``: ``kvtwist-admin cluster split`` of a random shard at a workload key
  inside it (so both halves hold workload keys).
- ``move``: ``kvtwist-admin cluster move`` of a random chain from one of its
  members to a server outside it (not while a server is kept down for
  replacement: the move would take the server free to replace it with).
- ``replace``: SIGKILL a server and keep it down until the controller has
  replaced it in every chain (``--replace-after``), then start it again.

A server is healthy when it runs untouched and is registered; a server fault
takes only a healthy server every chain of which keeps two healthy members
without it, so every chain stays able to recover.  Faults of the whole cluster
(ZooKeeper, every server, ``replace``) wait until every chain lists exactly its
R planned members and nothing is in progress; one that falls two behind the
others holds them back until then.
"""

from __future__ import annotations

import time
from typing import Any

from kvtwist.verify.campaign.shards import ShardCluster, Snapshot, keys_in
from kvtwist.verify.faults import shards, signals, zookeeper
from kvtwist.verify.faults.base import Healthy, Node, World
from kvtwist.verify.nemesis import Fault, Nemesis


class ClusterNemesis(Nemesis):
    """The nemesis over a cluster's servers; each is a "member" of role ``server``."""

    def __init__(
        self, world: World, cluster: ShardCluster, kinds: list[str], interval: float
    ) -> None:
        super().__init__(world, kinds, interval, CLUSTER_FAULTS)
        self.cluster = cluster
        self.last = Snapshot()
        #: what each split and move command said (kvtwist.verify.faults.shards.admin)
        self.admin_results: list[dict[str, Any]] = []
        #: servers kept down that the controller never replaced
        self.not_replaced: list[str] = []
        #: servers running untouched and registered, as ``healthy`` last saw them
        self.fine: set[str] = set()
        self.tried = 0.0

    def healthy(self) -> Healthy | None:
        """Servers a fault may take now; None while ZooKeeper cannot say."""
        s = self.last = self.cluster.snapshot()
        if not s.complete:
            return None
        busy = {id(n) for a in self.active for n in a.targets}
        fine = {
            n.label
            for n in self.cluster.nodes
            if n.state == "running"
            and n.proc.exited is None
            and id(n) not in busy
            and n.label in s.live
        }
        self.fine = fine
        out: Healthy = []
        for n in self.cluster.nodes:
            if n.label in fine and all(
                len([m for m in s.listed[c] if m != n.label and m in fine]) >= 2
                for c in s.chains_of(n.label)
            ):
                out.append(("server", n.label, n))
        return out

    def whole(self, healthy: Healthy) -> bool:
        """Every server healthy, every chain exactly its plan, nothing in progress."""
        return (
            not self.active
            and len(healthy) == len(self.cluster.nodes)
            and self.cluster.settled(self.last)
        )

    def member(self, kind: str, healthy: Healthy) -> tuple[str, str, Node]:
        return self.rng.choice(healthy)

    def inject(self) -> bool:
        """At most twice a second: each try reads every chain's membership."""
        now = time.monotonic()
        if now - self.tried < 0.5:
            return False
        self.tried = now
        return super().inject()

    def possible(self, kind: str, healthy: Healthy) -> bool:
        """As the chain nemesis's, but a kind that waits for calm and has fallen two
        behind holds every other kind back, so calm comes: splits, moves and pauses
        overlap so readily that it would never come by chance."""
        starved = [k for k in self.kinds if k in CALM_KINDS and self.behind(k)]
        if starved and kind not in starved:
            return False
        return super().possible(kind, healthy)

    def behind(self, kind: str) -> bool:
        return self.counts.get(kind, 0) + 2 <= max(self.counts.values(), default=0)

    # -- conditions ------------------------------------------------------------------------

    def any_healthy(self, healthy: Healthy) -> bool:
        return bool(healthy)

    def calm(self, healthy: Healthy) -> bool:
        return self.whole(healthy)

    def no_kind(self, kind: str) -> bool:
        return not any(a.kind == kind for a in self.active)

    def pending(self) -> set[str]:
        """Chains with a move or split asked and not yet carried out."""
        r = self.last.requests
        if r is None:
            return set()
        return {m.chain for m in r.moves} | {sp.chain for sp in r.splits}

    def split_choices(self) -> list[tuple[str, list[bytes]]]:
        """(chain, keys to cut at) of every shard holding two workload keys or more."""
        m = self.last.map
        if m is None:
            return []
        out = []
        for shard in m.shards:
            keys = keys_in(shard, self.cluster.args.keys)
            if len(keys) >= 2 and shard.chain not in self.pending():
                out.append((shard.chain, keys[1:]))
        return out

    def can_split(self, healthy: Healthy) -> bool:
        return self.no_kind("split") and bool(self.split_choices())

    def move_choices(self, fine: set[str]) -> list[tuple[str, list[str], list[str]]]:
        """(chain, its members, servers to move it to) of every chain that is its plan."""
        s = self.last
        if s.map is None:
            return []
        out = []
        for cid, plan in s.map.chains.items():
            if len(plan.members) != s.map.replicas or cid in self.pending():
                continue
            if sorted(s.listed.get(cid, [])) != sorted(plan.members):
                continue
            targets = sorted(fine - set(plan.members))
            if targets:
                out.append((cid, list(plan.members), targets))
        return out

    def can_move(self, healthy: Healthy) -> bool:
        """No move under way, nor a server kept down for replacement: a move fills a
        chain with R + 1 members, leaving the controller no server free to replace the
        gone one with, and the move waits for the gone one (docs/cluster.md)."""
        return self.no_kind("move") and self.no_kind("replace") and bool(
            self.move_choices(self.fine)
        )


#: Every cluster kind, in the order --nemesis lists them and the default takes them.
CLUSTER_FAULTS: dict[str, Fault] = {
    "crash-restart": Fault(shards.crash, ClusterNemesis.any_healthy, member=True),
    "pause": Fault(signals.pause, ClusterNemesis.any_healthy, member=True),
    "short-pause": Fault(signals.short_pause, ClusterNemesis.any_healthy, member=True),
    "zk-pause": Fault(zookeeper.zk_pause, ClusterNemesis.calm),
    "zk-restart": Fault(zookeeper.zk_restart, ClusterNemesis.calm),
    "split": Fault(shards.split, ClusterNemesis.can_split),
    "move": Fault(shards.move, ClusterNemesis.can_move),
    "replace": Fault(shards.replace, ClusterNemesis.calm),
}
CLUSTER_KINDS = tuple(CLUSTER_FAULTS)
#: Kinds that start only when all is calm (``ClusterNemesis.calm``).
CALM_KINDS = tuple(k for k, f in CLUSTER_FAULTS.items() if f.ready is ClusterNemesis.calm)


def parse_cluster_kinds(text: str | None) -> list[str]:
    """``--nemesis`` with ``--cluster``: every cluster kind unless told; ValueError if unknown."""
    if not text:
        return list(CLUSTER_KINDS)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for k in kinds:
        if k not in CLUSTER_FAULTS:
            raise ValueError(
                f"unknown cluster nemesis kind {k!r} (kinds: {', '.join(CLUSTER_KINDS)})"
            )
    return list(dict.fromkeys(kinds))
