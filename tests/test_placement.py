"""The placement rules: distinct servers and zones, roles spread, the same
answer for the same inputs, and replacements and drains that keep chains full."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.cluster.placement import (
    Change,
    apply,
    drain,
    drain_done,
    fill,
    place,
    replacements,
    zone_of,
)
from kvtwist.cluster.shardmap import Server, ShardMap


def servers(n: int, zones: int = 0) -> list[Server]:
    return [
        Server(f"s{i}", f"127.0.0.1:{7000 + i}", f"z{i % zones}" if zones else None)
        for i in range(n)
    ]


def cluster(n_servers: int, n_chains: int, replicas: int) -> tuple[ShardMap, dict[str, Server]]:
    live = {s.id: s for s in servers(n_servers)}
    cuts = [bytes([1 + i]) for i in range(n_chains - 1)]
    return ShardMap.initial(replicas, cuts, place(n_chains, live.values(), replicas)), live


sizes = st.tuples(st.integers(1, 12), st.integers(1, 40), st.integers(1, 5))


class PlaceTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(sizes)
    def test_distinct_servers_and_full_chains(self, size: tuple[int, int, int]) -> None:
        """Every chain gets min(R, N) members, no server twice."""
        n, chains, r = size
        plans = place(chains, servers(n), r)
        self.assertEqual(len(plans), chains)
        for members in plans:
            self.assertEqual(len(members), min(r, n))
            self.assertEqual(len(set(members)), len(members))

    @settings(max_examples=200, deadline=None)
    @given(sizes)
    def test_roles_spread(self, size: tuple[int, int, int]) -> None:
        """Without zones heads differ by at most one between servers, tails and the
        number of chains served by at most two: each is about 1/N of the whole."""
        n, chains, r = size
        plans = place(chains, servers(n), r)
        heads = Counter(m[0] for m in plans)
        tails = Counter(m[-1] for m in plans)
        total = Counter(s for m in plans for s in m)
        ids = [s.id for s in servers(n)]
        bounds = ((heads, chains, 1), (tails, chains, 2), (total, chains * min(r, n), 2))
        for counts, of, bound in bounds:
            spread = max(counts[s] for s in ids) - min(counts[s] for s in ids)
            self.assertLessEqual(spread, bound, (counts, plans))
            self.assertEqual(sum(counts.values()), of)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(1, 12), st.integers(1, 6), st.integers(1, 30), st.integers(1, 4))
    def test_distinct_zones_when_there_are_enough(
        self, n: int, zones: int, chains: int, r: int
    ) -> None:
        """With at least R zones no chain holds two servers of one zone, however
        unevenly the servers are spread over the zones; heads stay spread."""
        pool = servers(n, zones)
        n_zones = len({zone_of(s) for s in pool})
        plans = place(chains, pool, r)
        by_id = {s.id: s for s in pool}
        for members in plans:
            zs = [zone_of(by_id[s]) for s in members]
            if n_zones >= len(members):
                self.assertEqual(len(set(zs)), len(zs), (members, zs))
        heads = Counter(m[0] for m in plans)
        self.assertLessEqual(max(heads.values()) - min(heads[s.id] for s in pool), 1)

    @settings(max_examples=100, deadline=None)
    @given(st.permutations(servers(7, 3)), st.integers(1, 20))
    def test_deterministic(self, order: list[Server], chains: int) -> None:
        """The order servers are listed in changes nothing."""
        self.assertEqual(place(chains, order, 3), place(chains, servers(7, 3), 3))

    def test_no_servers(self) -> None:
        """A cluster created before any server registered gets empty placements."""
        self.assertEqual(place(3, [], 3), [(), (), ()])


class ReplaceTests(SynchronousTestCase):
    def test_gone_long_enough_is_replaced_at_the_end(self) -> None:
        """A server gone past replace_after leaves each of its chains and a free
        server joins at the end (as tail); one gone less long stays."""
        m, live = cluster(4, 4, 3)
        del live["s1"]
        self.assertEqual(replacements(m, live, {"s1": 5.0}, 10.0), [])
        changes = replacements(m, live, {"s1": 11.0}, 10.0)
        lost = [p.id for p in m.chains_of("s1")]
        self.assertEqual(sorted(c.chain for c in changes), sorted(lost))
        new = apply(m, changes)
        self.assertEqual(new.version, m.version + 1)
        self.assertEqual(new.chains_of("s1"), [])
        for cid in lost:
            plan = new.chains[cid]
            self.assertEqual(len(plan.members), 3)
            self.assertEqual(plan.members[-1], next(c.joining for c in changes if c.chain == cid))
            self.assertEqual(plan.version, m.chains[cid].version + 1)
            kept = [s for s in m.chains[cid].members if s != "s1"]
            self.assertEqual(list(plan.members[:-1]), kept)
        for cid in set(m.chains) - set(lost):
            self.assertEqual(new.chains[cid], m.chains[cid])

    @settings(max_examples=100, deadline=None)
    @given(st.integers(4, 10), st.integers(1, 24), st.data())
    def test_replacement_spreads_and_stays_distinct(
        self, n: int, chains: int, data: st.DataObject
    ) -> None:
        """After a replacement every chain is full again with distinct members, and
        the dead server's chains go to the least loaded: no survivor serves more
        than two chains above an even share."""
        m, live = cluster(n, chains, 3)
        dead = data.draw(st.sampled_from(sorted(live)))
        del live[dead]
        new = apply(m, replacements(m, live, {dead: 60.0}, 30.0))
        for plan in new.chains.values():
            self.assertEqual(len(plan.members), 3)
            self.assertEqual(len(set(plan.members)), 3)
            self.assertNotIn(dead, plan.members)
        total = Counter(s for p in new.chains.values() for s in p.members)
        self.assertLessEqual(max(total.values()), -(-3 * chains // len(live)) + 2)

    def test_no_free_server_keeps_the_gone_one(self) -> None:
        """With every live server already in the chain, the gone server stays named."""
        m, live = cluster(3, 2, 3)
        del live["s0"]
        self.assertEqual(replacements(m, live, {"s0": 99.0}, 1.0), [])


class FillTests(SynchronousTestCase):
    def test_empty_placements_filled_with_roles_spread(self) -> None:
        """A map created with no servers is filled as place() would have placed it."""
        empty = ShardMap.initial(2, [b"m"], [(), ()])
        live = {s.id: s for s in servers(2)}
        new = apply(empty, fill(empty, live))
        self.assertEqual([new.chains[c].members for c in ("c0", "c1")], place(2, live.values(), 2))
        self.assertEqual(new.version, 2)
        self.assertEqual(fill(new, live), [])

    def test_short_chain_topped_up(self) -> None:
        """A chain placed when only one server existed gets a second once one registers."""
        m = ShardMap.initial(2, [], [("s0",)])
        live = {s.id: s for s in servers(2)}
        self.assertEqual(fill(m, live), [Change("c0", joining="s1")])


class DrainTests(SynchronousTestCase):
    def test_drain_in_two_steps(self) -> None:
        """Draining appends a joiner to each of the server's chains first; the server
        leaves a chain only once every other planned member has joined it."""
        m, live = cluster(4, 4, 3)
        first = apply(m, drain(m, "s2", live))
        for plan in first.chains_of("s2"):
            self.assertEqual(len(plan.members), 4)
        self.assertEqual(drain_done(first, "s2", {}), [])
        joined = {p.id: p.members for p in first.chains_of("s2")}
        done = apply(first, drain_done(first, "s2", joined))
        self.assertEqual(done.chains_of("s2"), [])
        for plan in done.chains.values():
            self.assertEqual(len(plan.members), 3)
