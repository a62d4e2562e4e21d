"""``kvtwist-admin backup`` and ``restore`` against real nodes and ZooKeeper.

A backup taken while a writer writes holds exactly the acknowledged writes up
to its op; a node started from the restored directory serves them, as the
first member of a new chain or, after the whole chain is lost, through
``force-start`` on the chain's own root (docs/operations.md).
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from kvtwist import wire
from tests.nodes import NodeProcess, RawClient, dump, wait_for
from tests.test_admin import ADMIN
from tests.test_chain import SESSION, ChainCase


class BackupRestoreTests(ChainCase):
    def setUp(self) -> None:
        super().setUp()
        self.tmp = Path(tempfile.mkdtemp(prefix="kvbackup-"))
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(self.tmp)], check=False))

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADMIN, *args], capture_output=True, text=True, timeout=120)

    def backup(self, out: Path) -> dict[str, Any]:
        done = self.admin(
            "backup", "--zk", self.zk.hosts, "--zk-root", self.root, "--out", str(out),
            "-o", "json",
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def restore(self, backup: Path, data: Path) -> None:
        done = self.admin("restore", str(backup), "--data-dir", str(data))
        self.assertEqual(done.returncode, 0, done.stderr)

    def restored_node(self, data: Path, root: str) -> NodeProcess:
        n = NodeProcess.member(
            self.zk.hosts, root, SESSION, extra_args=["--data-dir", str(data)]
        ).start()
        self.nodes.append(n)
        return n

    def wait_member(self, n: NodeProcess) -> None:
        def serving() -> bool:
            with RawClient(n.port) as c:
                role = c.stats().role
            return role in ("head+tail", "head", "tail", "middle")

        wait_for(serving, 30, f"node {n.port} to serve")

    def test_backup_under_a_writer_restores_exactly_the_writes_up_to_its_op(self) -> None:
        """Every write acknowledged with an op up to the backup's is in the restored
        store with its value; none numbered after it is; the restored node serves them
        as a new chain and numbers new writes after the backup's op."""
        self.chain(3)
        w, out = self.start_writer("bk")
        self.wait_acks(out, 100)
        file = self.tmp / "chain.kvt"
        report = self.backup(file)
        op = report["op"]
        self.assertGreater(op, 0)
        self.assertGreaterEqual(report["epoch"], 1)
        # the chain went on serving: writes numbered after the backup are acknowledged
        wait_for(lambda: max(o for _, o in self.acked(out)) > op + 20, 30, "writes after it")
        w.send_signal(signal.SIGTERM)
        w.wait(30)
        acks = self.acked(out)
        before = {k: o for k, o in acks if o <= op}
        after = {k: o for k, o in acks if o > op}
        self.assertTrue(before and after)
        data = self.tmp / "restored"
        self.restore(file, data)
        root = self.root + "-restored"
        n = self.restored_node(data, root)
        self.wait_member(n)
        held = dict(wait_for(lambda: dump(n.port), 10, "a dump") or [])
        for k in before:
            self.assertEqual(held.get(k.encode()), f"v{int(k[2:])}".encode(), k)
        self.assertFalse([k for k in after if k.encode() in held])
        self.assertEqual(len(held), len(before))
        with RawClient(n.port) as c:
            self.assertGreater(c.one(wire.req_put(b"new", b"1")).op_n, op)

    def test_whole_chain_restored_on_its_own_root_through_force_start(self) -> None:
        """After the whole chain is lost, a node started from the restored directory on
        the chain's root waits (it is no member of the last configuration) until
        force-start lets it restart the chain; an empty node then joins and copies it."""
        chain = self.chain(2)
        with RawClient(chain[0].port) as c:
            for i in range(50):
                self.assertEqual(c.one(wire.req_put(b"k%02d" % i, b"%d" % i)).op_n, i + 1)
        file = self.tmp / "chain.kvt"
        self.assertEqual(self.backup(file)["op"], 50)
        for node in chain:
            node.kill()
        wait_for(lambda: not self.members(), 30, "the chain's members to expire")
        data = self.tmp / "restored"
        self.restore(file, data)
        n = self.restored_node(data, self.root)
        wait_for(lambda: "kvtwist-admin force-start" in n.log(), 30, "the node to wait")
        forced = self.admin("force-start", "--zk", self.zk.hosts, "--zk-root", self.root)
        self.assertEqual(forced.returncode, 0, forced.stderr)
        self.assertIn("from op 50", forced.stdout)
        self.wait_member(n)
        joiner = NodeProcess.member(
            self.zk.hosts, self.root, SESSION,
            extra_args=["--data-dir", str(self.tmp / "empty")],
        ).start()
        self.nodes.append(joiner)
        wait_for(lambda: joiner.port in self.member_ports(), 30, "an empty node to join")
        expected = [(b"k%02d" % i, b"%d" % i) for i in range(50)]
        self.assertEqual(wait_for(lambda: dump(joiner.port), 10, "a dump"), expected)

    def test_node_with_a_client_token(self) -> None:
        """A node with a client token gives a backup only to an admin that shows it;
        without it the admin says so in one line and exits 1, writing no file."""
        from tests.test_tls import secret

        token = secret(self.tmp, "token", b"t" * 32)
        n = NodeProcess(args=["--in-memory", "--auth-token-file", token]).start()
        self.nodes.append(n)
        file = self.tmp / "node.kvt"
        refused = self.admin("backup", n.address, "--out", str(file), "--timeout", "5")
        self.assertEqual(refused.returncode, 1)
        self.assertEqual(len(refused.stderr.strip().splitlines()), 1, refused.stderr)
        self.assertIn("authentication", refused.stderr)
        self.assertFalse(file.exists())
        done = self.admin("backup", n.address, "--out", str(file), "--token-file", token)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("backup of 0 keys at op 0", done.stdout)
        self.assertTrue(file.exists())
