"""The node's port when the process runs out of descriptors, and the descriptor budget."""

from __future__ import annotations

import errno
import resource
import socket
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.port import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    NodePort,
    check_descriptor_limit,
    descriptors_needed,
)
from kvtwist.server import Limits


class Recorded(Protocol):
    def connectionMade(self) -> None:
        self.factory.made.append(self)  # type: ignore[attr-defined]


class PortTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        factory = Factory.forProtocol(Recorded)
        factory.made = self.made = []  # type: ignore[attr-defined]
        self.port = NodePort(0, factory, interface="127.0.0.1", reactor=self.clock)
        self.port.startListening()
        self.addCleanup(self.close)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def close(self) -> None:
        for conn in self.made:
            conn.transport.socket.close()  # type: ignore[attr-defined]
        if self.port.connected:
            self.port.connectionLost(None)

    def dial(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.addCleanup(s.close)
        return s

    def run_out(self, err: int = errno.EMFILE) -> None:
        """Make every accept fail as a process out of descriptors sees it."""

        def accept() -> Any:
            raise OSError(err, "out of descriptors")

        self.port.socket._accept = accept  # under socket.accept(), which the port watches

    def warnings(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("log_level") == LogLevel.warn and e.get("log_namespace") == "kvtwist.port"
        ]

    def test_out_of_descriptors_pauses_accepting(self) -> None:
        """EMFILE or ENFILE on accept: the port stops reading, backs off, says so once, resumes."""
        self.dial()
        self.run_out(errno.ENFILE)
        for _ in range(8):
            self.port.doRead()
            self.assertNotIn(self.port, self.clock.getReaders())
            self.clock.advance(self.port.backoff)
            self.assertIn(self.port, self.clock.getReaders())
        self.assertEqual(self.port.backoff, BACKOFF_MAX)
        self.assertEqual(len(self.warnings()), 1)
        del self.port.socket._accept  # descriptors are back
        self.port.doRead()
        self.assertEqual((len(self.made), self.port.backoff), (1, 0.0))

    def test_emfile_recovery_is_quiet(self) -> None:
        """Under EMFILE Twisted's line per closed connection is left out; the pause is short."""
        self.run_out(errno.EMFILE)
        self.port.doRead()
        self.assertEqual(self.port.backoff, BACKOFF_FIRST)
        texts = [str(e.get("log_format")) for e in self.events]
        self.assertFalse([t for t in texts if "EMFILE" in t or "Could not accept" in t])
        self.assertEqual(len(self.warnings()), 1)

    def test_stop_listening_while_paused(self) -> None:
        """A port closed during a back-off does not start reading again."""
        self.run_out()
        self.port.doRead()
        self.port.connectionLost(None)
        self.clock.advance(BACKOFF_MAX)
        self.assertNotIn(self.port, self.clock.getReaders())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DescriptorBudgetTests(SynchronousTestCase):
    def test_warning_below_the_sum(self) -> None:
        """A descriptor limit below the sum of the node's limits is named at start, with the fix."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertIsNone(check_descriptor_limit(Limits(max_connections=8)))
        too_many = Limits(max_connections=soft)
        warning = check_descriptor_limit(too_many)
        assert warning is not None
        self.assertIn(str(descriptors_needed(too_many)), warning)
        self.assertIn("--max-connections", warning)
