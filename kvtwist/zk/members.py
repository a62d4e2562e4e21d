"""Reading the chain's membership, once or under a watch that never misses a change.

ZooKeeper watches are one-shot and kazoo fires and forgets them when the
connection drops, so the membership is re-read, and the watch re-armed, after
every watch event and every reconnect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kazoo.exceptions import KazooException, NoNodeError
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.membership import Member, Membership, parse_seq
from kvtwist.zk.session import Session

__all__ = ["MembershipWatch"]

_log = Logger(namespace="kvtwist.zk")  # one namespace for the whole adapter

# Re-reading a membership whose children keep vanishing mid-read gives up after
# this many attempts and returns what it has (a watch event follows anyway).
_MAX_READ_ATTEMPTS = 5
# Delay before retrying a failed membership read (e.g. while disconnected).
_REFRESH_RETRY_DELAY = 0.5


class _Watch:
    """A watch_members callback and the last Membership it was given."""

    __slots__ = ("callback", "last")

    def __init__(self, callback: Callable[[Membership], None]) -> None:
        self.callback = callback
        self.last: Membership | None = None


class MembershipWatch:
    """The members under ``root``; at most one watched read in flight."""

    def __init__(self, session: Session, root: str, create_root: bool) -> None:
        self._session = session
        self.root = root
        self.create_root = create_root
        self._watches: list[_Watch] = []
        self.membership: Membership | None = None  # the last one read by the watch
        self._refreshing = False
        self._refresh_again = False
        self._retry_call: Any = None

    def members(self) -> Deferred[Membership]:
        """Read the current Membership once (no watch)."""
        return self._session.call(self._read_members_once)

    def _read_members_once(self) -> Membership:
        try:
            return self._read_membership(None)
        except NoNodeError:
            if self.create_root:
                raise
            return Membership(config=-1, members=())  # a reader's root nobody made yet

    def _read_membership(self, watch: Callable[[Any], None] | None) -> Membership:
        """Blocking: children + cversion, then every member's data, consistently.

        If a child vanishes between the listing and its data read, the listing
        is stale, so it is re-read (a bounded number of times); if it keeps
        changing we return the latest partial view, and the watch (if any)
        delivers the settled one.
        """
        client = self._session.client
        for attempt in range(_MAX_READ_ATTEMPTS):
            children, stat = client.get_children(self.root, watch=watch, include_data=True)
            names = [name for name in children if parse_seq(name) >= 0]
            pending = [(name, client.get_async(f"{self.root}/{name}")) for name in names]
            members: list[Member] = []
            vanished = False
            for name, result in pending:
                try:
                    data, _stat = result.get()
                except NoNodeError:
                    vanished = True
                    continue
                members.append(Member.from_znode(name, data))
            if not vanished or attempt == _MAX_READ_ATTEMPTS - 1:
                members.sort(key=lambda m: (m.seq, m.name))
                return Membership(config=stat.cversion, members=tuple(members))
        raise AssertionError("unreachable")

    def _read_membership_watched(self) -> Membership:
        """Blocking: read with a child watch; if the root is gone, watch for it."""
        try:
            return self._read_membership(self._on_watch_event)
        except NoNodeError:
            if self._session.client.exists(self.root, watch=self._on_watch_event) is None:
                return Membership(config=-1, members=())
            return self._read_membership(self._on_watch_event)

    def _on_watch_event(self, event: Any) -> None:
        # On kazoo's event thread: hop to the reactor and do the work there.
        self._session.reactor.callFromThread(self.refresh)

    def watch(self, callback: Callable[[Membership], None]) -> None:
        """Call ``callback(membership)`` on the reactor whenever it changes.

        See :meth:`kvtwist.zk.ZooKeeper.watch_members`.
        """
        self._watches.append(_Watch(callback))
        self.refresh()  # never calls back synchronously

    def unwatch(self, callback: Callable[[Membership], None]) -> None:
        """No more calls of ``callback``; with no watcher left, no more reads."""
        self._watches = [w for w in self._watches if w.callback is not callback]

    def refresh(self) -> None:
        """Re-read under the watch (after an event, a reconnect or a failure)."""
        session = self._session
        if session.stopped or not session.started or not self._watches:
            return
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        self._refresh_again = False
        d = session.call(self._read_membership_watched)
        d.addCallbacks(self._deliver, self._refresh_failed)
        d.addBoth(self._refresh_done)

    def stop(self) -> None:
        """No more retries: the session is closing."""
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()

    def _deliver(self, membership: Membership) -> None:
        if self._session.stopped:
            return
        last = self.membership
        if last is not None and 0 <= membership.config < last.config:
            return  # never go back in time (see watch_members)
        self.membership = membership
        for watch in list(self._watches):
            if watch.last == membership:
                continue
            watch.last = membership
            try:
                watch.callback(membership)
            except Exception:
                _log.failure("membership callback {callback!r} failed", callback=watch.callback)

    def _refresh_failed(self, failure: Failure) -> None:
        if self._session.stopped:
            return
        if not failure.check(KazooException):
            _log.failure("reading the chain membership failed", failure)
        # Usually a connection loss: the "connected" event re-reads as well,
        # but retrying covers any failure that no state change will follow.
        if self._retry_call is None or not self._retry_call.active():
            self._retry_call = self._session.reactor.callLater(
                _REFRESH_RETRY_DELAY, self.refresh
            )

    def _refresh_done(self, _: object) -> None:
        self._refreshing = False
        if self._refresh_again:
            self.refresh()
