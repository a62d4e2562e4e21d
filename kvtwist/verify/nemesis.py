"""The nemesis of ``kvtwist-torture``: which faults, on whom, when, and their healing.

Kinds (``--nemesis KIND[,KIND...]``):

- ``kill``: SIGKILL a member (head, middle, tail in turn); a replacement joins.
- ``pause``: SIGSTOP a member for 1.5-2.5 session timeouts (its session expires).
- ``short-pause``: SIGSTOP a member for 0.2-0.6 session timeouts: it stays in
  the chain and must not stall it after SIGCONT.
- ``zk-pause``: SIGSTOP ZooKeeper for 1.5-3 session timeouts.
- ``zk-restart``: SIGKILL ZooKeeper, restart it on its data and port 1-4 s later.
- ``partition``: through the proxy (kvtwist.verify.proxy), either cut one
  chain link both ways (drop or blackhole) while both ends reach ZooKeeper,
  or isolate one member from ZooKeeper while its links stay up; healed after
  1-3 session timeouts.
- ``join-fault``: start a joiner, slow its state transfer down through the
  proxy, and in the middle of it kill or pause the joiner or the tail serving it.
- ``crash-restart``: SIGKILL one member, or every member at once, and restart
  them on their data directories (needs a node with ``--data-dir``).
- ``stranger``: a process without the cluster key sends chain opcodes with
  forged senders to every member (kvtwist.verify.stranger).
- ``combined``: two member faults at once (e.g. kill the head while the tail
  is paused), on different members, leaving at least one member untouched.
- ``isolate``: a partition with clients on the minority side: one member (head,
  middle or tail) is cut off from ZooKeeper (silently: a blackhole, so nothing
  tells it at once) and from every other node at once, and so are the
  campaign's sticky clients (a third of them, readers whose ZooKeeper session
  passes a proxy route of their own), which can reach that member only and
  keep the view they had; the rest carry on.  Healed after 1.5-3 session
  timeouts.
- ``zk-flap``: the moment the membership changes (after another fault, or a
  joiner it starts itself and stops afterwards), one member's ZooKeeper
  connections are reset several times within a second.
- ``clock-step``: one member's wall clock (CLOCK_REALTIME only, through
  kvtwist.verify.wallclock's preload in that process alone) steps seconds to
  minutes forward or back,
  and back again 1-2 session timeouts later.
- ``hostile-torn``: a value embedding a valid log record of the next op number
  is written; one member, or every member, is SIGKILLed while it is logged,
  its newest log segment loses the end of its last record (a torn write after
  the embedded record), and it restarts on its data directory.

Caps keep the chain able to recover: a member fault needs three healthy
members (so two stay healthy); a fault of the whole cluster (ZooKeeper, a
join, every member, two at once) waits until the chain is whole and nothing
else is in progress.  Kinds rotate: the next fault is of the least-injected
kind whose conditions hold now, so each kind comes once the duration allows.
Each kind is one row of ``FAULTS``: its handler, its condition, and whether
it is a member fault or needs the proxy.  The handlers live in
``kvtwist.verify.faults``, a module per family of faults.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kvtwist.verify import wallclock
from kvtwist.verify.faults import clock, disk, joins, network, signals, stranger, zookeeper
from kvtwist.verify.faults.base import ROLES, Active, Healthy, Node, World


def available_kinds(options: frozenset[str]) -> dict[str, str | None]:
    """Each kind, and why this node build cannot take it (None: it can)."""
    why: dict[str, str | None] = dict.fromkeys(KINDS)
    if "data-dir" not in options:
        why["crash-restart"] = "the node has no --data-dir: a restarted node would start empty"
        why["hostile-torn"] = "the node has no --data-dir: there is no log to tear"
    cannot = wallclock.unavailable()
    if cannot is not None:
        why["clock-step"] = cannot
    return why


def default_kinds(options: frozenset[str]) -> list[str]:
    """Every kind the build supports; ``stranger`` only once links have a cluster key."""
    why = available_kinds(options)
    kinds = [k for k in KINDS if why[k] is None]
    if "cluster-key-file" not in options:
        kinds.remove("stranger")
    return kinds


def parse_kinds(text: str | None, options: frozenset[str]) -> list[str]:
    """``--nemesis`` as a list; ValueError naming what is unknown or unsupported."""
    if not text:
        return default_kinds(options)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    why = available_kinds(options)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown nemesis kind {k!r} (kinds: {', '.join(KINDS)})")
        if why[k] is not None:
            raise ValueError(f"nemesis kind {k!r} cannot run: {why[k]}")
    return list(dict.fromkeys(kinds))


class Nemesis:
    """Injects faults of the requested kinds at random moments, and heals them."""

    def __init__(
        self,
        world: World,
        kinds: list[str],
        interval: float,
        faults: Mapping[str, Fault] | None = None,
    ) -> None:
        self.w = world
        #: the kinds this nemesis knows (``FAULTS``, or a cluster's, kvtwist.verify.shardnemesis)
        self.faults = FAULTS if faults is None else faults
        self.kinds = kinds
        self.interval = interval
        self.rng = world.rng
        self.active: list[Active] = []
        self.counts: dict[str, int] = {}
        self.coverage: dict[str, int] = {}
        self.next_fault = time.monotonic() + self.rng.uniform(0.5, 1.5)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    # -- the loop --------------------------------------------------------------------

    def tick(self, inject: bool) -> None:
        now = time.monotonic()
        for a in list(self.active):
            done = a.poll(now) if a.poll is not None else a.end_at is not None and now >= a.end_at
            if done:
                self.end(a)
        if inject and now >= self.next_fault and self.inject():
            self.next_fault = now + self.rng.uniform(0.5 * self.interval, 1.5 * self.interval)

    def end(self, a: Active) -> None:
        if a in self.active:
            self.active.remove(a)
        if a.whole:  # let the chain show it recovered before the next blow
            calm = time.monotonic() + self.rng.uniform(0.5 * self.interval, 1.5 * self.interval)
            self.next_fault = max(self.next_fault, calm)
        for part in a.parts:
            if part.finish is not None:
                part.finish()
        if a.finish is not None:
            a.finish()

    def heal(self) -> None:
        """End every fault now."""
        for a in list(self.active):
            self.end(a)
        if self.w.proxy is not None:
            self.w.proxy.clear()

    # -- choosing ---------------------------------------------------------------------

    def healthy(self) -> Healthy | None:
        """(role, znode, node) of members running untouched; None if the chain is unsound."""
        members = self.w.members()
        busy = {id(n) for a in self.active for n in a.targets}
        out: Healthy = []
        seen: set[int] = set()
        for i, (name, port) in enumerate(members):
            node = self.w.node_of(port)
            if node is None:
                continue
            if id(node) in seen:
                return None  # one node under two znodes: let the chain sort itself out
            seen.add(id(node))
            if node.state == "running" and node.proc.exited is None and id(node) not in busy:
                role = "head" if i == 0 else "tail" if i == len(members) - 1 else "middle"
                out.append((role, name, node))
        return out

    def whole(self, healthy: Healthy) -> bool:
        """The chain is complete, every member healthy, nothing in progress."""
        alive = [n for n in self.w.nodes if n.state != "dead"]
        return (
            not self.active
            and len(healthy) >= self.w.target_nodes()
            and len(healthy) == len(alive)
            and all(n.state == "running" for n in alive)
        )

    def possible(self, kind: str, healthy: Healthy) -> bool:
        """Whether a fault of ``kind`` may start now: never while one holds the whole cluster."""
        return not any(a.whole for a in self.active) and self.faults[kind].ready(self, healthy)

    def three_healthy(self, healthy: Healthy) -> bool:
        """Two members stay healthy while a third is faulted."""
        return len(healthy) >= 3

    def calm(self, healthy: Healthy) -> bool:
        """For a fault of the whole cluster: the chain whole, nothing in progress."""
        return self.whole(healthy) and len(healthy) >= 3

    def can_crash(self, healthy: Healthy) -> bool:
        """One member crashes while two stay healthy, or every member once all is calm."""
        return len(healthy) >= 3 or self.whole(healthy)

    def can_tear(self, healthy: Healthy) -> bool:
        """As crash-restart, and a head to write the hostile value through."""
        return self.can_crash(healthy) and bool(self.w.members())

    def no_stranger(self, healthy: Healthy) -> bool:
        """Someone to talk to, and no stranger talking already."""
        return bool(healthy) and not any(a.kind == "stranger" for a in self.active)

    def no_flap(self, healthy: Healthy) -> bool:
        """Three healthy members, and no zk-flap waiting or flapping already."""
        return len(healthy) >= 3 and not any(a.kind == "zk-flap" for a in self.active)

    def inject(self) -> bool:
        """Start one fault if some kind can run now; False if none could."""
        if any(a.whole for a in self.active):
            return False  # and ZooKeeper may be down: do not even ask it
        healthy = self.healthy()
        if healthy is None:
            return False
        ready = [k for k in self.kinds if self.possible(k, healthy)]
        if not ready:
            return False
        low = min(self.counts.get(k, 0) for k in ready)
        kind = self.rng.choice([k for k in ready if self.counts.get(k, 0) == low])
        started = self.faults[kind].start(self, healthy)
        if started is None:
            return False
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.active.append(started)
        return True

    def pick(self, kind: str, healthy: Healthy, variants: list[str]) -> str:
        """The least covered variant of ``kind``, ties at random."""
        low = min(self.coverage.get(f"{kind} {v}", 0) for v in variants)
        v = self.rng.choice([v for v in variants if self.coverage.get(f"{kind} {v}", 0) == low])
        self.coverage[f"{kind} {v}"] = self.coverage.get(f"{kind} {v}", 0) + 1
        return v

    def member(self, kind: str, healthy: Healthy) -> tuple[str, str, Node]:
        role = self.pick(kind, healthy, sorted({r for r, _, _ in healthy}, key=ROLES.index))
        return self.rng.choice([h for h in healthy if h[0] == role])

    def sessions(self, span: tuple[float, float]) -> float:
        return self.w.session_timeout * self.rng.uniform(*span)

    # -- the fault made of two ----------------------------------------------------------

    def combined(self, healthy: Healthy) -> Active | None:
        choices = [k for k in self.kinds if k in MEMBER_KINDS] or ["kill", "pause"]
        first = self.rng.choice(choices)
        second = self.rng.choice(choices)
        parts: list[Active] = []
        left = list(healthy)
        for kind in (first, second):
            if len(left) < 2:
                break
            part = FAULTS[kind].start(self, left, tag="+")
            if part is None:
                continue
            parts.append(part)
            left = [h for h in left if h[2] not in part.targets]
        if not parts:
            return None
        self.w.event("combined", "combined: " + " + ".join(p.kind for p in parts))
        end_at = max(p.end_at or 0.0 for p in parts)
        # each part ends on its own clock; the combination is over when all are
        pending = list(parts)

        def poll(now: float) -> bool:
            for p in list(pending):
                if p.end_at is not None and now >= p.end_at:
                    pending.remove(p)
                    if p.finish is not None:
                        p.finish()
            return not pending

        def finish() -> None:
            for p in pending:
                if p.finish is not None:
                    p.finish()
            pending.clear()

        targets = [n for p in parts for n in p.targets]
        return Active("combined", targets, True, end_at=end_at, poll=poll, finish=finish)


@dataclass(frozen=True)
class Fault:
    """One kind of fault: how it starts, when it may, and what it needs of the campaign."""

    #: (nemesis, healthy) -> the fault in progress, None if it could not start; a member
    #: fault takes ``tag=``, the prefix of its event labels inside ``combined``, too.
    start: Callable[..., Active | None]
    #: (nemesis, healthy) -> may it start now (besides no whole fault); a cluster's
    #: table (kvtwist.verify.shardnemesis) takes its own nemesis's conditions
    ready: Callable[..., bool]
    member: bool = False  # touches one member: ``combined`` draws two of these
    proxy: bool = False  # needs the proxy in front of every node


#: Every kind, in the order --nemesis lists them and the default takes them.
FAULTS: dict[str, Fault] = {
    "kill": Fault(signals.kill, Nemesis.three_healthy, member=True),
    "pause": Fault(signals.pause, Nemesis.three_healthy, member=True),
    "short-pause": Fault(signals.short_pause, Nemesis.three_healthy, member=True),
    "zk-pause": Fault(zookeeper.zk_pause, Nemesis.calm),
    "zk-restart": Fault(zookeeper.zk_restart, Nemesis.calm),
    "partition": Fault(network.partition, Nemesis.three_healthy, member=True, proxy=True),
    "join-fault": Fault(joins.join_fault, Nemesis.calm, proxy=True),
    "crash-restart": Fault(signals.crash_restart, Nemesis.can_crash, member=True),
    "stranger": Fault(stranger.stranger, Nemesis.no_stranger),
    "combined": Fault(Nemesis.combined, Nemesis.calm),
    "isolate": Fault(network.isolate, Nemesis.calm, proxy=True),
    "zk-flap": Fault(network.zk_flap, Nemesis.no_flap, proxy=True),
    "clock-step": Fault(clock.clock_step, Nemesis.three_healthy),
    "hostile-torn": Fault(disk.hostile_torn, Nemesis.can_tear),
}
KINDS = tuple(FAULTS)
#: Kinds that touch one member; ``combined`` draws two of these.
MEMBER_KINDS = tuple(k for k, f in FAULTS.items() if f.member)
#: Kinds that need the proxy in front of every node.
PROXY_KINDS = tuple(k for k, f in FAULTS.items() if f.proxy)
