"""What a chain member asks of its coordinator (ZooKeeper), as a typed interface.

The replica (:mod:`kvtwist.chain`) and the node's services (:mod:`kvtwist.tap`)
use exactly this and nothing else, so anything that provides it can stand in
for ZooKeeper: the kazoo adapter :class:`kvtwist.zk.ZooKeeper` in a node, an
in-memory fake in the unit tests.  Every method is called on the reactor
thread (``drop_session`` excepted) and every callback runs there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred

from kvtwist.membership import Membership

__all__ = ["Coordinator", "Release"]

#: Gives a lock back; calling it again does nothing.
Release = Callable[[], Deferred[None]]


class Coordinator(Protocol):
    """Chain membership, the chain record, the join lock and the read lease."""

    # -- the session ---------------------------------------------------------

    @property
    def hosts(self) -> str:
        """Where the coordinator is, for log lines."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the session has a live connection now."""
        ...

    @property
    def effective_session_timeout(self) -> float:
        """The session timeout in force (the smaller of the one asked for and the one granted)."""
        ...

    def start(self, timeout: float = 15.0) -> Deferred[None]:
        """Connect; fails if the coordinator cannot be reached within ``timeout`` seconds."""
        ...

    def stop(self) -> Deferred[None]:
        """Close the session cleanly: our ephemeral znodes go at once."""
        ...

    def drop_session(self) -> None:
        """Close the session now, from any thread (a reactor that stalled)."""
        ...

    def resume_session(self) -> Deferred[None]:
        """Open a new session after drop_session, for as long as it takes."""
        ...

    def on_state(self, callback: Callable[[str], None]) -> None:
        """Call ``callback("connected" | "suspended" | "lost")`` on session events."""
        ...

    # -- membership ----------------------------------------------------------

    def members(self) -> Deferred[Membership]:
        """The current membership, read once."""
        ...

    def watch_members(self, callback: Callable[[Membership], None]) -> None:
        """Call ``callback(membership)`` whenever the membership changes (never going back)."""
        ...

    def register(self, address: str, record_version: int | None = None) -> Deferred[str]:
        """Join as the newest member (the tail); fires with our znode's name.

        With ``record_version``, only while the chain record still has that version.
        """
        ...

    def unregister(self, name: str) -> Deferred[None]:
        """Delete our member znode ``name`` (already gone is fine)."""
        ...

    def remove_member(self, name: str) -> Deferred[None]:
        """Delete another member's znode (a successor we cannot reach)."""
        ...

    # -- the chain record ----------------------------------------------------

    def read_record(self) -> Deferred[tuple[bytes | None, int]]:
        """The chain record and its version; ``(None, -1)`` when there is none."""
        ...

    def write_record(self, data: bytes, version: int) -> Deferred[bool]:
        """Compare-and-set the record (version -1 creates it); False if it changed first."""
        ...

    def bump_record(self) -> Deferred[int]:
        """Move the record's version on (registrations naming the old one fail); the new one."""
        ...

    # -- waiting for the last configuration ----------------------------------

    def advertise_waiting(self, node_id: str, data: bytes) -> Deferred[None]:
        """Say, for as long as the session lasts, that this node waits to restart the chain."""
        ...

    def withdraw_waiting(self, node_id: str) -> Deferred[None]:
        """No longer waiting."""
        ...

    # -- the join lock -------------------------------------------------------

    def lock(self, path_suffix: str = "join", timeout: float | None = None) -> Deferred[Release]:
        """Take the lock ``path_suffix`` of this chain; fires with its release."""
        ...

    # -- the read lease ------------------------------------------------------

    def lease_valid(self) -> bool:
        """Whether our session, and our member znode once named, are surely still there."""
        ...

    def lease_member(self, name: str | None) -> None:
        """Tie the lease to our member znode ``name`` from now on (None: the session only)."""
        ...

    def on_gone(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(name)`` when the lease finds our member znode gone."""
        ...
