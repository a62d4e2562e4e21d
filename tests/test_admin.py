"""``kvtwist-admin copy`` between real nodes and chains (the migration path of
docs/migrating.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kvtwist import wire
from tests.nodes import TWISTD, NodeProcess, RawClient, dump, wait_for
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
