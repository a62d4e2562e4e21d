"""The fencing lease's arithmetic, apart from ZooKeeper so that it can be tested alone.

ZooKeeper cannot expire a session earlier than its timeout after a request it
received.  So a round-trip (a *probe*) answered within one session proves the
session alive until the probe's send time plus the timeout; the lease claims
only :data:`LEASE_FRACTION` of that, the rest being margin for clock-rate
skew between us and the server and for scheduling delays (docs/protocol.md,
"Timing").  The adapter (:mod:`kvtwist.zk.probes`) sends the probes and checks that
the session they were answered in is still its own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LEASE_FRACTION", "PROBES_PER_SESSION", "Lease"]

#: The lease lasts this fraction of the session timeout past the send time of
#: the last acknowledged probe.
LEASE_FRACTION = 0.6
#: Lease probes run this many times per session timeout.
PROBES_PER_SESSION = 5


@dataclass
class Lease:
    """The lease of one ZooKeeper client: which session renewed it last, when, for how long.

    Times are ``kvtwist.clock.now()`` readings (a clock that does not step).
    """

    length: float
    """Seconds the lease lasts past ``sent``: LEASE_FRACTION of the session timeout."""
    session_id: int | None = None
    """The session the last renewing probe was answered in; None without a lease."""
    sent: float | None = None
    """When that probe was sent (before it left: the conservative end)."""

    @property
    def expires_at(self) -> float | None:
        """When the lease ends; None without a lease."""
        return None if self.sent is None else self.sent + self.length

    def valid(self, now: float) -> bool:
        """Whether the lease still holds at ``now``."""
        expires = self.expires_at
        return expires is not None and now < expires

    def held_by(self, session_id: int | None) -> bool:
        """Whether the lease was renewed in ``session_id`` (a lease never outlives its session)."""
        return self.sent is not None and session_id is not None and session_id == self.session_id

    def renew(self, session_id: int, sent: float) -> None:
        """A probe sent at ``sent`` was answered in ``session_id``.

        Within one session the lease counts from the latest send time answered,
        so a late answer to an older probe never shortens it; an answer in a
        new session starts the lease afresh from its own probe.
        """
        if self.session_id != session_id or self.sent is None or self.sent < sent:
            self.session_id, self.sent = session_id, sent

    def void(self) -> None:
        """No lease until the next answered probe (our member znode is gone)."""
        self.session_id = self.sent = None
