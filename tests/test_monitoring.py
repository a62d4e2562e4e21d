"""kvtwist.monitoring in memory: the collector's values, /healthz and /readyz."""

from __future__ import annotations

import json
import re
import shutil
import tempfile

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from kvtwist import clock, monitoring, wire
from kvtwist.chain.lifecycle import State
from kvtwist.chain.replica import Replica
from kvtwist.monitoring import Heartbeat, Histograms, NodeMetrics, health, make_root, readiness
from kvtwist.server import NodeFactory
from kvtwist.server.chains import Chains
from kvtwist.statuspage import Throughput
from kvtwist.storage import DataDir
from kvtwist.store import InlineRunner, Store


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Node:
    """A standalone node with its metrics, wired as the node's builder wires it:
    each part handed its histogram's observer at construction."""

    def __init__(
        self, zk: object = None, journal: DataDir | None = None, h: Histograms | None = None
    ) -> None:
        self.reactor = MemoryReactorClock()
        h = self.histograms = h or Histograms()
        self.store = Store(
            self.reactor, InlineRunner(), journal, on_snapshot=h.snapshot.observe
        )
        self.replica = Replica(
            self.reactor,
            self.store,
            zk=zk,  # type: ignore[arg-type]
            on_commit_latency=h.commit.observe,
        )
        self.factory = NodeFactory(self.reactor, self.replica, observe=h.observe_requests)
        self.metrics = NodeMetrics(h, self.replica, self.factory)

    def request(self, *msgs: wire.Message) -> None:
        conn = self.factory.buildProtocol(None)
        conn.makeConnection(StringTransport())
        conn.dataReceived(b"".join(wire.frame(m) for m in msgs))
        self.reactor.advance(0.01)

    def values(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(self.metrics.text())


class CollectorTests(SynchronousTestCase):
    def test_requests_latency_and_op_numbers(self) -> None:
        """Answered requests move the counters by op and outcome, the latency
        histograms, and the op numbers the collector reads from the chain state."""
        node = Node()
        node.request(
            wire.req_put(b"a", b"1"), wire.req_put(b"b", b"2"), wire.req_get(b"a"),
            wire.req_get(b"zz"),
        )
        v = node.values()
        self.assertEqual(v[("kvtwist_requests_total", (("op", "put"), ("outcome", "ok")))], 2)
        self.assertEqual(v[("kvtwist_request_duration_seconds_count", (("op", "put"),))], 2)
        self.assertEqual(v[("kvtwist_request_duration_seconds_count", (("op", "get"),))], 2)
        self.assertEqual(v[("kvtwist_op_committed", ())], 2)
        self.assertEqual(v[("kvtwist_op_received", ())], 2)
        self.assertGreaterEqual(v[("kvtwist_commit_duration_seconds_count", ())], 1)
        self.assertEqual(v[("kvtwist_role", (("role", "standalone"),))], 1)
        self.assertEqual(v[("kvtwist_role", (("role", "head"),))], 0)
        self.assertEqual(v[("kvtwist_connections_open", ())], 1)
        # standalone: no ZooKeeper series, and no data directory to weigh
        self.assertNotIn(("kvtwist_zookeeper_reconnects_total", ()), v)
        self.assertNotIn(("kvtwist_data_dir_bytes", ()), v)

    def test_errors_are_counted_apart(self) -> None:
        node = Node()
        node.request(wire.req_put(b"k" * 100_000, b"v"))
        v = node.values()
        self.assertEqual(v[("kvtwist_requests_total", (("op", "put"), ("outcome", "error")))], 1)
        self.assertEqual(v[("kvtwist_requests_total", (("op", "put"), ("outcome", "ok")))], 0)

    def test_refused_connections(self) -> None:
        node = Node()
        node.factory.metrics.connections_refused += 3
        self.assertEqual(node.values()[("kvtwist_connections_refused_total", ())], 3)

    def test_role_changes_and_zookeeper_reconnects(self) -> None:
        """A chain node's role gauge follows its life; a session connected again counts."""
        node = Node(zk=object())
        v = node.values()
        self.assertEqual(v[("kvtwist_role", (("role", "starting"),))], 1)
        self.assertEqual(v[("kvtwist_role_changes_total", ())], 0)
        node.replica.life.to(State.FENCED, "test")
        v = node.values()
        self.assertEqual(v[("kvtwist_role", (("role", "fenced"),))], 1)
        self.assertEqual(v[("kvtwist_role", (("role", "starting"),))], 0)
        self.assertEqual(v[("kvtwist_role_changes_total", ())], 1)
        for state in ("connected", "connected", "suspended", "connected", "lost", "connected"):
            node.metrics.zk_state_changed(state)
        self.assertEqual(node.values()[("kvtwist_zookeeper_reconnects_total", ())], 2)

    def test_journal_hooks(self) -> None:
        """Writes through a real data directory feed the fsync and batch histograms."""
        path = tempfile.mkdtemp(prefix="kvtwist-metrics-")
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        histograms = Histograms()
        journal = DataDir(
            path, on_batch=histograms.batch.observe, on_fsync=histograms.fsync.observe
        )
        journal.open()
        self.addCleanup(journal.close)
        node = Node(journal=journal, h=histograms)
        node.request(wire.req_put(b"a", b"1"), wire.req_put(b"b", b"2"))
        v = node.values()
        self.assertGreaterEqual(v[("kvtwist_wal_fsync_duration_seconds_count", ())], 1)
        self.assertEqual(v[("kvtwist_wal_batch_records_sum", ())], 2)
        self.assertEqual(v[("kvtwist_request_duration_seconds_count", (("op", "put"),))], 2)

    def test_registries_are_per_node(self) -> None:
        """Two nodes in one process keep apart (no global registry)."""
        a, b = Node(), Node()
        a.request(wire.req_put(b"a", b"1"))
        self.assertEqual(a.values()[("kvtwist_op_committed", ())], 1)
        self.assertEqual(b.values()[("kvtwist_op_committed", ())], 0)


class EndpointTests(SynchronousTestCase):
    def get(self, node: Node, heartbeat: Heartbeat, path: bytes) -> tuple[int, bytes]:
        root = make_root(node.metrics, heartbeat)
        request = DummyRequest([path])
        child = root.getChildWithDefault(path, request)
        body = child.render(request)  # type: ignore[attr-defined]
        return request.responseCode or 200, body

    def test_readyz_follows_the_lifecycle(self) -> None:
        node = Node(zk=object())
        beat = Heartbeat(node.reactor)
        code, body = self.get(node, beat, b"readyz")
        self.assertEqual((code, body), (503, b"not serving: starting\n"))
        node.replica.life.to(State.JOINING)
        node.replica.life.to(State.REGISTERING)
        node.replica.life.to(State.MEMBER)
        self.assertEqual(self.get(node, beat, b"readyz")[0], 200)
        node.replica.life.to(State.FENCED, "ZooKeeper session lost")
        code, body = self.get(node, beat, b"readyz")
        self.assertEqual(code, 503)
        self.assertIn(b"fenced: ZooKeeper session lost", body)
        self.assertEqual(readiness(Node().metrics), (200, "ready: standalone"))

    def test_cluster_server_labels_each_chain(self) -> None:
        """A cluster server's metrics give each chain's role and op numbers with a
        ``chain`` label, and /readyz names the chains that do not serve."""
        h = Histograms()
        reactor = MemoryReactorClock()
        replicas = {c: Replica(reactor, Store(reactor, InlineRunner())) for c in ("c0", "c1")}
        factory = NodeFactory(reactor, Chains(replicas), observe=h.observe_requests)
        metrics = NodeMetrics(h, None, factory)
        replicas["c1"].state.reset(7)
        body = metrics.text()
        self.assertIn(b'kvtwist_op_committed{chain="c1"} 7.0', body)
        self.assertIn(b'kvtwist_role{chain="c0",role="standalone"} 1.0', body)
        self.assertEqual(readiness(metrics), (200, "ready: c0 standalone, c1 standalone"))
        replicas["c0"].life.state = State.FENCED
        code, why = readiness(metrics)
        self.assertEqual(code, 503)
        self.assertIn("c0", why)

    def test_metrics_page(self) -> None:
        node = Node()
        code, body = self.get(node, Heartbeat(node.reactor), b"metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'kvtwist_role{role="standalone"} 1.0', body)

    def test_healthz_wants_a_recent_heartbeat(self) -> None:
        now = [100.0]
        self.patch(clock, "now", lambda: now[0])
        node = Node()
        beat = Heartbeat(node.reactor)
        beat.loop.start(monitoring.HEARTBEAT, now=True)
        self.assertEqual(self.get(node, beat, b"healthz"), (200, b"ok\n"))
        now[0] += 2 * monitoring.HEALTH_LIMIT  # the reactor did not turn meanwhile
        code, body = self.get(node, beat, b"healthz")
        self.assertEqual(code, 503)
        self.assertIn(b"reactor stalled", body)
        node.reactor.advance(monitoring.HEARTBEAT)  # it turns: the heartbeat is fresh
        self.assertEqual(self.get(node, beat, b"healthz")[0], 200)
        beat.loop.stop()
        self.assertEqual(health(0.0), (200, "ok"))


class CountedHistogramTests(SynchronousTestCase):
    def test_a_batch_is_counted_once_per_request_in_prometheus_buckets(self) -> None:
        """Observations at a bound count in that bound's bucket; a batch adds its count."""
        from kvtwist.monitoring import CountedHistogram

        h = CountedHistogram((0.001, 0.01))
        h.observe(0.001)  # at the bound: in "le=0.001"
        h.observe(0.005, 3)
        h.observe(2.0)
        self.assertEqual(h.cumulative(), [("0.001", 1.0), ("0.01", 4.0), ("+Inf", 5.0)])
        self.assertAlmostEqual(h.sum, 0.001 + 0.015 + 2.0)


class StatusPageTests(SynchronousTestCase):
    """/ and /status.json on the metrics port, in memory."""

    def _get(self, node: Node, path: bytes) -> tuple[DummyRequest, bytes]:
        root = make_root(node.metrics, Heartbeat(node.reactor), node.reactor)
        request = DummyRequest([path] if path else [b""])
        result = getChildForRequest(root, request).render(request)
        body = result if isinstance(result, bytes) else b"".join(request.written)
        return request, body

    def test_status_json_of_a_standalone_node(self) -> None:
        """A standalone node is its own chain of one, marked as this node, with its ops."""
        node = Node()
        node.request(wire.req_put(b"a", b"1"), wire.req_put(b"b", b"2"))
        request, body = self._get(node, b"status.json")
        self.assertTrue(request.finished)
        data = json.loads(body)
        [member] = data["members"]
        self.assertEqual(
            (member["role"], member["committed"], member["own"]), ("standalone", 2, True)
        )
        self.assertEqual(data["node"]["committed"], 2)
        self.assertEqual(data["throughput"]["every_s"], 2.0)

    def test_page_is_self_contained(self) -> None:
        """The page loads nothing from elsewhere: no src or href, no URL but the SVG namespace."""
        _, body = self._get(Node(), b"")
        page = body.decode()
        self.assertIn('fetch("status.json"', page)
        self.assertNotIn("src=", page)
        self.assertNotIn("href=", page)
        self.assertEqual(set(re.findall(r"https?://[^\"' ]+", page)), {"http://www.w3.org/2000/svg"})

    def test_throughput_ring(self) -> None:
        """Samples every tick period become rates per interval; the ring keeps the last N."""
        t = Throughput(size=3)
        for i, (committed, requests) in enumerate([(0, 0), (10, 4), (30, 4), (30, 10)]):
            t.sample(2.0 * i, committed, requests)
        self.assertEqual(
            t.rates(),
            [
                {"ago_s": 2.0, "writes_per_s": 10.0, "requests_per_s": 0.0},
                {"ago_s": 0.0, "writes_per_s": 0.0, "requests_per_s": 3.0},
            ],
        )

    def test_heartbeat_samples_throughput(self) -> None:
        """Every SAMPLE_EVERY seconds of heartbeats the node notes its committed op."""
        node = Node()
        node.request(wire.req_put(b"a", b"1"))
        for _ in range(8):
            node.metrics.tick()
        self.assertEqual([s[1] for s in node.metrics.throughput.samples], [1, 1])
