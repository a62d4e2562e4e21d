"""Hostile and careless clients against a real node process.

Garbage on one connection, a client that never reads its replies, a flood
of connections: the node stays up, answers well-behaved clients correctly
throughout, and its memory stays within a documented bound (docs/limits.md).
"""

from __future__ import annotations

import random
import socket
import threading
import time
import traceback
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from tests.nodes import NodeProcess, RawClient, wait_for

#: docs/limits.md: a node under these tests stays below this resident size.
RSS_BOUND = 256 * 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def run_threads(targets: list[Callable[[], None]], timeout: float) -> list[str]:
    """Run ``targets`` in threads; what went wrong in them: exceptions and hung threads.

    An exception in a thread is otherwise only printed, so a node that stops
    answering (a timeout, a reset) would still let the test pass.
    """
    failures: list[str] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException:
            failures.append(traceback.format_exc())

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    failures += [f"{t.name} still running after {timeout:g}s" for t in threads if t.is_alive()]
    return failures


class RunThreads(SynchronousTestCase):
    def test_exception_in_a_thread_is_reported(self) -> None:
        """A worker that raises (a node that stopped answering) is a failure, not a print."""

        def fails() -> None:
            raise ConnectionError("closed by the node")

        failures = run_threads([lambda: None, fails], 5)
        self.assertEqual(len(failures), 1)
        self.assertIn("ConnectionError: closed by the node", failures[0])

    def test_hung_thread_is_reported(self) -> None:
        """A worker that never returns is a failure once the deadline passes."""
        release = threading.Event()
        self.addCleanup(release.set)
        failures = run_threads([release.wait], 0.05)
        self.assertEqual(len(failures), 1)
        self.assertIn("still running", failures[0])


class HostileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = NodeProcess(args=["--max-pending", "256"]).start()
        self.addCleanup(self.node.cleanup)
        assert self.node.proc is not None
        self.pid = self.node.proc.pid

    def alive(self) -> None:
        assert self.node.proc is not None
        self.assertIsNone(self.node.proc.poll(), self.node.log()[-3000:])

    def test_garbage_beside_good_clients(self) -> None:
        """Random bytes on one connection while others read and write: all answers correct."""
        stop = time.monotonic() + 4
        rng = random.Random(1)
        errors: list[str] = []

        def garbage() -> None:
            while time.monotonic() < stop:
                try:
                    with socket.create_connection(("127.0.0.1", self.node.port), timeout=2) as s:
                        for _ in range(50):
                            s.sendall(rng.randbytes(rng.randint(1, 2000)))
                except OSError:
                    pass  # the node may close a connection whose framing is broken

        def good(n: int) -> None:
            c = RawClient(self.node.port)
            model: dict[bytes, bytes] = {}
            r = random.Random(n)
            try:
                while time.monotonic() < stop:
                    k = f"g{n}-{r.randint(0, 20)}".encode()
                    if r.random() < 0.5:
                        v = r.randbytes(r.randint(0, 100))
                        rep = c.one(wire.req_put(k, v))
                        if rep.opcode != wire.OP_PUT + 1:  # type: ignore[attr-defined]
                            errors.append(f"put: {rep}")
                        model[k] = v
                    else:
                        rep = c.one(wire.req_get(k))
                        got = bytes(rep.values[0]) if rep.values else None  # type: ignore[attr-defined]
                        if got != model.get(k):
                            errors.append(f"get {k}: {got!r} != {model.get(k)!r}")
            finally:
                c.close()

        workers: list[Callable[[], None]] = [garbage]
        workers += [lambda i=i: good(i) for i in range(4)]  # type: ignore[misc]
        self.assertEqual(run_threads(workers, 30), [])
        self.assertEqual(errors, [])
        self.alive()
        self.assertLess(rss(self.pid), RSS_BOUND)

    def test_client_that_never_reads(self) -> None:
        """A client pipelining large reads without reading: the node stops reading from it,
        memory stays bounded, other clients are served."""
        c = RawClient(self.node.port)
        c.one(wire.req_put(b"big", b"x" * 1_000_000))
        flood = socket.create_connection(("127.0.0.1", self.node.port))
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.setblocking(False)
        request = wire.frame(wire.req_get(b"big"))
        sent = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                sent += flood.send(request * 64)
            except BlockingIOError:
                time.sleep(0.05)  # the node stopped reading: back off and try again
        requests = sent // len(request)
        # each unanswered GET would cost 1 MB if the node buffered them all
        self.assertGreater(requests, 300)
        self.assertLess(rss(self.pid), RSS_BOUND)
        other = RawClient(self.node.port)
        self.assertEqual(other.one(wire.req_size()).result, 1)  # type: ignore[attr-defined]
        other.close()
        flood.close()
        c.close()
        self.alive()

    def test_connection_flood(self) -> None:
        """Connections over the limit get an ERROR and are closed; the rest keep working."""
        node = NodeProcess(args=["--max-connections", "20"]).start()
        self.addCleanup(node.cleanup)
        # the start-up probe's connection may still count: fill up to the limit with
        # clients that each got an answer, so all twenty are known to be accepted
        clients: list[RawClient] = []
        while len(clients) < 20:
            c = RawClient(node.port)
            try:
                reply = c.one(wire.req_size())
            except ConnectionError:
                c.close()
                continue
            if reply.opcode == wire.OP_ERROR:  # type: ignore[attr-defined]
                c.close()
                continue
            clients.append(c)
        extra = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        data = b""
        while chunk := extra.recv(4096):
            data += chunk  # until the node closes it
        [payload] = wire.FrameDecoder().feed(data)
        self.assertIn("too many connections", wire.decode(payload).error)
        for c in clients:
            c.close()
        extra.close()
        wait_for(lambda: _try_size(node.port) == 0, 10, "the node to accept again")


def _try_size(port: int) -> int | None:
    try:
        c = RawClient(port, timeout=2)
        try:
            return int(c.one(wire.req_size()).result)  # type: ignore[attr-defined]
        finally:
            c.close()
    except (OSError, ConnectionError, IndexError):
        return None
