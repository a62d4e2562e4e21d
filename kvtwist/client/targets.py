"""Where ``kvtwist-client`` (and the admin) connect: a node, a chain through ZooKeeper,
or a cluster of many chains; and with what TLS and client token."""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvtwist.client.shell_syntax import UsageError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "NODE_TIMEOUT", "Security", "Target", "maker",
           "security", "target"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000
NODE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Target:
    """Where the shell talks to: one node, a chain or a cluster through ZooKeeper."""

    address: str | None  # HOST:PORT of a node
    zk: str | None
    zk_root: str
    cluster: str | None = None  # the name of a cluster of many chains (with zk)

    @property
    def where(self) -> str:
        if self.address is not None:
            return self.address
        if self.cluster is not None:
            return f"{self.zk} cluster {self.cluster}"
        return f"{self.zk}{self.zk_root}"


def target(ns: argparse.Namespace) -> Target:
    """The node or chain the options name; UsageError if they contradict each other."""
    from kvtwist.client.api import parse_address

    node_given = ns.address is not None or ns.host is not None or ns.port is not None
    cluster = getattr(ns, "cluster", None)
    if cluster is not None:
        from kvtwist.cluster.shardmap import BadMap, check_name

        if ns.zk is None:
            raise UsageError("--cluster NAME needs --zk ZKHOSTS")
        try:
            check_name("cluster", cluster)
        except BadMap as e:
            raise UsageError(f"--cluster: {e}") from None
    if ns.zk is not None:
        if node_given:
            raise UsageError("give either a node (HOST:PORT, -h, -p) or --zk ZKHOSTS, not both")
        from kvtwist.zkhosts import BadHosts, check_hosts

        try:
            check_hosts(ns.zk)
        except BadHosts as e:
            raise UsageError(str(e)) from None
        return Target(None, ns.zk, ns.zk_root, cluster)
    if ns.address is not None:
        if ns.host is not None or ns.port is not None:
            raise UsageError("give either HOST:PORT or -h/-p, not both")
        address = ns.address
    else:
        host = ns.host if ns.host is not None else DEFAULT_HOST
        port = ns.port if ns.port is not None else DEFAULT_PORT
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        parse_address(address)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Target(address, None, ns.zk_root)


@dataclass(frozen=True)
class Security:
    """TLS and the client token, as the options ask (both None: plain, no token)."""

    tls: Any = None  # kvtwist.tls.ClientTLS
    token: bytes | None = None


def security(ns: argparse.Namespace) -> Security:
    """Load the CA and token files the options name; UsageError with one line if unusable."""
    tls = token = None
    if ns.tls_ca is not None or ns.tls:
        from kvtwist.tls import ClientTLS, TLSConfigError

        try:
            tls = ClientTLS(ns.tls_ca)
        except TLSConfigError as e:
            raise UsageError(f"--tls-ca: {e}") from None
    if ns.token_file is not None:
        from kvtwist.secretfile import KeyFileError, load_secret

        try:
            token = load_secret(ns.token_file, "token")
        except KeyFileError as e:
            raise UsageError(str(e)) from None
    return Security(tls, token)


def maker(
    where: Target, seconds: float | None, secure: Security = Security()
) -> Callable[[], Any]:
    """A function connecting a BlockingClient to ``where``.

    ``seconds`` bounds connecting and each command (None: the default for a
    node or a chain; 0: no limit).
    """
    from kvtwist.client.blocking import BlockingClient

    tls, token = secure.tls, secure.token
    if where.address is not None:
        address = where.address
        timeout = NODE_TIMEOUT if seconds is None else seconds or None
        return lambda: BlockingClient.connect(address, timeout, tls=tls, token=token)
    # kazoo reports every failed connection attempt through logging; the shell
    # reports the outcome itself, as one line.
    logging.getLogger("kazoo").addHandler(logging.NullHandler())
    logging.getLogger("kazoo").propagate = False
    try:
        chain = importlib.import_module("kvtwist.client.chain")
    except Exception as e:
        raise UsageError(f"ZooKeeper mode is unavailable: {type(e).__name__}: {e}") from None
    assert where.zk is not None
    zk_hosts, root, name = where.zk, where.zk_root, where.cluster
    deadline = chain.DEFAULT_DEADLINE if seconds is None else seconds or None

    def make(reactor: Any) -> Any:
        if name is not None:
            from kvtwist.client.cluster import ClusterClient

            return ClusterClient.connect(
                reactor, zk_hosts, name, deadline=deadline, tls=tls, token=token
            )
        return chain.ChainClient.connect(
            reactor, zk_hosts, root, deadline=deadline, tls=tls, token=token
        )

    description = (
        f"the chain {root} via ZooKeeper {zk_hosts}" if name is None
        else f"cluster {name} via ZooKeeper {zk_hosts}"
    )
    # The chain client keeps to its deadline and says what went wrong; the
    # blocking wrapper's own limit is only a backstop, a little later.
    backstop = None if deadline is None else deadline + 2.0
    return lambda: BlockingClient(make, timeout=backstop, description=description)
