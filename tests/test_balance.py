"""Balancing: the controller evens out the replicas its servers hold, one move at a
time and only once the cluster has been quiet; the rule alone, the core's timing,
and the service writing the move into the request record, all in memory."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.cluster.balance import balance_move, replicas_per_server
from kvtwist.cluster.controller import ControllerCore, ControllerService
from kvtwist.cluster.requests import Move, Requests, ShardSplit
from kvtwist.cluster.shardmap import Server, ShardMap
from tests.fakes.cluster import MemoryCluster, MemoryClusterStore
from tests.test_controller import PATHS


def srv(i: int, zone: str | None = None) -> Server:
    return Server(f"s{i}", f"127.0.0.1:{7000 + i}", zone)


def three_on_three() -> ShardMap:
    """Three chains of three on s1..s3 (heads spread), s4 holding nothing."""
    return ShardMap.initial(
        3, [b"g", b"p"], [("s1", "s2", "s3"), ("s2", "s3", "s1"), ("s3", "s1", "s2")]
    )


LIVE = {s.id: s for s in (srv(i) for i in range(1, 5))}


class RuleTests(SynchronousTestCase):
    def test_a_new_server_gets_a_tail(self) -> None:
        """9 replicas on s1..s3 and none on s4: one moves to s4, from the first of the
        fullest servers, taking a chain whose tail it is (the others keep their roles)."""
        m = three_on_three()
        self.assertEqual(replicas_per_server(m, sorted(LIVE)), {"s1": 3, "s2": 3, "s3": 3, "s4": 0})
        self.assertEqual(balance_move(m, LIVE, Requests(), False), Move("c1", "s1", "s4"))

    def test_even_enough_is_left_alone(self) -> None:
        """Counts that differ by one at most: no move (a move would only swap them)."""
        m = ShardMap.initial(3, [b"g", b"p"], [("s1", "s2", "s3"), ("s2", "s3", "s4"),
                                                ("s3", "s4", "s1")])
        self.assertIsNone(balance_move(m, LIVE, Requests(), False))

    def test_waits_while_anything_changes(self) -> None:
        """A move or split pending, a server gone, a chain at R + 1 members, a split not
        settled, a drain under way: nothing."""
        m = three_on_three()
        busy = [
            (m, Requests(moves=(Move("c0", "s1", "s4"),)), False),
            (m, Requests(splits=(ShardSplit("c0", b"a"),)), False),
            (m, Requests(), True),
            (m, Requests(draining=("s1",)), False),
            (m.split("c0", b"c", "c3"), Requests(), False),
        ]
        for mm, requests, gone in busy:
            self.assertIsNone(balance_move(mm, LIVE, requests, gone))
        growing = ShardMap.initial(3, [b"g", b"p"], [("s1", "s2", "s3", "s4"),
                                                     ("s2", "s3", "s1"), ("s3", "s1", "s2")])
        self.assertIsNone(balance_move(growing, LIVE, Requests(), False))

    def test_a_drained_server_is_no_target(self) -> None:
        """s4 drained (holding nothing) takes nothing: the rest are even."""
        self.assertIsNone(balance_move(three_on_three(), LIVE, Requests(draining=("s4",)), False))

    def test_zones_stay_distinct(self) -> None:
        """s4 shares s2's zone: a chain holding s2 may go to it only from s2 itself; with
        s5 on another chain, a chain without s2 goes."""
        live = {**LIVE, "s2": srv(2, "z"), "s4": srv(4, "z")}
        self.assertEqual(balance_move(three_on_three(), live, Requests(), False),
                         Move("c2", "s2", "s4"))
        m = ShardMap.initial(3, [b"g", b"p"], [("s1", "s2", "s3"), ("s1", "s3", "s5"),
                                               ("s3", "s1", "s5")])
        live = {**live, "s5": srv(5)}
        move = balance_move(m, live, Requests(), False)
        assert move is not None
        self.assertEqual(move.target, "s4")
        self.assertNotIn("s2", m.chains[move.chain].members)


class CoreTests(SynchronousTestCase):
    def core(self, balance_after: float = 100.0) -> ControllerCore:
        core = ControllerCore(30.0, balance_after=balance_after)
        core.servers_seen(LIVE, 0.0)
        core.map_seen(three_on_three(), 0.0)
        return core

    def test_only_after_a_quiet_balance_after(self) -> None:
        """No move before balance_after has passed since the map last changed; a new
        map version starts the quiet again; the same version does not."""
        core = self.core()
        self.assertIsNone(core.balancing_requests(99.0))
        self.assertLess(abs((core.next_tick(99.0) or 0) - 1.0), 0.01)
        core.map_seen(three_on_three(), 50.0)  # the same map read again
        got = core.balancing_requests(100.0)
        assert got is not None
        self.assertEqual(got.moves, (Move("c1", "s1", "s4"),))
        bumped = three_on_three().settled()
        core.map_seen(bumped, 120.0)
        self.assertIsNone(core.balancing_requests(219.0))
        self.assertIsNotNone(core.balancing_requests(220.0))

    def test_zero_never_balances(self) -> None:
        core = self.core(balance_after=0.0)
        self.assertIsNone(core.balancing_requests(10_000.0))
        self.assertIsNone(core.next_tick(10_000.0))


class ServiceTests(SynchronousTestCase):
    def test_the_elected_controller_writes_the_move(self) -> None:
        """The controller, elected, writes the balancing move into the request record once
        the map has been quiet for balance_after; then the move's first step (s4
        appended to the chain) is in the next map."""
        clock = Clock()
        cluster = MemoryCluster()
        cluster.set_map(three_on_three().encode())
        servers = MemoryClusterStore(cluster)
        for s in LIVE.values():
            servers.register_server(s)
        c = ControllerService(clock, MemoryClusterStore(cluster), PATHS, 30.0,
                              balance_after=100.0)
        c.startService()
        self.addCleanup(c.stopService)
        clock.advance(99.0)
        self.assertEqual(cluster.requests[0], None)
        clock.advance(1.1)
        data = cluster.requests[0]
        assert data is not None
        self.assertEqual(Requests.decode(data).moves, (Move("c1", "s1", "s4"),))
        m = ShardMap.decode(cluster.map[0] or b"")
        self.assertEqual(m.chains["c1"].members, ("s2", "s3", "s1", "s4"))
