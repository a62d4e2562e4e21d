"""The cluster's ZooKeeper store and the controller against a real ZooKeeper
(tests/zkserver.py): a cluster is created once, the map is compare-and-set,
the request record is created once and compare-and-set, a chain's member list
is watched, servers re-register after a session loss, the election moves to the survivor,
an elected controller fills a cluster created empty, and the clients route
keys to their chains."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from kvtwist import wire
from kvtwist.client.blocking import BlockingClient
from kvtwist.client.cluster import ClusterClient
from kvtwist.cluster.controller import ControllerService
from kvtwist.cluster.shardmap import ClusterPaths, Server, ShardMap
from kvtwist.zk.cluster import ZooKeeperClusterStore, open_session
from kvtwist.zk.session import Session
from tests.nodes import TWISTD, NodeProcess, RawClient, env
from tests.test_blocking import private_reactor
from tests.test_zk import Recorder, poll_until
from tests.zkserver import expire_session, shared_zookeeper, zookeeper_available

_UNAVAILABLE = zookeeper_available()


def unique_cluster() -> ClusterPaths:
    return ClusterPaths(f"t{uuid.uuid4().hex}")


class ClusterStoreTests(unittest.TestCase):
    """The kazoo store, each test on a cluster of its own."""

    timeout = 60
    if _UNAVAILABLE is not None:
        skip = _UNAVAILABLE

    def setUp(self) -> None:
        self.server = shared_zookeeper()
        self.paths = unique_cluster()

    @inlineCallbacks
    def session(self) -> Generator[Deferred[Any], Any, Session]:
        session = yield open_session(reactor, self.server.hosts, session_timeout=4.0)
        self.addCleanup(session.stop)
        return session

    @inlineCallbacks
    def store(self) -> Generator[Deferred[Any], Any, ZooKeeperClusterStore]:
        session = yield self.session()
        return ZooKeeperClusterStore(session, self.paths)

    @inlineCallbacks
    def test_create_once_and_compare_and_set(self) -> Generator[Deferred[Any], Any, None]:
        """create_cluster makes every znode once (a second create changes nothing);
        write_map succeeds on the version read and fails on a stale one; the watch
        sees each version."""
        store = yield self.store()
        first = ShardMap.initial(1, [b"m"], [(), ()])
        self.assertTrue((yield store.create_cluster(first.encode())))
        self.assertFalse((yield store.create_cluster(b"junk")))
        client = store.session.client
        for path in (self.paths.servers, self.paths.chains, self.paths.controller):
            self.assertIsNotNone((yield deferToThread(client.exists, path)))
        seen: Recorder[tuple[bytes | None, int]] = Recorder()
        store.watch_map(lambda data, version: seen((data, version)))
        data, version = yield seen.wait_for(lambda v: v[1] == 0)
        self.assertEqual(ShardMap.decode(data), first)
        second = ShardMap(2, 1, first.shards, first.chains)
        self.assertTrue((yield store.write_map(second.encode(), 0)))
        self.assertFalse((yield store.write_map(first.encode(), 0)))
        data, _ = yield seen.wait_for(lambda v: v[1] == 1)
        self.assertEqual(ShardMap.decode(data), second)

    @inlineCallbacks
    def test_request_record_and_member_watch(self) -> Generator[Deferred[Any], Any, None]:
        """The request record is watched from its absence on, created only once
        (version -1) and compare-and-set after; a chain's member watch delivers its
        member znodes' addresses head first, and nothing more once stopped."""
        store = yield self.store()
        yield store.create_cluster(ShardMap.initial(1, [], [()]).encode())
        seen: Recorder[tuple[bytes | None, int]] = Recorder()
        store.watch_requests(lambda data, version: seen((data, version)))
        yield seen.wait_for(lambda v: v == (None, -1))
        self.assertTrue((yield store.write_requests(b"one", -1)))
        self.assertFalse((yield store.write_requests(b"again", -1)))
        yield seen.wait_for(lambda v: v == (b"one", 0))
        self.assertFalse((yield store.write_requests(b"stale", 1)))
        self.assertTrue((yield store.write_requests(b"two", 0)))
        yield seen.wait_for(lambda v: v == (b"two", 1))
        members: Recorder[tuple[str, ...]] = Recorder()
        stop = store.watch_members("c0", members)
        yield members.wait_for(lambda v: v == ())
        client = store.session.client
        root = self.paths.chain("c0")
        for port in (7001, 7002):
            yield deferToThread(client.create, f"{root}/node", b"127.0.0.1:%d" % port,
                                ephemeral=True, sequence=True, makepath=True)
        yield members.wait_for(lambda v: v == ("127.0.0.1:7001", "127.0.0.1:7002"))
        stop()
        count = len(members.values)
        yield deferToThread(client.create, f"{root}/node", b"127.0.0.1:7003",
                            ephemeral=True, sequence=True)
        again: Recorder[tuple[str, ...]] = Recorder()
        store.watch_members("c0", again)  # a later watcher gets the list as it is
        yield again.wait_for(lambda v: len(v) == 3)
        self.assertEqual(len(members.values), count)

    @inlineCallbacks
    def test_registration_survives_session_loss(self) -> Generator[Deferred[Any], Any, None]:
        """A registered server is seen live, and is registered again by itself after
        its session expires; unregistering removes it for good."""
        store = yield self.store()
        yield store.create_cluster(ShardMap.initial(1, [], [()]).encode())
        watcher = yield self.store()
        live: Recorder[dict[str, Server]] = Recorder()
        watcher.watch_servers(live)
        me = Server("s1", "127.0.0.1:7001", "z1")
        yield store.register_server(me)
        yield live.wait_for(lambda s: s == {"s1": me})
        since = len(live.values)
        client_id = store.session.client.client_id
        yield deferToThread(expire_session, self.server.hosts, client_id)
        yield live.wait_for(lambda s: s == {}, since)
        yield live.wait_for(lambda s: s == {"s1": me}, since)
        yield store.unregister_server("s1")
        yield live.wait_for(lambda s: s == {}, len(live.values) - 1)
        self.assertEqual((yield store.servers()), {})

    @inlineCallbacks
    def test_election_moves_to_the_survivor(self) -> Generator[Deferred[Any], Any, None]:
        """The first candidate wins; when its session expires it is told it lost and
        the second wins."""
        a, b = (yield self.store()), (yield self.store())
        yield a.create_cluster(ShardMap.initial(1, [], [()]).encode())
        events: Recorder[str] = Recorder()
        a.elect("a", lambda: events("a won"), lambda: events("a lost"))
        yield events.wait_for(lambda e: e == "a won")
        b.elect("b", lambda: events("b won"), lambda: events("b lost"))
        yield deferToThread(expire_session, self.server.hosts, a.session.client.client_id)
        yield events.wait_for(lambda e: e == "a lost")
        yield events.wait_for(lambda e: e == "b won")
        self.assertEqual(events.values[:1], ["a won"])
        self.assertNotIn("b lost", events.values)

    @inlineCallbacks
    def test_controller_fills_a_cluster_created_empty(self) -> Generator[Deferred[Any], Any, None]:
        """A controller on real ZooKeeper places every chain on R servers once they
        register, and writes the map under a new version."""
        store = yield self.store()
        yield store.create_cluster(ShardMap.initial(2, [b"\x80"], [(), ()]).encode())
        controller = ControllerService(reactor, store, self.paths, replace_after=60.0)
        controller.startService()
        self.addCleanup(controller.stopService)
        servers = yield self.store()
        for i in range(3):
            yield servers.register_server(Server(f"s{i}", f"127.0.0.1:{7000 + i}"))

        @inlineCallbacks
        def filled() -> Generator[Deferred[Any], Any, bool]:
            data, _ = yield store.read_map()
            m = ShardMap.decode(data)
            return all(len(p.members) == 2 for p in m.chains.values())

        yield poll_until(filled)
        self.assertTrue(controller.leading)
        data, version = yield store.read_map()
        self.assertGreater(ShardMap.decode(data).version, 1)
        self.assertGreaterEqual(version, 1)

    @inlineCallbacks
    def test_controller_replaces_a_server_whose_session_expired(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """A server whose session expires (and that does not come back) leaves its
        chain after replace_after; the free server joins at the end, and the chain's
        version moves on."""
        store = yield self.store()
        yield store.create_cluster(ShardMap.initial(2, [], [("s0", "s1")]).encode())
        controller = ControllerService(reactor, store, self.paths, replace_after=1.0)
        controller.startService()
        self.addCleanup(controller.stopService)
        stays = yield self.store()
        yield stays.register_server(Server("s0", "127.0.0.1:7000"))
        yield stays.register_server(Server("s2", "127.0.0.1:7002"))
        goes = yield self.store()
        yield goes.register_server(Server("s1", "127.0.0.1:7001"))
        yield goes.session.stop()  # gone for good: its znode goes with the session

        @inlineCallbacks
        def replaced() -> Generator[Deferred[Any], Any, bool]:
            data, _ = yield store.read_map()
            return ShardMap.decode(data).chains["c0"].members == ("s0", "s2")

        yield poll_until(replaced)
        data, _ = yield store.read_map()
        self.assertEqual(ShardMap.decode(data).chains["c0"].version, 2)


class ClusterClientTests(unittest.TestCase):
    """ClusterClient.connect, BlockingClient.cluster and ``kvtwist-client --cluster``
    on real ZooKeeper and real cluster servers, one per chain: the map read, each
    chain found through its members on the one shared session, keys routed."""

    timeout = 120
    if _UNAVAILABLE is not None:
        skip = _UNAVAILABLE

    def setUp(self) -> None:
        self.server = shared_zookeeper()
        self.paths = unique_cluster()
        self.nodes: list[NodeProcess] = []
        self.addCleanup(lambda: [n.stop() for n in self.nodes])

    @inlineCallbacks
    def test_keys_go_to_their_chains(self) -> Generator[Deferred[Any], Any, None]:
        """Keys below the cut land on c0's node, the others on c1's; a RANGE over the
        cut comes back whole and in order from both."""
        session = yield open_session(reactor, self.server.hosts)
        self.addCleanup(session.stop)
        store = ZooKeeperClusterStore(session, self.paths)
        yield store.create_cluster(ShardMap.initial(1, [b"m"], [("s0",), ("s1",)]).encode())
        for sid in ("s0", "s1"):
            node = NodeProcess.cluster_server(self.server.hosts, self.paths.name, sid)
            self.nodes.append(node)
            yield deferToThread(node.start)
        client = yield ClusterClient.connect(reactor, self.server.hosts, self.paths.name,
                                             deadline=30.0)
        self.addCleanup(client.close)
        keys = [b"apple", b"kiwi", b"mango", b"zebra"]
        for k in keys:
            yield client.put(k, k.upper())
        held = zip(
            ("c0", "c1"), self.nodes, ([b"apple", b"kiwi"], [b"mango", b"zebra"]), strict=True
        )
        for cid, node, keys_there in held:
            ask = wire.req_getkeys()
            ask.chain = cid
            with RawClient(node.port) as raw:
                self.assertEqual(list(raw.one(ask).keys), keys_there)
        self.assertEqual((yield client.get(b"zebra")), b"ZEBRA")
        self.assertEqual((yield client.size()), 4)
        rows = yield client.range(b"b", None, 3)
        self.assertEqual(rows, [(b"kiwi", b"KIWI"), (b"mango", b"MANGO"), (b"zebra", b"ZEBRA")])
        self.assertEqual((yield client.keys()), keys)

        def blocking() -> list[bytes]:
            with BlockingClient.cluster(self.server.hosts, self.paths.name, 30.0,
                                        reactor=private_reactor()) as kv:
                kv.put(b"banana", b"B")
                return kv.keys()

        self.assertEqual((yield deferToThread(blocking)), [b"apple", b"banana", *keys[1:]])
        shell = [str(Path(TWISTD).parent / "kvtwist-client"), "--zk", self.server.hosts,
                 "--cluster", self.paths.name]
        done = yield deferToThread(
            subprocess.run, [*shell, "-c", "range k -"], capture_output=True, text=True,
            timeout=60, env=env(),
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.splitlines(),
                         ["kiwi\tKIWI", "mango\tMANGO", "zebra\tZEBRA", "(3 entries)"])

    @inlineCallbacks
    def test_bench_routes_by_shard(self) -> Generator[Deferred[Any], Any, None]:
        """kvtwist-bench --cluster writes each key to its shard's chain: with the cut
        inside the bench's key range, both chains' nodes get their share, no errors."""
        session = yield open_session(reactor, self.server.hosts)
        self.addCleanup(session.stop)
        store = ZooKeeperClusterStore(session, self.paths)
        cut = b"bench:k000000000000050"
        yield store.create_cluster(ShardMap.initial(1, [cut], [("s0",), ("s1",)]).encode())
        for sid in ("s0", "s1"):
            node = NodeProcess.cluster_server(self.server.hosts, self.paths.name, sid)
            self.nodes.append(node)
            yield deferToThread(node.start)
        bench = [str(Path(TWISTD).parent / "kvtwist-bench"), "--zk", self.server.hosts,
                 "--cluster", self.paths.name, "--workload", "put", "--key-dist", "sequential",
                 "--keys", "100", "--requests", "100", "--connections", "2",
                 "--processes", "1", "--progress", "never", "--quiet"]
        done = yield deferToThread(
            subprocess.run, bench, capture_output=True, text=True, timeout=120, env=env()
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        for cid, node in zip(("c0", "c1"), self.nodes, strict=True):
            ask = wire.req_size()
            ask.chain = cid
            with RawClient(node.port) as raw:
                self.assertEqual(raw.one(ask).result, 50)
