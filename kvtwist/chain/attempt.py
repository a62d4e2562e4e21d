"""Attempts: work that takes round trips to ZooKeeper, with a life of its own.

A head claim, a fix of the chain record and a join each take several round
trips, and the node may be fenced, or start over, before the answers come.
Each such try is an :class:`Attempt`; the node's :class:`Lifecycle` ends every
live attempt when it starts over, so an answer that comes late finds its
attempt over and does nothing.  An attempt also says whether one of its kind
is running (no second claim while one is on the way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

_R = TypeVar("_R")


class Era:
    """The time between two restarts of a node: over once it starts over."""

    __slots__ = ("live",)

    def __init__(self) -> None:
        self.live = True


class Attempt:
    """One try at ``what``; over when it ends, or when its node's era is over."""

    __slots__ = ("what", "_era", "_ended")

    def __init__(self, what: str, era: Era | None = None) -> None:
        self.what = what
        self._era = era
        self._ended = False

    def __repr__(self) -> str:
        return f"<Attempt {self.what} {'live' if self.live else 'over'}>"

    @property
    def live(self) -> bool:
        return not self._ended and (self._era is None or self._era.live)

    def end(self) -> None:
        self._ended = True

    def guard(self, f: Callable[..., _R]) -> Callable[..., _R | None]:
        """``f``, run only while this attempt is live."""

        def guarded(*args: Any, **kwargs: Any) -> _R | None:
            return f(*args, **kwargs) if self.live else None

        return guarded


def running(attempt: Attempt | None) -> bool:
    return attempt is not None and attempt.live
