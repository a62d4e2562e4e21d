"""A node whose reactor stops turning must not keep its ZooKeeper session.

kazoo answers ZooKeeper's pings from its own thread, so a node whose reactor
hangs (a blocking call, a livelock) would stay a member for ever while
serving nothing: every write of the chain would stall behind it.  The reactor
stamps the time several times per allowed stall; a daemon thread that sees
no stamp for longer than that calls ``on_stall`` (which closes the session,
so the node's znode goes and the chain reconfigures without it).  When the
reactor turns again, ``on_resume`` runs on it (to open a new session; the
node then rejoins with a fresh copy).

Stamps are taken and judged on :func:`kvtwist.clock.now`, and the stamping
LoopingCall runs on the reactor's clock, which the node puts on that same
clock (:func:`kvtwist.clock.use_steady_clock`): a step of the wall clock in
either direction neither trips the watchdog nor hides a stall.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kvtwist import clock

log = Logger(namespace="kvtwist.node")


class ReactorWatchdog:
    def __init__(
        self,
        reactor: Any,
        limit: float,
        on_stall: Callable[[], None],
        on_resume: Callable[[], None],
        now: Callable[[], float] = clock.now,
    ) -> None:
        self.reactor = reactor
        self.limit = limit
        self.interval = limit / 5
        self.on_stall = on_stall
        self.on_resume = on_resume
        self.now = now
        self.last_stamp = now()
        self.tripped = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop = LoopingCall(self.stamp)
        self._loop.clock = reactor
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.last_stamp = self.now()
        self._loop.start(self.interval, now=True)
        self._thread = threading.Thread(target=self._run, name="kvtwist-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._loop.running:
            self._loop.stop()

    def stamp(self) -> None:
        """On the reactor: it turns."""
        with self._lock:
            self.last_stamp = self.now()
            resumed, self.tripped = self.tripped, False
        if resumed:
            log.warn("reactor turning again: opening a new ZooKeeper session")
            self.on_resume()

    def check(self) -> bool:
        """On the watchdog thread: trip once per stall; True when it trips now."""
        with self._lock:
            stalled = self.now() - self.last_stamp
            if self.tripped or stalled <= self.limit:
                return False
            self.tripped = True
            log.error(
                "reactor stalled for {s:.1f}s: closing the ZooKeeper session so the chain "
                "goes on without this node",
                s=stalled,
            )
            # under the lock: the reactor, turning again, must not reopen the
            # session before this has closed it
            self.on_stall()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval / 2):
            try:
                self.check()
            except Exception:
                log.failure("reactor watchdog failed")
