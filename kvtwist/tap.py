"""twistd options and ``makeService`` for ``twistd -n kvnode``."""

from __future__ import annotations

import gc
import ipaddress
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import reactor as global_reactor
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from kvtwist import wire
from kvtwist.chain.auth import load_key
from kvtwist.chain.link import DEFAULT_LINK_TIMEOUT, LinkConfig
from kvtwist.chain.replica import Replica
from kvtwist.client.protocol import ConnectionPool
from kvtwist.clock import use_steady_clock
from kvtwist.coordinator import Coordinator
from kvtwist.port import check_descriptor_limit, listen
from kvtwist.secretfile import KeyFileError, load_secret
from kvtwist.server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_KEY,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_REPLY,
    ClientConnections,
    Limits,
    NodeFactory,
)
from kvtwist.storage import CorruptData, DataDir, DiskError, FsyncPolicy, Recovered
from kvtwist.store import Store, ThreadRunner
from kvtwist.tree import freeze_collector
from kvtwist.watchdog import ReactorWatchdog

if TYPE_CHECKING:  # prometheus-client is loaded only with --metrics-port
    from kvtwist.monitoring import Histograms

log = Logger(namespace="kvtwist.node")


def _positive(name: str) -> Any:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise usage.UsageError(f"--{name} needs an integer, got {text!r}") from None
        if value <= 0:
            raise usage.UsageError(f"--{name} must be positive, got {value}")
        return value

    return convert


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a kvtwist node. Without --zk it is a standalone node; with --zk it joins "
        "the chain kept under --zk-root in ZooKeeper."
    )
    optParameters = [
        ["port", "p", 9000, "TCP port for clients and chain links.", _positive("port")],
        ["interface", "i", "127.0.0.1", "Address to listen on (0.0.0.0 exposes the node)."],
        [
            "resp-port",
            None,
            None,
            "TCP port for Redis clients (RESP2/RESP3, same interface, TLS and token); off "
            "unless given.",
            _positive("resp-port"),
        ],
        ["threads", "t", 4, "Reader threads for tree work.", _positive("threads")],
        [
            "max-frame",
            None,
            wire.DEFAULT_MAX_FRAME,
            "Largest request frame in bytes.",
            _positive("max-frame"),
        ],
        ["max-key", None, DEFAULT_MAX_KEY, "Largest key in bytes.", _positive("max-key")],
        ["max-value", None, None, "Largest value in bytes (default: --max-frame)."],
        [
            "max-connections",
            None,
            DEFAULT_MAX_CONNECTIONS,
            "Concurrent client connections (descriptors needed: this + 112).",
            _positive("max-connections"),
        ],
        [
            "max-pending",
            None,
            DEFAULT_MAX_PENDING,
            "Unanswered requests per connection before it stops reading.",
            _positive("max-pending"),
        ],
        [
            "idle-timeout",
            None,
            None,
            "Close client connections idle this many seconds (off).",
            float,
        ],
        ["zk", None, None, "ZooKeeper hosts (host:port[,host:port...]): join a chain."],
        ["zk-root", None, "/chain", "ZooKeeper path of the chain."],
        ["zk-session-timeout", None, 10.0, "ZooKeeper session timeout in seconds.", float],
        ["advertise", None, None, "host:port written into ZooKeeper (default interface:port)."],
        # chain-link security, liveness and reply bounds
        [
            "cluster-key-file",
            None,
            None,
            "Shared secret authenticating chain links (mode 600, at least 16 bytes); "
            "required unless the node listens on loopback only.",
        ],
        # client security (all off by default: the original C client speaks plain TCP)
        [
            "tls-cert",
            None,
            None,
            "PEM certificate (then any intermediates): with --tls-key the port speaks "
            "TLS only, chain links included.",
        ],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        [
            "tls-peer-ca",
            None,
            None,
            "PEM CA certificates of the other members (with --tls-cert): links and "
            "forwarded requests then accept only a member whose certificate they sign "
            "and that names the address it registered.",
        ],
        [
            "auth-token-file",
            None,
            None,
            "Clients must send this token (mode 600, at least 16 bytes) before any request.",
        ],
        [
            "zk-auth",
            None,
            None,
            "USER:PASSWORD: ZooKeeper digest auth; the znodes this node creates can be "
            "changed only with it (everyone may read them).",
        ],
        [
            "zk-auth-file",
            None,
            None,
            "File (mode 600) holding --zk-auth's USER:PASSWORD, kept off the command line.",
        ],
        [
            "link-timeout",
            None,
            DEFAULT_LINK_TIMEOUT,
            "Seconds of silence, or of unacknowledged updates, before a chain link is closed.",
            float,
        ],
        [
            "max-reply",
            None,
            DEFAULT_MAX_REPLY,
            "Largest GETKEYS/GETVALUES/RANGE reply in bytes.",
            _positive("max-reply"),
        ],
        # durability
        [
            "data-dir",
            "d",
            None,
            "Directory holding the node's log and snapshots (default ./kvtwist-data/<port>).",
        ],
        [
            "fsync",
            None,
            "always",
            "When the log reaches the disk: always (before a write is passed on or "
            "acknowledged), interval (every --fsync-interval seconds), never (the OS decides).",
        ],
        ["fsync-interval", None, 1.0, "Seconds between fsyncs under --fsync interval.", float],
        # operations
        [
            "metrics-port",
            None,
            None,
            "HTTP port (on --interface) for Prometheus /metrics, /healthz and /readyz (off).",
            _positive("metrics-port"),
        ],
        [
            "config",
            None,
            None,
            "TOML file of options (the long names as keys); the command line wins over it.",
        ],
    ]
    optFlags = [
        ["in-memory", None, "Keep nothing on disk: a restart starts empty."],
    ]

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = sys.argv[1:] if options is None else list(options)
        self._apply_config_file(argv)
        super().parseOptions(argv)

    def _apply_config_file(self, argv: Sequence[str]) -> None:
        """Put the --config file's values in place of the defaults, before the command
        line is parsed over them; a bad file is one line and exit status 2."""
        from kvtwist import config

        try:
            path = config.config_path(argv)
            if path is None:
                return
            parameters = {p[0]: (p[4] if len(p) > 4 else None) for p in self.optParameters}
            flags = [str(f[0]) for f in self.optFlags]
            values = config.load(path, parameters, flags)
        except config.ConfigError as e:
            config.fail(e)
            return
        self.opts.update(values)

    def postOptions(self) -> None:
        self._check_storage_options()
        metrics_port = self["metrics-port"]
        if metrics_port is not None and metrics_port > 65535:
            raise usage.UsageError(f"--metrics-port {metrics_port} is out of range")
        if self["max-value"] is None:
            self["max-value"] = self["max-frame"]
        else:
            self["max-value"] = _positive("max-value")(self["max-value"])
        if self["idle-timeout"] is not None and self["idle-timeout"] <= 0:
            raise usage.UsageError("--idle-timeout must be positive")
        if self["port"] > 65535:
            raise usage.UsageError(f"--port {self['port']} is out of range")
        if self["advertise"] is None:
            host = self["interface"]
            if host in ("0.0.0.0", "", "::"):
                if self["zk"]:
                    raise usage.UsageError(
                        "--advertise host:port is needed when listening on all interfaces"
                    )
                host = "127.0.0.1"
            # an IPv6 literal goes in brackets, as every address in ZooKeeper does
            self["advertise"] = (
                f"[{host}]:{self['port']}" if ":" in host else f"{host}:{self['port']}"
            )
        from kvtwist.membership import parse_address

        if parse_address(self["advertise"].encode()) is None:
            raise usage.UsageError(
                f"--advertise must be host:port (IPv6 as [addr]:port), not {self['advertise']!r}"
            )
        if self["zk"]:
            _check_zk_hosts(self["zk"])
            from kvtwist.membership import validate_root

            try:
                self["zk-root"] = validate_root(self["zk-root"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
            if self["zk-session-timeout"] <= 0:
                raise usage.UsageError("--zk-session-timeout must be positive")
        self._check_link_options()
        self._check_client_security()

    def _check_client_security(self) -> None:
        """Load what the TLS, token and ZooKeeper options name; one line on any problem."""
        cert, key = self["tls-cert"], self["tls-key"]
        self["tls"] = None
        if (cert is None) != (key is None):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if cert is not None:
            from kvtwist.tls import TLSConfigError, server_options

            try:
                self["tls"] = server_options(cert, key)
            except TLSConfigError as e:
                raise usage.UsageError(str(e)) from None
        self["peer-tls"] = None
        if self["tls-peer-ca"] is not None:
            if cert is None:
                raise usage.UsageError("--tls-peer-ca needs --tls-cert: members speak TLS")
            from kvtwist.tls import TLSConfigError, links

            try:
                self["peer-tls"] = links(self["tls-peer-ca"])
            except TLSConfigError as e:
                raise usage.UsageError(f"--tls-peer-ca: {e}") from None
        self["token"] = None
        if self["auth-token-file"] is not None:
            try:
                self["token"] = load_secret(self["auth-token-file"], "token")
            except KeyFileError as e:
                raise usage.UsageError(str(e)) from None
        if self["zk-auth-file"] is not None:
            if self["zk-auth"] is not None:
                raise usage.UsageError("--zk-auth and --zk-auth-file exclude each other")
            try:
                secret = load_secret(self["zk-auth-file"], "ZooKeeper auth", min_bytes=1)
            except KeyFileError as e:
                raise usage.UsageError(str(e)) from None
            self["zk-auth"] = secret.decode("utf-8", "replace")
        if self["zk-auth"] is not None:
            from kvtwist.zk import digest_acl

            try:
                digest_acl(self["zk-auth"])
            except ValueError as e:
                raise usage.UsageError(f"--zk-auth: {e}") from None

    def _check_link_options(self) -> None:
        if self["link-timeout"] <= 0:
            raise usage.UsageError("--link-timeout must be positive")
        self["cluster-key"] = None
        if self["cluster-key-file"] is not None:
            try:
                self["cluster-key"] = load_key(self["cluster-key-file"])
            except KeyFileError as e:
                raise usage.UsageError(str(e)) from None
        elif self["zk"] and not _loopback(self["interface"]):
            raise usage.UsageError(
                f"a chain node listening on {self['interface'] or 'all interfaces'} needs "
                "--cluster-key-file (only loopback-only chains may run without one)"
            )

    def _check_storage_options(self) -> None:
        if self["fsync"] not in ("always", "interval", "never"):
            raise usage.UsageError(
                f"--fsync must be always, interval or never, not {self['fsync']!r}"
            )
        if self["fsync-interval"] <= 0:
            raise usage.UsageError("--fsync-interval must be positive")
        if self["in-memory"] and self["data-dir"] is not None:
            raise usage.UsageError("--in-memory and --data-dir exclude each other")
        if not self["in-memory"] and self["data-dir"] is None:
            self["data-dir"] = os.path.join("kvtwist-data", str(self["port"]))


def _check_zk_hosts(hosts: str) -> None:
    """A --zk kazoo cannot parse ends the node at option parsing: one line, exit status 2.

    twistd turns a UsageError into its whole help text and status 1; a typo in
    a host list deserves the one line that names it.
    """
    from kvtwist.zkhosts import USAGE, BadHosts, check_hosts

    try:
        check_hosts(hosts)
    except BadHosts as e:
        print(f"kvtwist: {e}", file=sys.stderr)
        raise SystemExit(USAGE) from None


def _loopback(interface: str) -> bool:
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


class ChainService(service.Service):
    """Connects to ZooKeeper and joins the chain once the node is listening.

    While ZooKeeper cannot be reached the node keeps running, answering
    clients with a retryable "not serving (starting)" error, and tries again.
    """

    retry_delay = 2.0

    def __init__(
        self, reactor: Any, replica: Replica, make_zk: Callable[[], Coordinator]
    ) -> None:
        self.reactor = reactor
        self.replica = replica
        self.make_zk = make_zk
        self.zk: Coordinator | None = None
        self._retry: Any = None
        #: told every session event of every adapter, besides the replica (the metrics)
        self.state_watchers: list[Callable[[str], None]] = []

    def startService(self) -> None:
        super().startService()
        self._connect(self.replica.zk)

    def _connect(self, zk: Coordinator | None = None) -> None:
        """Start ``zk``, or a fresh adapter: a failed one cannot be started again."""
        self._retry = None
        zk = zk if zk is not None else self.make_zk()
        self.zk = self.replica.zk = zk
        zk.on_state(self.replica.zk_state)
        for watch in self.state_watchers:
            zk.on_state(watch)
        zk.on_gone(self.replica.znode_gone)
        zk.watch_members(self.replica.set_view)
        d = zk.start()
        d.addCallbacks(lambda _: self.replica.join(), self._failed)
        d.addErrback(lambda f: log.failure("joining the chain failed", f))

    def _failed(self, f: Any) -> None:
        if not self.running or self.zk is None:
            return
        log.warn(
            "cannot reach ZooKeeper at {hosts}: {e}; retrying in {s}s",
            hosts=self.zk.hosts,
            e=f.getErrorMessage() or f.type.__name__,
            s=self.retry_delay,
        )
        self.zk.stop()
        self._retry = self.reactor.callLater(self.retry_delay, self._connect)

    def stopService(self) -> Any:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self.replica.stop()
        return self.zk.stop() if self.zk is not None else None


class WatchdogService(service.Service):
    """Closes the ZooKeeper session of a node whose reactor stops turning (kvtwist.watchdog)."""

    def __init__(self, reactor: Any, chain: ChainService, session_timeout: float) -> None:
        self.chain = chain
        # three quarters: a loaded machine may stall a reactor for a second now and
        # then, and leaving the chain for that costs a rejoin
        self.watchdog = ReactorWatchdog(reactor, session_timeout * 0.75, self._drop, self._resume)

    def _drop(self) -> None:
        zk = self.chain.zk
        if zk is not None:
            zk.drop_session()

    def _resume(self) -> None:
        zk = self.chain.zk
        if zk is not None and self.running:
            zk.resume_session().addErrback(
                lambda f: log.warn("new ZooKeeper session failed: {e}", e=f.getErrorMessage())
            )

    def startService(self) -> None:
        super().startService()
        self.watchdog.start()

    def stopService(self) -> None:
        super().stopService()
        self.watchdog.stop()


#: Every write allocates a path of tree nodes that the cyclic collector tracks;
#: with the default thresholds it spends more time scanning a large tree than
#: the writes take.  Tree nodes form no cycles, so collecting rarely is safe.
GC_THRESHOLDS = (50_000, 50, 1000)


def build(options: Options, reactor: Any = global_reactor) -> service.MultiService:
    """Wire the node together; split from makeService so tests can pass a reactor."""
    gc.set_threshold(*GC_THRESHOLDS)
    top = service.MultiService()
    # the metrics' histograms first: each part is handed its observer as it is made
    histograms = new_histograms() if options.get("metrics-port") is not None else None
    journal, recovered = open_data_dir(options, histograms)
    runner = ThreadRunner(reactor, options["threads"])
    if journal is not None:
        # after the runner's "during" trigger: the writer thread is done with it
        reactor.addSystemEventTrigger("after", "shutdown", journal.close)
    store = Store(
        reactor,
        runner,
        journal,
        on_snapshot=histograms.snapshot.observe if histograms is not None else None,
    )
    make_zk: Callable[[], Coordinator] | None = None
    lease = 0.0  # the longest read lease this node may hold, told to its neighbours
    if options["zk"]:
        from kvtwist.kazoolog import limit_repeats
        from kvtwist.lease import LEASE_FRACTION
        from kvtwist.zk import ZooKeeper

        limit_repeats()  # ZooKeeper down: kazoo's retries must not bury our own lines

        lease = options["zk-session-timeout"] * LEASE_FRACTION

        def make_zk() -> ZooKeeper:
            return ZooKeeper(
                reactor,
                options["zk"],
                options["zk-root"],
                options["zk-session-timeout"],
                auth=options.get("zk-auth"),
            )

    zk = make_zk() if make_zk is not None else None
    limits = client_limits(options)
    link_config = LinkConfig(
        timeout=options["link-timeout"],
        lease=lease,
        key=options.get("cluster-key"),
        client=limits,
    )
    tls = options.get("tls")
    link_tls = links_tls(options) if tls is not None else None
    clients = ClientConnections()  # a congested chain pauses them
    replica = Replica(
        reactor,
        store,
        options["advertise"],
        zk,
        link_config=link_config,
        link_tls=link_tls,
        on_congestion=clients.congestion,
        on_commit_latency=histograms.commit.observe if histograms is not None else None,
    )
    if recovered is not None:
        store.restore(recovered)
        rows = [(r.client_id, r.request_id, r.seq, r.found) for r in recovered.clients]
        replica.restore(recovered.tree, recovered.last_seq, recovered.epochs, rows)
        freeze_collector()  # the recovered tree lives long: never scan it again
    if journal is not None and options["fsync"] == "interval":
        store.start_sync_timer(options["fsync-interval"])
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

            resp = RespFactory(
                reactor,
                factory.dispatcher,
                token=token,
                port=options["resp-port"],
                max_pending=limits.max_pending,
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
    security = [
        name
        for name, on in (
            ("TLS", tls is not None),
            ("client token", options.get("token") is not None),
            ("ZooKeeper ACLs", zk is not None and options.get("zk-auth") is not None),
        )
        if on
    ]
    log.info(
        "kvtwist node on {iface}:{port}{resp} ({mode}; {security})",
        iface=options["interface"],
        port=options["port"],
        resp=f", RESP on port {options['resp-port']}" if options["resp-port"] else "",
        mode=f"chain {options['zk-root']} via {options['zk']}" if zk is not None else "standalone",
        security=", ".join(security) or "plain TCP, no client token",
    )
    return top


def new_histograms() -> Histograms:
    """The metrics' histograms (prometheus-client is imported only when asked for)."""
    from kvtwist.monitoring import Histograms

    return Histograms()


def add_metrics(
    top: service.MultiService,
    reactor: Any,
    options: Options,
    histograms: Histograms,
    replica: Replica,
    factory: NodeFactory,
    chain: ChainService | None,
) -> None:
    """Serve /metrics, /healthz and /readyz on --metrics-port (kvtwist.monitoring)."""
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
    options: Options, histograms: Histograms | None = None
) -> tuple[DataDir | None, Recovered | None]:
    """Open and recover the data directory; a node that cannot exits with one line."""
    if options["in-memory"]:
        log.warn("in-memory: nothing is kept on disk; a restart starts empty")
        return None, None
    path = os.path.abspath(options["data-dir"])
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


class ListeningService(service.Service):
    """Holds the client port, bound while the node is built.

    Binding before the reactor runs turns a taken port into one clear line and
    a non-zero exit, instead of a logged traceback and a node that never listens.
    """

    def __init__(
        self, reactor: Any, port: int, interface: str, factory: Any, tls: Any = None
    ) -> None:
        try:
            self.port = listen(reactor, port, factory, interface, tls)
        except CannotListenError as e:
            why = e.socketError
            raise SystemExit(f"kvtwist: cannot listen on {interface}:{port}: {why}") from None

    def stopService(self) -> Any:
        super().stopService()
        return self.port.stopListening()


def makeService(options: Options) -> service.MultiService:
    # every timer of the node runs on a clock that wall-clock steps do not move
    use_steady_clock(global_reactor)
    return build(options)
