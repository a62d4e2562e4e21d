"""Start a real, private ZooKeeper server for tests (no mocks).

The server class lives in kvtwist.procs (the torture runner uses it
too): it launches ``QuorumPeerMain`` on a free loopback port with a throw-away
data directory, so tests never depend on (or disturb) the system service.
Starting the JVM costs ~1.5 s, so :func:`shared_zookeeper` starts one server
per test process; tests isolate themselves by using a unique chain root
(``unique_root()``).

A test that needs ZooKeeper asks :func:`zookeeper_available` for a reason to
skip.  Under CI (the ``CI`` environment variable set) there is never one: the
test runs and fails with the reason ZooKeeper cannot start, because a suite
that silently skips a third of itself proves nothing.  Elsewhere (a developer
machine without Java) the tests skip, with a warning that says so.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import threading
import uuid
import warnings

from kazoo.client import KazooClient
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from kvtwist.procs import zookeeper

# The server itself lives in the package (the torture runner starts one too);
# these names are re-exported so tests keep importing them from here.
from kvtwist.procs.zookeeper import (
    _DEPENDENCY_JARS,
    JAVA_DIR,
    MAIN_CLASS,
    TICK_TIME_MS,
    ZOOKEEPER_JAR,
    ZooKeeperError,
    ZooKeeperProcess,
    four_letter_word,
    free_port,
    java_binary,
    zookeeper_classpath,
)

__all__ = [
    "JAVA_DIR",
    "MAIN_CLASS",
    "TICK_TIME_MS",
    "ZOOKEEPER_JAR",
    "_DEPENDENCY_JARS",
    "ZooKeeperError",
    "ZooKeeperProcess",
    "expire_session",
    "four_letter_word",
    "free_port",
    "java_binary",
    "shared_zookeeper",
    "unique_root",
    "zookeeper_available",
    "zookeeper_classpath",
]


_shared: ZooKeeperProcess | None = None
_shared_lock = threading.Lock()
_warned = False


def under_ci() -> bool:
    """Whether the suite runs under CI, where a missing ZooKeeper is a failure."""
    return bool(os.environ.get("CI"))


def zookeeper_available() -> str | None:
    """Why ZooKeeper tests should skip here, or None when they must run.

    Under CI always None, so the test goes on and fails on the reason (see
    :func:`shared_zookeeper`).  Elsewhere the reason, and once a warning.
    """
    global _warned
    reason = zookeeper.zookeeper_available()
    if reason is None or under_ci():
        return None
    text = f"ZooKeeper tests SKIPPED: {reason}; with CI set they fail instead"
    if not _warned:
        _warned = True
        warnings.warn(text, stacklevel=2)
    return text


def shared_zookeeper() -> ZooKeeperProcess:
    """The per-process test server, started on first use and stopped at exit.

    If it died (e.g. a test killed it), a fresh one is started.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ZooKeeperProcess()
            atexit.register(_shared.stop)
        if not _shared.running:
            try:
                _shared.start()
            except ZooKeeperError as e:
                where = " under CI" if under_ci() else ""
                raise ZooKeeperError(f"ZooKeeper cannot start{where}: {e}") from None
        return _shared


def unique_root(prefix: str = "/t") -> str:
    """A chain root no other test uses, so tests can share one server."""
    return f"{prefix}-{uuid.uuid4().hex}"


def expire_session(hosts: str, client_id: tuple[int, bytes], timeout: float = 10.0) -> None:
    """Make the server expire a live session, as a real expiry would.

    The standard trick: open a second connection with the same session id and
    password, then close it.  Closing deletes the session on the server (its
    ephemeral nodes vanish at once), and the original client is told
    SESSION_EXPIRED when it next talks to the server.  Blocking; call it from a
    thread in Twisted code.
    """
    twin = KazooClient(hosts=hosts, client_id=client_id, timeout=timeout)
    twin.start(timeout=timeout)
    twin.stop()
    twin.close()


class ZooKeeperCase(SynchronousTestCase):
    """A test on the shared ZooKeeper: a fresh chain root and a kazoo client."""

    def setUp(self) -> None:
        why = zookeeper_available()
        if why:
            raise SkipTest(why)
        self.zk: ZooKeeperProcess = shared_zookeeper()
        self.root = unique_root()
        self.kazoo = KazooClient(self.zk.hosts)
        self.kazoo.start(15)
        self.addCleanup(self.kazoo.stop)


def secret_file(test: SynchronousTestCase, data: bytes | None = None) -> str:
    """A key or token file, mode 600, removed after the test."""
    fd, path = tempfile.mkstemp(prefix="kvtwist-secret-")
    os.write(fd, os.urandom(32) if data is None else data)
    os.close(fd)
    os.chmod(path, 0o600)
    test.addCleanup(os.unlink, path)
    return path
