"""The suite's ZooKeeper gate: skip on a developer machine, fail under CI."""

from __future__ import annotations

import os
import warnings

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from kvtwist.procs import zookeeper
from tests import zkserver


class ZooKeeperGate(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(zookeeper, "zookeeper_available", lambda: "java not found (install it)")
        self.patch(zkserver, "_warned", False)
        saved = os.environ.pop("CI", None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, "CI", saved)

    def test_skips_loudly_outside_ci(self) -> None:
        """Without CI the reason comes back (so the test skips) and a warning is raised once."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = zkserver.zookeeper_available()
            second = zkserver.zookeeper_available()
        assert first is not None
        self.assertIn("java not found", first)
        self.assertIn("SKIPPED", first)
        self.assertEqual(first, second)
        self.assertEqual(len(caught), 1)

    def test_never_skips_under_ci(self) -> None:
        """With CI set there is no reason to skip: the test runs and meets the real error."""
        os.environ["CI"] = "true"
        self.addCleanup(os.environ.pop, "CI", None)
        self.assertIsNone(zkserver.zookeeper_available())

    def test_start_failure_names_ci(self) -> None:
        """Under CI a server that cannot start raises an error saying why, not a skip."""
        os.environ["CI"] = "1"
        self.addCleanup(os.environ.pop, "CI", None)
        self.patch(zkserver, "_shared", None)
        self.patch(zkserver.atexit, "register", lambda f: f)
        with self.assertRaises(zkserver.ZooKeeperError) as raised:
            zkserver.shared_zookeeper()
        self.assertIn("under CI", str(raised.exception))
        self.assertIn("java not found", str(raised.exception))


class RestartOnSameData(SynchronousTestCase):
    def test_kill_and_restart_keep_port_and_data(self) -> None:
        """A crashed server restarts on its port with what it had written (zk-restart)."""
        from kazoo.client import KazooClient

        why = zkserver.zookeeper_available()
        if why:
            raise SkipTest(why)
        server = zkserver.ZooKeeperProcess(port=zkserver.free_port())
        self.addCleanup(server.stop)
        server.start()
        port = server.port
        kazoo = KazooClient(server.hosts, timeout=10)
        kazoo.start(15)
        self.addCleanup(kazoo.close)
        self.addCleanup(kazoo.stop)
        kazoo.create("/survivor", b"still here")
        server.kill()
        self.assertFalse(server.running)
        server.restart()
        self.assertEqual(server.port, port)
        data, _ = kazoo.retry(kazoo.get, "/survivor")
        self.assertEqual(data, b"still here")
