"""``makeService`` for ``twistd -n kvnode``: the node built from its options."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from kvtwist.chain.link import LinkConfig
from kvtwist.chain.replica import Replica
from kvtwist.client.protocol import ConnectionPool
from kvtwist.clock import use_steady_clock
from kvtwist.coordinator import Coordinator
from kvtwist.port import check_descriptor_limit
from kvtwist.server import (
    ClientConnections,
    Limits,
    NodeFactory,
)
from kvtwist.storage import CorruptData, DataDir, DiskError, FsyncPolicy, Recovered
from kvtwist.store import INLINE_WRITES, Store, ThreadRunner
from kvtwist.tree import freeze_collector

if TYPE_CHECKING:  # prometheus-client is loaded only with --metrics-port
    from kvtwist.monitoring import Histograms

from kvtwist.options import NodeOptions as Options
from kvtwist.services import ChainService, ListeningService, WatchdogService

__all__ = ["ChainService", "ListeningService", "Options", "WatchdogService", "build", "makeService"]

log = Logger(namespace="kvtwist.node")

#: Every write allocates a path of tree nodes that the cyclic collector tracks;
#: with the default thresholds it spends more time scanning a large tree than
#: the writes take.  Tree nodes form no cycles, so collecting rarely is safe.
GC_THRESHOLDS = (50_000, 50, 1000)


def build(options: Options, reactor: Any = global_reactor) -> service.MultiService:
    """Wire the node together; split from makeService so tests can pass a reactor."""
    gc.set_threshold(*GC_THRESHOLDS)
    if options.get("cluster"):
        from kvtwist.cluster.serve import build_server

        return build_server(options, reactor)
    top = service.MultiService()
    # the metrics' histograms first: each part is handed its observer as it is made
    histograms = new_histograms() if options.get("metrics-port") is not None else None
    runner = ThreadRunner(reactor, options["threads"])
    make_zk, lease = zookeeper_factory(options, reactor)
    zk = make_zk() if make_zk is not None else None
    limits = client_limits(options)
    link_config = links_config(options, limits, lease)
    tls = options.get("tls")
    link_tls = links_tls(options) if tls is not None else None
    clients = ClientConnections()  # a congested chain pauses them
    path = None if options["in-memory"] else os.path.abspath(options["data-dir"])
    try:
        replica, journal = open_replica(
            reactor, options, runner, histograms, path, zk, link_config, link_tls, clients
        )
    except SystemExit:
        runner.stop()  # its threads would keep the process from exiting
        raise
    if journal is not None:
        # after the runner's "during" trigger: the writer thread is done with it
        reactor.addSystemEventTrigger("after", "shutdown", journal.close)
    token = options.get("token")
    # requests relayed to the head or tail go to the port the links use:
    # the same TLS, and this node's token (members share it)
    forwarder = ConnectionPool(reactor, tls=link_tls, token=token)
    factory = NodeFactory(
        reactor,
        replica,
        limits,
        token=token,
        clients=clients,
        forwarder=forwarder,
        observe=histograms.observe_requests if histograms is not None else None,
    )
    short = check_descriptor_limit(limits)
    if short is not None:
        log.warn("{why}", why=short)
    ports: list[Any] = []

    def abandon() -> None:
        """A port could not be bound: undo what was started, so the process exits."""
        for port in ports:
            port.stopListening()
        runner.stop()  # its threads would keep the process from exiting
        if journal is not None:
            journal.close()

    try:
        listening = ListeningService(
            reactor, options["port"], options["interface"], factory, tls=tls
        )
        ports.append(listening.port)
        listening.setServiceParent(top)
        if options["resp-port"]:
            from kvtwist.resp import RespFactory

            lone = factory.dispatcher.only
            assert lone is not None  # the RESP port is a lone node's
            resp = RespFactory(
                reactor,
                lone,
                token=token,
                port=options["resp-port"],
                allow_flush=bool(options["resp-allow-flush"]),
                limits=limits,
                clients=clients,
            )
            resp_listening = ListeningService(
                reactor, options["resp-port"], options["interface"], resp, tls=tls
            )
            ports.append(resp_listening.port)
            resp_listening.setServiceParent(top)
    except SystemExit:
        abandon()
        raise
    chain: ChainService | None = None
    if make_zk is not None:
        chain = ChainService(reactor, replica, make_zk)
        chain.setServiceParent(top)
        WatchdogService(reactor, chain, options["zk-session-timeout"]).setServiceParent(top)
    if histograms is not None:
        try:
            add_metrics(top, reactor, options, histograms, replica, factory, chain)
        except SystemExit:
            abandon()
            raise
    from kvtwist.sdnotify import ReadinessService

    # the last service added is the first stopped: STOPPING=1 precedes leaving the chain
    ReadinessService(reactor, lambda: not replica.fenced).setServiceParent(top)
    announce(options, zk is not None)
    return top


def zookeeper_factory(
    options: Options, reactor: Any
) -> tuple[Callable[[], Coordinator] | None, float]:
    """How the node makes its coordinator (None standalone), and the longest read
    lease it may hold, which it tells its neighbours."""
    if not options["zk"]:
        return None, 0.0
    from kvtwist.kazoolog import limit_repeats
    from kvtwist.lease import LEASE_FRACTION
    from kvtwist.zk import ZooKeeper

    limit_repeats()  # ZooKeeper down: kazoo's retries must not bury our own lines

    def make_zk() -> ZooKeeper:
        return ZooKeeper(
            reactor,
            options["zk"],
            options["zk-root"],
            options["zk-session-timeout"],
            auth=options.get("zk-auth"),
        )

    return make_zk, options["zk-session-timeout"] * LEASE_FRACTION


def announce(options: Options, chain: bool) -> None:
    """One line: where the node serves, in which mode, with which protections."""
    tls = options.get("tls")
    security = [
        name
        for name, on in (
            ("TLS", tls is not None),
            ("client token", options.get("token") is not None),
            ("ZooKeeper ACLs", chain and options.get("zk-auth") is not None),
        )
        if on
    ]
    log.info(
        "kvtwist node on {iface}:{port}{resp} ({mode}; {security})",
        iface=options["interface"],
        port=options["port"],
        resp=f", RESP on port {options['resp-port']}" if options["resp-port"] else "",
        mode=f"chain {options['zk-root']} via {options['zk']}" if chain else "standalone",
        security=", ".join(security) or "plain TCP, no client token",
    )


def links_config(options: Options, limits: Limits, lease: float, chain: str = "") -> LinkConfig:
    return LinkConfig(
        timeout=options["link-timeout"],
        lease=lease,
        key=options.get("cluster-key"),
        client=limits,
        chain=chain,
    )


def open_replica(
    reactor: Any,
    options: Options,
    runner: ThreadRunner,
    histograms: Histograms | None,
    path: str | None,
    zk: Coordinator | None,
    link_config: LinkConfig,
    link_tls: Any,
    clients: ClientConnections,
    before_register: Callable[[], Deferred[None]] | None = None,
) -> tuple[Replica, DataDir | None]:
    """A replica on its store, recovered from the data directory ``path`` (None: in memory).

    A lone node has one; a cluster server one per chain it serves (``before_register``:
    the server's fresh look at its map, :class:`~kvtwist.chain.replica.Replica`).
    """
    journal, recovered = open_data_dir(options, histograms, path)
    store = Store(
        reactor,
        runner,
        journal,
        on_snapshot=histograms.snapshot.observe if histograms is not None else None,
        inline_writes=INLINE_WRITES,
    )
    replica = Replica(
        reactor,
        store,
        options["advertise"],
        zk,
        link_config=link_config,
        link_tls=link_tls,
        on_congestion=clients.congestion,
        on_commit_latency=histograms.commit.observe if histograms is not None else None,
        on_link_rtt=histograms.observe_rtt if histograms is not None else None,
        before_register=before_register,
    )
    if recovered is not None:
        store.restore(recovered)
        rows = [(r.client_id, r.request_id, r.seq, r.found) for r in recovered.clients]
        replica.restore(recovered.tree, recovered.last_seq, recovered.epochs, rows)
        freeze_collector()  # the recovered tree lives long: never scan it again
    if journal is not None and options["fsync"] == "interval":
        store.start_sync_timer(options["fsync-interval"])
    return replica, journal


def new_histograms() -> Histograms:
    """The metrics' histograms (prometheus-client is imported only when asked for)."""
    from kvtwist.monitoring import Histograms

    return Histograms()


def add_metrics(
    top: service.MultiService,
    reactor: Any,
    options: Options,
    histograms: Histograms,
    replica: Replica | None,
    factory: NodeFactory,
    chain: ChainService | None,
) -> None:
    """Serve /metrics, /healthz and /readyz on --metrics-port (kvtwist.monitoring); a
    cluster server's (``replica`` None) report each of the factory's chains."""
    from kvtwist.monitoring import MetricsService, NodeMetrics

    data_dir = None if options["in-memory"] else os.path.abspath(options["data-dir"])
    metrics = NodeMetrics(histograms, replica, factory, data_dir)
    if chain is not None:
        chain.state_watchers.append(metrics.zk_state_changed)
    MetricsService(
        reactor, options["metrics-port"], options["interface"], metrics
    ).setServiceParent(top)


def client_limits(options: Options) -> Limits:
    return Limits(
        max_frame=options["max-frame"],
        max_key=options["max-key"],
        max_value=options["max-value"],
        max_connections=options["max-connections"],
        max_pending=options["max-pending"],
        idle_timeout=options["idle-timeout"],
        max_reply=options["max-reply"],
    )


def links_tls(options: Options) -> Any:
    """How links dial: the peers' port speaks TLS as ours does; checked when
    --tls-peer-ca says how."""
    from kvtwist import tls as tls_module

    return options.get("peer-tls") or tls_module.links()


def open_data_dir(
    options: Options, histograms: Histograms | None, path: str | None
) -> tuple[DataDir | None, Recovered | None]:
    """Open and recover the data directory; a node that cannot exits with one line."""
    if path is None:
        log.warn("in-memory: nothing is kept on disk; a restart starts empty")
        return None, None
    journal = DataDir(
        path,
        fsync=FsyncPolicy(options["fsync"]),
        on_batch=histograms.batch.observe if histograms is not None else None,
        on_fsync=histograms.fsync.observe if histograms is not None else None,
    )
    started = time.monotonic()
    try:
        recovered = journal.open()
    except (CorruptData, DiskError, OSError) as e:
        raise SystemExit(f"kvtwist: cannot open data directory {path}: {e}") from None
    for warning in recovered.warnings:
        log.warn("recovery: {w}", w=warning)
    log.info(
        "data directory {path} (fsync {policy}): {n} keys at op {seq}, recovered in {s:.2f}s",
        path=path,
        policy=options["fsync"],
        n=len(recovered.tree),
        seq=recovered.last_seq,
        s=time.monotonic() - started,
    )
    return journal, recovered


def makeService(options: Options) -> service.MultiService:
    # every timer of the node runs on a clock that wall-clock steps do not move
    use_steady_clock(global_reactor)
    return build(options)
