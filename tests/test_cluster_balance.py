"""Balancing on real cluster servers: three chains of three on s1..s3 and a fourth
server holding nothing; with a short ``--balance-after`` the controller moves
replicas onto s4 until the servers hold 3, 2, 2, 2, one move at a time, and
every key written before reads back after."""

from __future__ import annotations

import json

from kvtwist.client.blocking import BlockingClient
from kvtwist.cluster.balance import replicas_per_server
from kvtwist.cluster.shardmap import ShardMap
from tests.nodes import wait_for
from tests.test_blocking import private_reactor
from tests.test_cluster_move import ClusterCase

SERVERS = ("s1", "s2", "s3", "s4")
KEYS = [b"%s-key%03d" % (b"aht"[i % 3 : i % 3 + 1], i) for i in range(300)]


class ClusterBalanceTests(ClusterCase):
    SERVERS = SERVERS
    PLACEMENT = [("s1", "s2", "s3"), ("s2", "s3", "s1"), ("s3", "s1", "s2")]
    CUTS = [b"g", b"p"]

    def server_args(self, sid: str) -> list[str]:
        return ["--balance-after", "3"]

    def current_map(self) -> ShardMap:
        return ShardMap.decode(self.kazoo.get(self.paths.map)[0])

    def pending(self) -> list[object]:
        if self.kazoo.exists(self.paths.requests) is None:
            return []
        return list(json.loads(self.kazoo.get(self.paths.requests)[0]).get("moves", []))

    def balanced(self) -> bool:
        m = self.current_map()
        count = replicas_per_server(m, list(SERVERS))
        return (
            max(count.values()) - min(count.values()) <= 1
            and all(len(p.members) == 3 for p in m.chains.values())
            and not self.pending()
            and self.settled()
        )

    def test_a_server_holding_nothing_gets_its_share(self) -> None:
        """From 3, 3, 3, 0 to 3, 2, 2, 2 replicas by balancing moves alone; each chain
        ends with three members, all listed by its membership, and every key reads back."""
        wait_for(self.settled, 60, "the chains formed")
        self.assertEqual(replicas_per_server(self.current_map(), ["s4"]), {"s4": 0})
        reactor = private_reactor()
        with BlockingClient.cluster(self.zk.hosts, self.name, 30.0, reactor=reactor) as kv:
            for k in KEYS:
                kv.put(k, b"v:" + k)
            wait_for(self.balanced, 150, "the servers to even out")
            count = replicas_per_server(self.current_map(), list(SERVERS))
            self.assertEqual(sorted(count.values()), [2, 2, 2, 3])
            for k in KEYS:
                self.assertEqual(kv.get(k), b"v:" + k)
        logs = "\n".join(n.log() for n in self.servers.values())
        self.assertEqual(logs.count("balancing: move of"), 2, "one move per step, two steps")
