"""BlockingClient against real node processes (no mocks).

These tests run the client on a private reactor in its own thread: the global
reactor belongs to trial (an async TestCase elsewhere in the run spins it), and
a reactor started in a thread can never be stopped and run again.  One test
runs a script in a subprocess to cover the default, global-reactor path.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from typing import Any

from twisted.internet import selectreactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.client.api import Client, DirectClient, Stats, WriteResult
from kvtwist.client.blocking import BlockingClient, RequestTimeout
from kvtwist.client.protocol import ConnectionFailed, KVError
from tests.nodes import ROOT, NodeProcess, env, free_port, wait_for

_shared: list[Any] = []
_shared_lock = threading.Lock()


def private_reactor() -> Any:
    """A reactor of the tests' own, run in a daemon thread by BlockingClient.

    One per test process; blocking.py stops it at interpreter exit.
    """
    with _shared_lock:
        if not _shared:
            _shared.append(selectreactor.SelectReactor())
        return _shared[0]


def refused(port: int) -> str:
    return f"cannot connect to 127.0.0.1:{port}: Connection refused"


def start_node(test: SynchronousTestCase, port: int | None = None) -> NodeProcess:
    """A fresh node for one test, stopped (and its log printed on failure) afterwards."""
    node = NodeProcess(port=port).start()

    def cleanup() -> None:
        node.cleanup()

    test.addCleanup(cleanup)
    return node


class BlockingClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = start_node(self)
        self.kv = BlockingClient.connect(self.node.address, timeout=10, reactor=private_reactor())
        self.addCleanup(self.kv.close)

    def test_writes_and_reads_round_trip(self) -> None:
        """put/get/delete return plain values: op numbers, bytes, found flags."""
        kv = self.kv
        first = kv.put("a", b"1")
        self.assertIsInstance(first, WriteResult)
        self.assertEqual(first.op_n, 1)
        self.assertEqual(kv.put("b", "zwei").op_n, 2)  # str values are stored as UTF-8
        self.assertEqual(kv.get("a"), b"1")
        self.assertEqual(kv.get("b"), b"zwei")
        self.assertIsNone(kv.get("missing"))
        self.assertEqual(kv.delete("a"), WriteResult(3, True))
        self.assertEqual(kv.delete("a"), WriteResult(4, False))
        self.assertIsNone(kv.get("a"))

    def test_binary_values_round_trip(self) -> None:
        """Values are bytes end to end, NULs and invalid UTF-8 included."""
        value = bytes(range(256))
        self.kv.put("bin", value)
        self.assertEqual(self.kv.get("bin"), value)
        self.assertEqual(self.kv.values(), [value])

    def test_keys_as_str_or_bytes(self) -> None:
        """A str key is its UTF-8 bytes; any bytes are a key; listings give keys as bytes."""
        kv = self.kv
        kv.put("café", b"text")
        self.assertEqual(kv.get("café".encode()), b"text")
        kv.put(b"caf\xe9", b"latin-1")
        self.assertEqual(kv.get(b"caf\xe9"), b"latin-1")
        self.assertEqual(kv.get("café"), b"text")  # not the same key
        self.assertEqual(kv.keys(), ["café".encode(), b"caf\xe9"])
        self.assertEqual(kv.range(b"caf\xe9"), [(b"caf\xe9", b"latin-1")])
        self.assertEqual(kv.range("caf", "cag", 1), [("café".encode(), b"text")])
        self.assertEqual(kv.delete(b"caf\xe9"), WriteResult(3, True))
        self.assertEqual(kv.delete("café"), WriteResult(4, True))
        self.assertEqual(kv.keys(), [])

    def test_whole_store_reads(self) -> None:
        """size, height, keys, values and range see the same ordered store."""
        kv = self.kv
        self.assertEqual((kv.size(), kv.height(), kv.keys(), kv.values()), (0, 0, [], []))
        for key in ["d", "b", "a", "c", "e"]:
            kv.put(key, key.upper())
        self.assertEqual(kv.size(), 5)
        self.assertEqual(kv.height(), 3)
        self.assertEqual(kv.keys(), [b"a", b"b", b"c", b"d", b"e"])
        self.assertEqual(kv.values(), [b"A", b"B", b"C", b"D", b"E"])
        self.assertEqual(len(kv.range()), 5)
        self.assertEqual(kv.range("b", "d"), [(b"b", b"B"), (b"c", b"C")])
        self.assertEqual(kv.range("c"), [(b"c", b"C"), (b"d", b"D"), (b"e", b"E")])
        self.assertEqual(kv.range(None, "b"), [(b"a", b"A")])
        self.assertEqual(kv.range("b", None, 2), [(b"b", b"B"), (b"c", b"C")])

    def test_verify(self) -> None:
        """verify is True for an executed op number and False for a future one."""
        op = self.kv.put("k", b"v").op_n
        self.assertTrue(self.kv.verify(op))
        self.assertFalse(self.kv.verify(op + 100))

    def test_stats(self) -> None:
        """stats returns the Stats dataclass with the node's counters."""
        self.kv.put("k", b"v")
        self.kv.get("k")
        st = self.kv.stats()
        self.assertIsInstance(st, Stats)
        self.assertEqual((st.keys, st.height, st.last_op), (1, 1, 1))
        self.assertEqual(st.role, "standalone")
        self.assertGreaterEqual(st.connections, 1)
        counts = {o.op: o.count for o in st.ops}
        self.assertEqual((counts["PUT"], counts["GET"]), (1, 1))

    def test_raw_returns_error_replies_unchecked(self) -> None:
        """raw hands back the reply Message, an ERROR reply included, without raising."""
        ok = self.kv.raw(wire.req_size())
        self.assertEqual((ok.opcode, ok.result), (wire.OP_SIZE + 1, 0))
        bad = self.kv.raw(wire.Message(opcode=wire.OP_GET, c_type=wire.CT_NONE))
        self.assertEqual(bad.opcode, wire.OP_ERROR)
        self.assertIn("c_type", bad.error)

    def test_server_error_raises_kverror(self) -> None:
        """An ERROR reply raises KVError carrying the server's reason."""
        with self.assertRaises(KVError) as cm:
            self.kv.verify(0)
        self.assertEqual(str(cm.exception), "VERIFY needs an op number > 0, got 0")
        self.assertFalse(cm.exception.retry)
        self.assertEqual(self.kv.size(), 0)  # the connection is still usable

    def test_calls_from_many_threads(self) -> None:
        """Threads sharing one client each get their own answers."""
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(20):
                    key = f"t{n}-{i}"
                    self.kv.put(key, key)
                    if self.kv.get(key) != key.encode():
                        raise AssertionError(f"wrong value for {key}")
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(self.kv.size(), 80)

    def test_close_and_context_manager(self) -> None:
        """After close (or a with block's end) calls raise ConnectionFailed; close is idempotent."""
        with BlockingClient.connect(self.node.address, reactor=private_reactor()) as kv:
            self.assertEqual(kv.size(), 0)
        self.assertRaises(ConnectionFailed, kv.size)
        self.assertTrue(kv.lost)
        kv.close()
        self.assertRaises(ConnectionFailed, kv.put, "a", b"1")

    def test_lost_connection_and_reconnect(self) -> None:
        """A stopped node makes calls raise ConnectionFailed; reconnect() reaches its successor."""
        port = self.node.port
        self.kv.put("a", b"1")
        self.node.stop()
        wait_for(lambda: self.kv.lost, 10, "the client to notice the closed connection")
        self.assertRaises(ConnectionFailed, self.kv.get, "a")
        with self.assertRaises(ConnectionFailed) as cm:
            self.kv.reconnect()
        self.assertEqual(str(cm.exception), refused(port))
        start_node(self, port=port)
        self.kv.reconnect()
        self.assertFalse(self.kv.lost)
        self.assertEqual(self.kv.size(), 0)  # a new, empty node


class FailureTests(SynchronousTestCase):
    def test_closed_port_raises_connection_failed(self) -> None:
        """Connecting to a closed port raises ConnectionFailed with a short reason."""
        port = free_port()
        with self.assertRaises(ConnectionFailed) as cm:
            BlockingClient.connect(f"127.0.0.1:{port}", reactor=private_reactor())
        self.assertEqual(str(cm.exception), refused(port))

    def test_bad_address_raises_value_error(self) -> None:
        """A malformed address is a ValueError before any connection attempt."""
        self.assertRaises(ValueError, BlockingClient.connect, "no-port", reactor=private_reactor())
        self.assertRaises(ValueError, BlockingClient.connect, "h:99999", reactor=private_reactor())

    def test_silent_server_times_out(self) -> None:
        """A peer that never answers gives RequestTimeout (a ConnectionFailed) after the timeout."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(5)  # the kernel completes the handshake; nobody ever replies
            port = listener.getsockname()[1]
            kv = BlockingClient.connect(f"127.0.0.1:{port}", timeout=0.3, reactor=private_reactor())
            self.addCleanup(kv.close)
            started = time.monotonic()
            with self.assertRaises(RequestTimeout) as cm:
                kv.size()
            self.assertLess(time.monotonic() - started, 5)
            self.assertIsInstance(cm.exception, ConnectionFailed)
            self.assertIn("no reply from the server within 0.3s", str(cm.exception))

    def test_connect_timeout(self) -> None:
        """A client factory that never fires fails with ConnectionFailed after the timeout."""
        with self.assertRaises(ConnectionFailed) as cm:
            BlockingClient(lambda r: Deferred(), timeout=0.2, reactor=private_reactor(),
                           description="nowhere")
        self.assertEqual(str(cm.exception), "cannot connect to nowhere: timed out after 0.2s")

    def test_no_deadlock_in_the_reactor_thread(self) -> None:
        """A call from the reactor's own thread raises RuntimeError instead of hanging."""
        node = start_node(self)
        reactor = private_reactor()
        kv = BlockingClient.connect(node.address, reactor=reactor)
        self.addCleanup(kv.close)
        self.assertRaises(RuntimeError, blockingCallFromThread, reactor, kv.size)
        self.assertEqual(kv.size(), 0)


class FactoryTests(SynchronousTestCase):
    def test_any_async_client_factory_plugs_in(self) -> None:
        """BlockingClient(make) uses the Client make() builds and calls make again to reconnect."""
        node = start_node(self)
        made: list[Client] = []

        def keep(client: Client) -> Client:
            made.append(client)
            return client

        def make(reactor: Any) -> Deferred[Client]:
            return DirectClient.connect(reactor, "127.0.0.1", node.port).addCallback(keep)

        kv = BlockingClient(make, reactor=private_reactor())
        self.addCleanup(kv.close)
        kv.put("x", b"y")
        self.assertEqual(len(made), 1)
        self.assertIs(kv.client, made[0])
        kv.reconnect()
        self.assertEqual(len(made), 2)
        self.assertEqual(kv.get("x"), b"y")

    def test_factory_errors_propagate(self) -> None:
        """An exception from the factory reaches the caller unchanged."""

        def make(reactor: Any) -> Deferred[Client]:
            raise ConnectionFailed("cannot reach ZooKeeper at zk:2181: refused")

        with self.assertRaises(ConnectionFailed) as cm:
            BlockingClient(make, reactor=private_reactor())
        self.assertIn("ZooKeeper", str(cm.exception))


SCRIPT = """
import sys
from kvtwist.client.blocking import BlockingClient
kv = BlockingClient.connect(sys.argv[1])
print(kv.put("k", b"v").op_n, kv.get("k"), kv.size())
kv.close()
"""


class GlobalReactorTests(SynchronousTestCase):
    def test_script_on_the_global_reactor_exits_promptly(self) -> None:
        """A script works on the global reactor and exits at once (no thread keeps it alive)."""
        node = start_node(self)
        # "localhost" is resolved on the reactor's (non-daemon) thread pool.
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, f"localhost:{node.port}"],
            cwd=ROOT, env=env(), capture_output=True, timeout=30,
        )
        self.assertEqual(proc.stderr, b"")
        self.assertEqual(proc.stdout, b"1 b'v' 1\n")
        self.assertEqual(proc.returncode, 0)

