"""A node's metrics, health and readiness over HTTP (``--metrics-port``).

Prometheus text comes from ``prometheus-client`` with a registry of the node's
own (not the process-wide one), so several nodes can live in one test
process.  The request paths only bump counters (kept by
:class:`kvtwist.server.metrics.Metrics`, as for STATS) and observe histograms;
everything else is read from the replica when Prometheus scrapes, by
:class:`NodeCollector`.

The page is rendered on the reactor thread, not through prometheus-client's
Twisted ``MetricsResource`` (which renders on a thread pool): the replica's
state belongs to the reactor, and a scrape must not read it halfway through
a change.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString
from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.web import resource, server
from twisted.web.resource import IResource

import kvtwist
from kvtwist import clock, wire
from kvtwist.nodestats import directory_bytes, unacked_age, zk_state
from kvtwist.statuspage import (
    SAMPLE_EVERY,
    StatusJSON,
    StatusPage,
    Throughput,
    requests_answered,
)

#: every role a node reports (``Replica.role``): one gauge series each
ROLES = (
    "standalone",
    "head",
    "middle",
    "tail",
    "head+tail",
    "starting",
    "joining",
    "waiting",
    "registering",
    "fenced",
    "stopped",
)
ZK_STATES = ("connected", "suspended", "lost")

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

#: /healthz fails once the reactor's heartbeat is older than this (seconds)
HEALTH_LIMIT = 5.0
HEARTBEAT = 0.5


class Histograms:
    """A node's registry and the histograms its parts feed, made before the parts:
    each part is handed its observer at construction (:meth:`observers`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        #: request latency by opcode, fed on the reactor thread a batch at a time
        self.latency: dict[int, CountedHistogram] = {}
        self.fsync = Histogram(
            "kvtwist_wal_fsync_duration_seconds",
            "Time of each fsync of the write-ahead log.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "kvtwist_wal_batch_records",
            "Records per batch appended to the write-ahead log.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.commit = Histogram(
            "kvtwist_commit_duration_seconds",
            "At the head: from numbering a batch of writes to its commitment "
            "(acknowledged by the whole chain), one observation per batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rtt = Histogram(
            "kvtwist_link_rtt_seconds",
            "Round trip of a probe on a chain link (a PING the peer echoes), by the "
            "side the peer is on; both ends' reactor turns included.",
            labelnames=["side"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.snapshot = Histogram(
            "kvtwist_snapshot_duration_seconds",
            "Time to write and install a snapshot of the data directory.",
            buckets=SNAPSHOT_BUCKETS,
            registry=r,
        )

    def observe_rtt(self, side: str, seconds: float) -> None:
        self.rtt.labels(side).observe(seconds)

    def observe_requests(self, op: int, seconds: float, count: int) -> None:
        """``count`` requests of opcode ``op`` answered in ``seconds`` each: one
        bucket update for the lot, not one per request."""
        h = self.latency.get(op)
        if h is None:
            h = self.latency[op] = CountedHistogram(LATENCY_BUCKETS)
        h.observe(seconds, count)


class NodeMetrics:
    """What the collector reads at scrape time, and the role and session it follows.

    ``histograms`` were handed to the node's parts as they were built;
    ``replica`` is the node's :class:`~kvtwist.chain.replica.Replica`;
    ``factory`` its :class:`~kvtwist.server.NodeFactory` (request counters,
    connections); ``data_dir`` the data directory to weigh (None in memory).
    """

    def __init__(
        self, histograms: Histograms, replica: Any, factory: Any, data_dir: str | None = None
    ) -> None:
        """``replica`` None: a cluster server's, whose chains are the factory's
        (kvtwist.server.chains): each chain's figures then carry a ``chain`` label."""
        self.histograms = histograms
        self.registry = histograms.registry
        self.replica = replica
        self.factory = factory
        self.data_dir = data_dir
        self.role = replica.role if replica is not None else ""
        self.role_changes = 0
        self._roles: dict[str, str] = {}  # a cluster server's, by chain
        self.zk_reconnects = 0
        self._zk_connected_once = False
        self._zk_last = ""
        self.registry.register(NodeCollector(self))
        #: the status page's throughput of the last minutes
        self.throughput = Throughput()
        self._ticks = 0

    def zk_state_changed(self, state: str) -> None:
        """A ZooKeeper session event: every "connected" after the first is a reconnect."""
        if state == "connected" and self._zk_last != "connected":
            if self._zk_connected_once:
                self.zk_reconnects += 1
            self._zk_connected_once = True
        self._zk_last = state

    @property
    def clustered(self) -> bool:
        return self.replica is None

    def replicas(self) -> list[tuple[str, Any]]:
        """The replicas to report, by chain ("" for a lone node's one)."""
        if self.replica is not None:
            return [("", self.replica)]
        return sorted(self.factory.chains, key=lambda cr: str(cr[0]))

    def sample_role(self) -> str:
        """Note a change of role; called by the heartbeat and at every scrape."""
        for chain, replica in self.replicas():
            role = replica.role
            if role != self._roles.get(chain, role):
                self.role_changes += 1
            self._roles[chain] = role
        self.role = self._roles.get("", "")
        return self.role

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def tick(self) -> None:
        """Every heartbeat: the role; every SAMPLE_EVERY seconds, the throughput."""
        self.sample_role()
        self._ticks += 1
        if self._ticks >= SAMPLE_EVERY / HEARTBEAT and self.replica is not None:
            self._ticks = 0
            self.throughput.sample(
                clock.now(), self.replica.state.committed_seq, requests_answered(self.factory)
            )


def links_up(replica: Any) -> int:
    return sum(1 for link in (replica.pred, replica.succ) if link is not None and link.ready)


def op_label(op: int) -> str:
    return wire.op_name(op).lower()


class CountedHistogram:
    """A histogram that takes ``count`` equal observations at once.

    Requests answered together (a pipelined batch) share one latency; the
    library's histogram would take them one call and one lock each, a cost
    the request path measurably pays.  Used on the reactor thread only, and
    read there at scrape time.
    """

    __slots__ = ("bounds", "counts", "total", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += count
        self.total += count
        self.sum += value * count

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: observations at most each bound, then ``+Inf``."""
        out = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((floatToGoString(bound), float(running)))
        out.append(("+Inf", float(self.total)))
        return out


class NodeCollector:
    """Reads counters and state at scrape time: nothing on the request path."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        m.sample_role()
        requests = CounterMetricFamily(
            "kvtwist_requests", "Requests answered, by op and outcome.", labels=["op", "outcome"]
        )
        for op, c in sorted(m.factory.metrics.ops.items()):
            name = op_label(op)
            requests.add_metric([name, "ok"], c.count - c.errors)
            requests.add_metric([name, "error"], c.errors)
        yield requests
        latency = HistogramMetricFamily(
            "kvtwist_request_duration_seconds",
            "Time from a request's arrival to its answer, by op.",
            labels=["op"],
        )
        for op, h in sorted(m.histograms.latency.items()):
            latency.add_metric([op_label(op)], h.cumulative(), h.sum)
        yield latency
        yield from self._per_chain()
        yield CounterMetricFamily(
            "kvtwist_role_changes", "Changes of role seen by the node.", value=m.role_changes
        )
        yield GaugeMetricFamily(
            "kvtwist_connections_open", "Open client connections.",
            value=len(m.factory.connections),
        )
        yield CounterMetricFamily(
            "kvtwist_connections_refused",
            "Client connections refused over --max-connections.",
            value=m.factory.metrics.connections_refused,
        )
        replicas = [r for _, r in m.replicas()]
        if replicas and not replicas[0].standalone:
            now = zk_state(replicas[0])  # a cluster server's chains share one session
            zk = GaugeMetricFamily(
                "kvtwist_zookeeper_session",
                "1 for the ZooKeeper session's state as the node last heard of it.",
                labels=["state"],
            )
            for name in ZK_STATES:
                zk.add_metric([name], 1.0 if name == now else 0.0)
            yield zk
            yield CounterMetricFamily(
                "kvtwist_zookeeper_reconnects",
                "ZooKeeper sessions connected again after the first.",
                value=m.zk_reconnects,
            )
        if m.data_dir is not None:
            yield GaugeMetricFamily(
                "kvtwist_data_dir_bytes",
                "Bytes of the files in the data directory.",
                value=directory_bytes(m.data_dir),
            )
        info = GaugeMetricFamily("kvtwist_info", "The node's version.", labels=["version"])
        info.add_metric([kvtwist.__version__], 1.0)
        yield info

    def _per_chain(self) -> Iterator[Metric]:
        """Each replica's role, op numbers, Sent list and links; a cluster server's
        labelled by chain."""
        m = self.m
        chain = ["chain"] if m.clustered else []
        gauge = GaugeMetricFamily(
            "kvtwist_role", "1 for the role the node has now.", labels=[*chain, "role"]
        )
        figures = {
            "kvtwist_op_received": "The last op received.",
            "kvtwist_op_applied": "The last op applied to the tree.",
            "kvtwist_op_committed": "The last op known committed.",
            "kvtwist_sent_list_length": "Ops in the Sent list.",
            "kvtwist_sent_list_bytes": "Bytes of the Sent list.",
            "kvtwist_chain_links_open": "Links to the neighbours up.",
            "kvtwist_unacked_age_seconds": (
                "Age of the oldest update sent to the successor and not acknowledged "
                "(at the head: how far the tail trails it); 0 without one."
            ),
        }
        families = {n: GaugeMetricFamily(n, what, labels=chain) for n, what in figures.items()}
        rtt = GaugeMetricFamily(
            "kvtwist_link_rtt_last_seconds",
            "The last probe's round trip on each chain link that is up, by side.",
            labels=[*chain, "side"],
        )
        for cid, replica in m.replicas():
            label = [cid] if m.clustered else []
            role = replica.role
            for name in ROLES if role in ROLES else (*ROLES, role):
                gauge.add_metric([*label, name], 1.0 if name == role else 0.0)
            state = replica.state
            for name, value in (
                ("kvtwist_op_received", state.last_received),
                ("kvtwist_op_applied", state.applied_seq),
                ("kvtwist_op_committed", state.committed_seq),
                ("kvtwist_sent_list_length", len(state.pending)),
                ("kvtwist_sent_list_bytes", state.pending_bytes),
                ("kvtwist_chain_links_open", links_up(replica)),
                ("kvtwist_unacked_age_seconds", unacked_age(replica)),
            ):
                families[name].add_metric(label, value)
            for link in (replica.pred, replica.succ):
                if link is not None and not link.closed and link.rtt is not None:
                    rtt.add_metric([*label, link.side.value], link.rtt)
        yield gauge
        yield from families.values()
        yield rtt


# health and readiness


def health(heartbeat_age: float) -> tuple[int, str]:
    """/healthz: the reactor turns (its heartbeat is recent)."""
    if heartbeat_age <= HEALTH_LIMIT:
        return 200, "ok"
    return 503, f"reactor stalled: last heartbeat {heartbeat_age:.1f}s ago"


def readiness(metrics: NodeMetrics) -> tuple[int, str]:
    """/readyz: serving in its role (standalone, or a member of the chain); a cluster
    server: every chain placed on it serving."""
    if not metrics.clustered:
        replica = metrics.replica
        if replica.life.serving:
            return 200, f"ready: {replica.role}"
        return 503, f"not serving: {replica.life.describe()}"
    replicas = metrics.replicas()
    waiting = [f"{c} {r.life.describe()}" for c, r in replicas if not r.life.serving]
    if waiting:
        return 503, "not serving: " + "; ".join(waiting)
    return 200, "ready: " + (", ".join(f"{c} {r.role}" for c, r in replicas) or "no chains")


class _Text(resource.Resource):
    isLeaf = True

    def __init__(self, answer: Callable[[], tuple[int, str]]) -> None:
        super().__init__()
        self.answer = answer

    def render_GET(self, request: Any) -> bytes:
        code, text = self.answer()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (text + "\n").encode()


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, metrics: NodeMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self.metrics.text()


class Heartbeat:
    """Stamps the steady clock from the reactor every HEARTBEAT seconds."""

    def __init__(self, reactor: Any, tick: Callable[[], Any] = lambda: None) -> None:
        self.last = clock.now()
        self.tick = tick
        self.loop = LoopingCall(self._beat)
        self.loop.clock = reactor

    def _beat(self) -> None:
        self.last = clock.now()
        self.tick()

    def age(self) -> float:
        return clock.now() - self.last


def make_root(
    metrics: NodeMetrics, heartbeat: Heartbeat, reactor: Any = None
) -> resource.Resource:
    """The metrics port's paths; with ``reactor``, the status page and its data too."""
    root = resource.Resource()
    if reactor is not None:
        root.putChild(b"", cast(IResource, StatusPage()))
        root.putChild(b"status.json", cast(IResource, StatusJSON(metrics, reactor)))
    # without mypy-zope, mypy cannot see that a Resource provides IResource
    root.putChild(b"metrics", cast(IResource, _Metrics(metrics)))
    root.putChild(b"healthz", cast(IResource, _Text(lambda: health(heartbeat.age()))))
    root.putChild(b"readyz", cast(IResource, _Text(lambda: readiness(metrics))))
    return root


class MetricsSite(server.Site):
    """No access-log line per scrape, no "Starting factory" lines."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class MetricsService(service.Service):
    """The HTTP port of ``--metrics-port``, bound while the node is built (a taken
    port is one line and a non-zero exit), and the heartbeat behind /healthz."""

    def __init__(self, reactor: Any, port: int, interface: str, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self.heartbeat = Heartbeat(reactor, metrics.tick)
        # the status page shows one chain: a lone node's
        page = reactor if not metrics.clustered else None
        site = MetricsSite(make_root(metrics, self.heartbeat, page))
        try:
            self.port = reactor.listenTCP(port, site, interface=interface)
        except CannotListenError as e:
            raise SystemExit(
                f"kvtwist: cannot listen on {interface}:{port} for metrics: {e.socketError}"
            ) from None

    def startService(self) -> None:
        super().startService()
        self.heartbeat.loop.start(HEARTBEAT, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self.heartbeat.loop.running:
            self.heartbeat.loop.stop()
        return self.port.stopListening()
