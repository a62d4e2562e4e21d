"""The read lease's probes: the round-trips that prove our session, and our znode, alive.

The arithmetic is :class:`kvtwist.lease.Lease`; this sends the probes on a
timer and after every reconnect, and checks that each was answered in the
session it was sent in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from kvtwist import clock
from kvtwist.lease import LEASE_FRACTION, PROBES_PER_SESSION, Lease
from kvtwist.zk.session import Session

__all__ = ["LeaseProbes"]

_log = Logger(namespace="kvtwist.zk")  # one namespace for the whole adapter


class LeaseProbes:
    """The lease of one session, renewed by probes every fraction of its timeout."""

    def __init__(self, session: Session, root: str) -> None:
        self._session = session
        self.root = root
        self.lease = Lease(self.lease_length)
        # our member znode, once registered: the lease holds only while it exists
        self._path: str | None = None
        self._gone_callbacks: list[Callable[[str], None]] = []
        self._in_flight = False
        self._timer: Any = None
        session.when_negotiated(self._negotiated)

    def _negotiated(self) -> None:
        # on kazoo's connection thread: one plain assignment, read on the reactor
        self.lease.length = self.lease_length

    @property
    def lease_length(self) -> float:
        """Seconds a lease lasts past the send time of the probe that renewed it."""
        return self._session.effective_session_timeout * LEASE_FRACTION

    @property
    def expires_at(self) -> float | None:
        """``clock.now()`` at which the lease ends; None without a lease."""
        return self.lease.expires_at if self._held() else None

    def _held(self) -> bool:
        """Whether the lease was renewed in the session kazoo has now."""
        return self.lease.held_by(self._session.session_id())

    def valid(self) -> bool:
        """See :meth:`kvtwist.zk.ZooKeeper.lease_valid`."""
        return self._held() and self._session.client.connected and self.lease.valid(clock.now())

    def member(self, name: str | None) -> None:
        """Tie the lease to our member znode ``name`` from now on (None: the session only)."""
        self._path = f"{self.root}/{name}" if name else None

    def on_gone(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(name)`` on the reactor when a probe finds our member znode gone."""
        self._gone_callbacks.append(callback)

    def start(self) -> None:
        """Probe now and every effective_session_timeout / PROBES_PER_SESSION seconds.

        A self-rescheduling callLater rather than a LoopingCall, so the period
        follows the negotiated timeout once the server has granted one.
        """
        self._timer = None
        if self._session.stopped:
            return
        self.probe()
        self._timer = self._session.reactor.callLater(
            self._session.effective_session_timeout / PROBES_PER_SESSION, self.start
        )

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def probe(self) -> None:
        """Send one cheap round-trip; on success the lease counts from its send time."""
        if self._session.stopped or self._in_flight:
            return
        session_id = self._session.session_id()
        if session_id is None:
            return
        path = self._path
        sent = clock.now()  # before the request leaves: conservative
        self._in_flight = True
        d = self._session.call(self._probe_in_thread, session_id, path)

        def answered(outcome: str) -> None:
            if outcome == "ok":
                self.lease.renew(session_id, sent)
            elif outcome == "gone" and path == self._path and path is not None:
                self.lease.void()
                name = path.rsplit("/", 1)[1]
                for callback in list(self._gone_callbacks):
                    try:
                        callback(name)
                    except Exception:
                        _log.failure("znode-gone callback {callback!r} failed", callback=callback)

        def done(result: object) -> None:
            self._in_flight = False

        d.addCallbacks(answered, lambda _: None)
        d.addBoth(done)

    def _probe_in_thread(self, session_id: int, path: str | None) -> str:
        """"ok", "gone" (our znode was deleted) or "other" (the session changed meanwhile)."""
        client = self._session.client
        if path is None:
            client.exists(self.root)
            found = True
        else:
            # a follower may lag the leader: sync first (it flushes the whole
            # session's channel), so that a deletion committed before this
            # probe left is seen by it
            client.sync(self.root)
            found = client.exists(path) is not None
        # Only an answer within the same session counts: a request that was
        # queued across a session loss may be answered by the new session.
        if self._session.session_id() != session_id:
            return "other"
        return "ok" if found else "gone"
