"""Faults of a cluster of chains (``kvtwist-torture --cluster``): a server crashed and
restarted on its data directory, a shard split or moved by ``kvtwist-admin`` while
everything else goes on, and a server kept down until the controller replaces it.

The admin commands run with ``--wait`` in a process of their own, so a split or a
move is in progress, as any fault is, until its command returns; what it said is
logged.  A command refused (a chain that changed meanwhile) is no finding; one that
never completes shows at the end, when the request record still holds it.
"""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING, Any

from kvtwist.verify.faults.base import Active, Healthy
from kvtwist.verify.faults.signals import pick_victims, restart_later

if TYPE_CHECKING:
    from kvtwist.verify.shardnemesis import ClusterNemesis

#: How long ``--wait`` of a split or a move waits before the command gives up.
ADMIN_WAIT = 90.0
#: A server kept down for replacement is started again if the controller has not
#: replaced it this long after ``--replace-after`` (a finding).
REPLACE_GRACE = 60.0


def crash(nem: ClusterNemesis, healthy: Healthy, tag: str = "") -> Active:
    """SIGKILL one server (or, when all is calm, every server) and restart it on its data."""
    variants = ["one", "all"] if nem.whole(healthy) and not tag else ["one"]
    every = nem.pick("crash-restart", healthy, variants) == "all"
    victims, what = pick_victims(nem, "crash-restart", healthy, every)
    for n in victims:
        n.proc.kill()
        n.state = "down"
    return restart_later(nem, "crash-restart", victims, every, f"{tag}crash {what}")


def admin(nem: ClusterNemesis, kind: str, label: str, verb: str, *args: str) -> Active:
    """``kvtwist-admin cluster VERB ... --wait`` in the background, as a fault in progress."""
    wait = ["--wait", "--wait-timeout", f"{ADMIN_WAIT:g}"]
    proc = nem.cluster.spawn_admin(verb, *args, *wait)
    started = time.monotonic()
    nem.w.event(kind, label, args=list(args))

    def poll(now: float) -> bool:
        return proc.poll() is not None

    def finish() -> None:
        try:
            out, _ = proc.communicate(timeout=ADMIN_WAIT + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        said = " ".join((out or "").split())[-300:]
        seconds = time.monotonic() - started
        outcome = "done" if proc.returncode == 0 else f"exit {proc.returncode}"
        nem.admin_results.append(
            {"kind": kind, "args": list(args), "status": proc.returncode, "said": said}
        )
        nem.w.event(
            f"{kind}-done",
            f"{label}: {outcome} in {seconds:.1f}s: {said}",
            status=proc.returncode,
            seconds=round(seconds, 3),
        )

    return Active(kind, [], False, poll=poll, finish=finish)


def split(nem: ClusterNemesis, healthy: Healthy) -> Active | None:
    """``cluster split`` of a random shard at a workload key inside it."""
    choices = nem.split_choices()
    if not choices:
        return None
    chain, keys = nem.rng.choice(choices)
    at = nem.rng.choice(keys).decode()
    return admin(nem, "split", f"split {chain} at {at}", "split", chain, at)


def move(nem: ClusterNemesis, healthy: Healthy) -> Active | None:
    """``cluster move`` of a random whole chain from one member to a server outside it."""
    choices = nem.move_choices(nem.fine)
    if not choices:
        return None
    chain, members, targets = nem.rng.choice(choices)
    source, target = nem.rng.choice(members), nem.rng.choice(targets)
    return admin(
        nem, "move", f"move {chain} from {source} to {target}",
        "move", chain, "--to", target, "--from", source,
    )


def replace(nem: ClusterNemesis, healthy: Healthy) -> Active:
    """SIGKILL a server and keep it down past ``--replace-after``, until the map names it
    in no chain (the controller replaced it); then start it again on its data."""
    _, _, node = nem.member("replace", healthy)
    node.proc.kill()
    node.state = "down"
    after = float(nem.cluster.args.replace_after)
    started = time.monotonic()
    nem.w.event(
        "replace",
        f"kill {node.label}, kept down until the controller replaces it "
        f"(--replace-after {after:g}s)",
        node=node.label,
    )
    state: dict[str, Any] = {"looked": 0.0}

    def back(label: str) -> None:
        if node.state == "down":
            nem.w.restart_node(node)
            node.state = "running"
        nem.w.event("restart", label, node=node.label)

    def poll(now: float) -> bool:
        if now - state["looked"] < 1.0:
            return False
        state["looked"] = now
        m = nem.cluster.snapshot().map
        if m is not None and not any(node.label in p.members for p in m.chains.values()):
            back(f"{node.label} replaced in every chain after {now - started:.1f}s; restart it")
            return True
        if now > started + after + REPLACE_GRACE:
            nem.not_replaced.append(f"{node.label} (down {now - started:.0f}s)")
            back(f"{node.label} NOT REPLACED after {now - started:.0f}s; restart it")
            return True
        return False

    def finish() -> None:
        if node.state == "down":
            back(f"restart {node.label} (the campaign ends)")

    return Active("replace", [node], False, poll=poll, finish=finish)
