"""The options of ``twistd kvnode``: parsing, the config file, the checks between them."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.python import usage

from kvtwist import wire
from kvtwist.chain.auth import load_key
from kvtwist.chain.link import DEFAULT_LINK_TIMEOUT
from kvtwist.cluster.balance import DEFAULT_BALANCE_AFTER
from kvtwist.secretfile import KeyFileError, load_secret
from kvtwist.server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_KEY,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_REPLY,
)

if TYPE_CHECKING:  # prometheus-client is loaded only with --metrics-port
    pass



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


class NodeOptions(usage.Options):
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
        ["threads", "t", 4, "Reader threads for listings and counts.", _positive("threads")],
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
        # a server of a cluster of many chains (kvtwist.cluster)
        [
            "cluster",
            None,
            None,
            "Serve the chains the shard map of cluster NAME places here (ZooKeeper "
            "/kvtwist/NAME), instead of the one chain under --zk-root.",
        ],
        [
            "server-id",
            None,
            None,
            "This server's name in its cluster (default: kept in the data directory, "
            "made once).",
        ],
        ["zone", None, None, "Failure zone of this server: replicas go to distinct zones."],
        [
            "replace-after",
            None,
            60.0,
            "Seconds a cluster server may be gone before its chains get a new member.",
            float,
        ],
        [
            "balance-after",
            None,
            DEFAULT_BALANCE_AFTER,
            "Seconds a cluster's map must stay unchanged before the controller moves a "
            "replica from the server holding most chains to the one holding fewest "
            "(0: never).",
            float,
        ],
        [
            "split-keys",
            None,
            0,
            "A cluster's shard is split in two once it holds more keys than this (0: never).",
            int,
        ],
        [
            "split-bytes",
            None,
            0,
            "A cluster's shard is split in two once its keys and values pass this many "
            "bytes (0: never).",
            int,
        ],
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
            "HTTP port (on --interface) for Prometheus /metrics, /healthz, /readyz and "
            "the status page / (off).",
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
        [
            "resp-allow-flush",
            None,
            "Let FLUSHDB and FLUSHALL on the RESP port delete every key (refused otherwise).",
        ],
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
        self._check_cluster_options()
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

    def _check_cluster_options(self) -> None:
        if self["cluster"] is None:
            for name in ("server-id", "zone"):
                if self[name] is not None:
                    raise usage.UsageError(f"--{name} is for a cluster server (--cluster)")
            for name in ("split-keys", "split-bytes"):
                if self[name]:
                    raise usage.UsageError(f"--{name} is for a cluster server (--cluster)")
            return
        from kvtwist.cluster.shardmap import BadMap, check_name

        if not self["zk"]:
            raise usage.UsageError("--cluster needs --zk")
        if self["resp-port"]:
            raise usage.UsageError("--resp-port is for a lone chain's node, not a cluster server")
        try:
            check_name("cluster", self["cluster"])
            if self["server-id"] is not None:
                check_name("server", self["server-id"])
        except BadMap as e:
            raise usage.UsageError(str(e)) from None
        if self["replace-after"] <= 0:
            raise usage.UsageError("--replace-after must be positive")
        if self["balance-after"] < 0:
            raise usage.UsageError("--balance-after must not be negative (0: never balance)")
        for name in ("split-keys", "split-bytes"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must not be negative (0: never split)")

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
