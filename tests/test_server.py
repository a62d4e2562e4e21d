"""The node's protocol and dispatch, in memory: StringTransport, no threads, no sleeps."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.replica import Replica
from kvtwist.server import Limits, NodeFactory, NodeProtocol
from kvtwist.server.factory import ClientConnections
from kvtwist.server.requests import LOOK_KEYS
from kvtwist.store import InlineRunner, Store
from kvtwist.wire import Message


class Harness:
    """A node with inline tree work and one in-memory connection per ``connect``."""

    def __init__(
        self, limits: Limits | None = None, store: type[Store] = Store
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.store = store(self.reactor, InlineRunner())
        clients = ClientConnections()  # as the node's builder wires them
        self.replica = Replica(self.reactor, self.store, on_congestion=clients.congestion)
        self.factory = NodeFactory(self.reactor, self.replica, limits, clients=clients)

    def connect(self) -> tuple[NodeProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def settle(self) -> None:
        for _ in range(10):
            self.reactor.advance(0)


class Conn:
    def __init__(self, h: Harness) -> None:
        self.h = h
        self.proto, self.transport = h.connect()
        self.decoder = wire.FrameDecoder(1 << 30)

    def send_raw(self, data: bytes) -> list[Message]:
        self.proto.dataReceived(data)
        self.h.settle()
        return self.replies()

    def send(self, *msgs: Message) -> list[Message]:
        return self.send_raw(b"".join(wire.frame(m) for m in msgs))

    def one(self, msg: Message) -> Message:
        [reply] = self.send(msg)
        return reply

    def replies(self) -> list[Message]:
        data = self.transport.value()
        self.transport.clear()
        return [wire.decode(p) for p in self.decoder.feed(data)]


class RequestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.c = Conn(self.h)

    def test_put_get(self) -> None:
        """PUT answers RESULT with an op number; GET then returns the value."""
        r = self.c.one(wire.req_put(b"k", b"v"))
        self.assertEqual((r.opcode, r.c_type, r.result, r.op_n), (51, wire.CT_RESULT, 1, 1))
        r = self.c.one(wire.req_get(b"k"))
        self.assertEqual((r.opcode, r.c_type, list(r.values)), (41, wire.CT_VALUE, [b"v"]))

    def test_get_absent(self) -> None:
        """GET of a missing key is a VALUE reply with no values."""
        r = self.c.one(wire.req_get(b"nope"))
        self.assertEqual((r.opcode, len(r.values)), (41, 0))

    def test_get_of_several_keys(self) -> None:
        """A GET of KEYS answers ENTRIES: the keys that are there, in the asked order,
        with their values (a missing key is left out, a repeated one repeated)."""
        for k in (b"a", b"c"):
            self.c.one(wire.req_put(k, k.upper()))
        r = self.c.one(wire.req_get_many([b"c", b"b", b"a", b"c"]))
        self.assertEqual((r.opcode, r.c_type), (41, wire.CT_ENTRIES))
        pairs = list(zip(r.keys, r.values, strict=True))
        self.assertEqual(pairs, [(b"c", b"C"), (b"a", b"A"), (b"c", b"C")])
        r = self.c.one(wire.req_get_many([b"x", b"y"]))
        self.assertEqual((r.opcode, list(r.keys)), (41, []))

    def test_a_get_of_many_keys_is_read_off_the_reactor(self) -> None:
        """Up to LOOK_KEYS keys are looked up on the reactor; more go to a reader
        thread, so one request cannot hold every other connection up."""
        looks: list[object] = []
        look = self.h.store.look

        def spy(f: Any) -> Any:
            looks.append(f)
            return look(f)

        self.patch(self.h.store, "look", spy)
        few = [b"k%d" % i for i in range(LOOK_KEYS)]
        self.assertEqual(self.c.one(wire.req_get_many(few)).opcode, 41)
        self.assertEqual(len(looks), 1)
        self.assertEqual(self.c.one(wire.req_get_many([*few, b"one more"])).opcode, 41)
        self.assertEqual(len(looks), 1)

    def test_get_of_several_keys_refuses_bad_ones(self) -> None:
        """An empty key, no key at all, or a reply past --max-reply: an ERROR for the lot."""
        self.c.one(wire.req_put(b"a", b"v" * 600))
        r = self.c.one(wire.req_get_many([b"a", b""]))
        self.assertEqual((r.opcode, r.error), (wire.OP_ERROR, "the key is empty"))
        r = self.c.one(wire.req_get_many([]))
        self.assertEqual(r.opcode, wire.OP_ERROR)
        self.assertIn("at least one key", r.error)
        small = Conn(Harness(Limits(max_reply=1000)))
        small.one(wire.req_put(b"a", b"v" * 600))
        r = small.one(wire.req_get_many([b"a", b"a"]))
        self.assertEqual(r.opcode, wire.OP_ERROR)
        self.assertIn("--max-reply", r.error)
        self.assertEqual(len(small.one(wire.req_get_many([b"a"])).values[0]), 600)

    def test_op_numbers_increase(self) -> None:
        """Every write gets the next op number, deletes of missing keys included."""
        ops = [
            self.c.one(m).op_n
            for m in (wire.req_put(b"a", b"1"), wire.req_del(b"zz"), wire.req_put(b"a", b"2"))
        ]
        self.assertEqual(ops, [1, 2, 3])

    def test_delete_reports_found(self) -> None:
        """DEL says whether the key was there."""
        self.c.one(wire.req_put(b"a", b"1"))
        self.assertTrue(self.c.one(wire.req_del(b"a")).found)
        self.assertFalse(self.c.one(wire.req_del(b"a")).found)

    def test_size_height_keys_values(self) -> None:
        """SIZE, HEIGHT, GETKEYS and GETVALUES reflect the tree in key order."""
        for k in [b"c", b"a", b"b"]:
            self.c.one(wire.req_put(k, k.upper()))
        self.assertEqual(self.c.one(wire.req_size()).result, 3)
        self.assertEqual(self.c.one(wire.req_height()).result, 2)
        r = self.c.one(wire.req_getkeys())
        self.assertEqual((r.opcode, r.c_type, list(r.keys)), (61, wire.CT_KEYS, [b"a", b"b", b"c"]))
        r = self.c.one(wire.req_getvalues())
        self.assertEqual((r.c_type, list(r.values)), (wire.CT_VALUES, [b"A", b"B", b"C"]))

    def test_verify(self) -> None:
        """VERIFY says 1 for an executed op number and 0 for a future one."""
        op = self.c.one(wire.req_put(b"a", b"1")).op_n
        self.assertEqual(self.c.one(wire.req_verify(op)).result, 1)
        self.assertEqual(self.c.one(wire.req_verify(op + 1)).result, 0)

    def test_range(self) -> None:
        """RANGE returns keys in [start, stop) in order, at most limit."""
        for k in (b"a", b"b", b"c", b"d", b"e", b"f"):
            self.c.one(wire.req_put(k, k))
        r = self.c.one(wire.req_range(b"b", b"e"))
        self.assertEqual(list(r.keys), [b"b", b"c", b"d"])
        self.assertEqual(list(r.values), [b"b", b"c", b"d"])
        self.assertEqual(list(self.c.one(wire.req_range(b"c", None, 2)).keys), [b"c", b"d"])
        self.assertEqual(list(self.c.one(wire.req_range(None, b"b")).keys), [b"a"])

    def test_stats(self) -> None:
        """STATS counts operations per opcode and reports keys and connections."""
        self.c.one(wire.req_put(b"a", b"1"))
        self.c.one(wire.req_get(b"a"))
        self.c.one(wire.req_get(b"a"))
        s = self.c.one(wire.req_stats()).stats
        counts = {o.op: o.count for o in s.ops}
        self.assertEqual((counts["PUT"], counts["GET"]), (1, 2))
        self.assertEqual((s.keys, s.connections, s.role), (1, 1, "standalone"))

    def test_pipelined_order(self) -> None:
        """Pipelined requests are answered in order, each seeing the writes before it."""
        replies = self.c.send(
            wire.req_put(b"a", b"1"),
            wire.req_get(b"a"),
            wire.req_del(b"a"),
            wire.req_get(b"a"),
            wire.req_put(b"a", b"2"),
            wire.req_get(b"a"),
        )
        self.assertEqual([r.opcode for r in replies], [51, 41, 31, 41, 51, 41])
        self.assertEqual([list(r.values) for r in replies[1::2]], [[b"1"], [], [b"2"]])


def c_frame(*fields: tuple[int, int | bytes]) -> bytes:
    """A frame encoded field by field, as the original C client builds it."""
    out = b""
    for number, value in fields:
        if isinstance(value, int):
            out += bytes([number << 3, value])
        else:
            out += bytes([number << 3 | 2, len(value)]) + value
    return len(out).to_bytes(4, "big") + out


class ByteKeyTests(SynchronousTestCase):
    """Any non-empty byte string is a key, as in the original C server."""

    def setUp(self) -> None:
        self.h = Harness(Limits(max_key=16))
        self.c = Conn(self.h)

    def test_non_utf8_key_in_raw_frames(self) -> None:
        """PUT, GET, GETKEYS and DEL of ``caf\\xe9`` in the C client's own bytes all work."""
        key = b"caf\xe9"
        entry = bytes([0x0A, len(key)]) + key + bytes([0x12, 2]) + b"v1"
        [put] = self.c.send_raw(c_frame((1, wire.OP_PUT), (2, wire.CT_ENTRY), (4, entry)))
        self.assertEqual((put.opcode, put.error), (wire.OP_PUT + 1, ""))
        [got] = self.c.send_raw(c_frame((1, wire.OP_GET), (2, wire.CT_KEY), (5, key)))
        self.assertEqual(list(got.values), [b"v1"])
        [keys] = self.c.send_raw(c_frame((1, wire.OP_GETKEYS), (2, wire.CT_NONE)))
        self.assertEqual(list(keys.keys), [key])
        [gone] = self.c.send_raw(c_frame((1, wire.OP_DEL), (2, wire.CT_KEY), (5, key)))
        self.assertEqual((gone.opcode, gone.found), (wire.OP_DEL + 1, True))
        self.assertEqual(list(self.c.one(wire.req_get(key)).values), [])

    def test_keys_in_bytewise_order(self) -> None:
        """GETKEYS and RANGE order mixed keys bytewise: NUL first, 0xff last."""
        keys = [b"b", b"\xff", b"a\x00", b"caf\xe9", "café".encode(), b"\x00", b"a", "ü".encode()]
        self.c.send(*[wire.req_put(k, k) for k in keys])
        want = sorted(keys)
        self.assertEqual(want[:3], [b"\x00", b"a", b"a\x00"])
        self.assertEqual(list(self.c.one(wire.req_getkeys()).keys), want)
        self.assertEqual(list(self.c.one(wire.req_getvalues()).values), want)
        scan = self.c.one(wire.req_range(b"c", b"\xff"))
        self.assertEqual(list(scan.keys), [k for k in want if b"c" <= k < b"\xff"])

    def test_key_limit_counts_bytes(self) -> None:
        """The key limit is in bytes: 8 two-byte characters fit 16, a 17th byte does not."""
        self.assertEqual(self.c.one(wire.req_put("é".encode() * 8, b"x")).error, "")
        r = self.c.one(wire.req_put("é".encode() * 8 + b"\xe9", b"x"))
        self.assertIn("key of 17 bytes exceeds the limit of 16", r.error)


class BadInputTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(Limits(max_frame=1000, max_key=16, max_value=100))
        self.c = Conn(self.h)

    def assertError(self, msg: Message, reason: str) -> None:
        r = self.c.one(msg)
        self.assertEqual((r.opcode, r.c_type), (wire.OP_ERROR, wire.CT_NONE))
        self.assertIn(reason, r.error)
        # the connection stays usable
        self.assertEqual(self.c.one(wire.req_size()).opcode, wire.OP_SIZE + 1)

    def test_unknown_opcode(self) -> None:
        """An unknown opcode gets an ERROR naming it."""
        self.assertError(Message(opcode=77, c_type=wire.CT_NONE), "unknown opcode 77")

    def test_bad_opcode(self) -> None:
        """BAD (and an empty frame) gets an ERROR."""
        self.assertError(Message(), "BAD")
        r = self.c.send_raw(b"\x00\x00\x00\x00")
        self.assertEqual(r[0].opcode, wire.OP_ERROR)

    def test_reply_opcode_as_request(self) -> None:
        """A reply opcode sent as a request is refused."""
        self.assertError(Message(opcode=41, c_type=wire.CT_VALUE), "is a reply")
        self.assertError(Message(opcode=wire.OP_ERROR, c_type=wire.CT_NONE), "is a reply")

    def test_wrong_ctype(self) -> None:
        """A request with the wrong c_type is refused with the expected one."""
        self.assertError(Message(opcode=wire.OP_GET, c_type=wire.CT_VALUE, keys=[b"a"]), "CT_KEY")
        self.assertError(Message(opcode=wire.OP_SIZE, c_type=wire.CT_KEY), "CT_NONE")

    def test_missing_parts(self) -> None:
        """PUT without entry, GET/DEL without key: ERROR."""
        self.assertError(Message(opcode=wire.OP_PUT, c_type=wire.CT_ENTRY), "entry")
        self.assertError(Message(opcode=wire.OP_GET, c_type=wire.CT_KEY), "needs a key")
        self.assertError(Message(opcode=wire.OP_DEL, c_type=wire.CT_KEY), "needs a key")

    def test_key_limits(self) -> None:
        """Empty keys and keys over the limit are refused; nothing is stored."""
        self.assertError(wire.req_put(b"", b"x"), "empty")
        self.assertError(wire.req_put(b"k" * 17, b"x"), "exceeds the limit of 16")
        self.assertError(wire.req_put(b"k", b"x" * 101), "exceeds the limit of 100")
        self.assertEqual(self.c.one(wire.req_size()).result, 0)

    def test_verify_non_positive(self) -> None:
        """VERIFY of op 0 or below is an ERROR."""
        self.assertError(wire.req_verify(0), "op number > 0")
        self.assertError(wire.req_verify(-5), "op number > 0")

    def test_undecodable(self) -> None:
        """A well-framed payload that is no Message gets an ERROR; the stream goes on."""
        junk = b"\xff\xff\xff"
        r = self.c.send_raw(len(junk).to_bytes(4, "big") + junk + wire.frame(wire.req_size()))
        self.assertEqual([m.opcode for m in r], [wire.OP_ERROR, wire.OP_SIZE + 1])
        self.assertIn("undecodable", r[0].error)

    def test_oversized_frame(self) -> None:
        """A header above the maximum frame gets an ERROR, then the connection closes."""
        r = self.c.send_raw(b"\xff\xff\xff\xff")
        self.assertEqual(r[0].opcode, wire.OP_ERROR)
        self.assertIn("exceeds the maximum", r[0].error)
        self.assertTrue(self.c.transport.disconnecting)

    def test_chain_opcode_from_client(self) -> None:
        """Chain-internal opcodes from a client are refused, the store untouched."""
        msg = Message(opcode=wire.OP_CHAIN_UPDATE, c_type=wire.CT_CHAIN)
        msg.updates.add(seq=1, is_put=True, key=b"evil", data=b"x")
        r = self.c.send(msg)
        self.assertEqual(r[0].opcode, wire.OP_ERROR)
        self.assertEqual(self.c.one(wire.req_size()).result, 0)

    def test_connection_limit(self) -> None:
        """A connection over the limit gets an ERROR and is closed."""
        h = Harness(Limits(max_connections=2))
        Conn(h)
        Conn(h)
        third = Conn(h)
        r = third.replies()
        self.assertEqual(r[0].opcode, wire.OP_ERROR)
        self.assertIn("too many connections", r[0].error)
        self.assertTrue(third.transport.disconnecting)


class StalledRunner:
    """Tree work that finishes only when the test says so."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Any, defer.Deferred[Any]]] = []

    def write(self, f: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((f, d))
        return d

    read = write

    def finish(self) -> None:
        waiting, self.waiting = self.waiting, []
        for f, d in waiting:
            d.callback(f())


class FlowControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(Limits(max_pending=8))
        self.runner = StalledRunner()
        self.h.store.runner = self.runner

    def test_pending_requests_pause_reading(self) -> None:
        """A connection with too many unanswered requests stops reading until they drain."""
        c = Conn(self.h)
        c.send(*[wire.req_put(f"k{i}".encode(), b"v") for i in range(10)])
        self.assertEqual(c.transport.producerState, "paused")
        self.assertEqual(len(c.proto._slots), 8, "frames beyond the bound were processed")
        replies = []
        while self.runner.waiting:
            self.runner.finish()
            self.h.settle()
            replies += c.replies()
        self.assertEqual([r.op_n for r in replies], list(range(1, 11)))
        self.assertEqual(c.transport.producerState, "producing")

    def test_inflight_window(self) -> None:
        """No more than max_inflight requests of a connection run at once (SIZE: a thread read)."""
        h = Harness(Limits(max_pending=100, max_inflight=4))
        runner = StalledRunner()
        h.store.runner = runner
        c = Conn(h)
        c.send(*[wire.req_size() for _ in range(10)])
        self.assertEqual(c.proto._reads, 4)
        served = 0
        while runner.waiting:
            runner.finish()
            h.settle()
            served += len(c.replies())
        self.assertEqual(served, 10)

    def test_no_new_work_while_client_not_reading(self) -> None:
        """While the transport's buffer is full, held requests are not started."""
        c = Conn(self.h)
        c.proto.pauseProducing()
        c.proto.messageReceived(wire.req_get(b"a"))
        self.assertEqual((c.proto._reads, len(c.proto._held)), (0, 1))
        c.proto.resumeProducing()
        self.assertEqual((c.proto._reads, len(c.proto._held)), (1, 0))

    def test_unread_replies_pause_reading(self) -> None:
        """When the transport's buffer fills (a client not reading) the node stops reading."""
        c = Conn(self.h)
        c.proto.pauseProducing()  # what a full TCP send buffer makes the transport do
        self.assertEqual(c.transport.producerState, "paused")
        c.proto.resumeProducing()
        self.assertEqual(c.transport.producerState, "producing")

    def test_congested_chain_pauses_all_clients(self) -> None:
        """A congested successor link pauses every client connection, new ones included."""
        first = Conn(self.h)
        replica = self.h.replica
        replica.writes.intake.link_full = True  # as a full successor link reports it
        replica.writes.update_congestion()
        second = Conn(self.h)
        self.assertEqual(first.transport.producerState, "paused")
        self.assertEqual(second.transport.producerState, "paused")
        replica.writes.intake.link_full = False
        replica.writes.update_congestion()
        self.assertEqual(first.transport.producerState, "producing")
        self.assertEqual(second.transport.producerState, "producing")

    def test_idle_timeout(self) -> None:
        """With an idle timeout set, a silent connection gets an ERROR and is closed."""
        h = Harness(Limits(idle_timeout=30))
        c = Conn(h)
        h.reactor.advance(20)
        c.send(wire.req_size())
        h.reactor.advance(20)
        self.assertFalse(c.transport.disconnecting)
        h.reactor.advance(15)
        self.assertTrue(c.transport.disconnecting)
        self.assertIn("idle", c.replies()[-1].error)


class CountingRunner:
    """Inline tree work that counts the jobs handed to it: one per thread hop."""

    def __init__(self) -> None:
        self.reads = 0
        self.writes = 0

    def write(self, f: Any) -> defer.Deferred[Any]:
        self.writes += 1
        return defer.maybeDeferred(f)

    def read(self, f: Any) -> defer.Deferred[Any]:
        self.reads += 1
        return defer.maybeDeferred(f)


class BatchTests(SynchronousTestCase):
    """Requests that arrive together share one job, and each keeps its own answer."""

    def setUp(self) -> None:
        self.h = Harness()
        self.runner = CountingRunner()
        self.h.store.runner = self.runner
        self.c = Conn(self.h)

    def test_pipelined_gets_take_one_batch_on_the_reactor(self) -> None:
        """Twenty GETs in one read of the socket are answered by one point-read batch, in
        order, with no hop to a reader thread."""
        self.c.send(*[wire.req_put(b"k%d" % i, b"v%d" % i) for i in range(20)])
        self.runner.reads = 0
        store = self.h.store
        looks: list[Any] = []
        look = store.look
        self.patch(store, "look", lambda f: (looks.append(f), look(f))[1])
        replies = self.c.send(*[wire.req_get(b"k%d" % i) for i in range(20)])
        self.assertEqual([list(r.values) for r in replies], [[b"v%d" % i] for i in range(20)])
        self.assertEqual((len(looks), self.runner.reads), (1, 0))

    def test_listings_still_go_to_a_reader_thread(self) -> None:
        """A read whose cost grows with the store (SIZE, GETKEYS) hops to a reader thread."""
        self.runner.reads = 0
        self.c.send(wire.req_size(), wire.req_getkeys())
        self.assertEqual(self.runner.reads, 2)

    def test_pipelined_puts_take_one_hop(self) -> None:
        """Twenty PUTs in one read are logged and applied by one writer job, numbered in order."""
        replies = self.c.send(*[wire.req_put(b"k%d" % i, b"v") for i in range(20)])
        self.assertEqual([r.op_n for r in replies], list(range(1, 21)))
        self.assertEqual(self.runner.writes, 1)

    def test_bad_get_in_a_batch(self) -> None:
        """A bad GET among good ones gets its ERROR in its place; its neighbours their values."""
        self.c.one(wire.req_put(b"a", b"1"))
        bad = wire.Message(opcode=wire.OP_GET, c_type=wire.CT_KEY)  # no key
        replies = self.c.send(wire.req_get(b"a"), bad, wire.req_get(b"missing"), wire.req_get(b"a"))
        self.assertEqual([r.opcode for r in replies], [41, wire.OP_ERROR, 41, 41])
        self.assertIn("needs a key", replies[1].error)
        self.assertEqual([list(r.values) for r in replies], [[b"1"], [], [], [b"1"]])

    def test_bad_write_in_a_batch(self) -> None:
        """A bad PUT among good writes is refused alone and takes no op number."""
        bad = wire.Message(opcode=wire.OP_PUT, c_type=wire.CT_ENTRY)  # no entry
        replies = self.c.send(wire.req_put(b"a", b"1"), bad, wire.req_del(b"a"), wire.req_del(b"a"))
        self.assertEqual([r.opcode for r in replies], [51, wire.OP_ERROR, 31, 31])
        self.assertEqual([r.op_n for r in (replies[0], replies[2], replies[3])], [1, 2, 3])
        self.assertEqual([replies[2].found, replies[3].found], [True, False])
        self.assertEqual(self.c.one(wire.req_size()).result, 0)

    def test_retry_within_a_batch(self) -> None:
        """The same client write twice in one batch is applied once; both get its op number."""
        put = wire.req_put(b"a", b"1", client_id="c1", request_id=7)
        replies = self.c.send(put, wire.req_put(b"b", b"2"), put)
        self.assertEqual([r.op_n for r in replies], [1, 2, 1])
        self.assertEqual(self.c.one(wire.req_stats()).stats.last_op, 2)

    def test_stats_count_batched_requests(self) -> None:
        """Requests answered as a batch are each counted in STATS, errors included."""
        bad = wire.Message(opcode=wire.OP_GET, c_type=wire.CT_KEY)
        self.c.send(wire.req_put(b"a", b"1"), wire.req_put(b"b", b"1"))
        self.c.send(wire.req_get(b"a"), bad, wire.req_get(b"b"))
        ops = {o.op: (o.count, o.errors) for o in self.c.one(wire.req_stats()).stats.ops}
        self.assertEqual((ops["PUT"], ops["GET"]), ((2, 0), (3, 1)))

    def test_standalone_keeps_no_recent_commits(self) -> None:
        """A standalone node has no successor to catch up: committed writes are not kept."""
        self.c.send(*[wire.req_put(b"k%d" % i, b"v" * 100) for i in range(20)])
        state = self.h.replica.state
        self.assertEqual((len(state.recent), state.recent_bytes, state.pending_bytes), (0, 0, 0))

    def test_local_flag_on_writes_and_reads(self) -> None:
        """``local`` on a write means nothing; on a GET it reads this node's own copy, alone."""
        put = wire.req_put(b"a", b"1")
        put.local = True
        get = wire.req_get(b"a")
        get.local = True
        replies = self.c.send(put, wire.req_put(b"b", b"2"), get, wire.req_get(b"b"), get)
        self.assertEqual([r.opcode for r in replies], [51, 51, 41, 41, 41])
        self.assertEqual([list(r.values) for r in replies[2:]], [[b"1"], [b"2"], [b"1"]])

    def test_writes_applied_before_a_failure_stand(self) -> None:
        """In a batch the store applied only in part, the applied writes are acknowledged."""
        from kvtwist.store import Applied, OutOfOrder
        from kvtwist.tree import BTree

        tree = BTree()
        tree.put(b"a", b"1")

        class PartlyApplied(Store):
            def apply_many(self, writes: Any, now: bool = False) -> defer.Deferred[list[Any]]:
                return defer.succeed(
                    [Applied(1, True, tree.copy()), OutOfOrder("write 2 after 0")]
                )

        self.h = Harness(store=PartlyApplied)
        self.c = Conn(self.h)
        replies = self.c.send(wire.req_put(b"a", b"1"), wire.req_put(b"b", b"2"))
        self.assertEqual([r.opcode for r in replies], [51, wire.OP_ERROR])
        self.assertEqual(replies[0].op_n, 1)
        self.assertTrue(replies[1].retry)


class LifoRunner(StalledRunner):
    """Stalled tree work finished newest first, so earlier replies keep later ones waiting."""

    def finish_last(self) -> None:
        f, d = self.waiting.pop()
        d.callback(f())


def _size(out: Any) -> int:
    """Bytes in a job's result: a frame, or lists of them."""
    return len(out) if isinstance(out, bytes) else sum(map(_size, out))


def held_reply_bytes(runner: StalledRunner, proto: NodeProtocol) -> int:
    """What the connection's replies take: those being built plus those built and not yet sent."""
    building = sum(_size(f()) for f, _ in runner.waiting)  # the jobs only read
    return building + sum(len(s[0]) for s in proto._slots if s[0] is not None)


def drain(runner: Any, h: Any, c: Any) -> tuple[int, list[Message]]:
    """Finish the runner's jobs one by one; the most reply bytes held meanwhile, the replies."""
    replies: list[Message] = []
    peak = 0
    while runner.waiting:
        peak = max(peak, held_reply_bytes(runner, c.proto))
        runner.finish_last()
        h.settle()
        replies += c.replies()
    return peak, replies


class ReplyMemoryTests(SynchronousTestCase):
    """The bytes one connection holds in replies are bounded, listings included."""

    def test_listing_over_the_limit_stops_early(self) -> None:
        """A GETVALUES over --max-reply is refused having gathered about the limit, not all."""
        import tracemalloc

        from kvtwist.chain.outcomes import ReadView
        from kvtwist.server import BadRequest, requests
        from kvtwist.tree import BTree

        keys = [b"k%07d" % i for i in range(100_000)]
        tree = BTree.from_sorted(keys, [b"v" * 10] * len(keys))
        h = Harness(Limits(max_reply=10_000))
        reader = requests.reader(wire.req_getvalues(), h.factory.limits)
        tracemalloc.start()
        try:
            with self.assertRaises(BadRequest) as e:
                reader(ReadView(tree, 0))
            built = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertIn("--max-reply", str(e.exception))
        # the whole list would be 800 kB of references alone
        self.assertLess(built, 64_000)

    def test_pipelined_listings_stay_within_the_budget(self) -> None:
        """Twenty pipelined GETVALUES never hold more than the connection's reply budget."""
        h = Harness(Limits(max_reply=200_000, reply_budget=400_000))
        for i in range(100):
            Conn(h).one(wire.req_put(b"k%03d" % i, b"v" * 1000))
        runner = LifoRunner()
        h.store.runner = runner
        c = Conn(h)
        c.send(*[wire.req_getvalues() for _ in range(20)])
        peak, replies = drain(runner, h, c)
        self.assertLessEqual(peak, 400_000)
        self.assertEqual([len(r.values) for r in replies], [100] * 20)

    def test_pipelined_big_gets_stay_within_the_budget(self) -> None:
        """Big GETs pipelined on one connection are answered in order within the budget."""
        h = Harness(Limits(reply_budget=300_000))
        for i in range(10):
            Conn(h).one(wire.req_put(b"k%d" % i, bytes([i]) * 100_000))
        runner = LifoRunner()
        h.store.runner = runner
        # point reads held and finished out of order, as reader threads may
        self.patch(h.store, "look", h.store.read)
        c = Conn(h)
        c.send(*[wire.req_get(b"k%d" % (i % 10)) for i in range(30)])
        peak, replies = drain(runner, h, c)
        self.assertLessEqual(peak, 300_000 + 1_000)  # frame headers
        self.assertEqual([r.values[0][0] for r in replies], [i % 10 for i in range(30)])
