"""``kvtwist-admin copy`` between real nodes and chains (the migration path of
docs/migrating.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import kvtwist
from kvtwist import wire
from tests.nodes import ROOT, TWISTD, NodeProcess, RawClient, dump, env, free_port, wait_for
from tests.test_chain import ChainCase

ADMIN = str(Path(TWISTD).parent / "kvtwist-admin")


def key(i: int) -> bytes:
    """Every other key ends in a byte that is no UTF-8 (as the C servers may hold them)."""
    return f"user:{i:04d}:".encode() + ("é".encode() if i % 2 == 0 else b"\xe9")


def fill(port: int, n: int) -> None:
    with RawClient(port) as c:
        replies = c.call(*[wire.req_put(key(i), f"v{i}".encode()) for i in range(n)])
    assert all(r.opcode == wire.OP_PUT + 1 for r in replies)


class CopyTests(ChainCase):
    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADMIN, *args], capture_output=True, text=True, timeout=120)

    def test_copy_node_into_chain(self) -> None:
        """Every key and value of a standalone node ends up in a chain, on every member,
        keys that are no UTF-8 byte for byte."""
        src = NodeProcess(args=["--in-memory"]).start()
        self.nodes.append(src)
        fill(src.port, 300)
        chain = self.chain(2)
        done = self.admin("copy", f"127.0.0.1:{src.port}", f"zk://{self.zk.hosts}{self.root}")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("copied 300 keys", done.stdout)
        expected = dump(src.port)
        self.assertIn((b"user:0001:\xe9", b"v1"), expected or [])
        for n in chain:
            self.assertEqual(wait_for(lambda n=n: dump(n.port), 10, "a copy"), expected)

    def test_copy_pages_a_store_too_big_for_one_listing(self) -> None:
        """A source whose key listing exceeds its reply limit is read with RANGE pages."""
        src = NodeProcess(args=["--in-memory", "--max-reply", "2048"]).start()
        dst = NodeProcess(args=["--in-memory"]).start()
        self.nodes += [src, dst]
        fill(src.port, 500)
        with RawClient(src.port) as c:
            self.assertEqual(c.one(wire.req_getkeys()).opcode, wire.OP_ERROR)
        done = self.admin("copy", f"127.0.0.1:{src.port}", f"127.0.0.1:{dst.port}")
        self.assertEqual(done.returncode, 0, done.stderr)
        # the pages meet at keys that are no UTF-8: every key arrives byte for byte
        self.assertEqual(dump(dst.port), sorted((key(i), f"v{i}".encode()) for i in range(500)))

    def test_copy_into_a_node_with_tls_and_a_token(self) -> None:
        """The target's TLS and client token are options of copy: a plain source is copied
        into a node that takes only TLS clients showing the token; without them, nothing."""
        from tests.certs import LocalCA
        from tests.test_tls import secret, temp_dir

        directory = temp_dir(self)
        ca = LocalCA(directory)
        cert = ca.issue("target")
        token = secret(directory, "token", b"t" * 32)
        src = NodeProcess(args=["--in-memory"]).start()
        dst = NodeProcess(
            args=[
                "--in-memory",
                "--tls-cert",
                cert.cert,
                "--tls-key",
                cert.key,
                "--auth-token-file",
                token,
            ]
        ).start()
        self.nodes += [src, dst]
        fill(src.port, 50)
        target = f"127.0.0.1:{dst.port}"
        plain = self.admin("copy", f"127.0.0.1:{src.port}", target, "--timeout", "5")
        self.assertEqual(plain.returncode, 1)
        self.assertEqual(len(plain.stderr.strip().splitlines()), 1, plain.stderr)
        done = self.admin(
            "copy",
            f"127.0.0.1:{src.port}",
            target,
            "--target-tls-ca",
            ca.path,
            "--target-token-file",
            token,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("copied 50 keys", done.stdout)
        back = self.admin(
            "copy",
            target,
            f"127.0.0.1:{src.port}",
            "--source-tls-ca",
            ca.path,
            "--source-token-file",
            token,
        )
        self.assertEqual(back.returncode, 0, back.stderr)
        self.assertIn("copied 50 keys", back.stdout)

    def test_unusable_token_file_is_a_usage_error(self) -> None:
        """A token file that cannot be read stops copy before it connects: exit status 2."""
        done = self.admin(
            "copy", "127.0.0.1:1", "127.0.0.1:2", "--target-token-file", "/nonexistent"
        )
        self.assertEqual(done.returncode, 2)
        self.assertIn("token file /nonexistent", done.stderr)

    def test_unreachable_source_is_one_line(self) -> None:
        """A source that cannot be reached is one line on stderr and exit status 1."""
        done = self.admin("copy", "127.0.0.1:1", "127.0.0.1:2", "--timeout", "3")
        self.assertEqual(done.returncode, 1)
        self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)


class StatusTests(ChainCase):
    """``status`` and ``health`` against a real chain, and members that do not answer."""

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADMIN, *args], capture_output=True, text=True, timeout=120)

    def status_json(self, *extra: str) -> dict[str, Any]:
        # the ZooKeeper options after the subcommand, as an operator may type them
        done = self.admin("status", "-o", "json", "--zk", self.zk.hosts, "--zk-root", self.root,
                          *extra)
        self.assertEqual(done.returncode, 0, done.stderr)
        body: dict[str, Any] = json.loads(done.stdout)
        return body

    def fake_member(self, port: int) -> None:
        """A member znode whose address nobody listens on (no node runs under this root)."""
        self.kazoo.create(
            f"{self.root}/node", f"127.0.0.1:{port}".encode(), sequence=True, makepath=True
        )

    def test_status_rows_of_a_chain(self) -> None:
        """One row per member in chain order with its role, op numbers, lag, Sent list,
        version, data-directory bytes and session; the committed op follows the writes."""
        chain = self.chain(3)
        fill(chain[0].port, 20)

        def settled() -> dict[str, Any] | None:
            body = self.status_json()
            rows = body["members"]
            if len(rows) == 3 and all(r["committed"] == 20 and r["lag"] == 0 for r in rows):
                return body
            return None

        body = wait_for(settled, 30, "every member to report op 20")
        rows = body["members"]
        self.assertEqual([r["role"] for r in rows], ["head", "middle", "tail"])
        self.assertEqual([r["position"] for r in rows], ["head", "middle", "tail"])
        self.assertEqual([r["address"] for r in rows], [n.address for n in chain])
        self.assertEqual(sorted(r["name"] for r in rows), [r["name"] for r in rows])
        for r in rows:
            self.assertTrue(r["answered"])
            self.assertEqual((r["received"], r["applied"]), (20, 20))
            self.assertEqual((r["sent_count"], r["sent_bytes"]), (0, 0))
            self.assertEqual(r["version"], kvtwist.__version__)
            self.assertEqual(r["zk_state"], "connected")
            self.assertGreater(r["data_dir_bytes"], 0)
            self.assertGreater(r["uptime_s"], 0)
            self.assertEqual(r["keys"], 20)
        self.assertGreaterEqual(body["record"]["epoch"], 1)
        self.assertEqual(
            [m["name"] for m in body["record"]["members"]], [r["name"] for r in rows]
        )
        table = self.admin("--zk", self.zk.hosts, "--zk-root", self.root, "status")
        self.assertEqual(table.returncode, 0, table.stderr)
        lines = table.stdout.splitlines()
        header = next(line for line in lines if line.startswith("NAME"))
        self.assertIn("COMMITTED", header)
        for r in rows:
            row = next(line for line in lines if line.startswith(r["name"]))
            self.assertEqual(row.split()[1:4], [r["role"], r["address"], "20"])

    def test_member_that_does_not_answer_gets_a_row(self) -> None:
        """A member znode whose node is gone is a row saying so; status still exits 0."""
        dead = free_port()
        self.fake_member(dead)
        body = self.status_json("--timeout", "3")
        [row] = body["members"]
        self.assertEqual((row["answered"], row["position"]), (False, "head+tail"))
        self.assertEqual(row["address"], f"127.0.0.1:{dead}")
        self.assertTrue(row["error"])
        self.assertIsNone(row["committed"])
        table = self.admin("status", "--zk", self.zk.hosts, "--zk-root", self.root)
        self.assertIn(f"127.0.0.1:{dead}  does not answer", table.stdout)

    def test_health(self) -> None:
        """0 for a chain whose head and tail answer; 1 with one line per problem for too
        few members, an empty chain and a dead tail."""
        zk = ["--zk", self.zk.hosts, "--zk-root", self.root]
        empty = self.admin("health", *zk)
        self.assertEqual(empty.returncode, 1)
        self.assertEqual(empty.stdout.strip(), f"the chain {self.root} has no members")
        self.chain(2)
        good = wait_for(
            lambda: (d := self.admin("health", *zk)).returncode == 0 and d, 30, "a healthy chain"
        )
        self.assertEqual(good.stdout.strip(), "healthy")
        few = self.admin("health", "--members", "3", *zk, "-o", "json")
        self.assertEqual(few.returncode, 1)
        self.assertEqual(
            json.loads(few.stdout),
            {
                "healthy": False,
                "problems": ["the chain has 2 members, fewer than the 3 wanted"],
            },
        )
        dead = free_port()
        self.fake_member(dead)  # a new last member: the tail, and nobody is there
        bad = self.admin("health", *zk, "--timeout", "3")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("tail node", bad.stdout)
        self.assertIn(f"127.0.0.1:{dead} does not answer", bad.stdout)

    def test_unreachable_zookeeper(self) -> None:
        """No ZooKeeper: one line; status 2 for status, 1 (unhealthy) for health."""
        nobody = f"127.0.0.1:{free_port()}"
        for command, code in (("status", 2), ("health", 1)):
            done = self.admin(command, "--zk", nobody)
            self.assertEqual(done.returncode, code, done.stderr)
            self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
            self.assertIn("cannot reach ZooKeeper", done.stderr)


class BadHostsTests(SynchronousTestCase):
    """A ZooKeeper host string that does not parse: one line and status 2 everywhere."""

    def run_command(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=60, env=env(), cwd=ROOT
        )

    def test_every_command(self) -> None:
        bin_dir = Path(TWISTD).parent
        for bad in ("foo::bar", "host:99999", "a:2181,,b", "h:0"):
            commands = [
                [TWISTD, "-n", "--pidfile=", "kvnode", "--in-memory", "--zk", bad],
                [str(bin_dir / "kvtwist-admin"), "--zk", bad, "status"],
                [str(bin_dir / "kvtwist-admin"), "health", "--zk", bad],
                [str(bin_dir / "kvtwist-admin"), "copy", f"zk://{bad}/chain", "127.0.0.1:1"],
                [str(bin_dir / "kvtwist-client"), "--zk", bad, "get", "k"],
                [str(bin_dir / "kvtwist-bench"), "--zk", bad, "--requests", "1"],
            ]
            for argv in commands:
                done = self.run_command(*argv)
                where = f"{argv[0].rsplit('/', 1)[-1]} with {bad!r}"
                self.assertEqual(done.returncode, 2, f"{where}: {done.stdout}{done.stderr}")
                lines = (done.stdout + done.stderr).strip().splitlines()
                self.assertEqual(len(lines), 1, f"{where}: {lines}")
                self.assertIn(repr(bad), lines[0], where)
                self.assertNotIn("Traceback", done.stderr)
