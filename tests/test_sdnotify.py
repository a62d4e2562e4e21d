"""systemd readiness: READY=1 once the node serves, STOPPING=1 as it stops."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.procs import NodeProcess
from kvtwist.sdnotify import ReadinessService, notify


def listener(test: SynchronousTestCase) -> tuple[socket.socket, str]:
    """A datagram socket standing in for systemd's, and its path."""
    directory = tempfile.mkdtemp(prefix="kvtwist-notify-")
    test.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(30)
    test.addCleanup(s.close)
    return s, path


class NotifyTests(SynchronousTestCase):
    def test_path_and_abstract_sockets(self) -> None:
        s, path = listener(self)
        self.assertTrue(notify("READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(s.recv(100), b"READY=1")
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(abstract.close)
        name = f"kvtwist-test-{os.getpid()}"
        abstract.bind("\0" + name)
        self.assertTrue(notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(abstract.recv(100), b"STOPPING=1")

    def test_no_socket(self) -> None:
        """Without $NOTIFY_SOCKET nothing is sent; a dead socket is no error."""
        self.assertFalse(notify("READY=1", {}))
        self.assertTrue(notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}))

    def test_not_ready_before_the_reactor_turns(self) -> None:
        """Services start before the reactor installs its signal handlers: READY=1
        waits for a timed call, so a supervisor's SIGTERM always finds them."""
        clock = Clock()
        sent: list[str] = []
        svc = ReadinessService(clock, lambda: True, 0.2, lambda s: sent.append(s) or True)
        svc.startService()
        self.assertEqual(sent, [])
        clock.advance(0.2)
        self.assertEqual(sent, ["READY=1"])

    def test_ready_once_serving_then_stopping(self) -> None:
        clock = Clock()
        sent: list[str] = []
        serving = [False]
        svc = ReadinessService(clock, lambda: serving[0], 0.2, lambda s: sent.append(s) or True)
        svc.startService()
        clock.advance(1.0)
        self.assertEqual(sent, [])
        serving[0] = True
        clock.advance(0.2)
        clock.advance(1.0)
        self.assertEqual(sent, ["READY=1"])
        svc.stopService()
        self.assertEqual(sent, ["READY=1", "STOPPING=1"])


class NotifyProcessTests(SynchronousTestCase):
    def test_node_says_ready_and_stopping(self) -> None:
        """A real node sends READY=1 once it listens (standalone) and STOPPING=1 on SIGTERM."""
        s, path = listener(self)
        node = NodeProcess(args=["--in-memory"], env={"NOTIFY_SOCKET": path})
        self.addCleanup(node.cleanup)
        node.start()
        self.assertEqual(s.recv(100), b"READY=1")
        node.stop()
        self.assertEqual(s.recv(100), b"STOPPING=1")
