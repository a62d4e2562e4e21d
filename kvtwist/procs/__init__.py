"""Real processes on loopback: a private ZooKeeper and ``twistd -n kvnode`` nodes.

One place for them, used by the integration tests, the fault campaigns
(kvtwist-torture), the demo cluster and the benchmarks.  Everything binds to
127.0.0.1 on free ports, waits on conditions with deadlines, and leaves the
system's own ZooKeeper service alone: :mod:`.ports` (free ports, waiting),
:mod:`.zookeeper` (the private server), :mod:`.node` (nodes and a raw client),
:mod:`.demo` (what the foreground demos in scripts/ share).
"""

from __future__ import annotations

from kvtwist.procs.node import (
    PACKAGE_ROOT,
    TWISTD,
    NodeProcess,
    RawClient,
    dump,
    kvnode_options,
    node_env,
)
from kvtwist.procs.ports import (
    free_port,
    port_open,
    wait_for,
)
from kvtwist.procs.zookeeper import (
    JAVA_DIR,
    MAIN_CLASS,
    TICK_TIME_MS,
    ZOOKEEPER_JAR,
    ZooKeeperError,
    ZooKeeperProcess,
    four_letter_word,
    java_binary,
    zookeeper_available,
    zookeeper_classpath,
)

__all__ = [
    "JAVA_DIR",
    "MAIN_CLASS",
    "NodeProcess",
    "PACKAGE_ROOT",
    "RawClient",
    "TICK_TIME_MS",
    "TWISTD",
    "ZOOKEEPER_JAR",
    "ZooKeeperError",
    "ZooKeeperProcess",
    "dump",
    "four_letter_word",
    "free_port",
    "java_binary",
    "kvnode_options",
    "node_env",
    "port_open",
    "wait_for",
    "zookeeper_available",
    "zookeeper_classpath",
]
