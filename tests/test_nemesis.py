"""The campaign's fault machinery without a chain: kinds, proxy rules, big values, stranger.

The proxy runs in a thread of this process against a loopback echo server;
it names connections by the process that dialled them, so the test registers
its own pid under a label and checks the rules follow that label.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from random import Random
from types import SimpleNamespace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.procs import node_env
from kvtwist.proto.kvtwist_pb2 import Update
from kvtwist.storage import wal
from kvtwist.storage.records import LogRecord
from kvtwist.verify import check, nemesis, stranger
from kvtwist.verify.campaign.cluster import storage_and_key_args, write_key
from kvtwist.verify.campaign.report import longest_stall
from kvtwist.verify.campaign.verdict import IDENTICAL, Findings, checks, exit_status, failures
from kvtwist.verify.campaign.watch import OutsideWatch, Watch
from kvtwist.verify.durability import LostWrite
from kvtwist.verify.faults.base import STICKY, STICKY_ZK, Node
from kvtwist.verify.faults.clock import STEP_SECONDS
from kvtwist.verify.faults.disk import embedded_record, hostile_value, tear_last_record
from kvtwist.verify.faults.network import FLAP_CUT, FLAP_SPAN, ISOLATE_SESSIONS
from kvtwist.verify.nemesis import (
    FAULTS,
    KINDS,
    MEMBER_KINDS,
    PROXY_KINDS,
    Nemesis,
    available_kinds,
    default_kinds,
    parse_kinds,
)
from kvtwist.verify.proxy import CLIENT, Proxy, ProxyControl, socket_owner
from kvtwist.verify.torture import Campaign, parse_args
from kvtwist.verify.wallclock import WallClock
from kvtwist.verify.workload import BIG_MIN, big_value, value_text
from tests.test_verify import delete, get, put


class Kinds(SynchronousTestCase):
    def test_default_follows_the_node_build(self) -> None:
        """Without --data-dir no crash-restart nor hostile-torn; stranger only once links
        have a key; clock-step only where wall clocks can be stepped (a C compiler)."""
        self.patch(nemesis.wallclock, "unavailable", lambda: None)
        old = default_kinds(frozenset({"zk", "advertise"}))
        self.assertNotIn("crash-restart", old)
        self.assertNotIn("hostile-torn", old)
        self.assertNotIn("stranger", old)
        self.assertIn("partition", old)
        new = default_kinds(frozenset({"zk", "advertise", "data-dir", "cluster-key-file"}))
        self.assertEqual(new, list(KINDS))
        self.patch(nemesis.wallclock, "unavailable", lambda: "no C compiler (cc)")
        self.assertNotIn("clock-step", default_kinds(frozenset({"data-dir"})))
        with self.assertRaisesRegex(ValueError, "no C compiler"):
            parse_kinds("clock-step", frozenset({"data-dir"}))

    def test_parse(self) -> None:
        """Listed kinds in order, duplicates dropped; unknown or unsupported ones refused."""
        # whether clock steps are possible (building their shim) is the other test's
        self.patch(nemesis.wallclock, "unavailable", lambda: None)
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

    def test_pass_is_the_exception_to_a_cut(self) -> None:
        """Under a ``*`` drop, a ``pass`` rule for our label keeps our open connection and
        lets new ones through; everyone else is cut."""
        self.p.call(op="owner", pid=os.getpid(), label=STICKY)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"one")
            self.assertEqual(s.recv(10), b"one")
            self.p.call(op="rule", route="n1", source=STICKY, mode="pass")
            self.p.call(op="rule", route="n1", source="*", mode="drop")
            s.sendall(b"two")
            self.assertEqual(s.recv(10), b"two")
        self.assertEqual(roundtrip(self.port), b"ping")
        self.p.call(op="owner", pid=os.getpid(), label="n2")
        self.assertEqual(roundtrip(self.port), b"")

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

    def test_node_a_fault_holds_is_not_stranded(self) -> None:
        """A node cut off by a fault longer than the limit is not reported while the fault
        lasts (it cannot rejoin through a cut link); it has the whole limit afterwards."""
        held = SimpleNamespace(label="n4", port=4, state="running", proc=None)
        fault = SimpleNamespace(targets=[held], whole=False)
        cluster = SimpleNamespace(
            members=lambda: [("node1", 1)],
            label_of=lambda port: f"n{port}",
            nodes=[held, SimpleNamespace(label="n1", port=1, state="running")],
        )
        watch = Watch(cluster, SimpleNamespace(), Random(0))  # type: ignore[arg-type]
        watch.outside = OutsideWatch(0.5)
        for _ in range(3):
            watch.last_outside_check = -10.0
            watch.check_stranded([fault])  # type: ignore[list-item]
        self.assertEqual(watch.stranded, [])
        self.assertNotIn("n4", watch.outside.since)


def findings(**changes: Any) -> Findings:
    """The end of a campaign where every promise held, with ``changes`` applied."""
    ops = [put(0, "a", 0.0, 1.0), put(1, "b", 0.5, 1.5, key="j")]
    finals = [get(-1, "a", 2.0, 2.1), get(-1, "b", 2.2, 2.3, key="j")]
    copy = [(b"j", b"b"), (b"k", b"a")]
    fields: dict[str, Any] = {
        "nodes": 3,
        "keys": 2,
        "client_ops": ops,
        "finals": finals,
        "result": check(ops + finals),
        "check_s": 0.01,
        "liveness": {"live": True, "seconds": 0.3, "why": ""},
        "settled": True,
        "settle_s": 1.0,
        "copies": {"n1": copy, "n2": copy, "n3": copy},
        "lost": [],
        "outside": [],
        "stranded": [],
        "unexpected_exits": [],
        "stranger_accepted": 0,
        "workload_status": 0,
    }
    fields.update(changes)
    return Findings(**fields)


class Verdicts(SynchronousTestCase):
    """The campaign's end: one list of checks gives the exit status, report.json and the reasons."""

    def campaign(self) -> tuple[Campaign, io.StringIO]:
        out = io.StringIO()
        self.patch(sys, "stderr", out)
        report = Path(self.mktemp())
        report.mkdir()
        return Campaign(parse_args(["--report", str(report)]), [], frozenset()), out

    def test_all_pass(self) -> None:
        """When every promise held, every check passes and the exit status is 0."""
        results = checks(findings())
        self.assertEqual([c for c in results if not c.passed], [])
        self.assertEqual(failures(results), [])
        self.assertEqual(exit_status(results), 0)

    def test_each_failure_alone_fails_with_its_reason(self) -> None:
        """Each way a campaign can fail fails exactly its own check, exit 1, with a reason."""
        stale = [put(0, "a", 0.0, 1.0), get(1, None, 2.0, 3.0)]
        copy = [(b"k", b"a")]
        cases: list[tuple[dict[str, Any], str, str]] = [
            (
                {"liveness": {"live": False, "seconds": 30.0, "why": "never acknowledged"}},
                "live",
                "stuck: never acknowledged",
            ),
            ({"result": check(stale)}, "linearizable", "NOT linearizable"),
            (
                {"lost": [LostWrite("k", None, (put(0, "a", 0.0, 1.0),))]},
                "no lost acknowledged writes",
                "1 acknowledged writes missing",
            ),
            ({"copies": {"n1": copy, "n2": copy, "n3": []}}, IDENTICAL, "nodes differ"),
            ({"copies": {"n1": copy, "n2": None, "n3": copy}}, IDENTICAL, "copies not read: n2"),
            ({"copies": {"n1": copy, "n2": copy}}, IDENTICAL, "2 members at the end, not 3"),
            ({"finals": []}, "final reads", "only 0 of 2 keys"),
            ({"outside": ["n4"]}, "no running outside the chain", "not in the chain: n4"),
            ({"stranded": ["n2 (port 1) at 3.0s"]}, "no stranded nodes", "never rejoined"),
            (
                {"unexpected_exits": ["n1 (port 1) exit 1"]},
                "no unexpected exits",
                "exited by themselves: n1 (port 1) exit 1",
            ),
            ({"stranger_accepted": 2}, "no stranger accepted", "2 stranger messages"),
            ({"workload_status": 3}, "workload", "the workload exited with 3"),
            ({"workload_status": None}, "workload", "no workload ran"),
            ({"client_ops": []}, "operations", "the clients recorded no operation"),
        ]
        for change, name, reason in cases:
            results = checks(findings(**change))
            failed = [c for c in results if not c.passed]
            self.assertEqual([c.name for c in failed], [name], change)
            self.assertIn(reason, failed[0].why or "", change)
            self.assertEqual(failures(results), [failed[0].why])
            self.assertEqual(exit_status(results), 1)

    def test_unsettled_chain_fails_its_checks_with_their_reasons(self) -> None:
        """A chain that did not settle fails the copies and the final reads, and says so."""
        results = checks(findings(settled=False, finals=[]))
        self.assertEqual(
            failures(results),
            ["the chain did not settle", "no final reads: the chain did not settle"],
        )

    def test_failing_report_exits_1_and_prints_its_reason(self) -> None:
        """One failed check: FAIL with its reason printed, report.json not ok, exit 1."""
        campaign, out = self.campaign()
        found = findings(client_ops=[])
        self.assertEqual(campaign.report(found, checks(found)), 1)
        text = out.getvalue()
        self.assertTrue(text.startswith("FAIL: "), text)
        self.assertIn("\n  the clients recorded no operation\n", text)
        report = json.loads((campaign.report_dir / "report.json").read_text())
        self.assertFalse(report["ok"])
        self.assertEqual(
            report["failed_checks"], {"operations": "the clients recorded no operation"}
        )
        self.assertTrue(report["nodes_identical"])
        self.assertTrue(report["linearizable"])

    def test_passing_report_exits_0(self) -> None:
        """Every check passed: PASS, no reasons, report.json ok, exit 0."""
        campaign, out = self.campaign()
        found = findings()
        self.assertEqual(campaign.report(found, checks(found)), 0)
        lines = out.getvalue().splitlines()
        self.assertTrue(lines[0].startswith("PASS: "), lines)
        self.assertEqual(len(lines), 2, lines)  # the summary and where the report is
        report = json.loads((campaign.report_dir / "report.json").read_text())
        self.assertTrue(report["ok"])
        self.assertEqual(report["failed_checks"], {})
        self.assertEqual(report["operations"], 2)
        self.assertEqual(report["final_reads"], 2)


class FakeProc:
    """What the nemesis uses of a NodeProcess: its directory, kill, exit status."""

    def __init__(self, directory: Path, port: int) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.exited: int | None = None
        self.logfile = directory / "node.log"
        self.pid = None

    def kill(self) -> None:
        self.exited = -9

    def stop(self) -> None:
        self.exited = 0


class FakeProxy:
    """Records the rules in force: (route, source) -> mode."""

    def __init__(self) -> None:
        self.rules: dict[tuple[str, str], str] = {}

    def rule(self, route: str, source: str, mode: str | None, rate: float = 0.0) -> None:
        if mode is None:
            self.rules.pop((route, source), None)
        else:
            self.rules[(route, source)] = mode

    def clear(self) -> None:
        self.rules.clear()


class FakeWorld:
    """A chain of ``n`` running nodes, listed in order, and the campaign's bookkeeping."""

    def __init__(self, root: Path, n: int = 3, sticky: int = 2) -> None:
        self.rng = Random(5)
        self.zk = None
        self.proxy = FakeProxy()
        self.report_dir = root
        self.session_timeout = 10.0
        self.keys = 8
        self.seed = 5
        self.stranger_results: list[dict[str, Any]] = []
        self.sticky_clients = sticky
        self.events: list[dict[str, Any]] = []
        self.cfg = 7
        self.nodes: list[Node] = []
        for _ in range(n):
            self.start_node()

    def members(self) -> list[tuple[str, int]]:
        return [
            (f"node{i:010d}", n.address_port)
            for i, n in enumerate(self.nodes)
            if n.state == "running"
        ]

    def node_of(self, port: int) -> Node | None:
        return next((n for n in self.nodes if n.address_port == port), None)

    def start_node(self) -> Node:
        label = f"n{len(self.nodes) + 1}"
        proc = FakeProc(self.report_dir / label, 9000 + len(self.nodes))
        node = Node(label, proc)  # type: ignore[arg-type]
        (proc.dir / "clock").write_text("+0\n")
        self.nodes.append(node)
        return node

    def restart_node(self, node: Node) -> None:
        node.proc.exited = None

    def event(self, kind: str, label: str, **extra: Any) -> None:
        self.events.append({"kind": kind, "label": label, **extra})

    def config(self) -> int:
        return self.cfg

    def replace_later(self) -> None:
        pass

    def target_nodes(self) -> int:
        return 3


class NewKinds(SynchronousTestCase):
    def nemesis(self, kind: str, **kw: Any) -> tuple[FakeWorld, Nemesis]:
        world = FakeWorld(Path(self.mktemp()), **kw)
        return world, Nemesis(world, [kind], 3.0)  # type: ignore[arg-type]

    def test_isolate_cuts_member_and_sticky_clients_off_together(self) -> None:
        """isolate: the member loses ZooKeeper, its neighbours and the other clients at once,
        the sticky clients lose ZooKeeper and everyone but it; healed, no rule is left."""
        world, nem = self.nemesis("isolate")
        self.assertTrue(nem.inject())
        [a] = nem.active
        [node] = a.targets
        self.assertTrue(a.whole)
        others = [n.label for n in world.nodes if n is not node]
        mode = world.proxy.rules[(node.label, "*")]
        self.assertIn(mode, ("drop", "blackhole"))
        expected = {(node.zk_route, "*"): "blackhole", (node.label, "*"): mode}
        expected[(node.label, STICKY)] = "pass"
        expected[(STICKY_ZK, "*")] = "drop"
        for label in others:
            expected[(label, node.label)] = mode
            expected[(label, STICKY)] = mode
        self.assertEqual(world.proxy.rules, expected)
        assert a.end_at is not None
        held = a.end_at - time.monotonic()
        low, high = (world.session_timeout * f for f in ISOLATE_SESSIONS)
        self.assertTrue(low - 1 <= held <= high, held)
        nem.end(a)
        self.assertEqual(world.proxy.rules, {})

    def test_isolate_takes_tail_head_and_middle_in_turn(self) -> None:
        """Successive isolations cover every role before repeating one."""
        world, nem = self.nemesis("isolate")
        roles = []
        for _ in range(3):
            self.assertTrue(nem.inject())
            roles.append(world.events[-1]["role"])
            nem.end(nem.active[0])
        self.assertEqual(sorted(roles), ["head", "middle", "tail"])

    def test_every_kind_is_a_row_of_the_table(self) -> None:
        """KINDS, the member kinds and the proxy kinds all come from FAULTS, in its order."""
        self.assertEqual(KINDS, tuple(FAULTS))
        self.assertEqual(
            MEMBER_KINDS, ("kill", "pause", "short-pause", "partition", "crash-restart")
        )
        self.assertEqual(PROXY_KINDS, ("partition", "join-fault", "isolate", "zk-flap"))

    def test_combined_starts_member_faults_from_the_table_tagged(self) -> None:
        """combined starts two member faults through their rows, each event label tagged "+"."""
        world, nem = self.nemesis("combined")
        nem.kinds = ["combined", "kill"]  # its parts: kills
        healthy = nem.healthy()
        assert healthy is not None
        a = FAULTS["combined"].start(nem, healthy)
        assert a is not None
        self.assertEqual((a.kind, a.whole, len(a.targets)), ("combined", True, 2))
        labels = [e["label"] for e in world.events]
        self.assertEqual([label[:6] for label in labels[:2]], ["+kill ", "+kill "])
        self.assertEqual(labels[2], "combined: kill + kill")

    def test_isolate_without_sticky_clients(self) -> None:
        """With no sticky clients there is no exception and no client route to cut."""
        world, nem = self.nemesis("isolate", sticky=0)
        self.assertTrue(nem.inject())
        self.assertFalse([r for r in world.proxy.rules if STICKY in r or r[0] == STICKY_ZK])

    def test_zk_flap_waits_for_a_membership_change_then_resets_within_a_second(self) -> None:
        """zk-flap cuts nothing until the configuration changes, then resets one member's
        ZooKeeper route several times within a second and leaves it open."""
        world, nem = self.nemesis("zk-flap")
        self.assertTrue(nem.inject())
        [a] = nem.active
        assert a.poll is not None
        now = time.monotonic()
        self.assertFalse(a.poll(now))
        self.assertEqual(world.proxy.rules, {})
        world.cfg = 8
        self.assertFalse(a.poll(now))
        [node] = a.targets
        seen: list[tuple[float, str | None]] = []
        t = now
        while not a.poll(t):
            seen.append((t, world.proxy.rules.get((node.zk_route, "*"))))
            t += 0.01
            self.assertLess(t - now, FLAP_SPAN + FLAP_CUT[1] + 0.1)
        cuts = [i for i in range(1, len(seen)) if seen[i][1] == "drop" and seen[i - 1][1] is None]
        cuts += [0] if seen[0][1] == "drop" else []
        self.assertTrue(3 <= len(cuts) <= 6, seen)
        self.assertEqual(world.proxy.rules, {})

    def test_zk_flap_starts_a_joiner_when_nothing_changes(self) -> None:
        """Without a membership change for two fault intervals, zk-flap starts a joiner,
        and stops it at the end when the chain is longer than asked."""
        world, nem = self.nemesis("zk-flap")
        nem.inject()
        [a] = nem.active
        assert a.poll is not None
        self.assertFalse(a.poll(time.monotonic() + 7.0))
        self.assertEqual(len(world.nodes), 4)
        self.assertEqual(world.events[-1]["label"], "start n4 to change the membership")
        nem.end(a)  # the chain goes back to its length
        self.assertEqual([n.state for n in world.nodes], ["running"] * 3 + ["dead"])

    def test_clock_step_moves_one_clock_and_back(self) -> None:
        """clock-step writes a step of seconds to minutes into one member's clock file,
        forward once and back once over two faults, and true time again when it ends."""
        world, nem = self.nemesis("clock-step")
        offsets = []
        for _ in range(2):
            self.assertTrue(nem.inject())
            [a] = nem.active
            [node] = a.targets
            offset = float((node.proc.dir / "clock").read_text())
            self.assertTrue(STEP_SECONDS[0] <= abs(offset) <= STEP_SECONDS[1], offset)
            offsets.append(offset)
            nem.end(a)
            self.assertEqual(float((node.proc.dir / "clock").read_text()), 0.0)
        self.assertEqual(sorted(o > 0 for o in offsets), [False, True])

    def test_hostile_value_embeds_a_valid_record(self) -> None:
        """The value holds whole records of the given op as a client can forge them: one a
        version 1 segment accepts, one a version 2 segment with a guessed salt accepts."""
        embedded = embedded_record(42)
        length, crc = wal.V1_RECORD_HEADER.unpack_from(embedded)
        payload = embedded[wal.V1_RECORD_HEADER.size : wal.V1_RECORD_HEADER.size + length]
        self.assertEqual(zlib.crc32(payload), crc)
        self.assertEqual(Update.FromString(payload).seq, 42)
        v2 = embedded[wal.V1_RECORD_HEADER.size + length :]
        salt = bytes(wal.SALT_SIZE)
        [(offset, update)] = wal.scan_segment(
            wal.encode_header(1, 42, salt) + v2, "seg", last=True
        ).records
        self.assertEqual((offset, update.seq), (wal.HEADER_SIZE, 42))
        self.assertIn(embedded, hostile_value(embedded))

    def test_tear_cuts_the_hostile_record_after_the_embedded_one(self) -> None:
        """The tear shortens the last record only, past the embedded record, which stays whole."""
        embedded = embedded_record(3)
        records = [
            LogRecord(seq=1, is_put=True, key=b"k", data=b"v"),
            LogRecord(seq=2, is_put=True, key=b"hostile-torn", data=hostile_value(embedded)),
        ]
        salt = wal.new_salt()
        whole = wal.encode_header(1, 1, salt) + wal.encode_records(records, salt)
        last = wal.HEADER_SIZE + len(wal.encode_records(records[:1], salt))
        path = Path(self.mktemp())
        for seed in range(20):
            path.write_bytes(whole)
            what = tear_last_record(path, embedded, Random(seed))
            torn = path.read_bytes()
            self.assertIn("the hostile record", what)
            self.assertEqual(torn, whole[: len(torn)])
            self.assertGreaterEqual(len(torn), whole.find(embedded) + len(embedded))
            self.assertLess(len(torn), len(whole))
            self.assertGreater(len(torn), last)

    def test_tear_without_the_hostile_record_leaves_the_log_whole(self) -> None:
        """When other writes followed, nothing is cut: the last record may be an
        acknowledged client write on every member's disk, which no power cut tears."""
        records = [LogRecord(seq=i, is_put=True, key=b"k", data=b"v" * 20) for i in (1, 2)]
        salt = wal.new_salt()
        whole = wal.encode_header(1, 1, salt) + wal.encode_records(records, salt)
        path = Path(self.mktemp())
        path.write_bytes(whole)
        self.assertIn("left whole", tear_last_record(path, embedded_record(9), Random(1)))
        self.assertEqual(path.read_bytes(), whole)


class Timing(SynchronousTestCase):
    def test_link_timeout(self) -> None:
        """--link-timeout is taken for the nodes, and must be positive."""
        self.assertIsNone(parse_args(["--report", "r"]).link_timeout)
        self.assertEqual(parse_args(["--report", "r", "--link-timeout", "1"]).link_timeout, 1.0)
        self.patch(sys, "stderr", open(os.devnull, "w"))  # noqa: SIM115
        with self.assertRaises(SystemExit):
            parse_args(["--report", "r", "--link-timeout", "0"])


class WallClockTests(SynchronousTestCase):
    def test_steps_move_the_wall_clock_only(self) -> None:
        """Under WallClock's preload, rewriting the offset file steps time.time() of that
        process both ways while time.monotonic() and time.sleep() stay real."""
        wall = WallClock(Path(self.mktemp()))
        child = """
import sys, time
t0, m0 = time.time(), time.monotonic()
for step in (120, -90):
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()
    deadline = time.monotonic() + 10
    jump = lambda: time.time() - t0 - (time.monotonic() - m0)
    while abs(jump() - step) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(round(jump()), round(time.monotonic() - m0), flush=True)
"""
        proc = subprocess.Popen(
            [sys.executable, "-c", child],
            env={**node_env(), **wall.environ()},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(proc.kill)
        assert proc.stdin is not None and proc.stdout is not None
        got = []
        for step in (120, -90):
            self.assertEqual(proc.stdout.readline(), "ready\n")
            wall.set(step)
            proc.stdin.write("\n")
            proc.stdin.flush()
            jump, elapsed = map(int, proc.stdout.readline().split())
            got.append(jump)
            self.assertLess(elapsed, 10)  # the monotonic clock did not jump with it
        self.assertEqual(got, [120, -90])
        self.assertEqual(proc.wait(10), 0)
