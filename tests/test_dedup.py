"""Exactly-once writes over the client's whole retry window, in memory.

Clients acknowledge answered requests (``ack_below``), so the chain keeps only
what may still be retried; what it can no longer deduplicate it refuses
instead of applying again.  Nodes are the in-memory ones of
tests/test_server.py (one node, messages in and out) and
tests/fakes/chain.py (a chain), with disks from tests/test_chain_disk.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.dedup import OUTCOME_UNKNOWN, DedupTable
from kvtwist.chain.outcomes import Refused
from kvtwist.client.api import DirectClient
from kvtwist.client.protocol import ClientProtocol, ConnectionFailed
from kvtwist.storage import ClientRow, DataDir
from kvtwist.storage.fakedisk import FakeDisk
from kvtwist.wire import Message
from tests.fakes.chain import Net
from tests.test_chain_client import ONE_MEMBER, client
from tests.test_chain_disk import durable_chain
from tests.test_server import Conn, Harness


def put(
    key: bytes, value: bytes, cid: str = "", rid: int = 0, ack: int = 0, resend: bool = False
) -> Message:
    msg = wire.req_put(key, value, cid, rid)
    msg.ack_below = ack
    msg.resend = resend
    return msg


class NodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.conn = Conn(self.h)

    def assertRefused(self, reply: Message, why: str) -> None:
        self.assertEqual(reply.opcode, wire.OP_ERROR)
        self.assertFalse(reply.retry)
        self.assertTrue(reply.error.startswith(f"{OUTCOME_UNKNOWN}: {why}"), reply.error)

    def test_outstanding_request_outlives_200k_other_writes(self) -> None:
        """A write whose answer was lost is answered once on its retry after 200k other writes."""
        first = self.conn.one(put(b"k", b"mine", "slow", 1, ack=1))
        for start in range(1, 200_001, 1000):
            batch = [put(b"busy", b"x", "busy", i, ack=i) for i in range(start, start + 1000)]
            self.conn.send(*batch)
        self.conn.one(put(b"k", b"later", "busy", 200_001, ack=200_001))
        again = self.conn.one(put(b"k", b"mine", "slow", 1, ack=1, resend=True))
        self.assertEqual((again.opcode, again.op_n), (wire.OP_PUT + 1, first.op_n))
        self.assertEqual(self.h.replica.last_received, 200_002, "the retry was applied again")
        self.assertEqual(self.h.replica.committed_tree.get(b"k"), b"later")
        self.assertLessEqual(len(self.h.replica.state.dedup), 3)

    def test_request_below_the_floor_is_refused(self) -> None:
        """A request below its client's ack_below is refused, never applied, sent first or again."""
        self.assertEqual(self.conn.one(put(b"a", b"5", "c", 5, ack=5)).op_n, 1)
        self.assertRefused(self.conn.one(put(b"a", b"3", "c", 3, ack=3)), "request too old")
        self.assertRefused(self.conn.one(put(b"a", b"4", "c", 4, resend=True)), "request too old")
        self.assertEqual(self.h.replica.last_received, 1)
        self.assertEqual(self.h.replica.committed_tree.get(b"a"), b"5")

    def test_retry_of_an_evicted_client_is_refused(self) -> None:
        """A re-send from an evicted client is refused as of unknown outcome, not applied again."""
        self.h.replica.state.dedup = DedupTable(max_entries=4)
        self.assertEqual(self.conn.one(put(b"x", b"1", "x", 1, ack=1)).op_n, 1)
        for i in range(10):  # other clients push "x", the least recently written, out
            self.conn.one(put(b"y", b"%d" % i, f"y{i}", 1, ack=1))
        self.assertRefused(self.conn.one(put(b"x", b"1", "x", 1, ack=1, resend=True)), "a re-sent")
        self.assertEqual(self.h.replica.last_received, 11, "a forgotten write was applied again")
        # a first attempt is always taken, from a new client or from the evicted one
        self.assertEqual(self.conn.one(put(b"z", b"1", "z", 1, ack=1)).op_n, 12)
        self.assertEqual(self.conn.one(put(b"x", b"2", "x", 2, ack=1)).op_n, 13)
        # ...but the evicted client's older request stays refused
        self.assertRefused(self.conn.one(put(b"x", b"1", "x", 1, ack=1, resend=True)), "request")
        # the original client sends no client id: not deduplicated, always applied
        original = [self.conn.one(put(b"o", b"v")) for _ in range(2)]
        self.assertEqual([r.op_n for r in original], [14, 15])
        self.assertEqual(self.h.replica.last_received, 15)
        self.assertGreater(self.h.replica.state.dedup.evicted, 0)

    def test_ack_below_above_the_request_is_bad_input(self) -> None:
        """ack_below above its own request id is refused as bad input, and nothing is applied."""
        reply = self.conn.one(put(b"a", b"1", "c", 3, ack=4))
        self.assertEqual(reply.opcode, wire.OP_ERROR)
        self.assertIn("ack_below 4 is above request_id 3", reply.error)
        self.assertEqual(self.h.replica.last_received, 0)


class TableTests(SynchronousTestCase):
    def test_eviction_is_of_whole_clients_least_recently_written_first(self) -> None:
        """Over its bound the table drops whole clients, least recently written first; counted."""
        t = DedupTable(max_entries=4)
        for seq, (cid, rid) in enumerate([("a", 1), ("a", 2), ("b", 1), ("a", 3), ("c", 1)], 1):
            t.remember(cid, rid, seq, True)
        self.assertEqual((t.evicted, len(t)), (1, 4))
        self.assertIsNone(t.get("b", 1))
        self.assertIsNotNone(t.get("a", 1))
        copy = DedupTable(max_entries=4)
        copy.load(t.rows())
        self.assertEqual(list(copy.rows()), list(t.rows()))
        self.assertEqual(copy.evicted, 1)


class ChainTests(SynchronousTestCase):
    def test_acknowledged_entries_go_on_every_member_and_stay_gone(self) -> None:
        """Acknowledged entries go on every member, and stay gone after a restart and a transfer."""
        net = Net()
        disk = FakeDisk()
        a, b, c = durable_chain(net, 3, disk)
        for rid in range(1, 11):
            a.replica.write(True, b"k", b"%d" % rid, "acker", rid, rid)
            net.settle()
        for rid in range(1, 4):
            a.replica.write(True, b"o", b"%d" % rid, "old", rid)
        net.settle()
        tables = [list(n.replica.state.dedup.rows()) for n in (a, b, c)]
        self.assertEqual(tables[1:], tables[:1] * 2)
        acker = [row for row in tables[0] if row[0] == "acker"]
        self.assertEqual(acker, [("acker", 10, 0, False), ("acker", 10, 10, True)])
        self.assertEqual(len([row for row in tables[0] if row[0] == "old"]), 3)
        live = [ClientRow(*row) for row in tables[0]]
        self.assertEqual(c.store._clients.client_rows(), live)
        net.kill(c)
        assert c.store.journal is not None
        c.store.journal.close()
        recovered = DataDir(f"/data/{c.port}", disk=disk).open()  # type: ignore[arg-type]
        self.assertEqual(recovered.clients, live)
        d = net.add()  # copies the state from the tail, b
        self.assertEqual(d.replica.role, "tail")
        self.assertEqual(list(d.replica.state.dedup.rows()), tables[0])
        refused = a.replica.write(True, b"k", b"1", "acker", 1, 1, True)
        self.assertIn("too old", self.failureResultOf(refused, Refused).getErrorMessage())


class ClientTests(SynchronousTestCase):
    def test_direct_client_sends_its_lowest_unanswered_request(self) -> None:
        """Each write carries ack_below: the lowest request id of this client still unanswered."""
        proto = ClientProtocol()
        transport = StringTransport()
        proto.makeConnection(transport)
        kv = DirectClient(proto)
        decoder = wire.FrameDecoder(1 << 20)

        def sent() -> list[Message]:
            data = transport.value()
            transport.clear()
            return [wire.decode(p) for p in decoder.feed(data)]

        def answer() -> None:
            proto.dataReceived(wire.frame(wire.reply(wire.OP_PUT, op_n=1)))

        kv.put("a", b"1")
        kv.delete("b")
        first = sent()
        self.assertEqual([(m.request_id, m.ack_below) for m in first], [(1, 1), (2, 1)])
        self.assertEqual({m.client_id for m in first}, {kv.client_id})
        answer()
        kv.put("c", b"3")
        answer()
        kv.put("d", b"4")
        self.assertEqual([(m.request_id, m.ack_below) for m in sent()], [(3, 2), (4, 3)])
        self.assertFalse(any(m.resend for m in first))

    def test_chain_client_marks_its_re_sends(self) -> None:
        """A write the chain client sends again carries the resend flag; its first attempt not."""
        messages: list[Message] = []

        class Pool:
            def request(self, target: tuple[str, int], msg: Message) -> Deferred[Message]:
                messages.append(msg)
                if len(messages) == 1:
                    return defer.fail(ConnectionFailed("connection closed"))
                return defer.succeed(wire.reply(wire.OP_PUT, op_n=7))

            def close(self) -> None:
                pass

        c, clock = client(ONE_MEMBER, Pool())  # type: ignore[arg-type]
        c.view = ONE_MEMBER
        box: list[Any] = []
        c.put("k", b"v").addBoth(box.append)
        clock.advance(1)
        self.assertEqual(box[0].op_n, 7)
        self.assertEqual([m.resend for m in messages], [False, True])
        self.assertEqual(
            {(m.client_id, m.request_id, m.ack_below) for m in messages}, {(c.client_id, 1, 1)}
        )
