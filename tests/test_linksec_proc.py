"""Keyed chain links with real ZooKeeper and real ``twistd -n kvnode`` processes."""

from __future__ import annotations

import os
import socket

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.auth import Initiator, auth_message
from kvtwist.proto.kvtwist_pb2 import ChainHello
from kvtwist.server import HANDSHAKE_POOL
from kvtwist.tap import Options
from tests.nodes import NodeProcess, RawClient, wait_for
from tests.zkserver import (
    ZooKeeperCase,
    secret_file,
)

SESSION = 2.0


def key_file(test: SynchronousTestCase, data: bytes = b"0123456789abcdef0123456789abcdef") -> str:
    return secret_file(test, data)


class OptionTests(SynchronousTestCase):
    def test_non_loopback_chain_needs_key(self) -> None:
        """A chain node on all interfaces without a key is a usage error naming the option."""
        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(
                ["--zk", "127.0.0.1:2181", "--interface", "0.0.0.0", "--advertise", "h:1"]
            )
        self.assertIn("--cluster-key-file", str(cm.exception))

    def test_loopback_chain_without_key(self) -> None:
        """A loopback-only chain node may run without a key (development)."""
        o = Options()
        o.parseOptions(["--zk", "127.0.0.1:2181"])
        self.assertIsNone(o["cluster-key"])

    def test_bad_key_file(self) -> None:
        """A short or world-readable key file is refused in one line."""
        path = key_file(self, b"short")
        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(["--cluster-key-file", path])
        self.assertIn("at least 16", str(cm.exception))
        os.chmod(path, 0o644)
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--cluster-key-file", path])

    def test_link_options(self) -> None:
        """--link-timeout and --max-reply are parsed and checked."""
        o = Options()
        o.parseOptions(["--link-timeout", "1.5", "--max-reply", "1000"])
        self.assertEqual((o["link-timeout"], o["max-reply"]), (1.5, 1000))
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--link-timeout", "0"])


class KeyedChainProcessTests(ZooKeeperCase):
    def setUp(self) -> None:
        super().setUp()
        self.key = key_file(self)

    def node(self, *extra: str) -> NodeProcess:
        n = NodeProcess.member(
            self.zk.hosts, self.root, SESSION, extra_args=["--cluster-key-file", self.key, *extra]
        ).start()
        self.addCleanup(n.cleanup)
        return n

    def members(self) -> list[str]:
        return sorted(self.kazoo.get_children(self.root)) if self.kazoo.exists(self.root) else []

    def test_forged_hello_and_update_refused(self) -> None:
        """A raw socket naming the tail's real predecessor is refused; the chain is unchanged."""
        head = self.node()
        wait_for(lambda: len(self.members()) == 1, 30, "the head to register")
        tail = self.node()
        wait_for(lambda: len(self.members()) == 2, 30, "the tail to register")
        pred = self.members()[0]
        with RawClient(head.port) as c:
            wait_for(
                lambda: c.one(wire.req_put(b"k", b"v")).opcode == wire.OP_PUT + 1,
                30,
                "a write to commit",
            )
        with RawClient(tail.port) as stranger:
            hello = ChainHello(sender=pred, config=1 << 40, address=head.address, last_op=0)
            update = wire.Message(opcode=wire.OP_CHAIN_UPDATE, c_type=wire.CT_CHAIN)
            update.hello.sender = pred
            update.updates.add(seq=2, is_put=True, key=b"evil", data=b"x")
            stranger.sock.sendall(
                wire.frame(
                    wire.Message(opcode=wire.OP_CHAIN_HELLO, c_type=wire.CT_CHAIN, hello=hello)
                )
                + wire.frame(update)
            )
            [r] = stranger.read(1)
            self.assertEqual(r.opcode, wire.OP_ERROR)
            self.assertIn("before authentication", r.error)
            with self.assertRaises(ConnectionError):
                stranger.read(1)
        with RawClient(head.port) as c:
            r = c.one(wire.req_put(b"k2", b"real"))
            self.assertEqual(r.op_n, 2)
        with RawClient(tail.port) as c:
            self.assertEqual(c.dump(), [(b"k", b"v"), (b"k2", b"real")])
            self.assertIsNone(c.get(b"evil"))
        self.assertIn("chain link refused", tail.log())

    def test_keyless_handshake_flood(self) -> None:
        """Hundreds of keyless step-1 handshakes: a client is served, and descriptors come back."""
        node = self.node("--max-connections", "32")
        wait_for(lambda: len(self.members()) == 1, 30, "the node to register")
        assert node.pid is not None
        fds = f"/proc/{node.pid}/fd"
        idle = len(os.listdir(fds))
        step1 = wire.frame(auth_message(Initiator(b"x" * 32, "node0000000001", 0).first()))
        strangers = []
        for _ in range(400):
            s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
            self.addCleanup(s.close)
            s.sendall(step1)
            strangers.append(s)
        for s in strangers:  # each is answered (step 2) or refused and closed
            s.recv(1 << 16)
        # the pool, and refused connections the node has not finished closing: it
        # closes those within a turn or two, so look for up to a second, well
        # inside the handshakes' timeout (which would empty the pool as well)
        wait_for(
            lambda: len(os.listdir(fds)) - idle <= HANDSHAKE_POOL + 16,
            1.0,
            "the flood to hold no more descriptors than the handshake pool",
        )
        with RawClient(node.port) as c:
            r = c.one(wire.req_put(b"k", b"v"))
            self.assertEqual(r.opcode, wire.OP_PUT + 1, r.error)
            self.assertEqual(c.get(b"k"), b"v")
        wait_for(lambda: len(os.listdir(fds)) <= idle + 2, 15, "the handshakes to time out")
