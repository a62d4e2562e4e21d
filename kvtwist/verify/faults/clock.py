"""The clock step: one member's wall clock moved, and moved back (kvtwist.verify.wallclock)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from kvtwist.verify import wallclock
from kvtwist.verify.faults.base import Active, Healthy, Node

if TYPE_CHECKING:
    from kvtwist.verify.nemesis import Nemesis

#: clock-step: the step's size in seconds (log-uniform), and how long it holds.
STEP_SECONDS = (2.0, 300.0)
STEP_SESSIONS = (1.0, 2.0)


def clock_step(nem: Nemesis, healthy: Healthy, tag: str = "") -> Active:
    role, _, node = nem.member("clock-step", healthy)
    forward = nem.pick("clock-step", healthy, ["forward", "back"]) == "forward"
    size = math.exp(nem.rng.uniform(*map(math.log, STEP_SECONDS)))
    offset = size if forward else -size
    hold = nem.sessions(STEP_SESSIONS)
    set_clock(node, offset)
    nem.w.event(
        "clock-step",
        f"{tag}step the clock of {role} {node.label} {offset:+.1f}s for {hold:.1f}s",
        node=node.label,
        role=role,
        offset=round(offset, 3),
        seconds=round(hold, 3),
    )

    def step_back() -> None:
        set_clock(node, 0.0)
        nem.w.event("clock-step-back", f"step the clock of {node.label} back to true time")

    return Active("clock-step", [node], False, end_at=time.monotonic() + hold, finish=step_back)


def set_clock(node: Node, offset: float) -> None:
    """Step the node's wall clock to ``offset`` seconds from true time (verify.wallclock)."""
    wallclock.write_offset(node.proc.dir / "clock", offset)
