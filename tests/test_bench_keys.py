"""kvtwist-bench's keys: recognisable by a prefix, and said in --help to be written."""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from kvtwist.bench.workload import Requests, key_name
from kvtwist.client.blocking import BlockingClient
from tests.nodes import ROOT, NodeProcess, env
from tests.test_bench import run_bench
from tests.test_blocking import private_reactor


class KeyPrefixUnitTests(SynchronousTestCase):
    def test_requests_put_the_prefix_before_every_key(self) -> None:
        """Every request frame names a key that starts with the prefix."""
        reqs = Requests("put", 5, 3, key_dist="sequential", key_prefix=b"mine:")
        frames = [frame for frame, _ in reqs.next(5)]
        for i, frame in enumerate(frames):
            self.assertIn(b"mine:" + key_name(i).encode(), frame)


class KeyPrefixTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = NodeProcess().start()
        self.addCleanup(self.node.cleanup)

    def keys(self) -> list[bytes]:
        with BlockingClient.connect(self.node.address, reactor=private_reactor()) as kv:
            return kv.keys()

    def put(self, *extra: str) -> None:
        rc, _report, out = run_bench(
            self, "--target", self.node.address, "--workload", "put", "--key-dist", "sequential",
            "--keys", "20", "--requests", "20", "--connections", "2", "--processes", "1", *extra,
        )
        self.assertEqual(rc, 0, out)

    def test_default_prefix_is_bench(self) -> None:
        """Without --key-prefix every key the bench writes starts with 'bench:'."""
        self.put()
        self.assertEqual(self.keys(), [f"bench:{key_name(i)}".encode() for i in range(20)])

    def test_key_prefix_option(self) -> None:
        """--key-prefix replaces 'bench:' and leaves other keys alone."""
        with BlockingClient.connect(self.node.address, reactor=private_reactor()) as kv:
            kv.put("user:1", b"alice")
        self.put("--key-prefix", "load/")
        keys = self.keys()
        self.assertEqual(keys[:20], [f"load/{key_name(i)}".encode() for i in range(20)])
        self.assertEqual(keys[20:], [b"user:1"])


class HelpTests(SynchronousTestCase):
    def test_help_says_it_writes(self) -> None:
        """--help warns that the bench writes keys into its target and names them."""
        p = subprocess.run(
            [sys.executable, "-m", "kvtwist.bench.cli", "--help"], capture_output=True, text=True,
            env=env(), cwd=ROOT, timeout=60,
        )
        text = " ".join(p.stdout.split())
        self.assertIn("WRITES into the target", text)
        self.assertIn("bench:k000000000000000", text)
        self.assertIn("--key-prefix", text)


class ClusterFrameTests(SynchronousTestCase):
    def test_frames_name_their_keys_chain(self) -> None:
        """With a cluster's routes each frame carries Message.chain of its key's shard,
        and says which route (head for a write, tail for a read) it goes to."""
        from kvtwist import wire

        routes = [(b"", "c0", ("127.0.0.1", 1), ("127.0.0.1", 2)),
                  (b"k000000000000003", "c1", ("127.0.0.1", 3), ("127.0.0.1", 4))]
        reqs = Requests("mixed", 6, 3, key_dist="sequential", routes=routes)
        for frame, w in reqs.next(6):
            msg = wire.decode(frame[4:])
            key = msg.entry.key if msg.opcode == wire.OP_PUT else msg.keys[0]
            route = 0 if key < b"k000000000000003" else 1
            self.assertEqual(w >> 1, route, key)
            self.assertEqual(msg.chain, routes[route][1])
            self.assertEqual(w & 1, int(msg.opcode == wire.OP_PUT))
