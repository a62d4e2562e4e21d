"""The threads behind the store: order of writes, failures, results on the reactor thread."""

from __future__ import annotations

import threading

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from kvtwist.store import ThreadRunner


class ThreadRunnerTests(TestCase):
    def setUp(self) -> None:
        self.runner = ThreadRunner(reactor, threads=2)
        self.addCleanup(self.runner.stop)

    @defer.inlineCallbacks
    def test_writes_keep_their_order_off_the_reactor_thread(self) -> defer.Generator:
        """Writes run one at a time in the order given, on a thread that is not the reactor's."""
        seen: list[tuple[int, str]] = []

        def job(i: int) -> int:
            seen.append((i, threading.current_thread().name))
            return i * i

        results = yield defer.gatherResults(
            [self.runner.write(lambda i=i: job(i)) for i in range(200)]
        )
        self.assertEqual(results, [i * i for i in range(200)])
        self.assertEqual([i for i, _ in seen], list(range(200)))
        self.assertEqual({name for _, name in seen}, {"kvtwist-writer"})

    @defer.inlineCallbacks
    def test_results_arrive_on_the_reactor_thread(self) -> defer.Generator:
        """Callbacks run on the reactor thread, so protocol code never runs on a worker."""
        where: list[threading.Thread] = []
        d = self.runner.read(lambda: 1)
        d.addCallback(lambda _: where.append(threading.current_thread()))
        yield d
        self.assertEqual(where, [threading.main_thread()])

    @defer.inlineCallbacks
    def test_a_failing_job_fails_only_its_own_deferred(self) -> defer.Generator:
        """A job that raises errbacks with its exception; the jobs around it still succeed."""

        def boom() -> None:
            raise ValueError("bad job")

        first = self.runner.read(lambda: "a")
        bad = self.runner.read(boom)
        last = self.runner.read(lambda: "b")
        self.assertEqual((yield first), "a")
        yield self.assertFailure(bad, ValueError)
        self.assertEqual((yield last), "b")

    def test_stop_finishes_queued_writes(self) -> None:
        """Stopping lets the writer finish what it was given (a journal append is not cut)."""
        done: list[int] = []
        for i in range(50):
            self.runner.write(lambda i=i: done.append(i))
        self.runner.stop()
        self.assertEqual(done, list(range(50)))
