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
it is a member fault or needs the proxy.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Protocol

from kvtwist import wire
from kvtwist.procs import NodeProcess, RawClient, ZooKeeperProcess, node_env
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.storage import wal
from kvtwist.storage.records import CorruptData, LogRecord
from kvtwist.verify import wallclock
from kvtwist.verify.proxy import ProxyControl

#: The proxy's name for the sticky clients' connections, and their ZooKeeper route.
STICKY = "sticky"
STICKY_ZK = "sticky-zk"

PAUSE_SESSIONS = (1.5, 2.5)
SHORT_PAUSE_SESSIONS = (0.2, 0.6)
ZK_PAUSE_SESSIONS = (1.5, 3.0)
ZK_DOWN_SECONDS = (1.0, 4.0)
PARTITION_SESSIONS = (1.0, 3.0)
RESTART_DELAY = (0.5, 2.0)
#: The joiner's state transfer runs at this many bytes a second through the proxy.
JOIN_RATE = 1 << 20
#: Give up on seeing a state transfer start after this long.
JOIN_WAIT = 30.0
ISOLATE_SESSIONS = (1.5, 3.0)
#: zk-flap: resets within this many seconds, each cut lasting FLAP_CUT seconds.
FLAP_RESETS = (3, 6)
FLAP_SPAN = 1.0
FLAP_CUT = (0.03, 0.12)
#: zk-flap waits this many fault intervals for a membership change, then starts a joiner.
FLAP_WAIT_INTERVALS = 2.0
#: clock-step: the step's size in seconds (log-uniform), and how long it holds.
STEP_SECONDS = (2.0, 300.0)
STEP_SESSIONS = (1.0, 2.0)
#: hostile-torn: the key it writes (not a client key: no history of its own).
HOSTILE_KEY = b"hostile-torn"
HOSTILE_WAIT = 5.0
ROLES = ("head", "middle", "tail")


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
    nodes: list[Node]
    zk: ZooKeeperProcess | None
    proxy: ProxyControl | None
    report_dir: Path
    session_timeout: float
    keys: int
    seed: int
    stranger_results: list[dict[str, Any]]
    sticky_clients: int

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


class Nemesis:
    """Injects faults of the requested kinds at random moments, and heals them."""

    def __init__(self, world: World, kinds: list[str], interval: float) -> None:
        self.w = world
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
        return not any(a.whole for a in self.active) and FAULTS[kind].ready(self, healthy)

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
        started = FAULTS[kind].start(self, healthy)
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

    # -- member faults ----------------------------------------------------------------------

    def _kill(self, healthy: Healthy, tag: str = "") -> Active:
        role, name, node = self.member("kill", healthy)
        node.proc.kill()
        node.state = "dead"
        self.w.replace_later()
        self.w.event(
            "kill", f"{tag}kill {role} {node.label}", node=node.label, role=role, znode=name
        )
        return Active("kill", [node], False, end_at=time.monotonic())

    def _pause_for(
        self,
        kind: str,
        span: tuple[float, float],
        healthy: Healthy,
        tag: str = "",
    ) -> Active:
        role, name, node = self.member(kind, healthy)
        seconds = self.sessions(span)
        node.proc.pause()
        node.state = "paused"
        self.w.event(
            kind,
            f"{tag}{kind} {role} {node.label} {seconds:.1f}s",
            node=node.label,
            role=role,
            znode=name,
            seconds=round(seconds, 3),
        )

        def resume() -> None:
            if node.state == "paused":
                node.proc.resume()
                node.state = "running"
                self.w.event("resume", f"resume {node.label}", node=node.label)

        return Active(kind, [node], False, end_at=time.monotonic() + seconds, finish=resume)

    def _pause(self, healthy: Healthy, tag: str = "") -> Active:
        return self._pause_for("pause", PAUSE_SESSIONS, healthy, tag)

    def _short_pause(self, healthy: Healthy, tag: str = "") -> Active:
        return self._pause_for("short-pause", SHORT_PAUSE_SESSIONS, healthy, tag)

    def _partition(self, healthy: Healthy, tag: str = "") -> Active | None:
        proxy = self.w.proxy
        assert proxy is not None
        mode = self.rng.choice(("drop", "blackhole"))
        seconds = self.sessions(PARTITION_SESSIONS)
        end_at = time.monotonic() + seconds
        order = [n for _, _, n in healthy]
        links = [(a, b) for a, b in zip(order, order[1:], strict=False)]
        variant = self.pick("partition", healthy, ["link", "zk"] if links and not tag else ["zk"])
        if variant == "link":
            a, b = self.rng.choice(links)
            proxy.rule(a.label, b.label, mode)
            proxy.rule(b.label, a.label, mode)
            self.w.event(
                "partition",
                f"{tag}cut link {a.label}-{b.label} ({mode}) {seconds:.1f}s",
                nodes=[a.label, b.label],
                mode=mode,
                seconds=round(seconds, 3),
            )

            def heal_link() -> None:
                proxy.rule(a.label, b.label, None)
                proxy.rule(b.label, a.label, None)
                self.w.event("heal", f"heal link {a.label}-{b.label}")

            return Active("partition", [a, b], False, end_at=end_at, finish=heal_link)
        role, _, node = self.member("partition zk", healthy)
        proxy.rule(node.zk_route, "*", mode)
        self.w.event(
            "partition",
            f"{tag}isolate {role} {node.label} from ZooKeeper ({mode}) {seconds:.1f}s",
            node=node.label,
            role=role,
            mode=mode,
            seconds=round(seconds, 3),
        )

        def heal_zk() -> None:
            proxy.rule(node.zk_route, "*", None)
            self.w.event("heal", f"heal {node.label} to ZooKeeper")

        return Active("partition", [node], False, end_at=end_at, finish=heal_zk)

    def _crash_restart(self, healthy: Healthy, tag: str = "") -> Active:
        variants = ["one"]
        if self.whole(healthy) and not tag:
            variants.append("all")
        if len(healthy) < 3 and not tag:
            variants = ["all"]
        every = self.pick("crash-restart", healthy, variants) == "all"
        victims, what = self._victims("crash-restart", healthy, every)
        for n in victims:
            n.proc.kill()
            n.state = "down"
        return self._restart_later("crash-restart", victims, every, f"{tag}crash {what}")

    def _victims(self, kind: str, healthy: Healthy, every: bool) -> tuple[list[Node], str]:
        """Every running node, or one member picked for ``kind``; and how to say which."""
        if every:
            victims = [n for n in self.w.nodes if n.state != "dead"]
            return victims, "every member " + ",".join(n.label for n in victims)
        role, _, node = self.member(kind, healthy)
        return [node], f"{role} {node.label}"

    def _restart_later(self, kind: str, victims: list[Node], every: bool, what: str) -> Active:
        """Killed ``victims`` (state "down") restart on their data directories after a delay."""
        delay = self.rng.uniform(*RESTART_DELAY)
        self.w.event(
            kind,
            f"{what}, restart in {delay:.1f}s",
            nodes=[n.label for n in victims],
            seconds=round(delay, 3),
        )

        def restart() -> None:
            for n in victims:
                if n.state == "down":
                    self.w.restart_node(n)
                    n.state = "running"
            self.w.event("restart", "restart " + ",".join(n.label for n in victims))

        return Active(kind, victims, every, end_at=time.monotonic() + delay, finish=restart)

    def _hostile_torn(self, healthy: Healthy) -> Active | None:
        members = self.w.members()
        head = self.w.node_of(members[0][1]) if members else None
        if head is None or head.state != "running":
            return None
        variants = ["one", "all"] if self.whole(healthy) else ["one"]
        every = self.pick("hostile-torn", healthy, variants) == "all"
        victims, what = self._victims("hostile-torn", healthy, every)
        try:
            with RawClient(head.port, timeout=2.0) as c:
                seq = int(c.stats().last_op) + 2  # the op after the hostile put, most likely
        except (OSError, RuntimeError, ValueError):
            return None
        embedded = embedded_record(seq)
        segments = {id(n): newest_segment(n) for n in victims}
        starts = {
            id(n): _size(p) if p is not None else 0
            for n, p in zip(victims, segments.values(), strict=True)
        }
        logged: set[int] = set()
        with socket.create_connection(("127.0.0.1", head.port), timeout=2.0) as sock:
            sock.sendall(wire.frame(wire.req_put(HOSTILE_KEY, hostile_value(embedded))))
            # kill each victim the moment the value is in its log, or all once it is in all
            deadline = time.monotonic() + HOSTILE_WAIT
            while len(logged) < len(victims) and time.monotonic() < deadline:
                for n in victims:
                    path = newest_segment(n)
                    if id(n) not in logged and path is not None:
                        if path != segments[id(n)]:
                            segments[id(n)], starts[id(n)] = path, 0
                        if embedded in _read_bytes(path, starts[id(n)]):
                            logged.add(id(n))
                            if not every:
                                n.proc.kill()
                time.sleep(0.001)
            for n in victims:
                n.proc.kill()
                n.state = "down"
        torn = [
            f"{n.label}: {tear_last_record(newest_segment(n), embedded, self.rng)}" for n in victims
        ]
        return self._restart_later(
            "hostile-torn",
            victims,
            every,
            f"hostile value (record of op {seq}) logged by {len(logged)} of {len(victims)}; "
            f"crash {what}; " + "; ".join(torn),
        )

    def _clock_step(self, healthy: Healthy, tag: str = "") -> Active:
        role, _, node = self.member("clock-step", healthy)
        forward = self.pick("clock-step", healthy, ["forward", "back"]) == "forward"
        size = math.exp(self.rng.uniform(*map(math.log, STEP_SECONDS)))
        offset = size if forward else -size
        hold = self.sessions(STEP_SESSIONS)
        set_clock(node, offset)
        self.w.event(
            "clock-step",
            f"{tag}step the clock of {role} {node.label} {offset:+.1f}s for {hold:.1f}s",
            node=node.label,
            role=role,
            offset=round(offset, 3),
            seconds=round(hold, 3),
        )

        def step_back() -> None:
            set_clock(node, 0.0)
            self.w.event("clock-step-back", f"step the clock of {node.label} back to true time")

        return Active("clock-step", [node], False, end_at=time.monotonic() + hold, finish=step_back)

    # -- cluster faults ---------------------------------------------------------------------

    def _isolate(self, healthy: Healthy) -> Active:
        proxy = self.w.proxy
        assert proxy is not None
        role, _, node = self.member("isolate", healthy)
        mode = self.rng.choice(("drop", "blackhole"))
        seconds = self.sessions(ISOLATE_SESSIONS)
        sticky = self.w.sticky_clients > 0
        # the exception first, so the sticky clients' connections to it never see the cut
        rules = [(node.label, STICKY, "pass")] if sticky else []
        # ZooKeeper goes silent (no reset tells the member it is cut off), links as chosen
        rules += [(node.zk_route, "*", "blackhole"), (node.label, "*", mode)]
        if sticky:
            rules.append((STICKY_ZK, "*", "drop"))  # fails at once: they keep the view they had
        for other in self.w.nodes:
            if other is not node:
                rules.append((other.label, node.label, mode))
                if sticky:
                    rules.append((other.label, STICKY, mode))
        for route, source, how in rules:
            proxy.rule(route, source, how)
        self.w.event(
            "isolate",
            f"isolate {role} {node.label} from ZooKeeper and the chain"
            + (f" with {self.w.sticky_clients} sticky clients" if sticky else "")
            + f" ({mode}) {seconds:.1f}s",
            node=node.label,
            role=role,
            mode=mode,
            seconds=round(seconds, 3),
        )

        def heal() -> None:
            for route, source, _ in reversed(rules):
                proxy.rule(route, source, None)
            self.w.event("heal", f"heal the isolation of {node.label}")

        return Active("isolate", [node], True, end_at=time.monotonic() + seconds, finish=heal)

    def _zk_flap(self, healthy: Healthy) -> Active:
        proxy = self.w.proxy
        assert proxy is not None
        before = self.w.config()
        state: dict[str, Any] = {
            "wait": time.monotonic() + FLAP_WAIT_INTERVALS * self.interval,
            "joiner": None,
            "node": None,
            "resets": None,  # [(when, mode or None)] once the change came
        }
        a = Active("zk-flap", [], False)
        self.w.event("zk-flap", f"zk-flap armed: waiting for a membership change (config {before})")

        def arm(now: float) -> bool:
            config = self.w.config()
            healthy_now = self.healthy() if config and config != before else None
            if healthy_now:
                role, _, node = self.rng.choice(healthy_now)
                n = self.rng.randint(*FLAP_RESETS)
                resets: list[tuple[float, str | None]] = []
                for i in range(n):
                    at = now + i * FLAP_SPAN / n
                    resets += [(at, "drop"), (at + self.rng.uniform(*FLAP_CUT), None)]
                state["node"], state["resets"] = node, resets
                a.targets = [node]
                self.w.event(
                    "zk-flap",
                    f"membership changed (config {before} -> {config}): reset the ZooKeeper "
                    f"connection of {role} {node.label} {n} times in {FLAP_SPAN:g}s",
                    node=node.label,
                    role=role,
                    resets=n,
                )
                return False
            if now < state["wait"]:
                return False
            if state["joiner"] is None:
                joiner = self.w.start_node()
                state["joiner"], state["wait"] = joiner, now + JOIN_WAIT
                self.w.event("start", f"start {joiner.label} to change the membership")
                return False
            self.w.event("zk-flap", "zk-flap: the membership did not change")
            return True

        def poll(now: float) -> bool:
            if state["resets"] is None:
                return arm(now)
            node, resets = state["node"], state["resets"]
            while resets and resets[0][0] <= now:
                proxy.rule(node.zk_route, "*", resets.pop(0)[1])
            return not resets

        def finish() -> None:
            if state["node"] is not None:
                proxy.rule(state["node"].zk_route, "*", None)
            joiner = state["joiner"]
            alive = [n for n in self.w.nodes if n.state != "dead"]
            if (
                joiner is not None
                and joiner.state == "running"
                and len(alive) > self.w.target_nodes()
            ):
                # the chain keeps its length; the leave is one more change for the members
                joiner.proc.stop()
                joiner.state = "dead"
                self.w.event("stop", f"stop {joiner.label}: the chain is back to its length")

        a.poll, a.finish = poll, finish
        return a

    # -- cluster faults ---------------------------------------------------------------------

    def _zk_pause(self, healthy: Healthy) -> Active:
        zk = self.w.zk
        assert zk is not None
        seconds = self.sessions(ZK_PAUSE_SESSIONS)
        zk.pause()
        self.w.event("zk-pause", f"pause ZooKeeper {seconds:.1f}s", seconds=round(seconds, 3))

        def resume() -> None:
            zk.resume()
            self.w.event("resume", "resume ZooKeeper")

        return Active("zk-pause", [], True, end_at=time.monotonic() + seconds, finish=resume)

    def _zk_restart(self, healthy: Healthy) -> Active:
        zk = self.w.zk
        assert zk is not None
        seconds = self.rng.uniform(*ZK_DOWN_SECONDS)
        zk.kill()
        self.w.event(
            "zk-restart", f"kill ZooKeeper, restart in {seconds:.1f}s", seconds=round(seconds, 3)
        )

        def restart() -> None:
            zk.restart()
            self.w.event("restart", "ZooKeeper restarted")

        return Active("zk-restart", [], True, end_at=time.monotonic() + seconds, finish=restart)

    def _stranger(self, healthy: Healthy) -> Active:
        members = self.w.members()
        n = self.counts.get("stranger", 0) + 1
        log = self.w.report_dir / f"stranger-{n}.log"
        command = [
            sys.executable,
            "-m",
            "kvtwist.verify.stranger",
            "--config",
            str(self.w.config()),
            "--keys",
            str(self.w.keys),
            "--seed",
            str(self.w.seed * 1000 + n),
        ]
        for name, port in members:
            command += ["--member", f"{name}={port}"]
        err = open(log, "wb")  # noqa: SIM115 (closed when the process ends)
        proc = subprocess.Popen(
            command,
            env=node_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        self.w.event("stranger", f"stranger #{n} at {len(members)} members")

        def over(now: float) -> bool:
            return proc.poll() is not None

        def collect() -> None:
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate()[0].decode(errors="replace").strip().splitlines()
            err.close()
            try:
                result = json.loads(out[-1])
            except (IndexError, ValueError):
                result = {"attempts": [], "accepted": 0, "error": f"no summary (see {log.name})"}
            self.w.stranger_results.append(result)
            self.w.event(
                "stranger-end",
                f"stranger #{n}: {result['accepted']} of {len(result['attempts'])} "
                "attempts accepted",
            )

        return Active("stranger", [], False, poll=over, finish=collect)

    def _join_fault(self, healthy: Healthy) -> Active:
        proxy = self.w.proxy
        assert proxy is not None
        tail = healthy[-1][2]
        variant = self.pick(
            "join-fault", healthy, ["kill joiner", "pause joiner", "kill tail", "pause tail"]
        )
        offset = _size(tail.proc.logfile)
        joiner = self.w.start_node()
        proxy.rule(tail.label, joiner.label, "slow", JOIN_RATE)
        self.w.event("start", f"start {joiner.label} to join (transfer slowed)", node=joiner.label)
        started = time.monotonic()
        state: dict[str, Any] = {"due": None, "resume": None, "victim": None}
        a = Active("join-fault", [joiner, tail], True)

        def log_since() -> str:
            return _read_from(tail.proc.logfile, offset)

        def poll(now: float) -> bool:
            if state["resume"] is not None:
                return bool(now >= state["resume"])
            if state["due"] is None:
                if "state transfer to" in log_since():
                    state["due"] = now + self.rng.uniform(0.2, 1.5)
                elif now - started > JOIN_WAIT:
                    self.w.event("join-fault", f"join-fault: no state transfer from {tail.label}")
                    return True
                return False
            if now < state["due"]:
                return False
            # the tail has handed the snapshot to its transport long before the joiner,
            # behind the slowed proxy, has it all: the joiner's log tells
            mid = "joining: state loaded" not in _read_from(joiner.proc.logfile, 0)
            action, who = variant.split()
            victim = joiner if who == "joiner" else tail
            state["victim"] = victim
            proxy.rule(tail.label, joiner.label, None)
            if action == "kill":
                victim.proc.kill()
                victim.state = "dead"
                self.w.replace_later()
                state["resume"] = now
            else:
                victim.proc.pause()
                victim.state = "paused"
                state["resume"] = now + self.sessions(PAUSE_SESSIONS)
            self.w.event(
                "join-fault",
                f"{action} {who} {victim.label} "
                f"{'during' if mid else 'AFTER'} the state transfer to {joiner.label}",
                node=victim.label,
                mid_transfer=mid,
                variant=variant,
            )
            return False

        def finish() -> None:
            proxy.rule(tail.label, joiner.label, None)
            victim = state["victim"]
            if victim is not None and victim.state == "paused":
                victim.proc.resume()
                victim.state = "running"
                self.w.event("resume", f"resume {victim.label}", node=victim.label)

        a.poll, a.finish = poll, finish
        return a

    def _combined(self, healthy: Healthy) -> Active | None:
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
    ready: Callable[[Nemesis, Healthy], bool]  # may it start now (besides no whole fault)
    member: bool = False  # touches one member: ``combined`` draws two of these
    proxy: bool = False  # needs the proxy in front of every node


#: Every kind, in the order --nemesis lists them and the default takes them.
FAULTS: dict[str, Fault] = {
    "kill": Fault(Nemesis._kill, Nemesis.three_healthy, member=True),
    "pause": Fault(Nemesis._pause, Nemesis.three_healthy, member=True),
    "short-pause": Fault(Nemesis._short_pause, Nemesis.three_healthy, member=True),
    "zk-pause": Fault(Nemesis._zk_pause, Nemesis.calm),
    "zk-restart": Fault(Nemesis._zk_restart, Nemesis.calm),
    "partition": Fault(Nemesis._partition, Nemesis.three_healthy, member=True, proxy=True),
    "join-fault": Fault(Nemesis._join_fault, Nemesis.calm, proxy=True),
    "crash-restart": Fault(Nemesis._crash_restart, Nemesis.can_crash, member=True),
    "stranger": Fault(Nemesis._stranger, Nemesis.no_stranger),
    "combined": Fault(Nemesis._combined, Nemesis.calm),
    "isolate": Fault(Nemesis._isolate, Nemesis.calm, proxy=True),
    "zk-flap": Fault(Nemesis._zk_flap, Nemesis.no_flap, proxy=True),
    "clock-step": Fault(Nemesis._clock_step, Nemesis.three_healthy),
    "hostile-torn": Fault(Nemesis._hostile_torn, Nemesis.can_tear),
}
KINDS = tuple(FAULTS)
#: Kinds that touch one member; ``combined`` draws two of these.
MEMBER_KINDS = tuple(k for k, f in FAULTS.items() if f.member)
#: Kinds that need the proxy in front of every node.
PROXY_KINDS = tuple(k for k, f in FAULTS.items() if f.proxy)


def embedded_record(seq: int) -> bytes:
    """Log records of op ``seq`` as well as a client can forge them (wal.py): one in
    the version 1 framing (a public CRC-32) and one in the version 2 framing under a
    guessed salt (a client never learns a segment's)."""
    forged = LogRecord(seq=seq, is_put=True, key=HOSTILE_KEY, data=b"forged")
    payload = Update(seq=seq, is_put=True, key=HOSTILE_KEY, data=b"forged").SerializeToString()
    v1 = wal.V1_RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    return v1 + wal.encode_records([forged], bytes(wal.SALT_SIZE))


def hostile_value(embedded: bytes) -> bytes:
    """A value holding ``embedded``, with room after it for a tear that leaves it whole."""
    return b"hostile:" + embedded + b"\x00" * 64


def newest_segment(node: Node) -> Path | None:
    """The node's newest log segment (the one it appends to), if any."""
    segments = sorted((node.proc.dir / "data" / "wal").glob("*.log"))
    return segments[-1] if segments else None


def tear_last_record(path: Path | None, embedded: bytes, rng: Random) -> str:
    """Cut the segment's last record short as a power cut would, if it is the hostile
    one; what was done.

    The cut falls after ``embedded``, so a valid-looking record follows the torn
    one.  Any other last record is left whole: it may be a client's write that
    every member had on disk before it was acknowledged, which no power cut can
    take back (tearing it on every member would lose an acknowledged write by
    the nemesis's hand, not the node's).  The hostile put is the campaign's own,
    and while it is the last record nothing after it can have committed.
    """
    if path is None:
        return "no log segment"
    data = path.read_bytes()
    try:
        scan = wal.scan_segment(data, str(path), last=True)
    except CorruptData as e:
        return f"left as the kill left it ({e})"
    if scan.torn is not None or not scan.records:
        return f"left as the kill left it ({scan.torn or 'no records'})"
    start, end = scan.records[-1][0], scan.end
    at = data.find(embedded, start, end)
    if at < 0:
        return "left whole (its last record is not the hostile one)"
    cut = rng.randint(at + len(embedded), end - 1)
    os.truncate(path, cut)
    return f"cut the hostile record at byte {cut - start} of {end - start}"


def set_clock(node: Node, offset: float) -> None:
    """Step the node's wall clock to ``offset`` seconds from true time (verify.wallclock)."""
    wallclock.write_offset(node.proc.dir / "clock", offset)


def _read_bytes(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, offset - 256))
            return f.read()
    except OSError:
        return b""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
