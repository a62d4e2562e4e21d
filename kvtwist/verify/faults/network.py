"""Faults through the proxy: a cut link or ZooKeeper route, a member isolated with the
sticky clients, ZooKeeper connections flapping as the membership changes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kvtwist.verify.faults.base import STICKY, STICKY_ZK, Active, Healthy
from kvtwist.verify.faults.joins import JOIN_WAIT

if TYPE_CHECKING:
    from kvtwist.verify.nemesis import Nemesis

PARTITION_SESSIONS = (1.0, 3.0)
ISOLATE_SESSIONS = (1.5, 3.0)
#: zk-flap: resets within this many seconds, each cut lasting FLAP_CUT seconds.
FLAP_RESETS = (3, 6)
FLAP_SPAN = 1.0
FLAP_CUT = (0.03, 0.12)
#: zk-flap waits this many fault intervals for a membership change, then starts a joiner.
FLAP_WAIT_INTERVALS = 2.0


def partition(nem: Nemesis, healthy: Healthy, tag: str = "") -> Active | None:
    proxy = nem.w.proxy
    assert proxy is not None
    mode = nem.rng.choice(("drop", "blackhole"))
    seconds = nem.sessions(PARTITION_SESSIONS)
    end_at = time.monotonic() + seconds
    order = [n for _, _, n in healthy]
    links = [(a, b) for a, b in zip(order, order[1:], strict=False)]
    variant = nem.pick("partition", healthy, ["link", "zk"] if links and not tag else ["zk"])
    if variant == "link":
        a, b = nem.rng.choice(links)
        proxy.rule(a.label, b.label, mode)
        proxy.rule(b.label, a.label, mode)
        nem.w.event(
            "partition",
            f"{tag}cut link {a.label}-{b.label} ({mode}) {seconds:.1f}s",
            nodes=[a.label, b.label],
            mode=mode,
            seconds=round(seconds, 3),
        )

        def heal_link() -> None:
            proxy.rule(a.label, b.label, None)
            proxy.rule(b.label, a.label, None)
            nem.w.event("heal", f"heal link {a.label}-{b.label}")

        return Active("partition", [a, b], False, end_at=end_at, finish=heal_link)
    role, _, node = nem.member("partition zk", healthy)
    proxy.rule(node.zk_route, "*", mode)
    nem.w.event(
        "partition",
        f"{tag}isolate {role} {node.label} from ZooKeeper ({mode}) {seconds:.1f}s",
        node=node.label,
        role=role,
        mode=mode,
        seconds=round(seconds, 3),
    )

    def heal_zk() -> None:
        proxy.rule(node.zk_route, "*", None)
        nem.w.event("heal", f"heal {node.label} to ZooKeeper")

    return Active("partition", [node], False, end_at=end_at, finish=heal_zk)


def isolate(nem: Nemesis, healthy: Healthy) -> Active:
    proxy = nem.w.proxy
    assert proxy is not None
    role, _, node = nem.member("isolate", healthy)
    mode = nem.rng.choice(("drop", "blackhole"))
    seconds = nem.sessions(ISOLATE_SESSIONS)
    sticky = nem.w.sticky_clients > 0
    # the exception first, so the sticky clients' connections to it never see the cut
    rules = [(node.label, STICKY, "pass")] if sticky else []
    # ZooKeeper goes silent (no reset tells the member it is cut off), links as chosen
    rules += [(node.zk_route, "*", "blackhole"), (node.label, "*", mode)]
    if sticky:
        rules.append((STICKY_ZK, "*", "drop"))  # fails at once: they keep the view they had
    for other in nem.w.nodes:
        if other is not node:
            rules.append((other.label, node.label, mode))
            if sticky:
                rules.append((other.label, STICKY, mode))
    for route, source, how in rules:
        proxy.rule(route, source, how)
    nem.w.event(
        "isolate",
        f"isolate {role} {node.label} from ZooKeeper and the chain"
        + (f" with {nem.w.sticky_clients} sticky clients" if sticky else "")
        + f" ({mode}) {seconds:.1f}s",
        node=node.label,
        role=role,
        mode=mode,
        seconds=round(seconds, 3),
    )

    def heal() -> None:
        for route, source, _ in reversed(rules):
            proxy.rule(route, source, None)
        nem.w.event("heal", f"heal the isolation of {node.label}")

    return Active("isolate", [node], True, end_at=time.monotonic() + seconds, finish=heal)


def zk_flap(nem: Nemesis, healthy: Healthy) -> Active:
    proxy = nem.w.proxy
    assert proxy is not None
    before = nem.w.config()
    state: dict[str, Any] = {
        "wait": time.monotonic() + FLAP_WAIT_INTERVALS * nem.interval,
        "joiner": None,
        "node": None,
        "resets": None,  # [(when, mode or None)] once the change came
    }
    a = Active("zk-flap", [], False)
    nem.w.event("zk-flap", f"zk-flap armed: waiting for a membership change (config {before})")

    def arm(now: float) -> bool:
        config = nem.w.config()
        healthy_now = nem.healthy() if config and config != before else None
        if healthy_now:
            role, _, node = nem.rng.choice(healthy_now)
            n = nem.rng.randint(*FLAP_RESETS)
            resets: list[tuple[float, str | None]] = []
            for i in range(n):
                at = now + i * FLAP_SPAN / n
                resets += [(at, "drop"), (at + nem.rng.uniform(*FLAP_CUT), None)]
            state["node"], state["resets"] = node, resets
            a.targets = [node]
            nem.w.event(
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
            joiner = nem.w.start_node()
            state["joiner"], state["wait"] = joiner, now + JOIN_WAIT
            nem.w.event("start", f"start {joiner.label} to change the membership")
            return False
        nem.w.event("zk-flap", "zk-flap: the membership did not change")
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
        alive = [n for n in nem.w.nodes if n.state != "dead"]
        if joiner is not None and joiner.state == "running" and len(alive) > nem.w.target_nodes():
            # the chain keeps its length; the leave is one more change for the members
            joiner.proc.stop()
            joiner.state = "dead"
            nem.w.event("stop", f"stop {joiner.label}: the chain is back to its length")

    a.poll, a.finish = poll, finish
    return a
