"""The reactor watchdog, driven by hand: a fake clock for the thread, a memory reactor."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.watchdog import ReactorWatchdog


class WatchdogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = 0.0
        self.reactor = MemoryReactorClock()
        self.events: list[str] = []
        self.dog = ReactorWatchdog(
            self.reactor,
            5.0,
            lambda: self.events.append("stall"),
            lambda: self.events.append("resume"),
            now=lambda: self.t,
        )
        self.dog._loop.start(self.dog.interval, now=True)  # the reactor side only
        self.addCleanup(self.dog.stop)

    def turn(self, seconds: float) -> None:
        """The reactor runs for ``seconds``, stamping as it goes; the thread checks."""
        step = self.dog.interval
        for _ in range(int(seconds / step)):
            self.t += step
            self.reactor.advance(step)
            self.assertFalse(self.dog.check())

    def test_turning_reactor_keeps_session(self) -> None:
        """A reactor that turns never trips the watchdog."""
        self.turn(60)
        self.assertEqual(self.events, [])

    def test_stall_closes_session_once_and_resume_reopens(self) -> None:
        """No stamp for longer than the limit: one stall; the next stamp: one resume."""
        self.turn(5)
        self.t += 5.5  # the reactor hangs
        self.assertTrue(self.dog.check())
        self.t += 10
        self.assertFalse(self.dog.check())
        self.assertEqual(self.events, ["stall"])
        self.turn(5)
        self.assertEqual(self.events, ["stall", "resume"])

    def test_short_pause_tolerated(self) -> None:
        """A pause shorter than the limit trips nothing."""
        self.turn(2)
        self.t += 4.9
        self.assertFalse(self.dog.check())
        self.turn(2)
        self.assertEqual(self.events, [])

    def test_resume_waits_for_the_session_to_be_closed(self) -> None:
        """A reactor that turns again while the session is being closed reopens it only
        after the close: otherwise the close would win and the node stay out for ever."""
        import threading

        closing = threading.Event()
        closed = threading.Event()
        order: list[str] = []

        def stall() -> None:
            closing.set()
            closed.wait(5)
            order.append("closed")

        dog = ReactorWatchdog(
            self.reactor, 5.0, stall, lambda: order.append("reopened"), now=lambda: self.t
        )
        self.t = 10.0
        checker = threading.Thread(target=dog.check)
        checker.start()
        self.assertTrue(closing.wait(5))
        stamper = threading.Thread(target=dog.stamp)
        stamper.start()
        stamper.join(0.2)
        self.assertTrue(stamper.is_alive(), "the reactor reopened during the close")
        closed.set()
        checker.join(5)
        stamper.join(5)
        self.assertEqual(order, ["closed", "reopened"])
