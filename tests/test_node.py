"""A real standalone ``twistd -n kvnode`` process, driven over TCP."""

from __future__ import annotations

import signal
import socket
import subprocess

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvtwist import wire
from kvtwist.client.api import DirectClient, KVError
from tests.nodes import TWISTD, NodeProcess, RawClient, env


class NodeCase(TestCase):
    """A node per test; each test talks to it with the async client library."""

    def setUp(self) -> None:
        self.node = NodeProcess().start()
        self.addCleanup(self.node.cleanup)

    @defer.inlineCallbacks
    def client(self):  # type: ignore[no-untyped-def]
        c = yield DirectClient.connect(reactor, "127.0.0.1", self.node.port)
        self.addCleanup(c.close)
        return c


class ClientLibraryTests(NodeCase):
    @defer.inlineCallbacks
    def test_every_operation(self):  # type: ignore[no-untyped-def]
        """Each client call round-trips through a real node with the expected result."""
        c = yield self.client()
        w1 = yield c.put("lib-b", b"2")
        w2 = yield c.put("lib-a", "1")
        self.assertGreater(w2.op_n, w1.op_n)
        self.assertEqual((yield c.get("lib-a")), b"1")
        self.assertIsNone((yield c.get("lib-missing")))
        keys = yield c.keys()
        self.assertEqual([k for k in keys if k.startswith(b"lib-")], [b"lib-a", b"lib-b"])
        values = yield c.values()
        self.assertEqual(len(values), len(keys))
        self.assertEqual((yield c.range("lib-", b"lib-z")), [(b"lib-a", b"1"), (b"lib-b", b"2")])
        self.assertTrue((yield c.verify(w2.op_n)))
        self.assertFalse((yield c.verify(w2.op_n + 1000)))
        size = yield c.size()
        self.assertEqual(size, len(keys))
        self.assertGreaterEqual((yield c.height()), 1)
        d = yield c.delete("lib-a")
        self.assertEqual(d.found, True)
        d = yield c.delete("lib-a")
        self.assertEqual(d.found, False)
        stats = yield c.stats()
        self.assertEqual(stats.role, "standalone")
        self.assertGreaterEqual({o.op: o.count for o in stats.ops}["PUT"], 2)

    @defer.inlineCallbacks
    def test_server_error_is_raised(self):  # type: ignore[no-untyped-def]
        """An ERROR reply becomes KVError with the server's reason."""
        c = yield self.client()
        with self.assertRaises(KVError) as cm:
            yield c.verify(0)
        self.assertIn("op number", cm.exception.reason)

    @defer.inlineCallbacks
    def test_many_clients_pipelining(self):  # type: ignore[no-untyped-def]
        """Forty clients with fifty writes in flight each: all applied, op numbers unique."""
        clients = yield defer.gatherResults([self.client() for _ in range(40)])
        writes = [
            c.put(f"many-{i:02d}-{j:02d}", f"{i}.{j}")
            for i, c in enumerate(clients)
            for j in range(50)
        ]
        results = yield defer.gatherResults(writes)
        ops = [r.op_n for r in results]
        self.assertEqual(len(set(ops)), len(ops))
        values = yield defer.gatherResults(
            [c.get(f"many-{i:02d}-49") for i, c in enumerate(clients)]
        )
        self.assertEqual(values, [f"{i}.49".encode() for i in range(40)])

    @defer.inlineCallbacks
    def test_big_listing_does_not_stall_small_reads(self):  # type: ignore[no-untyped-def]
        """While one client lists 200,000 values, another's GET is answered first (the
        listing takes tens of milliseconds on its own thread; a GET queued behind it would
        wait for all of them)."""
        loader = yield self.client()
        for start in range(0, 200_000, 10_000):
            yield defer.gatherResults(
                [loader.put(f"big-{i:06d}", b"x" * 16) for i in range(start, start + 10_000)]
            )
        lister, getter = yield defer.gatherResults([self.client(), self.client()])
        order: list[str] = []
        listing = lister.values().addCallback(lambda vs: order.append("values") or vs)
        yield getter.get("big-000001")
        order.append("get")
        values = yield listing
        self.assertEqual(order, ["get", "values"])
        self.assertGreaterEqual(len(values), 200_000)


class RawFrameTests(SynchronousTestCase):
    """Frames built from the .proto, as any other client would send them."""

    def setUp(self) -> None:
        self.node = NodeProcess().start()
        self.addCleanup(self.node.cleanup)

    def test_hand_encoded_c_client_request(self) -> None:
        """Bytes laid out as the original C client sends them get the original reply shape."""
        c = RawClient(self.node.port)
        self.addCleanup(c.close)
        put = bytes([0x08, 50, 0x10, 30, 0x22, 7, 0x0A, 2]) + b"ab" + bytes([0x12, 1, 0x07])
        c.sock.sendall(len(put).to_bytes(4, "big") + put)
        get = bytes([0x08, 40, 0x10, 10, 0x2A, 2]) + b"ab"
        c.sock.sendall(len(get).to_bytes(4, "big") + get)
        r1, r2 = c.read(2)
        self.assertEqual((r1.opcode, r1.c_type, r1.result), (51, wire.CT_RESULT, 1))
        self.assertEqual((r2.opcode, r2.c_type, list(r2.values)), (41, wire.CT_VALUE, [b"\x07"]))

    def test_oversized_frame_answered_then_closed(self) -> None:
        """A 4 GiB length prefix gets an ERROR frame, then the node closes the connection."""
        c = RawClient(self.node.port)
        self.addCleanup(c.close)
        c.sock.sendall(b"\xff\xff\xff\xff")
        data = b""
        while True:
            chunk = c.sock.recv(4096)
            if not chunk:
                break
            data += chunk
        [payload] = wire.FrameDecoder().feed(data)
        self.assertIn("exceeds the maximum", wire.decode(payload).error)
        # the node is still serving others
        other = RawClient(self.node.port)
        self.addCleanup(other.close)
        self.assertEqual(other.one(wire.req_size()).opcode, wire.OP_SIZE + 1)


class ProcessTests(SynchronousTestCase):
    def _shutdown(self, sig: int) -> None:
        node = NodeProcess().start()
        self.addCleanup(node.cleanup)
        c = RawClient(node.port)
        c.one(wire.req_put(b"a", b"1"))
        c.close()
        node.signal(sig)
        assert node.proc is not None
        # twistd ends by re-raising the signal it stopped on, as Unix daemons do
        self.assertIn(node.proc.wait(15), (0, -sig))
        self.assertIn("Server Shut Down", node.log())
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", node.port), timeout=1)

    def test_sigterm(self) -> None:
        """SIGTERM stops the node cleanly: shutdown logged, port closed."""
        self._shutdown(signal.SIGTERM)

    def test_sigint(self) -> None:
        """SIGINT stops the node cleanly too."""
        self._shutdown(signal.SIGINT)

    def test_bad_option(self) -> None:
        """A bad option value is one clear line and a non-zero exit."""
        out = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "kvnode", "--port", "notaport"],
            env=env(), capture_output=True, text=True, timeout=30,
        )
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("--port needs an integer", out.stdout + out.stderr)

    def test_help_lists_options(self) -> None:
        """``twistd kvnode --help`` documents the node's options."""
        out = subprocess.run(
            [TWISTD, "kvnode", "--help"], env=env(), capture_output=True, text=True, timeout=30
        )
        for option in ("--port", "--interface", "--threads", "--max-frame", "--zk",
                       "--zk-root", "--advertise", "--zk-session-timeout"):
            self.assertIn(option, out.stdout)



