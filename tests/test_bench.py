"""kvtwist-bench: its histogram, its request encoding, and whole runs on tiny workloads.

Nothing here asserts a speed: the runs only have to produce well-formed reports
whose counts add up, against a real ``twistd -n kvnode`` process.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from kvtwist import wire
from kvtwist.bench import cli
from kvtwist.bench.hist import Histogram
from kvtwist.bench.workload import Requests, Zipfian, encode_get, encode_put, key_name
from tests.nodes import ROOT, NodeProcess, RawClient, env, free_port, port_open, wait_for


class HistogramTests(SynchronousTestCase):
    def test_exact_small_values(self) -> None:
        """Below 2**(sub_bits+1) every value has its own bucket: percentiles are exact."""
        h = Histogram()
        values = list(range(1, 101))
        random.Random(3).shuffle(values)
        h.record_many(values)
        self.assertEqual(h.count, 100)
        self.assertEqual((h.min, h.max), (1, 100))
        self.assertEqual(h.percentile(50), 50)
        self.assertEqual(h.percentile(90), 90)
        self.assertEqual(h.percentile(99), 99)
        self.assertEqual(h.percentile(99.9), 100)
        self.assertEqual(h.percentile(100), 100)
        self.assertEqual(h.percentile(0), 1)
        self.assertAlmostEqual(h.mean, 50.5)

    def test_large_values_within_precision(self) -> None:
        """Log buckets: a percentile is at or just above the true value (< 1/128 over)."""
        h = Histogram()
        values = [i * 1000 for i in range(1, 10_001)]  # 1 us .. 10 ms in ns
        for v in values:
            h.record(v)
        for p in (50, 90, 99, 99.9):
            true = values[int(len(values) * p / 100) - 1]
            got = h.percentile(p)
            self.assertGreaterEqual(got, true, p)
            self.assertLessEqual(got, true * (1 + 1 / 128), p)
        self.assertEqual(h.percentile(100), 10_000_000)

    def test_skewed_distribution(self) -> None:
        """990 fast and 10 slow values: p50/p90 fast, p99.9 slow, max exact."""
        h = Histogram()
        h.record(100_000, n=990)
        h.record(50_000_000, n=10)
        self.assertLessEqual(abs(h.percentile(50) - 100_000), 100_000 / 128)
        self.assertLessEqual(abs(h.percentile(99) - 100_000), 100_000 / 128)
        self.assertLessEqual(abs(h.percentile(99.9) - 50_000_000), 50_000_000 / 128)
        self.assertEqual(h.max, 50_000_000)

    def test_buckets_cover_their_values(self) -> None:
        h = Histogram()
        rng = random.Random(5)
        for _ in range(5000):
            v = int(rng.expovariate(1e-6))
            lo, hi = h.bounds(h.index(v))
            self.assertTrue(lo <= v <= hi, (v, lo, hi))
            self.assertLessEqual(hi - lo, max(0, lo / 128))

    def test_merge_and_roundtrip(self) -> None:
        a, b, both = Histogram(), Histogram(), Histogram()
        rng = random.Random(9)
        for i in range(4000):
            v = int(rng.lognormvariate(12, 1.5))
            (a if i % 3 else b).record(v)
            both.record(v)
        merged = Histogram.from_dict(json.loads(json.dumps(a.to_dict())))
        merged.merge(Histogram.from_dict(b.to_dict()))
        self.assertEqual(merged.counts, both.counts)
        self.assertEqual(
            (merged.count, merged.min, merged.max, merged.total),
            (both.count, both.min, both.max, both.total),
        )
        for p in (50, 90, 99, 99.9, 100):
            self.assertEqual(merged.percentile(p), both.percentile(p))

    def test_empty(self) -> None:
        h = Histogram()
        self.assertEqual(h.percentile(99), 0)
        h.merge(Histogram())
        self.assertEqual(h.count, 0)
        self.assertRaises(ValueError, h.percentile, 101)


class WorkloadTests(SynchronousTestCase):
    def test_frames_match_the_wire_module(self) -> None:
        for key in ("k000000000000001", "x", "ключ" * 40):
            kb = key.encode()
            self.assertEqual(encode_get(kb), wire.frame(wire.req_get(kb)))
            for value in (b"", b"v" * 32, b"\x00" * 300):
                self.assertEqual(encode_put(kb, value), wire.frame(wire.req_put(kb, value)))

    def test_key_names(self) -> None:
        self.assertEqual(key_name(7), "k000000000000007")
        self.assertEqual(len(key_name(999_999)), 16)

    def test_sequential_covers_every_key_once(self) -> None:
        keys, conns = 103, 4
        seen: list[bytes] = []
        share = cli._deal(keys, conns)
        for c in range(conns):
            r = Requests("put", keys, 8, "sequential", start=c, stride=conns)
            seen.extend(wire.decode(f[4:]).entry.key for f, _ in r.next(share[c]))
        self.assertEqual(sorted(seen), sorted(key_name(i).encode() for i in range(keys)))

    def test_mixed_read_fraction(self) -> None:
        r = Requests("mixed", 1000, 8, "uniform", read_fraction=0.8, seed=1)
        reqs = r.next(20_000)
        reads = sum(1 for _, w in reqs if not w)
        self.assertTrue(0.75 < reads / len(reqs) < 0.85, reads)
        for f, w in reqs[:50]:
            op = wire.decode(f[4:]).opcode
            self.assertEqual(op, wire.OP_PUT if w else wire.OP_GET)

    def test_zipfian_is_skewed_and_in_range(self) -> None:
        z = Zipfian(1000, rng=random.Random(2))
        draws = [z() for _ in range(20_000)]
        self.assertTrue(all(0 <= d < 1000 for d in draws))
        self.assertGreater(draws.count(0), draws.count(500) * 20)


def run_bench(case: SynchronousTestCase, *args: str) -> tuple[int, dict[str, Any], str]:
    out = Path(case.mktemp() + ".json").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(
        [sys.executable, "-m", "kvtwist.bench.cli", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
        timeout=120,
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    return p.returncode, report, p.stdout + p.stderr


class BenchRunTests(SynchronousTestCase):
    """The bench against a real node."""

    def setUp(self) -> None:
        self.node = NodeProcess().start()
        self.addCleanup(self.node.cleanup)

    def check_report(self, report: dict[str, Any]) -> None:
        for key in (
            "version",
            "config",
            "head",
            "tail",
            "processes",
            "elapsed_s",
            "requests",
            "throughput",
            "latency_us",
            "ops",
            "histogram_ns",
            "client_cpu_s",
            "machine",
        ):
            self.assertIn(key, report)
        r = report["requests"]
        self.assertEqual(r["errors"], 0, report.get("error_sample"))
        self.assertEqual(r["unanswered"], 0)
        self.assertEqual(r["unsolicited"], 0)
        self.assertEqual(r["completed"], r["ok"] + r["errors"])
        self.assertEqual(r["sent"], r["completed"] + r["unanswered"])
        self.assertEqual(report["histogram_ns"]["count"], r["completed"])
        self.assertEqual(sum(op["count"] for op in report["ops"].values()), r["completed"])
        buckets = report["histogram_ns"]["buckets"]
        self.assertEqual(sum(c for _, c in buckets), r["completed"])
        lat = report["latency_us"]
        order = [lat["min"], lat["p50"], lat["p90"], lat["p99"], lat["p99.9"], lat["max"]]
        self.assertEqual(order, sorted(order))
        self.assertGreater(lat["min"], 0)
        self.assertGreater(report["elapsed_s"], 0)
        self.assertGreater(report["throughput"], 0)

    def test_put_then_mixed_requests(self) -> None:
        rc, report, out = run_bench(
            self,
            "--target",
            self.node.address,
            "--workload",
            "put",
            "--key-dist",
            "sequential",
            "--keys",
            "300",
            "--requests",
            "300",
            "--connections",
            "3",
            "--pipeline",
            "4",
            "--processes",
            "2",
            "--value-size",
            "20",
        )
        self.assertEqual(rc, 0, out)
        self.check_report(report)
        self.assertEqual(report["requests"]["completed"], 300)
        self.assertEqual(list(report["ops"]), ["PUT"])
        self.assertEqual(report["processes"], 2)
        # every key written once, with the value size asked for
        c = RawClient(self.node.port)
        try:
            self.assertEqual(c.one(wire.req_size()).op_n, 300)  # type: ignore[attr-defined]
            got = c.one(wire.req_get(f"bench:{key_name(299)}".encode()))
            self.assertEqual(len(got.values[0]), 20)  # type: ignore[attr-defined]
        finally:
            c.close()
        rc, report, out = run_bench(
            self,
            "--target",
            self.node.address,
            "--workload",
            "mixed",
            "--read-fraction",
            "0.7",
            "--keys",
            "300",
            "--key-dist",
            "zipfian",
            "--requests",
            "400",
            "--connections",
            "2",
            "--pipeline",
            "8",
            "--processes",
            "1",
        )
        self.assertEqual(rc, 0, out)
        self.check_report(report)
        self.assertEqual(report["requests"]["completed"], 400)
        self.assertEqual(set(report["ops"]), {"GET", "PUT"})
        self.assertIn("req/s", out)

    def test_duration_mode(self) -> None:
        rc, report, out = run_bench(
            self,
            "--target",
            self.node.address,
            "--workload",
            "get",
            "--keys",
            "50",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--connections",
            "2",
            "--processes",
            "2",
        )
        self.assertEqual(rc, 0, out)
        self.check_report(report)
        self.assertGreater(report["requests"]["completed"], 0)

    def test_errors_are_counted(self) -> None:
        """Keys over the node's limit get ERROR replies: counted, and exit status 3."""
        node = NodeProcess(args=["--max-key", "4"]).start()
        self.addCleanup(node.cleanup)
        rc, report, out = run_bench(
            self,
            "--target",
            node.address,
            "--workload",
            "get",
            "--keys",
            "10",
            "--requests",
            "20",
            "--connections",
            "1",
            "--processes",
            "1",
        )
        self.assertEqual(rc, 3, out)
        r = report["requests"]
        self.assertEqual((r["errors"], r["ok"], r["completed"]), (20, 0, 20))
        self.assertIn("exceeds the limit", report["error_sample"])

    def test_no_server(self) -> None:
        port = free_port()
        rc, report, out = run_bench(self, "--target", f"127.0.0.1:{port}", "--requests", "5")
        self.assertEqual(rc, 1)
        self.assertIn("cannot connect", out)


class ReferenceServerTests(SynchronousTestCase):
    def test_canned_replies(self) -> None:
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "reference_server.py"),
                "--port",
                str(port),
                "--value-size",
                "7",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env(),
        )

        def stop() -> None:
            proc.terminate()
            proc.wait(10)

        self.addCleanup(stop)
        wait_for(lambda: port_open(port), 15, "the reference server")
        c = RawClient(port)
        try:
            get, put = c.call(wire.req_get(b"a"), wire.req_put(b"a", b"x"))
            self.assertEqual(get.opcode, wire.OP_GET + 1)  # type: ignore[attr-defined]
            self.assertEqual(list(get.values), [b"v" * 7])  # type: ignore[attr-defined]
            self.assertEqual(put.opcode, wire.OP_PUT + 1)  # type: ignore[attr-defined]
        finally:
            c.close()
        rc, report, out = run_bench(
            self,
            "--target",
            f"127.0.0.1:{port}",
            "--workload",
            "mixed",
            "--requests",
            "500",
            "--connections",
            "2",
            "--pipeline",
            "16",
        )
        self.assertEqual(rc, 0, out)
        self.assertEqual(report["requests"]["completed"], 500)


def _tail_port(hosts: str, root: str) -> int | None:
    """The tail's port, or None while the chain is still forming (no root, no member)."""
    try:
        return cli.chain_ends(hosts, root)[1][1]
    except cli.BenchError:
        return None


class ChainTargetTests(SynchronousTestCase):
    def test_head_and_tail_from_zookeeper(self) -> None:
        """The benchmark finds head and tail in ZooKeeper and drives both."""
        from tests.zkserver import shared_zookeeper, unique_root, zookeeper_available

        why = zookeeper_available()
        if why:
            raise SkipTest(why)
        zk = shared_zookeeper()
        root = unique_root()
        nodes = []
        for _ in range(2):
            n = NodeProcess(args=["--zk", zk.hosts, "--zk-root", root]).start()
            self.addCleanup(n.cleanup)
            nodes.append(n)
            wait_for(lambda p=n.port: _tail_port(zk.hosts, root) == p, 30, "the node to join")  # type: ignore[misc]
        head, tail = cli.chain_ends(zk.hosts, root)
        self.assertEqual((head[1], tail[1]), (nodes[0].port, nodes[1].port))
        rc, report, out = run_bench(
            self,
            "--zk",
            zk.hosts,
            "--zk-root",
            root,
            "--workload",
            "mixed",
            "--keys",
            "100",
            "--requests",
            "200",
            "--connections",
            "2",
            "--pipeline",
            "4",
        )
        self.assertEqual(rc, 0, out)
        self.assertEqual(report["head"], nodes[0].address)
        self.assertEqual(report["tail"], nodes[1].address)
        self.assertEqual(report["requests"]["completed"], 200)
        self.assertEqual(report["requests"]["errors"], 0)
