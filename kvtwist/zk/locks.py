"""kazoo's Lock behind a Deferred: the chain's join lock.

Waiting for a lock can take long, so it happens on a thread of its own, not
the reactor's pool, where it would starve every other blocking call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import LockTimeout
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from kvtwist.membership import sibling_path
from kvtwist.zk.session import Session

__all__ = ["Locks"]


class Locks:
    """The locks beside ``root``, and the acquisitions still waiting."""

    def __init__(self, session: Session, root: str) -> None:
        self._session = session
        self.root = root
        self._pending: set[Any] = set()

    def lock_path(self, path_suffix: str = "join") -> str:
        """Where lock(path_suffix) lives: a sibling of the root."""
        return sibling_path(self.root, path_suffix)

    def lock(
        self, path_suffix: str = "join", timeout: float | None = None
    ) -> Deferred[Callable[[], Deferred[None]]]:
        """See :meth:`kvtwist.zk.ZooKeeper.lock`."""
        path = self.lock_path(path_suffix)
        lock = self._session.client.Lock(path)
        d: Deferred[Callable[[], Deferred[None]]] = Deferred(lambda _: lock.cancel())
        self._pending.add(lock)
        thread = threading.Thread(
            target=self._acquire_in_thread,
            args=(lock, timeout, d),
            name=f"kvtwist-zk-lock {path}",
            daemon=True,
        )
        thread.start()
        return d

    def cancel_all(self) -> None:
        """Abandon every acquisition still waiting (the session is closing): they fail."""
        for lock in list(self._pending):
            lock.cancel()

    def _acquire_in_thread(self, lock: Any, timeout: float | None, d: Deferred[Any]) -> None:
        result: Failure | None
        try:
            if not lock.acquire(blocking=True, timeout=timeout):
                raise LockTimeout(f"lock {lock.path} not acquired within {timeout} s")
        except BaseException:
            result = Failure()
        else:
            result = None
        self._session.reactor.callFromThread(self._lock_done, lock, d, result)

    def _lock_done(self, lock: Any, d: Deferred[Any], failure: Failure | None) -> None:
        self._pending.discard(lock)
        call = self._session.call
        if d.called:  # cancelled while we waited
            if failure is None:
                call(lock.release).addErrback(lambda _: None)
            return
        if failure is not None:
            d.errback(failure)
        else:
            released: Deferred[None] | None = None

            def release() -> Deferred[None]:
                nonlocal released
                if released is None:
                    released = call(lock.release).addCallback(lambda _: None)
                    return released
                return succeed(None)

            d.callback(release)
