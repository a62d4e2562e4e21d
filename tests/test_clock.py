"""The node's timers run on a clock that wall-clock steps do not move (kvtwist.clock)."""

from __future__ import annotations

import time
from typing import Any
from unittest import mock

from twisted.internet.selectreactor import SelectReactor
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import clock
from kvtwist.watchdog import ReactorWatchdog


def _wall_clock_stepped(*_: Any) -> float:
    raise AssertionError("the wall clock was read")


class SteadyClockTests(SynchronousTestCase):
    def reactor(self) -> SelectReactor:
        r = SelectReactor()  # a real reactor class, never run: Twisted's own scheduling

        def close() -> None:
            for call in r.getDelayedCalls():
                call.cancel()
            r.removeAll()
            r.waker.connectionLost(None)

        self.addCleanup(close)
        return r

    def test_now_neither_steps_nor_stops(self) -> None:
        """The steady clock is CLOCK_BOOTTIME on Linux (counts through a suspend) and
        never goes back."""
        if hasattr(time, "CLOCK_BOOTTIME"):
            self.assertEqual(clock.CLOCK_NAME, "CLOCK_BOOTTIME")
        a = clock.now()
        b = clock.now()
        self.assertGreaterEqual(b, a)
        self.assertLess(abs(b - a - 0.0), 0.5)

    def test_reactor_schedules_on_the_steady_clock(self) -> None:
        """After use_steady_clock, a real reactor's timers, those scheduled before the
        switch included, are due by the steady clock and never read the wall clock."""
        r = self.reactor()
        early = r.callLater(10, lambda: None)
        clock.use_steady_clock(r)
        self.assertIs(r.seconds, clock.now)
        self.assertLess(abs(early.getTime() - clock.now() - 10), 1)
        fired: list[str] = []
        soon = r.callLater(0, fired.append, "soon")
        later = r.callLater(5, fired.append, "later")
        with mock.patch("time.time", _wall_clock_stepped):
            timeout = r.timeout()
            r.runUntilCurrent()
            # a DelayedCall is reset on the same clock
            later.reset(6)
        self.assertEqual(fired, ["soon"])
        self.assertFalse(soon.active())
        self.assertLess(abs(later.getTime() - clock.now() - 6), 1)
        assert timeout is not None
        self.assertLessEqual(timeout, 1.0)

    def test_use_steady_clock_twice_changes_nothing(self) -> None:
        """A second call keeps what is scheduled where it was."""
        r = self.reactor()
        clock.use_steady_clock(r)
        call = r.callLater(3, lambda: None)
        due = call.getTime()
        clock.use_steady_clock(r)
        self.assertEqual(call.getTime(), due)

    def test_watchdog_judges_on_the_steady_clock(self) -> None:
        """The watchdog stamps and judges stalls on the steady clock by default, so a
        wall-clock step neither trips it nor hides a stall."""
        dog = ReactorWatchdog(self.reactor(), 1.0, lambda: None, lambda: None)
        self.assertIs(dog.now, clock.now)
        with mock.patch("time.time", _wall_clock_stepped):
            self.assertFalse(dog.check())
