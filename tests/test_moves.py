"""Moves and drains in memory: the request record, the admin's checks, the
controller core's two steps (target appended, source out only once every other
planned member has joined by the chain's own membership), draining servers
given nothing, and a successor controller that completes a move half done."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.cluster.controller import ControllerCore, ControllerService
from kvtwist.cluster.requests import (
    BadRequests,
    Move,
    Refused,
    Requests,
    check_cancel,
    check_drain,
    check_move,
    check_undrain,
)
from kvtwist.cluster.shardmap import ClusterPaths, Server, ShardMap
from tests.fakes.cluster import MemoryCluster, MemoryClusterStore

PATHS = ClusterPaths("test")
NOW = 1000.0


def srv(i: int, zone: str | None = None) -> Server:
    return Server(f"s{i}", f"127.0.0.1:{7000 + i}", zone)


def four() -> tuple[ShardMap, dict[str, Server]]:
    """Four servers, two chains of three: c0 on s0,s1,s2 and c1 on s1,s2,s3."""
    live = {s.id: s for s in (srv(i) for i in range(4))}
    m = ShardMap.initial(3, [b"m"], [("s0", "s1", "s2"), ("s1", "s2", "s3")])
    return m, live


def core_of(m: ShardMap, live: dict[str, Server], requests: Requests) -> ControllerCore:
    core = ControllerCore(30.0)
    core.servers_seen(live, NOW)
    core.map_seen(m, NOW)
    core.requests_seen(requests)
    return core


def joined_all(core: ControllerCore, m: ShardMap) -> None:
    """Every planned member of every chain registered (as ZooKeeper would list them)."""
    for cid, plan in m.chains.items():
        core.members_seen(cid, [core.live[s].address for s in plan.members if s in core.live])


class RecordTests(SynchronousTestCase):
    def test_round_trip_and_refusals(self) -> None:
        """The record encodes and decodes to itself; another format, junk, two moves of
        one chain and a move to itself are refused; no record is no request."""
        r = Requests((Move("c1", "s2", "s4"),), ("s3",))
        self.assertEqual(Requests.decode(r.encode()), r)
        self.assertEqual(Requests.decode(None), Requests())
        for bad in (b'{"format": 2, "moves": [], "draining": []}', b"junk", b"[]",
                    b'{"format": 1, "moves": [{"chain": "c1"}], "draining": []}',
                    b'{"format": 1, "moves": [], "draining": [7]}'):
            with self.assertRaises(BadRequests, msg=bad):
                Requests.decode(bad)
        with self.assertRaises(BadRequests):
            Requests((Move("c1", "s2", "s4"), Move("c1", "s3", "s5")))
        with self.assertRaises(BadRequests):
            Requests((Move("c1", "s2", "s2"),))


class CheckTests(SynchronousTestCase):
    def test_move_refusals(self) -> None:
        """A move names a known shard, a live target that is not draining and not a
        member yet, a source that is a member, one move per chain, and keeps zones
        distinct when zones are given."""
        m, live = four()
        cases = {
            "unknown shard": ("c9", "s3", None, Requests()),
            "not live": ("c0", "s7", None, Requests()),
            "already a member": ("c0", "s1", None, Requests()),
            "is not a member": ("c0", "s3", "s3", Requests()),
            "draining": ("c0", "s3", None, Requests(draining=("s3",))),
            "pending already": ("c0", "s3", None, Requests((Move("c0", "s0", "s3"),))),
        }
        for words, (chain, to, source, req) in cases.items():
            with self.assertRaises(Refused, msg=words) as caught:
                check_move(m, live, req, chain, to, source)
            self.assertIn(words, str(caught.exception))
        zoned = {"s0": srv(0, "a"), "s1": srv(1, "b"), "s2": srv(2, "c"), "s3": srv(3, "b")}
        with self.assertRaises(Refused) as caught:
            check_move(m, zoned, Requests(), "c0", "s3", "s0")
        self.assertIn("one zone", str(caught.exception))
        # without --from, the member in the target's zone leaves: zones stay distinct
        self.assertEqual(check_move(m, zoned, Requests(), "c0", "s3"), Move("c0", "s1", "s3"))
        self.assertEqual(check_move(m, live, Requests(), "c0", "s3", "s0"),
                         Move("c0", "s0", "s3"))

    def test_drain_refusals(self) -> None:
        """A drain names a known server that no pending move targets, and leaves at
        least R servers to place on;
        draining twice is the same request; undraining one not draining is refused."""
        m, live = four()
        with self.assertRaises(Refused):
            check_drain(m, live, Requests(), "s9")
        with self.assertRaises(Refused) as caught:
            check_drain(m, live, Requests((Move("c0", "s0", "s3"),)), "s3")
        self.assertIn("pending", str(caught.exception))
        one = check_drain(m, live, Requests(), "s1")
        self.assertEqual(one.draining, ("s1",))
        self.assertEqual(check_drain(m, live, one, "s1"), one)
        with self.assertRaises(Refused) as caught:
            check_drain(m, live, one, "s2")
        self.assertIn("would leave 2 servers", str(caught.exception))
        self.assertEqual(check_undrain(one, "s1"), Requests())
        with self.assertRaises(Refused):
            check_undrain(one, "s2")


class MoveCoreTests(SynchronousTestCase):
    def test_move_in_two_steps(self) -> None:
        """The target is appended first; the source stays while the target is only in
        the map, leaves once the chain's own membership lists the target, and the
        move is over (removed from the record) once the map shows it."""
        m, live = four()
        core = core_of(m, live, Requests((Move("c0", "s0", "s3"),)))
        joined_all(core, m)
        self.assertEqual(core.watched_chains(), {"c0"})
        first = core.decide(NOW)
        assert first is not None
        self.assertEqual(first.chains["c0"].members, ("s0", "s1", "s2", "s3"))
        self.assertEqual(first.chains["c1"], m.chains["c1"])
        core.map_seen(first, NOW)
        self.assertIsNone(core.decide(NOW))  # s3 is in the map, not in the chain yet
        self.assertIsNone(core.finished_requests())
        self.assertIn("waiting for s3 to join", core.progress()["c0"])
        joined_all(core, first)
        second = core.decide(NOW)
        assert second is not None
        self.assertEqual(second.chains["c0"].members, ("s1", "s2", "s3"))
        self.assertEqual(second.chains["c0"].version, m.chains["c0"].version + 2)
        core.map_seen(second, NOW)
        self.assertIsNone(core.decide(NOW))
        self.assertEqual(core.finished_requests(), Requests())

    def test_source_waits_for_every_other_member(self) -> None:
        """A planned member that is not joined (down, not replaced yet) keeps the
        source in: the chain never has fewer joined members than before the move."""
        m, live = four()
        core = core_of(m, live, Requests((Move("c0", "s0", "s3"),)))
        first = core.decide(NOW)
        assert first is not None
        core.map_seen(first, NOW)
        core.members_seen("c0", [live[s].address for s in ("s0", "s2", "s3")])  # s1 is not
        self.assertIsNone(core.decide(NOW))
        self.assertIn("waiting for s1", core.progress()["c0"])

    def test_target_not_live_waits(self) -> None:
        """A move whose target is gone waits without touching the chain."""
        m, live = four()
        del live["s3"]
        core = core_of(m, live, Requests((Move("c0", "s0", "s3"),)))
        joined_all(core, m)
        self.assertIsNone(core.decide(NOW))
        self.assertIn("s3 is not live", core.progress()["c0"])

    def test_source_gone_otherwise_ends_the_move(self) -> None:
        """A move whose source left the chain by other means (replaced while gone) is
        over: removed from the record, nothing appended."""
        m, live = four()
        core = core_of(m, live, Requests((Move("c0", "s3", "s1"),)))
        self.assertIsNone(core.decide(NOW))
        self.assertEqual(core.finished_requests(), Requests())

    def test_unreadable_record_moves_nothing(self) -> None:
        """While the record is unreadable no request is acted on, and it is not
        overwritten."""
        m, live = four()
        core = core_of(m, live, Requests())
        core.requests_seen(None)
        self.assertIsNone(core.decide(NOW))
        self.assertIsNone(core.finished_requests())
        self.assertEqual(core.watched_chains(), set())


class DrainCoreTests(SynchronousTestCase):
    def test_drain_moves_every_chain_and_places_nothing_there(self) -> None:
        """A draining server gets a joiner appended to each of its chains, leaves each
        once the others joined, ends in no chain, and stays given nothing: a chain
        short of members is filled from the other servers only."""
        m, live = four()
        core = core_of(m, live, Requests(draining=("s1",)))
        self.assertEqual(core.watched_chains(), {"c0", "c1"})
        current = m
        for _ in range(4):
            joined_all(core, current)
            new = core.decide(NOW)
            if new is None:
                break
            current = new
            core.map_seen(current, NOW)
        self.assertEqual(current.chains_of("s1"), [])
        for plan in current.chains.values():
            self.assertEqual(len(plan.members), 3)
        short = ShardMap(current.version + 1, 3, current.shards,
                         {**current.chains, "c0": current.chains["c0"].__class__(
                             "c0", ("s0",), current.chains["c0"].version + 1)})
        core.map_seen(short, NOW)
        filled = core.decide(NOW)
        assert filled is not None
        self.assertNotIn("s1", filled.chains["c0"].members)
        self.assertEqual(len(filled.chains["c0"].members), 3)

    def test_draining_server_not_chosen_to_replace(self) -> None:
        """A server gone past replace_after is replaced by a live server that is not
        draining, even when the draining one is the least loaded."""
        live = {s.id: s for s in (srv(i) for i in range(5))}
        m = ShardMap.initial(3, [], [("s0", "s1", "s2")])
        core = core_of(m, {k: v for k, v in live.items() if k != "s2"},
                       Requests(draining=("s3",)))
        new = core.decide(NOW + 31.0)
        assert new is not None
        self.assertEqual(new.chains["c0"].members, ("s0", "s1", "s4"))

    def test_undrained_server_is_used_again(self) -> None:
        """Once undrained, a server is a placement candidate again."""
        live = {s.id: s for s in (srv(i) for i in range(4))}
        m = ShardMap.initial(3, [], [("s0", "s1")])
        core = core_of(m, live, Requests(draining=("s2", "s3")))
        self.assertIsNone(core.decide(NOW))
        core.requests_seen(Requests(draining=("s3",)))
        new = core.decide(NOW)
        assert new is not None
        self.assertEqual(new.chains["c0"].members, ("s0", "s1", "s2"))

    def test_no_free_server_keeps_the_drained_one(self) -> None:
        """With no server free to take its place, a draining server stays a member
        (the chain is never left short)."""
        live = {s.id: s for s in (srv(i) for i in range(3))}
        m = ShardMap.initial(3, [], [("s0", "s1", "s2")])
        core = core_of(m, live, Requests(draining=("s1",)))
        joined_all(core, m)
        self.assertIsNone(core.decide(NOW))
        self.assertIn("free", core.progress()["c0"])

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["join", "step", "drain"]), st.integers(0, 4)),
                    max_size=30))
    def test_no_chain_ever_runs_short(self, events: list[tuple[str, int]]) -> None:
        """Under any order of registrations, decisions and drains: no map leaves a
        chain with fewer than R members, and a server leaves a chain only when every
        other planned member was joined."""
        live = {s.id: s for s in (srv(i) for i in range(5))}
        m = ShardMap.initial(3, [b"g", b"p"], [("s0", "s1", "s2"), ("s2", "s3", "s4"),
                                               ("s4", "s0", "s1")])
        core = core_of(m, live, Requests())
        listed: dict[str, set[str]] = {c: set(p.members) for c, p in m.chains.items()}
        draining: set[str] = set()
        for kind, i in events:
            if kind == "drain" and len(draining) < 2:
                draining.add(f"s{i}")
                core.requests_seen(Requests(draining=tuple(sorted(draining))))
            elif kind == "join":
                cid = sorted(core.map.chains)[i % 3] if core.map else "c0"
                assert core.map is not None
                listed[cid] = set(core.map.chains[cid].members)
            for cid, names in listed.items():
                core.members_seen(cid, [live[s].address for s in sorted(names)])
            before = core.map
            assert before is not None
            new = core.decide(NOW)
            if new is None:
                continue
            for cid, plan in new.chains.items():
                self.assertGreaterEqual(len(plan.members), 3)
                for sid in set(before.chains[cid].members) - set(plan.members):
                    others = set(plan.members)
                    self.assertLessEqual(others, listed[cid], (cid, sid))
            core.map_seen(new, NOW)
            listed = {c: names & set(new.chains[c].members) for c, names in listed.items()}


class Driven:
    """A controller service on the in-memory cluster, with chains that register
    their planned members on demand."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.clock = Clock()
        self.cluster = MemoryCluster()
        m = ShardMap.initial(3, [b"m"], [("s0", "s1", "s2"), ("s1", "s2", "s3")])
        self.cluster.set_map(m.encode())
        self.servers = MemoryClusterStore(self.cluster)
        for i in range(4):
            self.servers.register_server(srv(i))
        self.test = test
        self.register_all()

    def map(self) -> ShardMap:
        data = self.cluster.map[0]
        assert data is not None
        return ShardMap.decode(data)

    def register_all(self) -> None:
        for cid, plan in self.map().chains.items():
            self.cluster.set_members(cid, tuple(srv(int(s[1:])).address for s in plan.members))

    def controller(self) -> tuple[ControllerService, MemoryClusterStore]:
        store = MemoryClusterStore(self.cluster)
        c = ControllerService(self.clock, store, PATHS, 30.0)
        c.startService()
        self.test.addCleanup(c.stopService)
        return c, store

    def ask(self, requests: Requests) -> None:
        self.cluster.set_requests(requests.encode())


class DriverTests(SynchronousTestCase):
    def test_move_carried_out_from_the_record(self) -> None:
        """The admin's record asks a move; the elected controller appends the target,
        removes the source only once the chain lists the target, then clears the move
        from the record."""
        d = Driven(self)
        d.controller()
        d.ask(Requests((Move("c0", "s0", "s3"),)))
        self.assertEqual(d.map().chains["c0"].members, ("s0", "s1", "s2", "s3"))
        self.assertIsNotNone(Requests.decode(d.cluster.requests[0]).move_of("c0"))
        d.register_all()  # s3 joined the chain
        self.assertEqual(d.map().chains["c0"].members, ("s1", "s2", "s3"))
        self.assertEqual(Requests.decode(d.cluster.requests[0]), Requests())

    def test_successor_completes_a_half_done_move(self) -> None:
        """The first controller appends the target and loses its session before the
        target joins; the successor, from the record and the map alone, removes the
        source once the target joins, and clears the move; the first writes nothing
        more."""
        d = Driven(self)
        first, first_store = d.controller()
        second, _ = d.controller()
        d.ask(Requests((Move("c0", "s0", "s3"),)))
        self.assertEqual(d.map().chains["c0"].members, ("s0", "s1", "s2", "s3"))
        first_store.expire()
        self.assertTrue(second.leading)
        writes = d.cluster.writes
        d.register_all()
        self.assertEqual(d.map().chains["c0"].members, ("s1", "s2", "s3"))
        self.assertEqual(d.cluster.writes, writes + 1)
        self.assertEqual(Requests.decode(d.cluster.requests[0]), Requests())
        self.assertFalse(first.leading)

    def test_successor_clears_a_move_whose_map_was_written(self) -> None:
        """A controller that wrote the source's removal but not the record's: its
        successor finds the move over in the map and clears it, writing no map."""
        d = Driven(self)
        m = d.map()
        done = ShardMap(m.version + 1, 3, m.shards, {
            **m.chains, "c0": m.chains["c0"].__class__("c0", ("s1", "s2", "s3"), 3)})
        d.cluster.set_map(done.encode())
        d.ask(Requests((Move("c0", "s0", "s3"),), ("s9",)))
        writes = d.cluster.writes
        d.controller()
        self.assertEqual(d.cluster.writes, writes)
        self.assertEqual(Requests.decode(d.cluster.requests[0]), Requests(draining=("s9",)))

    def test_drain_through_the_driver(self) -> None:
        """A drain of s1 ends with s1 in no chain, every chain of three, as the chains
        register their new members."""
        d = Driven(self)
        d.controller()
        d.ask(Requests(draining=("s1",)))
        for _ in range(4):
            d.register_all()
        self.assertEqual(d.map().chains_of("s1"), [])
        self.assertTrue(all(len(p.members) == 3 for p in d.map().chains.values()))
        self.assertEqual(Requests.decode(d.cluster.requests[0]).draining, ("s1",))

    def test_lost_race_on_the_record(self) -> None:
        """The admin writes the record between the controller's read and its clearing
        write: the controller's write loses and it decides again from the new record,
        keeping the admin's request."""
        d = Driven(self)
        c, store = d.controller()
        real = store.write_requests

        def racing(data: bytes, version: int):  # type: ignore[no-untyped-def]
            d.ask(Requests((Move("c0", "s0", "s3"),), ("s2",)))
            store.write_requests = real  # type: ignore[method-assign]
            return real(data, version)

        store.write_requests = racing  # type: ignore[method-assign]
        d.ask(Requests((Move("c0", "s0", "s3"),)))
        d.register_all()
        d.clock.advance(2.0)
        left = Requests.decode(d.cluster.requests[0])
        self.assertEqual(left, Requests(draining=("s2",)))


class TrimTests(SynchronousTestCase):
    def test_a_cancelled_move_leaves_its_target_out(self) -> None:
        """c0 with a fourth member and no move wanting it (its move was cancelled): the
        controller takes the newest member that has not joined out; a chain whose move
        is pending, or that a drain waits on, is left alone; an unreadable record
        trims nothing."""
        m, live = four()
        grown = ShardMap(m.version + 1, 3, m.shards,
                         {**m.chains, "c0": ShardMap.initial(3, [], [("s0", "s1", "s2", "s3")])
                          .chains["c0"]})
        core = core_of(grown, live, Requests())
        joined_all(core, m)  # s3 never joined c0
        new = core.decide(NOW)
        assert new is not None
        self.assertEqual(new.chains["c0"].members, ("s0", "s1", "s2"))
        self.assertEqual(new.chains["c1"], grown.chains["c1"])
        joined_all(core, grown)  # all four joined: the newest goes
        new = core.decide(NOW)
        assert new is not None
        self.assertEqual(new.chains["c0"].members, ("s0", "s1", "s2"))
        pending = core_of(grown, live, Requests((Move("c0", "s0", "s3"),)))
        joined_all(pending, m)
        after = pending.decide(NOW)
        self.assertTrue(after is None or len(after.chains["c0"].members) == 4)
        draining = core_of(grown, live, Requests(draining=("s1",)))
        joined_all(draining, m)
        self.assertIn("s3", (draining.decide(NOW) or grown).chains["c0"].members)
        unread = core_of(grown, live, Requests())
        unread.requests_seen(None)
        self.assertIsNone(unread.decide(NOW))

    def test_cancel(self) -> None:
        """check_cancel: the record without the chain's move; none pending is refused."""
        mv = Move("c0", "s0", "s3")
        self.assertEqual(check_cancel(Requests((mv,)), "c0"), (Requests(), mv))
        with self.assertRaises(Refused):
            check_cancel(Requests(), "c0")

