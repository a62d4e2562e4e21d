"""Faults by signal to member processes: kill, pause, short pause, crash and restart."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kvtwist.verify.faults.base import Active, Healthy, Node

if TYPE_CHECKING:
    from kvtwist.verify.nemesis import Nemesis

PAUSE_SESSIONS = (1.5, 2.5)
SHORT_PAUSE_SESSIONS = (0.2, 0.6)
RESTART_DELAY = (0.5, 2.0)


def kill(nem: Nemesis, healthy: Healthy, tag: str = "") -> Active:
    role, name, node = nem.member("kill", healthy)
    node.proc.kill()
    node.state = "dead"
    nem.w.replace_later()
    nem.w.event("kill", f"{tag}kill {role} {node.label}", node=node.label, role=role, znode=name)
    return Active("kill", [node], False, end_at=time.monotonic())


def pause_for(
    nem: Nemesis,
    kind: str,
    span: tuple[float, float],
    healthy: Healthy,
    tag: str = "",
) -> Active:
    role, name, node = nem.member(kind, healthy)
    seconds = nem.sessions(span)
    node.proc.pause()
    node.state = "paused"
    nem.w.event(
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
            nem.w.event("resume", f"resume {node.label}", node=node.label)

    return Active(kind, [node], False, end_at=time.monotonic() + seconds, finish=resume)


def pause(nem: Nemesis, healthy: Healthy, tag: str = "") -> Active:
    return pause_for(nem, "pause", PAUSE_SESSIONS, healthy, tag)


def short_pause(nem: Nemesis, healthy: Healthy, tag: str = "") -> Active:
    return pause_for(nem, "short-pause", SHORT_PAUSE_SESSIONS, healthy, tag)


def crash_restart(nem: Nemesis, healthy: Healthy, tag: str = "") -> Active:
    variants = ["one"]
    if nem.whole(healthy) and not tag:
        variants.append("all")
    if len(healthy) < 3 and not tag:
        variants = ["all"]
    every = nem.pick("crash-restart", healthy, variants) == "all"
    victims, what = pick_victims(nem, "crash-restart", healthy, every)
    for n in victims:
        n.proc.kill()
        n.state = "down"
    return restart_later(nem, "crash-restart", victims, every, f"{tag}crash {what}")


def pick_victims(nem: Nemesis, kind: str, healthy: Healthy, every: bool) -> tuple[list[Node], str]:
    """Every running node, or one member picked for ``kind``; and how to say which."""
    if every:
        victims = [n for n in nem.w.nodes if n.state != "dead"]
        return victims, "every member " + ",".join(n.label for n in victims)
    role, _, node = nem.member(kind, healthy)
    return [node], f"{role} {node.label}"


def restart_later(nem: Nemesis, kind: str, victims: list[Node], every: bool, what: str) -> Active:
    """Killed ``victims`` (state "down") restart on their data directories after a delay."""
    delay = nem.rng.uniform(*RESTART_DELAY)
    nem.w.event(
        kind,
        f"{what}, restart in {delay:.1f}s",
        nodes=[n.label for n in victims],
        seconds=round(delay, 3),
    )

    def restart() -> None:
        for n in victims:
            if n.state == "down":
                nem.w.restart_node(n)
                n.state = "running"
        nem.w.event("restart", "restart " + ",".join(n.label for n in victims))

    return Active(kind, victims, every, end_at=time.monotonic() + delay, finish=restart)
