"""The join fault: a joiner's state transfer slowed through the proxy, and the joiner
or the tail serving it killed or paused in the middle of it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kvtwist.verify.faults.base import Active, Healthy, file_size, read_from
from kvtwist.verify.faults.signals import PAUSE_SESSIONS

if TYPE_CHECKING:
    from kvtwist.verify.nemesis import Nemesis

#: The joiner's state transfer runs at this many bytes a second through the proxy.
JOIN_RATE = 1 << 20
#: Give up on seeing a state transfer start after this long.
JOIN_WAIT = 30.0


def join_fault(nem: Nemesis, healthy: Healthy) -> Active:
    proxy = nem.w.proxy
    assert proxy is not None
    tail = healthy[-1][2]
    variant = nem.pick(
        "join-fault", healthy, ["kill joiner", "pause joiner", "kill tail", "pause tail"]
    )
    offset = file_size(tail.proc.logfile)
    joiner = nem.w.start_node()
    proxy.rule(tail.label, joiner.label, "slow", JOIN_RATE)
    nem.w.event("start", f"start {joiner.label} to join (transfer slowed)", node=joiner.label)
    started = time.monotonic()
    state: dict[str, Any] = {"due": None, "resume": None, "victim": None}
    a = Active("join-fault", [joiner, tail], True)

    def log_since() -> str:
        return read_from(tail.proc.logfile, offset)

    def poll(now: float) -> bool:
        if state["resume"] is not None:
            return bool(now >= state["resume"])
        if state["due"] is None:
            if "state transfer to" in log_since():
                state["due"] = now + nem.rng.uniform(0.2, 1.5)
            elif now - started > JOIN_WAIT:
                nem.w.event("join-fault", f"join-fault: no state transfer from {tail.label}")
                return True
            return False
        if now < state["due"]:
            return False
        # the tail has handed the snapshot to its transport long before the joiner,
        # behind the slowed proxy, has it all: the joiner's log tells
        mid = "joining: state loaded" not in read_from(joiner.proc.logfile, 0)
        action, who = variant.split()
        victim = joiner if who == "joiner" else tail
        state["victim"] = victim
        proxy.rule(tail.label, joiner.label, None)
        if action == "kill":
            victim.proc.kill()
            victim.state = "dead"
            nem.w.replace_later()
            state["resume"] = now
        else:
            victim.proc.pause()
            victim.state = "paused"
            state["resume"] = now + nem.sessions(PAUSE_SESSIONS)
        nem.w.event(
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
            nem.w.event("resume", f"resume {victim.label}", node=victim.label)

    a.poll, a.finish = poll, finish
    return a
