"""Chain replication with real ZooKeeper and real ``twistd -n kvnode`` processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.membership import parse_address
from kvtwist.verify.proxy import ProxyControl
from tests.nodes import ROOT, NodeProcess, RawClient, dump, env, free_port, port_open, wait_for
from tests.zkserver import ZooKeeperCase

SESSION = 2.0  # seconds; short so that failover tests are quick


class ChainCase(ZooKeeperCase):
    def setUp(self) -> None:
        super().setUp()
        self.nodes: list[NodeProcess] = []
        self.writers: list[subprocess.Popen[bytes]] = []
        self.writer_logs: list[Path] = []

    def tearDown(self) -> None:
        for w in self.writers:
            if w.poll() is None:
                w.kill()
                w.wait()
        keep = os.environ.get("KVTWIST_KEEP_LOGS")
        for n in self.nodes:
            n.stop()
            if keep:
                target = Path(keep) / self.id().rsplit(".", 1)[-1] / str(n.port)
                target.mkdir(parents=True, exist_ok=True)
                (target / "node.log").write_text(n.log())
            n.cleanup()
        if keep:
            for out in self.writer_logs:
                target = Path(keep) / self.id().rsplit(".", 1)[-1]
                target.mkdir(parents=True, exist_ok=True)
                (target / out.name).write_text(out.read_text())
        for out in self.writer_logs:
            shutil.rmtree(out.parent, ignore_errors=True)

    def members(self) -> list[tuple[str, tuple[str, int] | None]]:
        if not self.kazoo.exists(self.root):
            return []
        out = []
        for c in sorted(self.kazoo.get_children(self.root)):
            try:
                data, _ = self.kazoo.get(f"{self.root}/{c}")
            except Exception:
                continue
            out.append((c, parse_address(data)))
        return out

    def member_ports(self) -> list[int]:
        return [a[1] for _, a in self.members() if a]

    def start_node(self, wait_member: bool = True) -> NodeProcess:
        n = NodeProcess(
            args=[
                "--zk",
                self.zk.hosts,
                "--zk-root",
                self.root,
                "--zk-session-timeout",
                str(SESSION),
            ]
        ).start()
        self.nodes.append(n)
        if wait_member:
            wait_for(lambda: n.port in self.member_ports(), 30, f"node {n.port} to join")
        return n

    def chain(self, n: int) -> list[NodeProcess]:
        return [self.start_node() for _ in range(n)]

    def proxied_chain(
        self,
        labels: tuple[str, ...] = ("a", "b", "c"),
        session: float = SESSION,
        extra_args: tuple[str, ...] = (),
        zk_routes: bool = False,
    ) -> tuple[ProxyControl, list[NodeProcess]]:
        """Members behind routes of the fault-injecting proxy (kvtwist.verify.proxy).

        Each advertises its route, so every connection to it passes the proxy;
        with ``zk_routes`` each also reaches ZooKeeper through a route of its
        own, ``zk-<label>``.
        """
        proxy = ProxyControl(Path(tempfile.mkdtemp(prefix="kvproxy-")) / "proxy.log")
        self.addCleanup(proxy.close)
        zk_port = int(self.zk.hosts.rsplit(":", 1)[1])
        nodes = []
        for label in labels:
            port = free_port()
            route = proxy.route(label, port)
            zk = f"127.0.0.1:{proxy.route(f'zk-{label}', zk_port)}" if zk_routes else self.zk.hosts
            args = ["--zk", zk, "--zk-root", self.root, "--zk-session-timeout", f"{session:g}"]
            node = NodeProcess(
                port=port, args=[*args, *extra_args, "--advertise", f"127.0.0.1:{route}"]
            )
            node.start(wait=False)
            self.nodes.append(node)
            proxy.owner(node.pid or 0, label)  # before it dials anyone
            node.wait_listening()
            wait_for(lambda route=route: route in self.member_ports(), 30, "a proxied node")
            nodes.append(node)
        return proxy, nodes

    def start_writer(self, prefix: str = "k") -> tuple[subprocess.Popen[bytes], Path]:
        out = Path(tempfile.mkdtemp(prefix="kvwriter-")) / f"writer-{prefix}.log"
        self.writer_logs.append(out)
        w = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "writer.py"), self.zk.hosts, self.root, prefix],
            env=env(),
            stdout=open(out, "wb"),
            stderr=subprocess.STDOUT,
        )
        self.writers.append(w)
        return w, out

    def acked(self, out: Path) -> list[tuple[str, int]]:
        acks = []
        for line in out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ok":
                acks.append((parts[1], int(parts[2])))
        return acks

    def wait_acks(self, out: Path, n: int, timeout: float = 30) -> None:
        wait_for(lambda: len(self.acked(out)) >= n, timeout, f"{n} acknowledged writes")

    def stop_writer(self, w: subprocess.Popen[bytes], out: Path) -> list[tuple[str, int]]:
        w.send_signal(signal.SIGTERM)
        w.wait(30)
        text = out.read_text()
        errors = [line for line in text.splitlines() if line.startswith("error ")]
        self.assertEqual(errors, [], "the client saw an error")
        self.assertEqual(w.returncode, 0, text[-2000:])
        return self.acked(out)

    def assert_converged(self, survivors: list[NodeProcess], acks: list[tuple[str, int]]) -> None:
        """Every survivor ends with the same data, holding every acknowledged write."""
        ports = [n.port for n in survivors]

        def same() -> list[tuple[bytes, bytes]] | None:
            dumps = [dump(p) for p in ports]
            if any(d is None for d in dumps) or any(d != dumps[0] for d in dumps):
                return None
            return dumps[0]

        state = wait_for(same, 30, "survivors to hold identical data")
        held = dict(state)  # type: ignore[arg-type]
        missing = [k for k, _ in acks if k.encode() not in held]
        self.assertEqual(missing, [], "acknowledged writes lost")
        ops = [op for _, op in acks]
        self.assertEqual(ops, sorted(ops), "op numbers must increase")
        self.assertEqual(len(set(ops)), len(ops), "op numbers must be unique")


class ChainTests(ChainCase):
    def test_three_node_chain(self) -> None:
        """Three nodes form a chain in znode order; writes at the head are read at the tail."""
        a, b, c = self.chain(3)
        members = self.members()
        self.assertEqual(
            [m[1] for m in members],
            [("127.0.0.1", a.port), ("127.0.0.1", b.port), ("127.0.0.1", c.port)],
        )
        self.assertTrue(all(m[0].startswith("node") and len(m[0]) == 14 for m in members))
        head, mid, tail = RawClient(a.port), RawClient(b.port), RawClient(c.port)
        r = head.one(wire.req_put(b"x", b"1"))
        self.assertEqual(r.opcode, wire.OP_PUT + 1)  # type: ignore[attr-defined]
        self.assertEqual(list(tail.one(wire.req_get(b"x")).values), [b"1"])  # type: ignore[attr-defined]
        # a write sent to the middle is forwarded to the head; a read to the tail
        r = mid.one(wire.req_put(b"y", b"2"))
        self.assertEqual(r.op_n, 2)  # type: ignore[attr-defined]
        self.assertEqual(list(head.one(wire.req_get(b"y")).values), [b"2"])  # type: ignore[attr-defined]
        self.assertEqual(tail.one(wire.req_verify(2)).result, 1)  # type: ignore[attr-defined]
        # a key that is no UTF-8, as the original C client may send it, is replicated
        r = mid.one(wire.req_put(b"caf\xe9", b"3"))
        self.assertEqual(r.op_n, 3)  # type: ignore[attr-defined]
        self.assertEqual(list(tail.one(wire.req_get(b"caf\xe9")).values), [b"3"])  # type: ignore[attr-defined]
        self.assertEqual(
            wait_for(lambda: dump(b.port) if len(dump(b.port) or []) == 3 else None, 10, "copy"),
            [(b"caf\xe9", b"3"), (b"x", b"1"), (b"y", b"2")],
        )
        roles = {
            n.port: RawClient(n.port).one(wire.req_stats()).stats.role  # type: ignore[attr-defined]
            for n in (a, b, c)
        }
        self.assertEqual(roles, {a.port: "head", b.port: "middle", c.port: "tail"})
        for cl in (head, mid, tail):
            cl.close()

    def _kill_under_load(self, victim: int) -> None:
        nodes = self.chain(3)
        w, out = self.start_writer()
        self.wait_acks(out, 50)
        nodes[victim].kill()
        before = len(self.acked(out))
        self.wait_acks(out, before + 100, timeout=40)
        acks = self.stop_writer(w, out)
        survivors = [n for i, n in enumerate(nodes) if i != victim]
        wait_for(lambda: len(self.members()) == 2, 30, "the dead node to leave")
        self.assert_converged(survivors, acks)

    def test_kill_head(self) -> None:
        """SIGKILL of the head under writes: nothing acknowledged is lost, writes go on."""
        self._kill_under_load(0)

    def test_kill_middle(self) -> None:
        """SIGKILL of the middle under writes: the Sent list bridges the gap."""
        self._kill_under_load(1)

    def test_kill_tail(self) -> None:
        """SIGKILL of the tail under writes: its predecessor takes over as tail."""
        self._kill_under_load(2)

    def test_join_under_load(self) -> None:
        """A node joining while writes flow ends identical to the others."""
        nodes = self.chain(2)
        w, out = self.start_writer()
        self.wait_acks(out, 100)
        nodes.append(self.start_node())
        before = len(self.acked(out))
        self.wait_acks(out, before + 100)
        acks = self.stop_writer(w, out)
        self.assert_converged(nodes, acks)
        self.assertEqual(self.member_ports(), [n.port for n in nodes])

    def test_session_expiry_fences_and_rejoins(self) -> None:
        """A tail paused past its session timeout is fenced, then rejoins with a fresh copy."""
        nodes = self.chain(3)
        w, out = self.start_writer()
        self.wait_acks(out, 30)
        tail = nodes[2]
        old = self.members()[2][0]
        tail.signal(signal.SIGSTOP)
        wait_for(lambda: tail.port not in self.member_ports(), 30, "the paused tail to expire")
        before = len(self.acked(out))
        self.wait_acks(out, before + 50)
        tail.signal(signal.SIGCONT)
        wait_for(lambda: tail.port in self.member_ports(), 30, "the tail to rejoin")
        self.assertNotIn(old, [m[0] for m in self.members()])
        self.assertEqual(self.member_ports()[-1], tail.port)
        before = len(self.acked(out))
        self.wait_acks(out, before + 50)
        acks = self.stop_writer(w, out)
        self.assert_converged(nodes, acks)
        self.assertIn("fenced", tail.log())


class IPv6Tests(ChainCase):
    def test_chain_on_ipv6_loopback(self) -> None:
        """Nodes on ::1 register [::1]:port (with the C client's NUL), link over IPv6 and
        replicate a write from head to tail."""
        nodes = []
        for _ in range(2):
            n = NodeProcess(
                args=[
                    "--interface",
                    "::1",
                    "--zk",
                    self.zk.hosts,
                    "--zk-root",
                    self.root,
                    "--zk-session-timeout",
                    str(SESSION),
                ]
            )
            self.nodes.append(n)
            n.start(wait=False)
            wait_for(lambda n=n: port_open(n.port, "::1"), 30, "a node on ::1")
            nodes.append(n)
            wait_for(lambda n=n: n.port in self.member_ports(), 30, "the node to join")
        raw = [
            self.kazoo.get(f"{self.root}/{c}")[0]
            for c in sorted(self.kazoo.get_children(self.root))
        ]
        self.assertEqual(raw, [f"[::1]:{n.port}".encode() + b"\x00" for n in nodes])
        with RawClient(nodes[0].port, host="::1") as head:
            [reply] = head.call(wire.req_put(b"six", b"over v6"))
        self.assertEqual(reply.opcode, wire.OP_PUT + 1, reply.error)
        with RawClient(nodes[1].port, host="::1") as tail:
            self.assertEqual(tail.get(b"six"), b"over v6")


class ZooKeeperOutageTests(SynchronousTestCase):
    def test_node_waits_for_zookeeper(self) -> None:
        """A chain node that cannot reach ZooKeeper stays up, says why, and refuses to serve."""
        dead = free_port()
        node = NodeProcess(args=["--zk", f"127.0.0.1:{dead}", "--zk-session-timeout", "2"])
        node.start()
        self.addCleanup(node.cleanup)
        wait_for(lambda: "cannot reach ZooKeeper" in node.log(), 40, "the retry log line")
        assert node.proc is not None
        self.assertIsNone(node.proc.poll(), "the node exited")
        c = RawClient(node.port)
        self.addCleanup(c.close)
        reply = c.one(wire.req_size())
        self.assertEqual(reply.opcode, wire.OP_ERROR)  # type: ignore[attr-defined]
        self.assertTrue(reply.retry)  # type: ignore[attr-defined]
        self.assertIn("not serving", reply.error)  # type: ignore[attr-defined]
