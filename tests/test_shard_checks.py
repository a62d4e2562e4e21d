"""The verdict of ``kvtwist-torture --cluster`` on made-up endings: the cluster checks
fail, each with its reason, on a lost write, divergent copies in one chain, a chain
short of members, a request left pending or a server never replaced; the shards are
cut so the workload's keys spread over all of them; and the nemesis faults only a
server every chain of which keeps two healthy members without it."""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kvtwist.cluster.shardmap import ShardMap
from kvtwist.procs import NodeProcess
from kvtwist.verify.campaign.shardend import ClusterFindings, cluster_checks, lost_in
from kvtwist.verify.campaign.shards import Snapshot, cut_keys, keys_in
from kvtwist.verify.campaign.verdict import IDENTICAL, Check, Findings, passed
from kvtwist.verify.faults.base import Active, Node
from kvtwist.verify.history import Op
from kvtwist.verify.linearizability import check
from kvtwist.verify.shardnemesis import ClusterNemesis

KEYS = 4
#: c0 holds k0 and k1, c1 holds k2 and k3
MAP = ShardMap.initial(3, [b"k2"], [("s1", "s2", "s3"), ("s2", "s3", "s1")])


def ending(
    ops: list[Op], copies: dict[str, dict[str, Any]], **more: Any
) -> tuple[Findings, ClusterFindings]:
    """The findings a campaign would gather from this history and these copies."""
    x = ClusterFindings(
        replicas=3,
        settled=True,
        map=more.pop("map", MAP),
        listed=more.pop("listed", {"c0": ["s1", "s2", "s3"], "c1": ["s2", "s3", "s1"]}),
        copies=copies,
        **more,
    )
    finals = [op for op in ops if op.process == -1]
    f = Findings(
        nodes=3, keys=KEYS, client_ops=[op for op in ops if op.process >= 0], finals=finals,
        result=check(ops), check_s=0.0, liveness={"live": True, "seconds": 0.1, "why": ""},
        settled=True, settle_s=0.0, copies={}, lost=lost_in(x, KEYS, ops), outside=[],
        stranded=[], unexpected_exits=[], stranger_accepted=0, workload_status=0,
    )
    return f, x


def history(final_k1: str | None) -> list[Op]:
    """k1 put and acknowledged, then read back at the end as ``final_k1``."""
    ops = [Op(0, "put", "k1", "v1", 0.0, 1.0, "ok"), Op(1, "put", "k3", "v3", 0.0, 1.0, "ok")]
    return ops + [
        Op(-1, "get", k, v, 2.0 + i, 2.5 + i, "ok")
        for i, (k, v) in enumerate([("k0", None), ("k1", final_k1), ("k2", None), ("k3", "v3")])
    ]


def alike(c0: list[tuple[bytes, bytes]], c1: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "c0": dict.fromkeys(("s1", "s2", "s3"), c0),
        "c1": dict.fromkeys(("s2", "s3", "s1"), c1),
    }


def failed(results: list[Check]) -> dict[str, str]:
    return {c.name: c.why for c in results if c.why is not None}


class ClusterChecksTests(SynchronousTestCase):
    def test_a_good_ending_passes(self) -> None:
        """Every acknowledged write at its shard's tail, copies alike, R members: PASS."""
        f, x = ending(history("v1"), alike([(b"k1", b"v1")], [(b"k3", b"v3")]))
        results = cluster_checks(f, x)
        self.assertEqual(failed(results), {})
        self.assertTrue(passed(results))

    def test_a_lost_write_fails(self) -> None:
        """k1's acknowledged put missing from c0's tail (and from the final read): the
        lost-write check names it and the history is not linearizable."""
        f, x = ending(history(None), alike([], [(b"k3", b"v3")]))
        why = failed(cluster_checks(f, x))
        self.assertEqual([w.key for w in f.lost], ["k1"])
        self.assertIn("no lost acknowledged writes", why)
        self.assertIn("linearizable", why)

    def test_divergent_copies_in_one_chain_fail(self) -> None:
        """c1's head lacks k3 (its tail has it): "copies identical" alone fails, naming
        c1, not c0."""
        copies = alike([(b"k1", b"v1")], [(b"k3", b"v3")])
        copies["c1"] = {**copies["c1"], "s2": []}
        f, x = ending(history("v1"), copies)
        why = failed(cluster_checks(f, x))
        self.assertEqual(list(why), [IDENTICAL])
        self.assertIn("c1: members differ", why[IDENTICAL])
        self.assertNotIn("c0", why[IDENTICAL])

    def test_short_chains_pending_requests_and_unreplaced_servers_fail(self) -> None:
        """A chain listing two members, a split still pending, a server never replaced
        and a map that could not be trusted: each its own failed check."""
        f, x = ending(
            history("v1"),
            alike([(b"k1", b"v1")], [(b"k3", b"v3")]),
            listed={"c0": ["s1", "s2"], "c1": ["s2", "s3", "s1"]},
            pending=["split of c1 at b'k3'"],
            not_replaced=["s4 (down 70s)"],
            map_error="shards must be contiguous and ordered at b'k2'",
        )
        why = failed(cluster_checks(f, x))
        short = "c0: planned ['s1', 's2', 's3'], listed ['s1', 's2']"
        self.assertIn(short, why["R members per chain"])
        self.assertIn("split of c1", why["requests carried out"])
        self.assertIn("s4", why["servers replaced"])
        self.assertIn("contiguous", why["map covers the key space"])


class CutTests(SynchronousTestCase):
    def test_the_keys_spread_over_every_shard(self) -> None:
        """16 keys in 4 shards: 4 keys each; 5 shards of 8 keys: none empty."""
        for keys, shards in ((16, 4), (8, 5), (24, 8)):
            m = ShardMap.initial(3, cut_keys(keys, shards), [()] * shards)
            counts = [len(keys_in(s, keys)) for s in m.shards]
            self.assertEqual(sum(counts), keys)
            self.assertGreaterEqual(min(counts), keys // shards, (keys, shards, counts))


class FakeCluster:
    """What the nemesis reads of the cluster: its servers and one snapshot."""

    def __init__(self, nodes: list[Node], snapshot: Snapshot) -> None:
        self.nodes = nodes
        self.args = argparse.Namespace(keys=KEYS, replace_after=8.0)
        self.snap = snapshot

    def snapshot(self) -> Snapshot:
        return self.snap

    def settled(self, s: Snapshot) -> bool:
        return False


class HealthyTests(SynchronousTestCase):
    def test_a_fault_leaves_every_chain_two_healthy_members(self) -> None:
        """With s4 paused, s2 (in c1 with s4) may not be faulted; s1 (only in c0) may."""
        root = Path(tempfile.mkdtemp(prefix="kvshardnem-"))
        nodes = [Node(f"s{i}", NodeProcess(port=1, directory=root / f"s{i}")) for i in (1, 2, 3, 4)]
        snap = Snapshot(
            map=ShardMap.initial(3, [b"k2"], [("s1", "s2", "s3"), ("s2", "s3", "s4")]),
            live={"s1", "s2", "s3", "s4"},
            listed={"c0": ["s1", "s2", "s3"], "c1": ["s2", "s3", "s4"]},
            requests=None,
        )
        world: Any = argparse.Namespace(rng=random.Random(1))
        nem = ClusterNemesis(world, FakeCluster(nodes, snap), [], 3.0)  # type: ignore[arg-type]
        everyone = nem.healthy()
        assert everyone is None  # the request record unread: ZooKeeper cannot say
        from kvtwist.cluster.requests import Requests

        snap.requests = Requests()
        self.assertEqual([h[1] for h in nem.healthy() or []], ["s1", "s2", "s3", "s4"])
        nodes[3].state = "paused"
        nem.active.append(Active("pause", [nodes[3]], False))
        self.assertEqual([h[1] for h in nem.healthy() or []], ["s1"])

    def test_a_starved_calm_kind_holds_the_others_back(self) -> None:
        """zk-pause two behind split: split may not start, so calm can come."""
        snap = Snapshot(map=MAP, live=set(), listed={"c0": [], "c1": []})
        world: Any = argparse.Namespace(rng=random.Random(1))
        nem = ClusterNemesis(world, FakeCluster([], snap), ["split", "zk-pause"], 3.0)  # type: ignore[arg-type]
        nem.last = snap
        nem.counts = {"split": 1}
        self.assertTrue(nem.possible("split", []))
        nem.counts = {"split": 2}
        self.assertFalse(nem.possible("split", []))
