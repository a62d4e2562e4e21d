"""Log helpers shared by the node, its listening port and the chain."""

from __future__ import annotations

import time
from collections.abc import Callable


class LogLimiter:
    """At most one line per ``interval`` seconds, with a count of those left out.

    A stranger hammering a node with forged chain messages must not fill its log.
    """

    def __init__(self, interval: float = 10.0, now: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.now = now
        self._last = -interval
        self.suppressed = 0

    def allow(self) -> int | None:
        """The number of lines left out since the last one, or None to stay quiet."""
        t = self.now()
        if t - self._last < self.interval:
            self.suppressed += 1
            return None
        self._last = t
        n, self.suppressed = self.suppressed, 0
        return n
