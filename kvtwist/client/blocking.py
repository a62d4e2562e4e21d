"""A blocking client for scripts, on the same protocol code as the async one.

``BlockingClient`` runs the Twisted reactor in a daemon thread (started once,
on first use, without signal handlers) and calls the async ``Client`` methods
there through ``blockingCallFromThread``-style hand-offs, so each method
returns a plain value or raises the same ``KVError`` / ``ConnectionFailed`` as
the Deferred would have.

    with BlockingClient.connect("127.0.0.1:9000") as kv:
        kv.put("a", b"1")
        assert kv.get("a") == b"1"

Any async-client factory can be plugged in, e.g. the ZooKeeper-aware one::

    BlockingClient(lambda r: ChainClient.connect(r, "zk1:2181", "/chain"))

and a cluster of many chains has its own: ``BlockingClient.cluster("zk1:2181", "prod")``.

Do not use it from the reactor's own thread (a call would wait for itself), nor
inside a trial test that also runs the global reactor: pass a private reactor
instead (``reactor=SelectReactor()``).
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from kvtwist.client.api import (
    CasResult,
    Client,
    Data,
    DirectClient,
    Stats,
    WriteResult,
    parse_address,
)
from kvtwist.client.protocol import ConnectionFailed, KVError
from kvtwist.tls import ClientTLS
from kvtwist.wire import Message

T = TypeVar("T")

#: Makes an async client on the reactor it is given (called in the reactor thread).
ClientMaker = Callable[[Any], Deferred[Client]]

#: Extra seconds the calling thread waits beyond the in-reactor timeout, in
#: case the reactor thread itself is stuck.
_GRACE = 5.0


class RequestTimeout(ConnectionFailed):
    """No answer within the client's timeout (the connection may still be up)."""


# ---- the reactor thread ---------------------------------------------------------

_lock = threading.Lock()
_threads: dict[int, tuple[Any, threading.Thread]] = {}
_exit_hook_installed = False


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _ensure_running(reactor: Any) -> None:
    """Run ``reactor`` in a daemon thread unless it already runs somewhere."""
    global _exit_hook_installed
    with _lock:
        entry = _threads.get(id(reactor))
        if entry is not None and entry[1].is_alive():
            return
        if entry is not None:
            raise RuntimeError("the reactor thread has stopped; the reactor cannot restart")
        if reactor.running:
            # Someone else runs it (an application calling us from a worker thread).
            if _in_reactor_thread(reactor):
                raise RuntimeError("BlockingClient cannot be used from the reactor thread")
            return
        if reactor is not _global_reactor():
            # A private reactor must not claim to be "the" I/O thread.
            reactor._registerAsIOThread = False
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        thread = threading.Thread(
            target=reactor.run,
            kwargs={"installSignalHandlers": False},
            name="kvtwist-reactor",
            daemon=True,
        )
        thread.start()
        _threads[id(reactor)] = (reactor, thread)
        if not _exit_hook_installed:
            _exit_hook_installed = True
            _register_exit_hook()
    deadline = 100  # x 0.1 s
    while not started.wait(0.1):
        deadline -= 1
        if deadline <= 0 or not thread.is_alive():
            raise RuntimeError("the Twisted reactor did not start (was it run and stopped before?)")


def _in_reactor_thread(reactor: Any) -> bool:
    """Whether the calling thread runs ``reactor`` (where blocking would deadlock)."""
    entry = _threads.get(id(reactor))
    if entry is not None:
        return entry[1] is threading.current_thread()
    if reactor is _global_reactor() and reactor.running:
        from twisted.python import threadable

        return bool(threadable.isInIOThread())
    return False


def _register_exit_hook() -> None:
    # Stop the reactor before Python joins non-daemon threads at exit: the
    # reactor's thread pool (used e.g. to resolve host names) has non-daemon
    # workers, which would otherwise keep the process alive forever.
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(stop_reactors)
            return
    except RuntimeError:
        pass
    atexit.register(stop_reactors)


def stop_reactors(timeout: float = 5.0) -> None:
    """Stop every reactor this module started and wait for their threads.

    Called automatically at interpreter exit.  A stopped reactor cannot be
    started again.
    """
    with _lock:
        reactors = [reactor for reactor, _thread in _threads.values()]
    for reactor in reactors:
        stop_reactor(reactor, timeout)


def stop_reactor(reactor: Any = None, timeout: float = 5.0) -> None:
    """Stop ``reactor`` (default: the global one) if this module started it.

    Tests use it to stop a private reactor; it cannot be started again.
    """
    if reactor is None:
        reactor = _global_reactor()
    with _lock:
        entry = _threads.get(id(reactor))
    if entry is None:
        return
    thread = entry[1]
    if thread.is_alive():
        try:
            reactor.callFromThread(_stop, reactor)
        except Exception:
            pass
        thread.join(timeout)


def _stop(reactor: Any) -> None:
    if reactor.running:
        try:
            reactor.stop()
        except neterror.ReactorNotRunning:
            pass


def _call_in_reactor(
    reactor: Any,
    f: Callable[[], Deferred[T]],
    timeout: float | None,
    timeout_error: Callable[[float], Exception] | None = None,
) -> T:
    """Run ``f`` in the reactor thread; return its (Deferred's) result or raise.

    Like ``threads.blockingCallFromThread`` but with a deadline: ``f``'s
    Deferred is cancelled after ``timeout`` seconds and fails with
    ``timeout_error(timeout)`` (RequestTimeout by default).  A cancelled
    request stays queued in its ClientProtocol, so later replies still match
    their requests.
    """
    if _in_reactor_thread(reactor):
        raise RuntimeError("BlockingClient cannot be used from the reactor thread")
    make_error = timeout_error or _no_reply
    results: queue.Queue[Any] = queue.Queue(maxsize=1)

    def timed_out(result: Any, seconds: float) -> Any:
        return Failure(make_error(seconds))

    def run() -> None:
        d: Deferred[Any] = maybeDeferred(f)
        if timeout is not None:
            d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
        d.addBoth(results.put)

    reactor.callFromThread(run)
    try:
        # The in-reactor deadline reports the timeout; this one only guards
        # against a reactor thread that is stuck or gone.
        result = results.get(timeout=None if timeout is None else timeout + _GRACE)
    except queue.Empty:
        raise RequestTimeout(f"the reactor thread did not answer within {timeout:g}s") from None
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


def _no_reply(seconds: float) -> Exception:
    return RequestTimeout(f"no reply from the server within {seconds:g}s")


# ---- direct connections ---------------------------------------------------------




# ---- the client -----------------------------------------------------------------


class BlockingClient:
    """The ``Client`` API with plain return values, for scripts and the shell.

    ``make`` is called in the reactor thread with the reactor and returns a
    Deferred firing with a connected async ``Client``; it is called again by
    :meth:`reconnect`.  ``timeout`` (seconds, None for no limit) bounds the
    connection and every call.
    """

    def __init__(
        self,
        make: ClientMaker,
        *,
        timeout: float | None = 10.0,
        reactor: Any = None,
        description: str = "",
    ) -> None:
        self._make = make
        self.timeout = timeout
        self.description = description
        self._reactor = reactor if reactor is not None else _global_reactor()
        self._swap = threading.Lock()
        self._client: Client | None = None
        _ensure_running(self._reactor)
        self._client = self._open()

    @classmethod
    def connect(
        cls,
        address: str,
        timeout: float | None = 10.0,
        *,
        reactor: Any = None,
        tls: ClientTLS | None = None,
        token: bytes | None = None,
    ) -> BlockingClient:
        """Connect to one node at ``host:port``; ConnectionFailed if that fails.

        Over TLS with ``tls``, logged in with ``token`` (KVError if refused).
        A malformed address raises ValueError with a readable reason.
        """
        host, port = parse_address(address)

        def make(r: Any) -> Deferred[Any]:
            return DirectClient.connect(r, host, port, timeout, tls=tls, token=token)

        return cls(make, timeout=timeout, reactor=reactor, description=address)

    @classmethod
    def cluster(
        cls,
        zk_hosts: str,
        name: str,
        timeout: float | None = 30.0,
        *,
        reactor: Any = None,
        tls: ClientTLS | None = None,
        token: bytes | None = None,
    ) -> BlockingClient:
        """A client of cluster ``name`` (kvtwist.client.cluster.ClusterClient):
        ``timeout`` is its deadline for each call, retries included."""
        from kvtwist.client.cluster import ClusterClient

        def make(r: Any) -> Deferred[Any]:
            return ClusterClient.connect(r, zk_hosts, name, timeout, tls=tls, token=token)

        backstop = None if timeout is None else timeout + 2.0  # the client's own comes first
        where = f"cluster {name} via ZooKeeper {zk_hosts}"
        return cls(make, timeout=backstop, reactor=reactor, description=where)

    # ---- connection management --------------------------------------------------

    def _open(self) -> Client:
        make = self._make
        reactor = self._reactor
        where = self.description or "the server"

        def timed_out(seconds: float) -> Exception:
            return ConnectionFailed(f"cannot connect to {where}: timed out after {seconds:g}s")

        return _call_in_reactor(reactor, lambda: make(reactor), self.timeout, timed_out)

    @property
    def client(self) -> Client:
        """The async client in use (to be touched only in the reactor thread)."""
        client = self._client
        if client is None:
            raise ConnectionFailed("the client is closed")
        return client

    @property
    def reactor(self) -> Any:
        return self._reactor

    @property
    def lost(self) -> bool:
        """True once the connection is known to have closed.

        Known for direct connections; a client that cannot tell says False.
        """
        client = self._client
        if client is None:
            return True
        closed = getattr(getattr(client, "protocol", None), "closed_d", None)
        return isinstance(closed, Deferred) and closed.called

    def reconnect(self) -> None:
        """Drop the current connection (if any) and make a new one.

        Raises ConnectionFailed if the new connection fails; the client is then
        closed until the next successful reconnect.
        """
        with self._swap:
            old, self._client = self._client, None
            if old is not None:
                self._close_client(old)
            self._client = self._open()

    def close(self) -> None:
        """Close the connection; later calls raise ConnectionFailed. Idempotent."""
        with self._swap:
            old, self._client = self._client, None
        if old is not None:
            self._close_client(old)

    def _close_client(self, client: Client) -> None:
        try:
            _call_in_reactor(self._reactor, client.close, 5.0)
        except Exception:
            pass

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._client is None else "open"
        return f"<BlockingClient {self.description or '?'} {state}>"

    # ---- the API ------------------------------------------------------------

    def _call(self, f: Callable[[Client], Deferred[T]]) -> T:
        client = self.client
        return _call_in_reactor(self._reactor, lambda: f(client), self.timeout)

    def put(self, key: Data, value: Data) -> WriteResult:
        return self._call(lambda c: c.put(key, value))

    def delete(self, key: Data) -> WriteResult:
        return self._call(lambda c: c.delete(key))

    def cas(self, key: Data, value: Data = b"", **how: Any) -> CasResult:
        """``Client.cas``: cond, expect, delete, want_old as keywords."""
        return self._call(lambda c: c.cas(key, value, **how))

    def incr(self, key: Data, delta: int = 1) -> int:
        return self._call(lambda c: c.incr(key, delta))

    def append(self, key: Data, value: Data) -> int:
        return self._call(lambda c: c.append(key, value))

    def get(self, key: Data) -> bytes | None:
        return self._call(lambda c: c.get(key))

    def size(self) -> int:
        return self._call(lambda c: c.size())

    def height(self) -> int:
        return self._call(lambda c: c.height())

    def keys(self) -> list[bytes]:
        return self._call(lambda c: c.keys())

    def values(self) -> list[bytes]:
        return self._call(lambda c: c.values())

    def verify(self, op_n: int) -> bool:
        return self._call(lambda c: c.verify(op_n))

    def range(
        self, start: Data | None = None, stop: Data | None = None, limit: int = 0
    ) -> list[tuple[bytes, bytes]]:
        return self._call(lambda c: c.range(start, stop, limit))

    def stats(self) -> Stats:
        return self._call(lambda c: c.stats())

    def raw(self, msg: Message) -> Message:
        """Send any message; return the reply unchecked (ERROR replies included)."""
        return self._call(lambda c: c.raw(msg))


__all__ = [
    "BlockingClient",
    "ClientMaker",
    "ConnectionFailed",
    "KVError",
    "RequestTimeout",
    "stop_reactor",
    "stop_reactors",
]
