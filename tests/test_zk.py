"""Tests for kvtwist.zk against a real ZooKeeper server (see tests/zkserver.py)."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from kvtwist import clock
from kvtwist.lease import LEASE_FRACTION
from kvtwist.membership import Membership
from kvtwist.zk import ZooKeeper, hook_negotiated_timeout
from tests.zkserver import (
    ZooKeeperProcess,
    expire_session,
    shared_zookeeper,
    unique_root,
    zookeeper_available,
)

T = TypeVar("T")
WAIT = 10.0  # generous deadline for anything event-driven


class Recorder(Generic[T]):
    """A callback that remembers its calls (and threads) and lets tests await one."""

    def __init__(self) -> None:
        self.values: list[T] = []
        self.threads: list[threading.Thread] = []
        self._waiters: list[tuple[int, Callable[[T], bool], Deferred[T]]] = []

    def __call__(self, value: T) -> None:
        self.values.append(value)
        self.threads.append(threading.current_thread())
        for waiter in list(self._waiters):
            since, predicate, d = waiter
            if not d.called and predicate(value):
                self._waiters.remove(waiter)
                d.callback(value)

    def wait_for(
        self, predicate: Callable[[T], bool], since: int = 0, timeout: float = WAIT
    ) -> Deferred[T]:
        """Fire with the first value from index ``since`` on that matches."""
        for value in self.values[since:]:
            if predicate(value):
                done: Deferred[T] = Deferred()
                done.callback(value)
                return done
        d: Deferred[T] = Deferred()
        self._waiters.append((since, predicate, d))
        d.addTimeout(timeout, reactor)
        return d


@inlineCallbacks
def poll_until(
    predicate: Callable[[], Any], timeout: float = WAIT, interval: float = 0.02
) -> Generator[Deferred[Any], Any, Any]:
    """Poll ``predicate`` (which may return a Deferred) until truthy or the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Deferred):
            result = yield result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        yield task.deferLater(reactor, interval, lambda: None)


def count_children(client: KazooClient, path: str, expected: int) -> Deferred[bool]:
    """Whether ``path`` has exactly ``expected`` children (read off the reactor)."""
    return deferToThread(client.get_children, path).addCallback(lambda c: len(c) == expected)


def names(membership: Membership) -> list[str]:
    return [m.name for m in membership.members]


class PureTests(unittest.SynchronousTestCase):
    """The adapter without a server: validation and the hook into kazoo."""

    def test_lock_path_is_a_sibling(self) -> None:
        """The lock lives beside the root, never under it, and bad suffixes raise."""
        zk = ZooKeeper(reactor, "127.0.0.1:1", root="/kv/chain")
        self.assertEqual(zk.lock_path(), "/kv/chain-join")
        for bad in ["", "a/b"]:
            with self.assertRaises(ValueError):
                zk.lock_path(bad)

    def test_constructor_validates(self) -> None:
        """A bad root or session timeout fails at construction, not later."""
        with self.assertRaises(ValueError):
            ZooKeeper(reactor, "127.0.0.1:1", root="/")
        with self.assertRaises(ValueError):
            ZooKeeper(reactor, "127.0.0.1:1", session_timeout=0)

    def test_negotiation_hook_fits_this_kazoo(self) -> None:
        """kazoo still has the private ``_connection._connect`` the granted timeout is read from."""
        client = KazooClient(hosts="127.0.0.1:1")
        # the hook wraps a method kazoo really has, which returns the timeouts it
        # derives from the negotiated one, and which its connect loop calls
        connect = getattr(type(client._connection), "_connect", None)
        self.assertTrue(callable(connect), "kazoo's connection has no _connect any more")
        source = inspect.getsource(connect)
        self.assertIn("read_timeout = negotiated_session_timeout * 2.0 / 3.0", source)
        self.assertIn("return read_timeout, connect_timeout", source)
        self.assertIn(
            "self._connect(", inspect.getsource(type(client._connection)._connect_attempt)
        )
        granted: list[float] = []
        # what _connect returns: (read_timeout in ms = negotiated * 2/3, connect_timeout)
        client._connection._connect = lambda *args, **kw: (4000.0, 1.0)
        self.assertTrue(hook_negotiated_timeout(client, granted.append))
        self.assertEqual(client._connection._connect("host", 2181), (4000.0, 1.0))
        self.assertEqual(granted, [6.0])

    def test_negotiated_timeout_shortens_the_lease(self) -> None:
        """A server granting less than asked makes the lease a fraction of the granted timeout."""
        zk = ZooKeeper(reactor, "127.0.0.1:1", session_timeout=30.0)
        self.assertEqual(zk.lease_length, 30.0 * LEASE_FRACTION)
        zk._session.negotiated(6.0)  # as kazoo's connection thread does
        self.assertEqual(zk.effective_session_timeout, 6.0)
        self.assertEqual(zk.lease_length, 6.0 * LEASE_FRACTION)
        self.assertEqual(zk._probes.lease.length, 6.0 * LEASE_FRACTION)


_UNAVAILABLE = zookeeper_available()


class ZooKeeperTests(unittest.TestCase):
    """The adapter against a real server; every test uses its own chain root."""

    timeout = 60
    if _UNAVAILABLE is not None:
        skip = _UNAVAILABLE

    def setUp(self) -> None:
        self.server = shared_zookeeper()
        self.root = unique_root()

    @inlineCallbacks
    def adapter(
        self, session_timeout: float = 4.0, root: str | None = None
    ) -> Generator[Deferred[Any], Any, ZooKeeper]:
        """A started adapter on this test's root, stopped at cleanup."""
        zk = ZooKeeper(
            reactor, self.server.hosts, root=root or self.root, session_timeout=session_timeout
        )
        self.addCleanup(zk.stop)
        yield zk.start()
        return zk

    @inlineCallbacks
    def raw_client(self) -> Generator[Deferred[Any], Any, KazooClient]:
        """A plain kazoo client for poking at the tree behind the adapter's back."""
        client = KazooClient(hosts=self.server.hosts, timeout=4.0)
        yield deferToThread(client.start, 10)

        def close() -> Deferred[None]:
            return deferToThread(lambda: (client.stop(), client.close()) and None)

        self.addCleanup(close)
        return client

    @inlineCallbacks
    def test_start_creates_root(self) -> Generator[Deferred[Any], Any, None]:
        """start() creates a nested root and members() of a fresh root is empty."""
        zk = yield self.adapter(root=self.root + "/deep/chain")
        stat = yield zk.call(zk.client.exists, self.root + "/deep/chain")
        self.assertIsNotNone(stat)
        membership = yield zk.members()
        self.assertEqual(membership.members, ())

    @inlineCallbacks
    def test_register_two_members(self) -> Generator[Deferred[Any], Any, None]:
        """Registered members come back sorted by seq with parsed addresses; config grows."""
        zk = yield self.adapter()
        before = yield zk.members()
        first = yield zk.register("127.0.0.1:7001")
        second = yield zk.register("127.0.0.1:7002")
        self.assertTrue(first.startswith("node") and second.startswith("node"))
        membership = yield zk.members()
        self.assertEqual(names(membership), [first, second])
        self.assertLess(membership.members[0].seq, membership.members[1].seq)
        self.assertEqual(
            [m.address for m in membership.members], [("127.0.0.1", 7001), ("127.0.0.1", 7002)]
        )
        self.assertGreater(membership.config, before.config)
        self.assertEqual(membership.head().name, first)  # type: ignore[union-attr]
        self.assertEqual(membership.successor(first).name, second)  # type: ignore[union-attr]

        yield zk.unregister(first)
        yield zk.unregister(first)  # already gone: not an error
        after = yield zk.members()
        self.assertEqual(names(after), [second])
        self.assertGreater(after.config, membership.config)

    def test_register_rejects_bad_address(self) -> None:
        """register() refuses data that other members could not parse."""
        zk = ZooKeeper(reactor, self.server.hosts, root=self.root)
        with self.assertRaises(ValueError):
            zk.register("no-port")

    @inlineCallbacks
    def test_junk_and_foreign_children(self) -> Generator[Deferred[Any], Any, None]:
        """Junk member data gives address None without raising; non-node children are ignored."""
        zk = yield self.adapter()
        raw = yield self.raw_client()
        good = yield zk.register("10.0.0.1:9000")
        junk_path = yield deferToThread(raw.create, self.root + "/node", b"\xff", sequence=True)
        nul_path = yield deferToThread(
            raw.create, self.root + "/node", b"10.0.0.2:9001\x00", sequence=True
        )
        yield deferToThread(raw.create, self.root + "/lock-abc", b"x")
        yield deferToThread(raw.create, self.root + "/nodeX", b"1.2.3.4:5")
        membership = yield zk.members()
        junk = junk_path.rsplit("/", 1)[1]
        nul = nul_path.rsplit("/", 1)[1]
        self.assertEqual(names(membership), [good, junk, nul])
        self.assertEqual(
            [m.address for m in membership.members],
            [("10.0.0.1", 9000), None, ("10.0.0.2", 9001)],
        )

    @inlineCallbacks
    def test_watch_members_on_reactor_thread(self) -> Generator[Deferred[Any], Any, None]:
        """watch_members fires on the reactor thread after a register and an unregister."""
        zk = yield self.adapter()
        seen: Recorder[Membership] = Recorder()
        zk.watch_members(seen)
        yield seen.wait_for(lambda m: m.members == ())
        name = yield zk.register("127.0.0.1:7001")
        yield seen.wait_for(lambda m: name in m)
        mark = len(seen.values)
        yield zk.unregister(name)
        yield seen.wait_for(lambda m: name not in m, since=mark)
        self.assertTrue(all(t is threading.main_thread() for t in seen.threads), seen.threads)
        # no duplicates: every delivery differs from the one before it
        for earlier, later in zip(seen.values, seen.values[1:], strict=False):
            self.assertNotEqual(earlier, later)
        configs = [m.config for m in seen.values]
        self.assertEqual(configs, sorted(configs))

    @inlineCallbacks
    def test_second_watcher_gets_current_membership(self) -> Generator[Deferred[Any], Any, None]:
        """A watcher added later is given the current membership straight away."""
        zk = yield self.adapter()
        name = yield zk.register("127.0.0.1:7001")
        first: Recorder[Membership] = Recorder()
        zk.watch_members(first)
        yield first.wait_for(lambda m: name in m)
        second: Recorder[Membership] = Recorder()
        zk.watch_members(second)
        got = yield second.wait_for(lambda m: name in m)
        self.assertEqual(got, first.values[-1])

    @inlineCallbacks
    def test_root_deleted_and_recreated(self) -> Generator[Deferred[Any], Any, None]:
        """A deleted root is reported as config -1 and watched until it comes back."""
        zk = yield self.adapter()
        raw = yield self.raw_client()
        seen: Recorder[Membership] = Recorder()
        zk.watch_members(seen)
        yield seen.wait_for(lambda m: m.config >= 0)
        yield deferToThread(raw.delete, self.root)
        yield seen.wait_for(lambda m: m.config == -1)
        yield deferToThread(raw.create, self.root)
        yield deferToThread(raw.create, self.root + "/node", b"h:1", sequence=True)
        back = yield seen.wait_for(lambda m: len(m) == 1)
        self.assertEqual(back.members[0].address, ("h", 1))

    @inlineCallbacks
    def test_closed_session_member_disappears(self) -> Generator[Deferred[Any], Any, None]:
        """When another client closes its session, its ephemeral member leaves the membership."""
        watcher = yield self.adapter()
        other = yield self.adapter()
        seen: Recorder[Membership] = Recorder()
        watcher.watch_members(seen)
        name = yield other.register("127.0.0.1:7009")
        yield seen.wait_for(lambda m: name in m)
        mark = len(seen.values)
        yield other.stop()
        gone = yield seen.wait_for(lambda m: name not in m, since=mark)
        self.assertEqual(gone.members, ())

    @inlineCallbacks
    def test_shared_session(self) -> Generator[Deferred[Any], Any, None]:
        """Adapters of two chain roots on one session: stopping one deletes only the
        znodes it made, the session and the other's member stay, and it hears no
        more session events; the session's loss reaches the one still running."""
        owner = yield self.adapter()
        a = ZooKeeper(reactor, self.server.hosts, root=self.root + "-a", session=owner.session)
        b = ZooKeeper(reactor, self.server.hosts, root=self.root + "-b", session=owner.session)
        self.addCleanup(a.stop)
        self.addCleanup(b.stop)
        yield a.start()
        yield b.start()
        a_states: list[str] = []
        b_states: Recorder[str] = Recorder()
        a.on_state(a_states.append)
        b.on_state(b_states)
        name_a = yield a.register("127.0.0.1:7001")
        name_b = yield b.register("127.0.0.1:7001")
        yield a.advertise_waiting("n1", b"x")
        self.assertIn(name_a, (yield a.members()))
        yield a.stop()
        self.assertNotIn(name_a, (yield b.call(b.client.get_children, self.root + "-a")))
        self.assertEqual((yield a.call(a.client.get_children, a.sibling_path("waiting"))), [])
        self.assertTrue(owner.connected)
        self.assertIn(name_b, (yield b.members()))
        self.assertTrue(b.lease_valid() or not b.connected)
        owner.drop_session()
        yield b_states.wait_for(lambda s: s == "lost")
        self.assertEqual(a_states, [])

    @inlineCallbacks
    def test_lease_lapses_when_our_znode_is_deleted(self) -> Generator[Deferred[Any], Any, None]:
        """Once the lease is tied to our member znode, a probe that finds it deleted (by
        another member, while our session lives) voids the lease and says so."""
        zk = yield self.adapter(session_timeout=2.0)
        raw = yield self.raw_client()
        name = yield zk.register("127.0.0.1:7011")
        zk.lease_member(name)
        gone: Recorder[str] = Recorder()
        zk.on_gone(gone)
        yield poll_until(zk.lease_valid)
        yield deferToThread(raw.delete, f"{self.root}/{name}")
        said = yield gone.wait_for(lambda n: n == name)
        self.assertEqual(said, name)
        self.assertFalse(zk.lease_valid())
        self.assertTrue(zk.connected)  # the session itself is fine

    @inlineCallbacks
    def test_resume_session_keeps_trying(self) -> Generator[Deferred[Any], Any, None]:
        """After the watchdog closed the session, reopening goes on past kazoo's start
        timeout while ZooKeeper does not answer, and succeeds once it does."""
        server = ZooKeeperProcess()
        server.start()
        self.addCleanup(server.stop)
        zk = ZooKeeper(reactor, server.hosts, root=self.root, session_timeout=2.0)
        self.addCleanup(zk.stop)
        yield zk.start()
        zk.resume_timeout = 0.5
        yield deferToThread(zk.drop_session)
        server.pause()
        try:
            d = zk.resume_session()
            # several attempts time out while the server is stopped
            yield task.deferLater(reactor, 2.5, lambda: None)
            self.assertFalse(d.called)
        finally:
            server.resume()
        yield d
        yield poll_until(lambda: zk.connected)
        yield poll_until(zk.lease_valid)

    @inlineCallbacks
    def test_session_expiry(self) -> Generator[Deferred[Any], Any, None]:
        """An expired session is reported as "lost", voids the lease, and recovery re-watches."""
        zk = yield self.adapter(session_timeout=4.0)
        observer = yield self.adapter()
        states: Recorder[str] = Recorder()
        lease_at_state: list[tuple[str, bool]] = []

        def on_state(state: str) -> None:
            lease_at_state.append((state, zk.lease_valid()))
            states(state)

        zk.on_state(on_state)
        seen: Recorder[Membership] = Recorder()
        zk.watch_members(seen)
        old = yield zk.register("127.0.0.1:7001")
        yield seen.wait_for(lambda m: old in m)
        yield poll_until(zk.lease_valid)
        old_session = zk.client.client_id

        yield deferToThread(expire_session, self.server.hosts, old_session)
        # The server deleted our ephemeral node at once; others see it go.
        yield poll_until(lambda: observer.members().addCallback(lambda m: old not in m))
        yield states.wait_for(lambda s: s == "lost")
        self.assertIn(("lost", False), lease_at_state)
        self.assertTrue(all(t is threading.main_thread() for t in states.threads))

        # kazoo reconnects with a new session; the watch is re-armed on it.
        mark = len(seen.values)
        yield states.wait_for(lambda s: s == "connected", since=states.values.index("lost"))
        self.assertNotEqual(zk.client.client_id[0], old_session[0])
        new = yield zk.register("127.0.0.1:7002")
        fresh = yield seen.wait_for(lambda m: new in m, since=mark)
        self.assertNotIn(old, fresh)
        yield poll_until(zk.lease_valid)

    @inlineCallbacks
    def test_lease_lapses_while_reactor_is_blocked(self) -> Generator[Deferred[Any], Any, None]:
        """A pause longer than the lease voids it on resume, before any event is processed."""
        zk = yield self.adapter(session_timeout=2.0)
        yield poll_until(zk.lease_valid)
        expires = zk.lease_expires_at
        assert expires is not None
        self.assertLessEqual(expires - clock.now(), 2.0 * 0.6)
        # Simulate SIGSTOP of this process: nothing runs on the reactor.
        time.sleep(2.0 * 0.6 + 0.1)
        self.assertFalse(zk.lease_valid())
        # kazoo kept the session alive meanwhile, so the next probe renews it.
        yield poll_until(zk.lease_valid)

    @inlineCallbacks
    def test_negotiated_timeout_bounds_the_lease(self) -> Generator[Deferred[Any], Any, None]:
        """If the server grants less than was asked for, the lease uses the smaller timeout."""
        zk = yield self.adapter(session_timeout=600.0)  # server max is 60 s
        self.assertEqual(zk.effective_session_timeout, 60.0)
        yield poll_until(zk.lease_valid)
        expires = zk.lease_expires_at
        assert expires is not None
        self.assertLessEqual(expires - clock.now(), 60.0 * 0.6)

    @inlineCallbacks
    def test_lock_waits_for_release(self) -> Generator[Deferred[Any], Any, None]:
        """A second lock() waits while the first is held and fires once it is released."""
        a = yield self.adapter()
        b = yield self.adapter()
        raw = yield self.raw_client()
        release_a = yield a.lock()
        waiting = b.lock()
        lock_path = b.lock_path()
        self.assertEqual(lock_path, self.root + "-join")
        # b's contender node exists, so b is queued behind a and must still wait.
        yield poll_until(lambda: count_children(raw, lock_path, 2))
        self.assertFalse(waiting.called)
        membership = yield a.members()
        self.assertEqual(membership.members, ())  # the lock is not under the root
        yield release_a()
        release_b = yield waiting.addTimeout(WAIT, reactor)
        yield release_b()
        yield release_b()  # idempotent
        children = yield deferToThread(raw.get_children, lock_path)
        self.assertEqual(children, [])

    @inlineCallbacks
    def test_lock_timeout_and_cancel(self) -> Generator[Deferred[Any], Any, None]:
        """lock(timeout=...) fails with LockTimeout, and a cancelled wait leaves no contender."""
        a = yield self.adapter()
        b = yield self.adapter()
        raw = yield self.raw_client()
        release_a = yield a.lock("other")
        yield self.assertFailure(b.lock("other", timeout=0.3), LockTimeout)
        waiting = b.lock("other")
        lock_path = b.lock_path("other")
        yield poll_until(lambda: count_children(raw, lock_path, 2))
        waiting.cancel()
        yield self.assertFailure(waiting, CancelledError)
        yield poll_until(lambda: count_children(raw, lock_path, 1))
        yield release_a()
