"""The controller in memory: it fills a cluster created before its servers,
replaces a server only after replace_after, writes only while elected, and a
successor picks up from the map."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.cluster.controller import ControllerCore, ControllerService
from kvtwist.cluster.shardmap import ClusterPaths, Server, ShardMap
from tests.fakes.cluster import MemoryCluster, MemoryClusterStore

PATHS = ClusterPaths("test")


def server(i: int) -> Server:
    return Server(f"s{i}", f"127.0.0.1:{7000 + i}")


def current(cluster: MemoryCluster) -> ShardMap:
    data = cluster.map[0]
    assert data is not None
    return ShardMap.decode(data)


class Harness:
    def __init__(self, test: SynchronousTestCase, shards: int = 3, replicas: int = 3) -> None:
        self.clock = Clock()
        self.cluster = MemoryCluster()
        cuts = [bytes([i * 256 // shards]) for i in range(1, shards)]
        self.cluster.set_map(ShardMap.initial(replicas, cuts, [()] * shards).encode())
        self.servers = MemoryClusterStore(self.cluster)  # the servers' sessions, as one
        self.test = test

    def controller(
        self, replace_after: float = 30.0
    ) -> tuple[ControllerService, MemoryClusterStore]:
        store = MemoryClusterStore(self.cluster)
        c = ControllerService(self.clock, store, PATHS, replace_after)
        c.startService()
        self.test.addCleanup(c.stopService)
        return c, store

    def register(self, *ids: int) -> None:
        for i in ids:
            self.servers.register_server(server(i))


class FillTests(SynchronousTestCase):
    def test_created_before_servers_then_filled(self) -> None:
        """A map with empty placements gets R members per chain once servers register,
        each chain's version and the map's version bumped."""
        h = Harness(self)
        h.controller()
        self.assertEqual(h.cluster.writes, 0)  # nobody to place yet
        h.register(0, 1, 2, 3)
        m = current(h.cluster)
        for plan in m.chains.values():
            self.assertEqual(len(plan.members), 3)
            self.assertGreater(plan.version, 1)
        self.assertGreater(m.version, 1)
        heads = sorted(p.members[0] for p in m.chains.values())
        self.assertEqual(len(set(heads)), 3)  # roles spread: three heads on three servers

    def test_nothing_to_do_writes_nothing(self) -> None:
        """A full map and every server live: no write, however much time passes."""
        h = Harness(self)
        h.register(0, 1, 2)
        h.controller()
        writes = h.cluster.writes
        h.clock.advance(1000)
        self.assertEqual(h.cluster.writes, writes)


class ReplaceTests(SynchronousTestCase):
    def test_replaced_only_after_replace_after(self) -> None:
        """A gone server stays in its chains until replace_after has passed, then a
        free server is appended at the end of each."""
        h = Harness(self)
        h.register(0, 1, 2, 3)
        h.controller(replace_after=30.0)
        before = current(h.cluster)
        lost = [p.id for p in before.chains_of("s1")]
        h.servers.unregister_server("s1")
        h.clock.advance(29.0)
        self.assertEqual(current(h.cluster), before)
        h.clock.advance(1.1)
        after = current(h.cluster)
        self.assertEqual(after.chains_of("s1"), [])
        for cid in lost:
            kept = [s for s in before.chains[cid].members if s != "s1"]
            self.assertEqual(list(after.chains[cid].members[:-1]), kept)
            self.assertNotIn(after.chains[cid].members[-1], ["s1", *kept])
            self.assertEqual(after.chains[cid].version, before.chains[cid].version + 1)
        self.assertEqual(after.version, before.version + 1)

    def test_back_in_time_is_not_replaced(self) -> None:
        """A server that comes back before replace_after keeps its chains."""
        h = Harness(self)
        h.register(0, 1, 2, 3)
        h.controller(replace_after=30.0)
        before = current(h.cluster)
        h.servers.unregister_server("s1")
        h.clock.advance(20.0)
        h.register(1)
        h.clock.advance(60.0)
        self.assertEqual(current(h.cluster), before)


class ElectionTests(SynchronousTestCase):
    def test_only_the_elected_writes_and_a_successor_picks_up(self) -> None:
        """Two controllers: the first elected decides; when its session is lost it
        stops (no write from it after), and the second, elected, replaces the gone
        server after a whole replace_after of its own."""
        h = Harness(self)
        h.register(0, 1, 2, 3)
        first, first_store = h.controller(replace_after=30.0)
        second, _ = h.controller(replace_after=30.0)
        self.assertTrue(first.leading)
        self.assertFalse(second.leading)
        h.servers.unregister_server("s2")
        h.clock.advance(10.0)
        first_store.expire()
        self.assertFalse(first.leading)
        self.assertTrue(second.leading)
        before = current(h.cluster)
        h.clock.advance(25.0)  # 35 s since s2 went, 25 s since the second saw it gone
        self.assertEqual(current(h.cluster), before)
        h.clock.advance(5.1)
        self.assertEqual(current(h.cluster).chains_of("s2"), [])

    def test_lost_race_decides_again_from_the_winner(self) -> None:
        """A compare-and-set that loses to another write is not retried blindly:
        the controller decides again from the map that won."""
        h = Harness(self, shards=2, replicas=2)
        c, store = h.controller()
        real = store.write_map
        raced = []

        def racing(data: bytes, version: int):  # type: ignore[no-untyped-def]
            if not raced:
                raced.append(version)
                other = ShardMap.initial(2, [b"\x80"], [("s1",), ()])
                h.cluster.set_map(other.encode())  # someone else wrote first
            return real(data, version)

        store.write_map = racing  # type: ignore[method-assign]
        h.register(0, 1)
        m = current(h.cluster)
        self.assertEqual(raced, [0])
        # decided from the winner's map: c0 keeps the s1 it put at the head
        # (placed from scratch, s0 would head c0)
        self.assertEqual(m.chains["c0"].members, ("s1", "s0"))
        for plan in m.chains.values():
            self.assertEqual(len(plan.members), 2)

    def test_stopped_controller_writes_nothing(self) -> None:
        """After stopService a pending replacement never happens."""
        h = Harness(self)
        h.register(0, 1, 2, 3)
        c, _ = h.controller(replace_after=30.0)
        before = current(h.cluster)
        h.servers.unregister_server("s1")
        c.stopService()
        h.clock.advance(100.0)
        self.assertEqual(current(h.cluster), before)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class CoreTests(SynchronousTestCase):
    def test_next_tick_is_when_a_gone_server_passes_the_limit(self) -> None:
        """The core asks to be woken just after the earliest gone server's deadline."""
        core = ControllerCore(10.0)
        core.map_seen(ShardMap.initial(1, [], [("s0",)]), 100.0)
        core.servers_seen({}, 103.0)
        tick = core.next_tick(105.0)
        assert tick is not None
        self.assertAlmostEqual(tick, 5.0, places=2)
        self.assertIsNone(core.decide(105.0))  # gone only 5 s


class RandomHistoryTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["up", "down", "wait"]), st.integers(0, 5),
                              st.floats(0.0, 40.0)), max_size=40))
    def test_every_map_keeps_the_rules(self, events: list[tuple[str, int, float]]) -> None:
        """Under any history of servers coming and going: every map written is valid,
        its version grows, no chain names a server twice or more than R servers, a
        chain's version moves whenever its members do, and a server leaves a chain
        only once it has been gone longer than replace_after."""
        h = Harness(self, shards=4, replicas=3)
        h.controller(replace_after=30.0)
        gone_at: dict[str, float] = {}
        up: set[int] = set()
        last = current(h.cluster)
        for kind, i, t in events:
            if kind == "up" and i not in up:
                up.add(i)
                gone_at.pop(f"s{i}", None)
                h.register(i)
            elif kind == "down" and i in up:
                up.discard(i)
                gone_at[f"s{i}"] = h.clock.seconds()
                h.servers.unregister_server(f"s{i}")
            else:
                h.clock.advance(t)
            m = current(h.cluster)
            self.assertGreaterEqual(m.version, last.version)
            for cid, plan in m.chains.items():
                self.assertLessEqual(len(plan.members), 3)
                before = last.chains[cid]
                if plan.members != before.members:
                    self.assertGreater(plan.version, before.version)
                for sid in set(before.members) - set(plan.members):
                    self.assertIn(sid, gone_at, (sid, before, plan))
                    self.assertGreater(h.clock.seconds() - gone_at[sid], 30.0)
            last = m
