"""Keeping kazoo's connection retries from burying a node's own log lines.

While ZooKeeper is down kazoo logs a warning for every attempt to every host
(``Connection dropped: ...``, ``Connection time-out: ...``, ``Transition to
CONNECTING``), a score of lines in a few seconds, and the node's one useful
line (``cannot reach ZooKeeper ... retrying in 2.0s``) is lost among them.
:class:`RepeatFilter` lets the first line of each kind through, then at most
one per interval, which says how many like it were left out meanwhile.  Every
other kazoo line passes untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from kvtwist.logs import LogLimiter

#: The loggers kazoo's connection machinery writes to (its connection handler
#: logs through the client's logger, ``kazoo.client``).
KAZOO_LOGGERS = ("kazoo.client", "kazoo.protocol.connection", "kazoo.retry")

#: How kazoo's repeated connection lines begin: one limit per kind.
REPEATED = (
    "Connection dropped",
    "Connection time-out",
    "Transition to CONNECTING",
    "Cannot resolve",
    "Failed connecting to Zookeeper",
)

#: Seconds between two lines of one kind.
INTERVAL = 30.0


class RepeatFilter(logging.Filter):
    """Rate-limits kazoo's repeated connection lines, by kind, with a count of the rest.

    kazoo logs from its connection thread, so the limiters are shared under a lock.
    """

    def __init__(
        self, interval: float = INTERVAL, now: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self.now = now
        self._limiters: dict[str, LogLimiter] = {}
        self._lock = threading.Lock()

    @staticmethod
    def kind(record: logging.LogRecord) -> str | None:
        """Which repeated line ``record`` is, or None for any other line."""
        text = str(record.msg)
        return next((k for k in REPEATED if text.startswith(k)), None)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = self.kind(record)
        if kind is None:
            return True
        with self._lock:
            limiter = self._limiters.get(kind)
            if limiter is None:
                limiter = self._limiters[kind] = LogLimiter(self.interval, self.now)
            left_out = limiter.allow()
        if left_out is None:
            return False
        if left_out:
            # appended to the format, not the arguments: a count has no '%' in it
            record.msg = f"{record.msg} ({left_out} more like it in the last {self.interval:g}s)"
        return True


def limit_repeats(
    interval: float = INTERVAL, names: Iterable[str] = KAZOO_LOGGERS
) -> RepeatFilter:
    """Put one RepeatFilter on kazoo's loggers (again: replaces the one there)."""
    limiter = RepeatFilter(interval)
    for name in names:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RepeatFilter)]:
            logger.removeFilter(old)
        logger.addFilter(limiter)
    return limiter


def silence() -> None:
    """For a command-line tool that reports a failed connection itself: no kazoo lines."""
    logger = logging.getLogger("kazoo")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
