"""Many chains on one port: servers that each host a replica of several chains,
their links and client requests naming the chain, on one in-memory clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.link import LinkConfig
from kvtwist.chain.replica import Replica
from kvtwist.server import ClientConnections, NodeFactory
from kvtwist.server.chains import Chains
from kvtwist.store import InlineRunner, Store
from kvtwist.wire import Message
from tests.fakes.chain import pump_between, results, settle
from tests.fakes.coordinator import MemoryZooKeeper, Registry

KEY = b"k" * 32


class Server:
    """One port; a replica of each chain it is given, each with its own store."""

    def __init__(self, world: World, port: int) -> None:
        self.world = world
        self.port = port
        self.address = f"10.0.0.1:{port}"
        self.chains = Chains()
        self.chains.map_version = 1
        self.clients = ClientConnections()
        self.factory = NodeFactory(
            world.clock, self.chains, clients=self.clients, link_config=world.link_config
        )
        self.pumps: list[iosim.IOPump] = []

    def host(self, chain: str) -> Replica:
        zk = MemoryZooKeeper(self.world.registries[chain], self.world.clock)
        replica = Replica(
            self.world.clock,
            Store(self.world.clock, InlineRunner()),
            self.address,
            zk,
            dial=self._connect,
            link_config=LinkConfig(key=self.world.link_config.key, chain=chain),
            on_congestion=self.clients.congestion,
        )
        zk.watch_members(replica.set_view)
        self.chains.add(chain, replica)
        replica.join()
        return replica

    def _connect(self, host: str, port: int, protocol: Any) -> defer.Deferred[Any]:
        target = self.world.servers.get(port)
        if target is None:
            return defer.fail(ConnectionRefusedError())
        server = target.factory.buildProtocol(None)
        pump = pump_between(server, protocol, self.world.clock)
        self.world.pumps.append(pump)
        return defer.succeed(protocol)

    def request(self, msg: Message) -> Message:
        """Send one request on a fresh client connection; its reply."""
        (reply,) = self.pipeline([msg])
        return reply

    def pipeline(self, msgs: list[Message]) -> list[Message]:
        """Send requests together on a fresh client connection; their replies, in order."""
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"".join(wire.frame(m) for m in msgs))
        self.world.settle()
        data = transport.value()
        replies = []
        while data:
            (size,) = wire.HEADER.unpack(data[: wire.HEADER.size])
            reply = Message()
            reply.ParseFromString(data[wire.HEADER.size : wire.HEADER.size + size])
            replies.append(reply)
            data = data[wire.HEADER.size + size :]
        return replies


class World:
    def __init__(self, chains: list[str], servers: int, key: bytes | None = None) -> None:
        self.clock = MemoryReactorClock()
        self.link_config = LinkConfig(key=key)
        self.registries = {c: Registry() for c in chains}
        self.pumps: list[iosim.IOPump] = []
        self.servers = {9000 + i: Server(self, 9000 + i) for i in range(servers)}
        for chain in chains:
            for server in self.servers.values():
                server.host(chain)
                self.settle()

    def settle(self) -> None:
        settle(self.pumps, self.clock, 300)

    def replica(self, port: int, chain: str) -> Replica:
        replica = self.servers[port].chains.get(chain)
        assert replica is not None
        return replica


def put(chain: str, key: bytes, value: bytes) -> Message:
    return Message(
        opcode=wire.OP_PUT, c_type=wire.CT_ENTRY, entry={"key": key, "data": value}, chain=chain
    )


def get(chain: str, key: bytes) -> Message:
    return Message(opcode=wire.OP_GET, c_type=wire.CT_KEY, keys=[key], chain=chain)


class HostingTests(SynchronousTestCase):
    def check_chains_apart(self, key: bytes | None) -> None:
        world = World(["a", "b"], 3, key)
        for chain in ("a", "b"):
            roles = [world.replica(p, chain).role for p in sorted(world.servers)]
            self.assertEqual(roles, ["head", "middle", "tail"], chain)
        head = world.replica(9000, "a")
        d = head.write(True, b"x", b"in-a", "", 0)
        world.settle()
        self.assertEqual(results([d])[0].op_n, 1)
        for port in world.servers:
            self.assertEqual(world.replica(port, "a").committed_tree.get(b"x"), b"in-a")
            self.assertIsNone(world.replica(port, "b").committed_tree.get(b"x"))

    def test_two_chains_over_three_servers_stay_apart(self) -> None:
        """Each chain forms over the same three ports; a write to one reaches only its members."""
        self.check_chains_apart(None)

    def test_two_chains_with_a_cluster_key(self) -> None:
        """Authenticated links carry their chain: each handshake proves a peer for one chain."""
        self.check_chains_apart(KEY)
        world = World(["a", "b"], 2, KEY)
        # the joiner dials the tail: its handshakes were proved there, one per chain
        acceptor = world.servers[9000].factory.acceptor
        proofs = {acceptor.proof(c) for c in list(acceptor.links)}
        self.assertEqual(
            {(p.identity, p.chain) for p in proofs if p is not None},
            {("join:10.0.0.1:9001", "a"), ("join:10.0.0.1:9001", "b")},
        )

    def test_requests_go_to_the_chain_they_name(self) -> None:
        """A PUT to one server's chain is read back from that chain's tail, not the other's."""
        world = World(["a", "b"], 2)
        reply = world.servers[9000].request(put("b", b"k", b"v"))
        self.assertEqual(reply.opcode, wire.OP_PUT + 1, reply.error)
        self.assertEqual(list(world.servers[9001].request(get("b", b"k")).values), [b"v"])
        miss = world.servers[9001].request(get("a", b"k"))
        self.assertEqual((miss.opcode, list(miss.values)), (wire.OP_GET + 1, []))

    def test_a_chain_not_served_here(self) -> None:
        """A chain this server does not host: a retryable ERROR naming the map version."""
        world = World(["a"], 1)
        reply = world.servers[9000].request(get("zz", b"k"))
        self.assertEqual(reply.opcode, wire.OP_ERROR)
        self.assertTrue(reply.retry)
        self.assertEqual(reply.map_version, 1)
        self.assertIn("not served here", reply.error)
        lone = world.servers[9000].request(get("", b"k"))
        self.assertEqual(lone.opcode, wire.OP_ERROR)
        self.assertIn("name the request's chain", lone.error)
        self.assertFalse(lone.retry)

    def test_a_lone_node_refuses_a_cluster_request(self) -> None:
        """A lone node's port answers requests naming a chain with a clear, final error."""
        clock = MemoryReactorClock()
        replica = Replica(clock, Store(clock, InlineRunner()), "10.0.0.1:1", None)
        factory = NodeFactory(clock, replica)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(wire.frame(get("c0", b"k")))
        reply = Message()
        reply.ParseFromString(transport.value()[wire.HEADER.size :])
        self.assertEqual(reply.opcode, wire.OP_ERROR)
        self.assertFalse(reply.retry)
        self.assertIn("lone chain", reply.error)

    def test_keys_outside_the_chains_shard(self) -> None:
        """Routed by an older map, a key or scan outside the chain's range is refused
        (retryable, with the map version) and nothing is written; keys inside pass."""
        world = World(["a", "b"], 1)
        server = world.servers[9000]
        server.chains.ranges = {"a": (b"", b"m"), "b": (b"m", None)}
        wrong = server.request(put("a", b"x", b"v"))
        self.assertEqual((wrong.opcode, wrong.retry, wrong.map_version), (wire.OP_ERROR, True, 1))
        self.assertIn("outside chain 'a'", wrong.error)
        self.assertIsNone(world.replica(9000, "a").committed_tree.get(b"x"))
        self.assertEqual(server.request(put("b", b"x", b"v")).opcode, wire.OP_PUT + 1)
        self.assertEqual(server.request(get("b", b"a")).opcode, wire.OP_ERROR)
        self.assertEqual(list(server.request(get("b", b"x")).values), [b"v"])
        scan = Message(opcode=wire.OP_RANGE, c_type=wire.CT_RANGE, chain="a")
        scan.range.start = b"a"
        self.assertEqual(server.request(scan).opcode, wire.OP_ERROR)  # no stop: beyond "m"
        scan.range.stop = b"m"
        self.assertEqual(server.request(scan).opcode, wire.OP_RANGE + 1)
        incr = Message(opcode=wire.OP_INCR, c_type=wire.CT_KEY, keys=[b"n"], delta=2, chain="b")
        self.assertEqual(server.request(incr).number, 2)  # INCR names its key in keys
        incr.keys[0] = b"a"
        self.assertEqual(server.request(incr).opcode, wire.OP_ERROR)
        # a group is refused whole when any of its keys lies elsewhere, RENAME's new name too
        group = Message(opcode=wire.OP_MULTI, c_type=wire.CT_NONE, chain="b")
        group.ops.append(put("", b"x1", b"v"))
        group.ops.append(put("", b"a1", b"v"))
        self.assertIn("outside chain 'b'", server.request(group).error)
        rename = Message(opcode=wire.OP_RENAME, c_type=wire.CT_KEYS, keys=[b"x", b"a"])
        group = Message(opcode=wire.OP_MULTI, c_type=wire.CT_NONE, chain="b", ops=[rename])
        self.assertIn("outside chain 'b'", server.request(group).error)
        self.assertIsNone(world.replica(9000, "b").committed_tree.get(b"x1"))
        inside = Message(opcode=wire.OP_MULTI, c_type=wire.CT_NONE, chain="b")
        inside.ops.append(put("", b"x1", b"v"))
        self.assertEqual(server.request(inside).opcode, wire.OP_MULTI + 1)
        self.assertEqual(world.replica(9000, "b").committed_tree.get(b"x1"), b"v")
        size = Message(opcode=wire.OP_SIZE, c_type=wire.CT_NONE, chain="b")
        self.assertEqual(server.request(size).result, 3)
        # pipelined writes: the misplaced one refused in its place, the others applied
        replies = server.pipeline(
            [put("a", b"c", b"1"), put("a", b"y", b"2"), put("a", b"d", b"3")]
        )
        self.assertEqual(
            [r.opcode for r in replies], [wire.OP_PUT + 1, wire.OP_ERROR, wire.OP_PUT + 1]
        )
        self.assertEqual(
            world.replica(9000, "a").committed_tree.items(), [(b"c", b"1"), (b"d", b"3")]
        )

    def test_backups_of_two_chains_on_one_connection(self) -> None:
        """A connection reading backups of two chains keeps a cursor for each: the
        chunks of one never answer for the other."""
        world = World(["a", "b"], 1)
        server = world.servers[9000]
        server.request(put("b", b"x", b"in-b"))

        def backup(chain: str, index: int) -> Message:
            msg = wire.req_backup(index)
            msg.chain = chain
            return msg

        wrong = server.pipeline([backup("a", 0), backup("b", 1)])
        self.assertEqual(wrong[0].opcode, wire.OP_BACKUP + 1)
        self.assertIn("chunk 1 asked for, chunk 0 is due", wrong[1].error)
        both = server.pipeline([backup("a", 0), backup("b", 0)])
        self.assertEqual([r.opcode for r in both], [wire.OP_BACKUP + 1] * 2)
        self.assertEqual([[e.key for e in r.snapshot.entries] for r in both], [[], [b"x"]])

    def test_gets_of_two_chains_pipelined_on_one_connection(self) -> None:
        """GETs alternating between two chains on one connection are answered in order
        as one run (each chain's stretch looked up in the same turn), and a GET outside
        its chain's shard is refused in its place."""
        world = World(["a", "b"], 1)
        server = world.servers[9000]
        server.chains.ranges = {"a": (b"", b"m"), "b": (b"m", None)}
        server.request(put("a", b"c", b"in-a"))
        server.request(put("b", b"x", b"in-b"))
        router = server.factory.dispatcher
        runs: list[list[str]] = []
        real = router.get_many

        def get_many(msgs: list[Message], *args: Any) -> Any:
            runs.append([m.chain for m in msgs])
            return real(msgs, *args)

        self.patch(router, "get_many", get_many)
        msgs = [get("a", b"c"), get("b", b"x"), get("a", b"nope"), get("b", b"x"),
                get("a", b"c"), get("b", b"a")]
        replies = server.pipeline(msgs)
        self.assertEqual([list(r.values) for r in replies[:5]],
                         [[b"in-a"], [b"in-b"], [], [b"in-b"], [b"in-a"]])
        self.assertEqual(replies[5].opcode, wire.OP_ERROR)
        self.assertIn("outside chain 'b'", replies[5].error)
        # one run for the lot, not one per chain's stretch, each waiting for the last
        self.assertEqual(runs, [["a", "b", "a", "b", "a", "b"]])

    def test_pipelined_gets_of_a_split_chain(self) -> None:
        """Once a chain's split marker is committed its tail answers pipelined GETs of the
        keys it kept from one lookup and refuses, in place, a key it gave away, whatever
        map the router acts on."""
        world = World(["a"], 1)
        server = world.servers[9000]
        server.request(put("a", b"c", b"kept"))
        server.request(put("a", b"x", b"given away"))
        world.replica(9000, "a").keep_within(b"", b"m", split=True)
        world.settle()
        server.chains.ranges = {"a": (b"", None)}  # a server that has not read the cut
        replies = server.pipeline([get("a", b"c"), get("a", b"x"), get("a", b"c")])
        self.assertEqual([list(r.values) for r in (replies[0], replies[2])],
                         [[b"kept"], [b"kept"]])
        self.assertEqual(replies[1].opcode, wire.OP_ERROR)
        self.assertTrue(replies[1].retry)
        alone = server.pipeline([get("a", b"c"), get("a", b"c")])
        self.assertEqual([list(r.values) for r in alone], [[b"kept"], [b"kept"]])
