"""The campaign's fault machinery without a chain: kinds, proxy rules, big values, stranger.

The proxy runs in a thread of this process against a loopback echo server;
it names connections by the process that dialled them, so the test registers
its own pid under a label and checks the rules follow that label.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.verify import stranger
from kvtwist.verify.nemesis import KINDS, available_kinds, default_kinds, parse_kinds
from kvtwist.verify.proxy import CLIENT, Proxy, ProxyControl, socket_owner
from kvtwist.verify.torture import OutsideWatch, longest_stall, storage_and_key_args, write_key
from kvtwist.verify.workload import BIG_MIN, big_value, value_text
from tests.test_verify import delete, get, put


class Kinds(SynchronousTestCase):
    def test_default_follows_the_node_build(self) -> None:
        """Without --data-dir no crash-restart; stranger only once links have a key."""
        old = default_kinds(frozenset({"zk", "advertise"}))
        self.assertNotIn("crash-restart", old)
        self.assertNotIn("stranger", old)
        self.assertIn("partition", old)
        new = default_kinds(frozenset({"zk", "advertise", "data-dir", "cluster-key-file"}))
        self.assertEqual(new, list(KINDS))

    def test_parse(self) -> None:
        """Listed kinds in order, duplicates dropped; unknown or unsupported ones refused."""
        options = frozenset({"zk"})
        self.assertEqual(parse_kinds("kill, pause,kill", options), ["kill", "pause"])
        self.assertEqual(parse_kinds("stranger", options), ["stranger"])
        self.assertEqual(parse_kinds(None, options), default_kinds(options))
        with self.assertRaisesRegex(ValueError, "unknown nemesis kind 'nap'"):
            parse_kinds("kill,nap", options)
        with self.assertRaisesRegex(ValueError, "--data-dir"):
            parse_kinds("crash-restart", options)
        self.assertIsNone(available_kinds(frozenset({"data-dir"}))["crash-restart"])


class BigValues(SynchronousTestCase):
    def test_round_trip_and_corruption(self) -> None:
        """A big value reads back as tag#size; one flipped byte or a cut makes it no value."""
        data = big_value("c3-17", BIG_MIN + 5)
        self.assertEqual(len(data), BIG_MIN + 5)
        self.assertEqual(value_text(data), f"c3-17#{BIG_MIN + 5}")
        self.assertEqual(value_text(b"c1-2"), "c1-2")
        flipped = data[:-1] + bytes([data[-1] ^ 1])
        self.assertIn("corrupt", value_text(flipped))
        self.assertIn("corrupt", value_text(data[: BIG_MIN // 2]))
        self.assertNotEqual(big_value("c3-18", BIG_MIN)[20:], big_value("c3-17", BIG_MIN)[20:])

    def test_unavailability_counts_writes_only(self) -> None:
        """Reads that succeed do not hide a window without an acknowledged write."""
        ops = [put(0, "a", 0, 1), get(1, "a", 2, 3), get(1, "a", 5, 6), delete(0, 6, 9)]
        self.assertEqual(longest_stall(ops), (3.0, 3.0))
        self.assertEqual(longest_stall(ops, writes_only=True), (8.0, 1.0))


class ProxyThread:
    """A proxy's event loop in a thread, driven from the test through ``call``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxy = Proxy()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, **req: Any) -> dict[str, Any]:
        return asyncio.run_coroutine_threadsafe(self.proxy.command(req), self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextmanager
def echo_server() -> Iterator[int]:
    """A loopback server echoing every byte, in a thread; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := _recv(conn):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        done.set()
        server.close()
        t.join(5)


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except OSError:
        return b""


def roundtrip(port: int, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        return _recv(s)


class ProxyRules(SynchronousTestCase):
    def setUp(self) -> None:
        self.p = ProxyThread()
        self.addCleanup(self.p.stop)
        echo = echo_server()
        self.target = echo.__enter__()
        self.addCleanup(echo.__exit__, None, None, None)
        self.port = int(self.p.call(op="route", name="n1", target=self.target)["port"])

    def test_owner_of_a_connection(self) -> None:
        """The kernel names the dialling process: this one, once registered, else 'client'."""
        with socket.create_connection(("127.0.0.1", self.target)) as s:
            local = s.getsockname()[1]
            self.assertEqual(socket_owner(local, self.target, {}), CLIENT)
            self.assertEqual(socket_owner(local, self.target, {os.getpid(): "me"}), "me")

    def test_forwards_until_cut(self) -> None:
        """Bytes flow both ways; a drop rule for our label refuses new connections."""
        self.assertEqual(roundtrip(self.port), b"ping")
        self.p.call(op="owner", pid=os.getpid(), label="n2")
        self.p.call(op="rule", route="n1", source="n2", mode="drop")
        self.assertEqual(roundtrip(self.port), b"")
        self.p.call(op="rule", route="n1", source="n2", mode=None)
        self.assertEqual(roundtrip(self.port), b"ping")

    def test_rule_for_another_source_leaves_us_alone(self) -> None:
        """A cut between two other nodes does not touch this connection."""
        self.p.call(op="owner", pid=os.getpid(), label="n2")
        self.p.call(op="rule", route="n1", source="n3", mode="drop")
        self.assertEqual(roundtrip(self.port), b"ping")

    def test_blackhole_holds_bytes_until_healed(self) -> None:
        """Blackholed: the connection stays open and silent; healed, the held bytes arrive."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"one")
            self.assertEqual(s.recv(10), b"one")
            self.p.call(op="rule", route="n1", source="*", mode="blackhole")
            s.sendall(b"two")
            s.settimeout(0.3)
            with self.assertRaises(TimeoutError):
                s.recv(10)
            self.p.call(op="clear")
            s.settimeout(2)
            self.assertEqual(s.recv(10), b"two")

    def test_drop_aborts_open_connections(self) -> None:
        """A drop rule resets connections already open from that source."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"one")
            self.assertEqual(s.recv(10), b"one")
            self.p.call(op="rule", route="n1", source="*", mode="drop")
            self.assertEqual(_recv(s), b"")
        stats = self.p.call(op="stats")["routes"]["n1"]
        self.assertEqual(stats["rules"], {"*": "drop"})


class Stranger(SynchronousTestCase):
    def test_verdicts(self) -> None:
        """An ERROR is a refusal, a chain reply an acceptance, nothing at all silence."""
        replies: list[bytes] = []

        def serve(sock: socket.socket) -> None:
            conn, _ = sock.accept()
            with conn:
                conn.recv(65536)
                for r in replies:
                    conn.sendall(r)
                conn.recv(65536)

        cases = [
            ([wire.frame(wire.error_reply("no"))], "refused"),
            ([wire.frame(stranger.forged(wire.OP_CHAIN_ACK, "x", 1))], "accepted"),
            ([], "silent"),
        ]
        self.patch(stranger, "WAIT", 0.3)
        for frames, verdict in cases:
            replies[:] = frames
            with socket.create_server(("127.0.0.1", 0)) as sock:
                t = threading.Thread(target=serve, args=(sock,), daemon=True)
                t.start()
                port = sock.getsockname()[1]
                got, _ = stranger.attempt(port, [stranger.forged(wire.OP_CHAIN_JOIN, "", 1)])
                t.join(5)
            self.assertEqual(got, verdict)


class NodeArguments(SynchronousTestCase):
    def test_own_data_directory_and_key(self) -> None:
        """Each node gets its own data directory and the key; an old build gets neither."""
        key = Path(self.mktemp())
        new = frozenset({"zk", "data-dir", "cluster-key-file"})
        args = storage_and_key_args(Path("/r/nodes/n2"), new, key)
        self.assertEqual(args, ["--data-dir", "/r/nodes/n2/data", "--cluster-key-file", str(key)])
        self.assertEqual(storage_and_key_args(Path("/r/nodes/n2"), frozenset({"zk"}), key), [])

    def test_key_readable_by_owner_only(self) -> None:
        """The key file is mode 600 and holds 32 random bytes in hex; never overwritten."""
        self.addCleanup(os.umask, os.umask(0o022))  # a common umask that would leave 644
        path = write_key(Path(self.mktemp()))
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertRegex(path.read_text(), r"^[0-9a-f]{64}\n$")
        with self.assertRaises(FileExistsError):
            write_key(path)


class ProxyProcess(SynchronousTestCase):
    def test_quiet_shutdown_under_a_waiting_campaign(self) -> None:
        """Stopping the proxy while the campaign's control connection waits logs nothing:
        its log holds faults only."""
        log = Path(self.mktemp())
        control = ProxyControl(log)
        self.addCleanup(control.close)
        control.route("n1", 9)
        control.process.terminate()
        self.assertEqual(control.process.wait(10), 0)
        self.assertEqual(log.read_text(), "")


class Stranded(SynchronousTestCase):
    def test_running_outside_the_chain_too_long(self) -> None:
        """A running node unlisted past the limit is reported once; rejoining, pausing
        or a reset starts its clock again."""
        w = OutsideWatch(20.0)
        self.assertEqual(w.update(0.0, ["n1", "n2", "n3"], {"n1", "n3"}), [])
        self.assertEqual(w.update(15.0, ["n1", "n2", "n3"], {"n1", "n3"}), [])
        self.assertEqual(w.update(21.0, ["n1", "n2", "n3"], {"n1", "n3"}), ["n2"])
        self.assertEqual(w.update(22.0, ["n1", "n3"], {"n1", "n3"}), [])
        # back in the chain, or paused (not running) for a while: the clock restarts
        w.update(30.0, ["n4"], set())
        w.update(40.0, ["n4"], {"n4"})
        self.assertEqual(w.update(55.0, ["n4"], set()), [])
        w.update(56.0, [], set())
        self.assertEqual(w.update(70.0, ["n4"], set()), [])
        w.reset()
        self.assertEqual(w.update(95.0, ["n4"], set()), [])
        self.assertEqual(w.update(115.5, ["n4"], set()), ["n4"])
