"""Reconnection attempts do not fill the node's log."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from kvtwist.client.protocol import ClientProtocol, connect_quietly
from kvtwist.procs import NodeProcess, free_port, wait_for


class QuietConnectTests(unittest.TestCase):
    def test_failed_attempts_log_no_factory_lines(self) -> None:
        """A refused connection logs neither "Starting factory" nor "Stopping factory"."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", free_port(), timeout=5)
        d = self.assertFailure(connect_quietly(ep, ClientProtocol()), ConnectionRefusedError)

        def check(_: Any) -> None:
            lines = [formatEvent(e) for e in events]
            self.assertEqual([x for x in lines if "factory" in x.lower()], [])

        return d.addCallback(check)


class NodeWithoutZooKeeperTests(unittest.SynchronousTestCase):
    """A node whose ZooKeeper is down: its own line is not buried under kazoo's."""

    def test_kazoo_repeats_are_limited(self) -> None:
        """By the node's first "cannot reach ZooKeeper" line (after kazoo's 15 s of
        attempts, a score of "Connection dropped" lines unlimited), kazoo's line has
        appeared once."""
        node = NodeProcess(args=["--in-memory", "--zk", f"127.0.0.1:{free_port()}"])
        self.addCleanup(node.cleanup)
        self.addCleanup(node.stop)
        node.start()
        wait_for(lambda: "cannot reach ZooKeeper" in node.log(), 60, "the node's retry line")
        lines = node.log().splitlines()
        dropped = [x for x in lines if "Connection dropped" in x]
        self.assertEqual(len(dropped), 1, dropped)
        self.assertTrue(any("retrying in 2.0s" in x for x in lines))
