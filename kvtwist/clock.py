"""The one clock that every timer deciding safety or liveness runs on.

A node measures durations only: how long its lease lasts, how long a link has
been silent, when to retry.  The wall clock (``CLOCK_REALTIME``, Python's
``time.time``, which Twisted's reactors use by default) is wrong for that:
an operator or NTP can step it by minutes in either direction, which would
fire every timer at once or hold them all back.  ``CLOCK_MONOTONIC`` never
steps, but on Linux it stops while the machine is suspended, so a node that
wakes after an hour would think a second had passed while ZooKeeper expired
its session and the chain went on without it.  ``CLOCK_BOOTTIME`` neither
steps nor stops during a suspend: it is the clock used here where the
platform has it, and ``CLOCK_MONOTONIC`` elsewhere.

:func:`use_steady_clock` puts a reactor on this clock, so that every
``callLater`` and ``LoopingCall`` of the node (lease probes, heartbeats,
back-offs, the watchdog's stamps) is immune to wall-clock steps.  Wall time
is still what log lines show (Twisted's logger reads ``time.time`` itself).
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["now", "use_steady_clock", "CLOCK_NAME"]

if hasattr(time, "CLOCK_BOOTTIME"):
    _CLOCK_ID = time.CLOCK_BOOTTIME
    CLOCK_NAME = "CLOCK_BOOTTIME"

    def now() -> float:
        """Seconds on a clock that never steps and keeps counting through a suspend."""
        return time.clock_gettime(_CLOCK_ID)

else:  # pragma: no cover - not Linux
    CLOCK_NAME = "CLOCK_MONOTONIC"
    now = time.monotonic


def use_steady_clock(reactor: Any) -> None:
    """Make ``reactor`` schedule on :func:`now` instead of the wall clock.

    Call it before the reactor runs.  Calls scheduled already keep the time
    left until they fire.  Twisted reads the time through ``reactor.seconds``
    only (``IReactorTime``), and every DelayedCall keeps the function it was
    created with, so both are moved here, in one place: a test checks that
    Twisted still works this way.
    """
    if getattr(reactor, "seconds", None) is now:
        return
    old = reactor.seconds
    pending = [(call, call.getTime() - old()) for call in reactor.getDelayedCalls()]
    reactor.seconds = now
    for call, left in pending:
        call.seconds = now
        call.reset(max(0.0, left))
