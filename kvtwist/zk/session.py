"""The ZooKeeper session: one KazooClient, opened, closed, dropped and reopened from the reactor.

The other pieces of the adapter reach ZooKeeper only through this: blocking
calls go to the reactor's thread pool (:meth:`Session.call`), and session
events arrive on the reactor, first to the adapter's own hooks, then to
whoever asked with :meth:`Session.on_state`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.zk.acl import digest_acl

__all__ = [
    "RESUME_FIRST_DELAY",
    "RESUME_MAX_DELAY",
    "RESUME_TIMEOUT",
    "Session",
    "hook_negotiated_timeout",
]

_log = Logger(namespace="kvtwist.zk")  # one namespace for the whole adapter

_T = TypeVar("_T")

#: Reopening a session after the watchdog closed it: kazoo's own timeout for
#: one attempt, and the back-off between attempts.
RESUME_TIMEOUT = 15.0
RESUME_FIRST_DELAY = 0.5
RESUME_MAX_DELAY = 10.0

_STATE_NAMES = {
    KazooState.CONNECTED: "connected",
    KazooState.SUSPENDED: "suspended",
    KazooState.LOST: "lost",
}


def hook_negotiated_timeout(client: KazooClient, record: Callable[[float], None]) -> bool:
    """Have ``record(seconds)`` called with the session timeout the server grants ``client``.

    The one place that touches kazoo's internals: kazoo keeps the negotiated
    timeout in a local variable only; its connection's ``_connect`` returns
    ``read_timeout = negotiated * 2/3`` (ms) before any request of the session
    can be sent, so wrapping it records the value in time.  False, and nothing
    recorded, if kazoo's internals differ: the adapter then keeps to the
    requested timeout (safe whenever the server grants at least that).
    tests/test_zk.py fails when that happens.
    """
    connection = getattr(client, "_connection", None)
    original = getattr(connection, "_connect", None)
    if connection is None or original is None:
        return False

    def _connect(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        try:
            record(float(result[0]) * 1.5 / 1000.0)
        except (TypeError, ValueError, IndexError):
            pass
        return result

    connection._connect = _connect
    return True


class Session:
    """The KazooClient and its session's life; all methods but ``drop`` on the reactor.

    ``session_timeout`` must be positive (the adapter checks it first).
    """

    def __init__(
        self, reactor: Any, hosts: str, session_timeout: float, auth: str | None
    ) -> None:
        self.reactor = reactor
        self.hosts = hosts
        self.session_timeout = float(session_timeout)
        self.client = KazooClient(
            hosts=hosts,
            timeout=self.session_timeout,
            auth_data=[("digest", auth)] if auth is not None else None,
            default_acl=digest_acl(auth) if auth is not None else None,
            # Reconnect forever and quickly: a chain node that gives up on
            # ZooKeeper is useless, and a slow retry risks session expiry.
            connection_retry={
                "max_tries": -1,
                "delay": 0.05,
                "backoff": 2,
                "max_delay": max(0.1, min(1.0, self.session_timeout / 4)),
            },
        )
        self._negotiated_timeout: float | None = None
        self._negotiated_hooks: list[Callable[[], None]] = []
        hook_negotiated_timeout(self.client, self.negotiated)
        self.client.add_listener(self._kazoo_listener)
        self.started = False
        self.stopped = False
        self.state = "lost"
        self._connected_hooks: list[Callable[[], None]] = []
        self._stopping_hooks: list[Callable[[], None]] = []
        self._state_callbacks: list[Callable[[str], None]] = []
        self._resuming: Deferred[None] | None = None
        self.resume_timeout = RESUME_TIMEOUT

    def call(self, f: Callable[..., _T], *args: Any, **kw: Any) -> Deferred[_T]:
        """Run a blocking (kazoo) call in the reactor's thread pool."""
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args, **kw)

    @property
    def connected(self) -> bool:
        """Whether kazoo holds a live connection now (not the last event delivered)."""
        return not self.stopped and bool(self.client.connected)

    def session_id(self) -> int | None:
        """The id of the session kazoo has now; None between sessions."""
        client_id = self.client.client_id
        return None if client_id is None else int(client_id[0])

    # -- the negotiated timeout -------------------------------------------------

    def negotiated(self, seconds: float) -> None:
        """The server granted a session timeout of ``seconds``.

        Called on kazoo's connection thread, before any request of the
        session: plain assignments only, read on the reactor.
        """
        self._negotiated_timeout = seconds
        for hook in self._negotiated_hooks:
            hook()

    def when_negotiated(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` (on kazoo's thread) once the granted timeout is known."""
        self._negotiated_hooks.append(hook)

    @property
    def effective_session_timeout(self) -> float:
        """The smaller of the requested and the negotiated session timeout."""
        negotiated = self._negotiated_timeout
        if negotiated is not None and 0 < negotiated < self.session_timeout:
            return negotiated
        return self.session_timeout

    # -- opening and closing ------------------------------------------------------

    def begin(self) -> None:
        """Mark the session started: it can be only once."""
        if self.started:
            raise RuntimeError("ZooKeeper adapter already started")
        self.started = True

    def open(self, timeout: float, prepare: Callable[[], _T]) -> _T:
        """Blocking: connect, then ``prepare()``; if that fails, close the client again."""
        self.client.start(timeout=timeout)
        try:
            return prepare()
        except BaseException:
            self.client.stop()
            self.client.close()
            raise

    def when_stopping(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` at ``stop``, before the client closes."""
        self._stopping_hooks.append(hook)

    def stop(self) -> Deferred[None]:
        """Close the session cleanly, so our ephemeral nodes vanish at once.

        No state callbacks are delivered after stop() (the closing "lost" is
        ours, not news).
        """
        if self.stopped:
            return succeed(None)
        self.stopped = True
        for hook in self._stopping_hooks:
            hook()
        return self.call(self._stop_in_thread)

    def _stop_in_thread(self) -> None:
        self.client.remove_listener(self._kazoo_listener)
        self.client.stop()
        self.client.close()

    def drop(self) -> None:
        """Close the session now, from any thread (the reactor watchdog's).

        Our ephemeral znodes go at once, as after a crash; "lost" follows on
        the reactor once it turns.
        """
        if not self.stopped:
            self.client.stop()

    def resume(self) -> Deferred[None]:
        """Open a new session after drop, for as long as it takes; "connected" follows.

        kazoo's ``start`` gives up after ``resume_timeout`` and stops the
        client; a node that stopped trying would stay fenced until restarted,
        so attempts go on, backing off up to ``RESUME_MAX_DELAY``, until one
        opens a session or the adapter is stopped.  Fires once a session is
        open (or at stop).
        """
        if self._resuming is not None:
            return self._resuming
        done: Deferred[None] = Deferred()
        self._resuming = done
        delay = RESUME_FIRST_DELAY

        def attempt() -> None:
            if self.stopped:
                finish(None)
                return
            self.call(self.client.start, self.resume_timeout).addCallbacks(finish, failed)

        def failed(f: Failure) -> None:
            nonlocal delay
            if self.stopped:
                finish(None)
                return
            _log.warn(
                "cannot open a new ZooKeeper session at {hosts}: {e}; retrying in {s:.1f}s",
                hosts=self.hosts,
                e=f.getErrorMessage() or repr(f.value),
                s=delay,
            )
            self.reactor.callLater(delay, attempt)
            delay = min(delay * 2, RESUME_MAX_DELAY)

        def finish(_: object) -> None:
            self._resuming = None
            done.callback(None)

        attempt()
        return done

    # -- connection state ---------------------------------------------------------

    def _kazoo_listener(self, state: str) -> None:
        # On kazoo's connection thread: never block, never call ZooKeeper here.
        name = _STATE_NAMES.get(state)
        if name is not None:
            self.reactor.callFromThread(self._state_changed, name)

    def _state_changed(self, name: str) -> None:
        if self.stopped or name == self.state:
            return
        self.state = name
        if name == "connected":
            for hook in self._connected_hooks:
                hook()
        for callback in list(self._state_callbacks):
            try:
                callback(name)
            except Exception:
                _log.failure("ZooKeeper state callback {callback!r} failed", callback=callback)

    def when_connected(self, hook: Callable[[], None]) -> None:
        """The adapter's own work on every (re)connection, done before ``on_state`` callbacks."""
        self._connected_hooks.append(hook)

    def on_state(self, callback: Callable[[str], None]) -> None:
        """Call ``callback("connected" | "suspended" | "lost")`` on the reactor.

        "lost" means the session expired: our ephemeral nodes (registration,
        locks) are gone and must be recreated by the caller once "connected"
        follows (kazoo reconnects with a new session by itself).
        """
        self._state_callbacks.append(callback)
