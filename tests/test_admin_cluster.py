"""``kvtwist-admin cluster create`` and ``cluster status``: the cut keys, the
first map written once, placements on registered servers or left to the
controller, and a status that shows the map, the servers and the members."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from kvtwist.admincluster import (
    ChainRows,
    ClusterStatus,
    cluster_json,
    cluster_table,
    even_cuts,
    parse_keys,
    stray_keys,
)
from kvtwist.cluster import load
from kvtwist.cluster.shardmap import ClusterPaths, Server, ShardMap
from tests.nodes import ROOT, TWISTD, NodeProcess, env, free_port, wait_for
from tests.zkserver import ZooKeeperCase

ADMIN = str(Path(TWISTD).parent / "kvtwist-admin")


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ADMIN, *args], capture_output=True, text=True, timeout=120, env=env(), cwd=ROOT
    )


class CutTests(SynchronousTestCase):
    def test_even_cuts(self) -> None:
        """N shards cut at evenly spaced first bytes; above 256 at two bytes; each cut once."""
        self.assertEqual(even_cuts(1), [])
        self.assertEqual(even_cuts(4), [b"\x40", b"\x80", b"\xc0"])
        many = even_cuts(1000)
        self.assertEqual(len(set(many)), 999)
        self.assertEqual(many, sorted(many))
        ShardMap.initial(1, many, [()] * 1000)  # a valid map
        with self.assertRaises(ValueError):
            even_cuts(0)

    def test_split_keys(self) -> None:
        """KEY,KEY with \\xHH bytes, \\, commas and \\\\ backslashes; empty or repeated refused."""
        self.assertEqual(parse_keys(r"g,p\x00,a\,b,c\\"), [b"g", b"p\x00", b"a,b", b"c\\"])
        for bad in ["a,,b", "a,a", ""]:
            with self.assertRaises(ValueError, msg=bad):
                parse_keys(bad)

    def test_table_marks_planned_servers_not_live(self) -> None:
        """The table shows each shard's range and plan, and stars a planned server that
        is not live."""
        m = ShardMap.initial(2, [b"m"], [("s1", "s2"), ("s2", "s1")])
        st = ClusterStatus("prod", m, {"s1": Server("s1", "127.0.0.1:7001")}, [])
        st.shards = [ChainRows(s.start, s.end, s.chain, 1, m.chains[s.chain].members)
                     for s in m.shards]
        text = cluster_table(st)
        self.assertIn("['', m)", text)
        self.assertIn("[m, ∞)", text)
        self.assertIn("s1,s2*", text)
        self.assertIn("not live", text)


    def test_table_shows_settling_splits_and_stray_keys(self) -> None:
        """A chain still split off its parent, and a chain holding keys it gave away
        (its tail's latest report counts), each get a line."""
        m = ShardMap.initial(2, [], [("s1", "s2")]).split("c0", b"m", "c1")
        st = ClusterStatus("prod", m, {}, [])
        records = {
            "s1": load.encode({"c0": load.ChainLoad(5, op=9, stray=7)}),
            "s2": load.encode({"c0": load.ChainLoad(5, op=4, stray=40)}),
            "s3": b"junk",
        }
        st.stray = stray_keys(records)
        self.assertEqual(st.stray, {"c0": 7})
        text = cluster_table(st)
        self.assertIn("settling    c1 split off c0", text)
        self.assertIn("sweeping    c0: 7 keys given away", text)
        self.assertEqual(cluster_json(st)["shards"][1]["split_from"], "c0")
        st.map = m.settled("c1")
        st.stray = {}
        self.assertNotIn("settling", cluster_table(st))
        self.assertNotIn("sweeping", cluster_table(st))


class AdminClusterTests(ZooKeeperCase):
    """The commands as processes against the shared ZooKeeper."""

    def setUp(self) -> None:
        super().setUp()
        self.paths = ClusterPaths(f"t{uuid.uuid4().hex}")
        self.nodes: list[NodeProcess] = []
        self.addCleanup(lambda: [n.stop() for n in self.nodes])

    def read_map(self) -> ShardMap:
        return ShardMap.decode(self.kazoo.get(self.paths.map)[0])

    def test_create_without_servers_leaves_placements_empty(self) -> None:
        """Four shards at first-byte cuts, no servers yet: empty placements for the
        controller; a second create fails with status 1 and changes nothing."""
        done = admin("cluster", "create", self.paths.name, "--zk", self.zk.hosts,
                     "--replicas", "3", "--shards", "4")
        self.assertEqual(done.returncode, 0, done.stderr)
        m = self.read_map()
        self.assertEqual([s.start for s in m.shards], [b"", b"\x40", b"\x80", b"\xc0"])
        self.assertEqual(m.replicas, 3)
        self.assertTrue(all(p.members == () for p in m.chains.values()))
        for path in (self.paths.servers, self.paths.chains, self.paths.controller):
            self.assertIsNotNone(self.kazoo.exists(path))
        again = admin("--zk", self.zk.hosts, "cluster", "create", self.paths.name,
                      "--replicas", "1", "--split-at", "x")
        self.assertEqual(again.returncode, 1)
        self.assertIn("exists already", again.stderr)
        self.assertEqual(self.read_map(), m)

    def test_create_places_on_registered_servers(self) -> None:
        """With R servers registered, create places every chain on them, head first,
        with the heads spread."""
        for i in range(2):
            server = Server(f"s{i}", f"127.0.0.1:{7000 + i}")
            self.kazoo.create(self.paths.server(server.id), server.encode(),
                              ephemeral=True, makepath=True)
        done = admin("cluster", "create", self.paths.name, "--zk", self.zk.hosts,
                     "--replicas", "2", "--split-at", "m", "-o", "json")
        self.assertEqual(done.returncode, 0, done.stderr)
        m = self.read_map()
        self.assertEqual({p.members for p in m.chains.values()}, {("s0", "s1"), ("s1", "s0")})
        self.assertEqual(json.loads(done.stdout)["map_version"], 1)

    def test_status_shows_map_servers_and_members(self) -> None:
        """status -o json names every shard with its range, plan and the members that
        answered STATS (a cluster server, whose controller placed both chains on it
        once it registered), and the live servers; the table shows the same."""
        done = admin("cluster", "create", self.paths.name, "--zk", self.zk.hosts,
                     "--replicas", "1", "--split-at", "m")
        self.assertEqual(done.returncode, 0, done.stderr)
        node = NodeProcess.cluster_server(self.zk.hosts, self.paths.name, "s9")
        self.nodes.append(node)
        node.start()
        for cid in ("c0", "c1"):
            root = self.paths.chain(cid)
            wait_for(lambda root=root: self.kazoo.exists(root) is not None
                     and len(self.kazoo.get_children(root)) == 1, 30)
        out = admin("--zk", self.zk.hosts, "cluster", "status", self.paths.name, "-o", "json")
        self.assertEqual(out.returncode, 0, out.stderr)
        body = json.loads(out.stdout)
        self.assertEqual(body["map_version"], 2)  # the controller's placement
        self.assertEqual([s["start_text"] for s in body["shards"]], ["", "m"])
        self.assertEqual(body["servers"], [{"id": "s9", "address": node.address, "zone": None}])
        c0 = body["shards"][0]
        self.assertEqual(len(c0["members"]), 1)
        self.assertTrue(c0["members"][0]["answered"], c0["members"][0])
        self.assertEqual(c0["members"][0]["address"], node.address)
        self.assertEqual([m["address"] for m in body["shards"][1]["members"]], [node.address])
        table = admin("cluster", "status", self.paths.name, "--zk", self.zk.hosts)
        self.assertEqual(table.returncode, 0, table.stderr)
        self.assertIn(node.address, table.stdout)
        self.assertIn("version 2", table.stdout)

    def test_usage_errors_and_unreachable_zookeeper(self) -> None:
        """Bad arguments and an unreachable ZooKeeper are status 2; a missing cluster 1."""
        for args in (["--replicas", "0", "--shards", "2"], ["--replicas", "1", "--shards", "0"],
                     ["--replicas", "1", "--split-at", "a,a"], ["--replicas", "1"]):
            done = admin("cluster", "create", self.paths.name, "--zk", self.zk.hosts, *args)
            self.assertEqual(done.returncode, 2, (args, done.stderr))
        bad = admin("cluster", "create", "a/b", "--zk", self.zk.hosts, "--replicas", "1",
                    "--shards", "1")
        self.assertEqual(bad.returncode, 2, bad.stderr)
        nobody = f"127.0.0.1:{free_port()}"
        gone = admin("cluster", "status", self.paths.name, "--zk", nobody)
        self.assertEqual(gone.returncode, 2, gone.stderr)
        self.assertIn("cannot reach ZooKeeper", gone.stderr)
        missing = admin("cluster", "status", self.paths.name, "--zk", self.zk.hosts)
        self.assertEqual(missing.returncode, 1, missing.stderr)
        self.assertIn("no cluster", missing.stderr)

