"""``twistd -n kvnode --cluster NAME``: a cluster server wired from its options.

What a lone node builds once (a store, a replica) a cluster server builds per
chain placed on it, with the same functions; the port, the thread pool, the
ZooKeeper session and the watchdog are the server's, shared by its chains.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from kvtwist.chain.replica import Replica
from kvtwist.client.protocol import ConnectionPool
from kvtwist.cluster.hosting import ClusterServer
from kvtwist.cluster.load import Thresholds
from kvtwist.cluster.shardmap import ClusterPaths, Server, check_name
from kvtwist.kazoolog import limit_repeats
from kvtwist.lease import LEASE_FRACTION
from kvtwist.options import NodeOptions
from kvtwist.server import ClientConnections, NodeFactory
from kvtwist.server.chains import Chains
from kvtwist.services import ListeningService, WatchdogService
from kvtwist.storage import DataDir
from kvtwist.store import ThreadRunner
from kvtwist.zk import ZooKeeper
from kvtwist.zk.cluster import ZooKeeperClusterStore
from kvtwist.zk.session import Session

__all__ = ["build_server", "server_id"]

if TYPE_CHECKING:  # prometheus-client is loaded only with --metrics-port
    from kvtwist.monitoring import Histograms

log = Logger(namespace="kvtwist.cluster")

ID_FILE = "server-id"


def server_id(options: NodeOptions) -> str:
    """--server-id, or the one kept in the data directory (made at the first start)."""
    if options["server-id"]:
        return str(options["server-id"])
    if options["in-memory"]:
        # nothing survives a restart: it comes back as a new server
        return f"s-{uuid.uuid4().hex[:10]}"
    base = os.path.abspath(options["data-dir"])
    path = os.path.join(base, ID_FILE)
    try:
        with open(path, encoding="ascii") as f:
            return check_name("server", f.read().strip())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        raise SystemExit(f"kvtwist: cannot read the server id in {path}: {e}") from None
    made = f"s-{uuid.uuid4().hex[:10]}"
    os.makedirs(base, exist_ok=True)
    with open(path + ".tmp", "w", encoding="ascii") as f:
        f.write(made + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    return made


def listen(
    top: service.MultiService,
    reactor: Any,
    options: NodeOptions,
    factory: NodeFactory,
    histograms: Histograms | None,
) -> None:
    """The server's one port, and --metrics-port; a port that cannot be bound is
    SystemExit, with nothing left listening."""
    from kvtwist import tap

    listening = ListeningService(
        reactor, options["port"], options["interface"], factory, tls=options.get("tls")
    )
    listening.setServiceParent(top)
    if histograms is not None:
        try:
            tap.add_metrics(top, reactor, options, histograms, None, factory, None)
        except SystemExit:
            listening.port.stopListening()
            raise


def build_server(options: NodeOptions, reactor: Any) -> service.MultiService:
    from kvtwist import tap  # the lone node's building blocks

    top = service.MultiService()
    limit_repeats()
    # the metrics' histograms first: each part is handed its observer as it is made
    histograms = tap.new_histograms() if options.get("metrics-port") is not None else None
    paths = ClusterPaths(options["cluster"])
    me = Server(server_id(options), options["advertise"], options["zone"])
    runner = ThreadRunner(reactor, options["threads"])
    limits = tap.client_limits(options)
    lease = options["zk-session-timeout"] * LEASE_FRACTION
    tls = options.get("tls")
    link_tls = tap.links_tls(options) if tls is not None else None
    clients = ClientConnections()
    chains = Chains()
    token = options.get("token")
    factory = NodeFactory(
        reactor,
        chains,
        limits,
        token=token,
        clients=clients,
        forwarder=ConnectionPool(reactor, tls=link_tls, token=token),
        link_config=tap.links_config(options, limits, lease),
        observe=histograms.observe_requests if histograms is not None else None,
    )
    session = Session(
        reactor, options["zk"], options["zk-session-timeout"], options.get("zk-auth")
    )
    data_dir = None if options["in-memory"] else os.path.abspath(options["data-dir"])
    journals: list[DataDir] = []

    def open_chain(
        chain: str, zk: ZooKeeper, before_register: Callable[[], Deferred[None]]
    ) -> tuple[Replica, DataDir | None]:
        path = None if data_dir is None else os.path.join(data_dir, "chains", chain)
        replica, journal = tap.open_replica(
            reactor,
            options,
            runner,
            histograms,
            path,
            zk,
            tap.links_config(options, limits, lease, chain),
            link_tls,
            clients,
            before_register,
        )
        if journal is not None:
            journals.append(journal)
        return replica, journal

    def make_zk(root: str) -> ZooKeeper:
        return ZooKeeper(
            reactor,
            options["zk"],
            root,
            options["zk-session-timeout"],
            auth=options.get("zk-auth"),
            session=session,
        )

    def close_journals() -> None:
        for journal in journals:
            journal.close()

    reactor.addSystemEventTrigger("after", "shutdown", close_journals)
    try:
        listen(top, reactor, options, factory, histograms)
    except SystemExit:
        runner.stop()
        raise
    store = ZooKeeperClusterStore(session, paths)
    cluster = ClusterServer(
        reactor,
        session,
        store,
        paths,
        me,
        chains,
        open_chain,
        make_zk,
        replace_after=options["replace-after"],
        balance_after=options["balance-after"],
        thresholds=Thresholds(options["split-keys"], options["split-bytes"]),
    )
    cluster.setServiceParent(top)
    WatchdogService(reactor, cluster, options["zk-session-timeout"]).setServiceParent(top)
    log.info(
        "kvtwist cluster server {id} of {name} on {iface}:{port} via {zk}",
        id=me.id,
        name=paths.name,
        iface=options["interface"],
        port=options["port"],
        zk=options["zk"],
    )
    return top
