"""A cluster server's metrics port: /metrics reports each chain it serves, labelled by
chain, and /readyz says ready once every chain placed on it serves."""

from __future__ import annotations

import uuid

from kvtwist.client.blocking import BlockingClient
from kvtwist.cluster.shardmap import ClusterPaths, ShardMap
from kvtwist.procs import NodeProcess, free_port
from tests.nodes import wait_for
from tests.test_blocking import private_reactor
from tests.test_monitoring_proc import http
from tests.zkserver import ZooKeeperCase


class ClusterMetricsTests(ZooKeeperCase):
    timeout = 120

    def test_each_chain_labelled(self) -> None:
        """One server holding both chains of a two-shard cluster (R = 1): after writes to
        each shard, /metrics has each chain's committed op under its own label and its
        role, and /readyz answers 200 naming both chains."""
        name = f"t{uuid.uuid4().hex[:8]}"
        paths = ClusterPaths(name)
        self.kazoo.ensure_path(paths.root)
        self.kazoo.create(paths.map, ShardMap.initial(1, [b"m"], [("s1",), ("s1",)]).encode())
        port = free_port()
        node = NodeProcess.cluster_server(self.zk.hosts, name, "s1",
                                          extra_args=["--metrics-port", str(port)])
        self.addCleanup(node.cleanup)
        node.start()
        wait_for(lambda: http(port, "/readyz")[0] == 200, 60, "both chains serving")
        self.assertIn("c0", http(port, "/readyz")[1])
        with BlockingClient.cluster(self.zk.hosts, name, 30.0, reactor=private_reactor()) as kv:
            kv.put(b"apple", b"1")
            kv.put(b"zebra", b"1")
            kv.put(b"zoo", b"1")
        body = http(port, "/metrics")[1]
        self.assertIn('kvtwist_op_committed{chain="c0"} 1.0', body)
        self.assertIn('kvtwist_op_committed{chain="c1"} 2.0', body)
        self.assertIn('kvtwist_role{chain="c1",role="head+tail"} 1.0', body)
