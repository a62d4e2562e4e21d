"""Lag in seconds and link round trips, in memory: a link's probes and their echoes,
the age of what the successor has not acknowledged, the admin's rows, the metrics."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.adminstatus import ChainStatus, lag_seconds, member_rows, status_table
from kvtwist.chain.link import Side
from kvtwist.chain.state import ChainState
from kvtwist.monitoring import Histograms
from kvtwist.nodestats import add_operations_fields
from kvtwist.proto.kvtwist_pb2 import Stats, Update
from kvtwist.wire import Message
from tests.test_link import Wire, ack
from tests.test_monitoring import Node
from tests.test_ops import members, stats


def probe_of(msgs: list[Message]) -> Message:
    [probe] = [m for m in msgs if m.opcode == wire.OP_CHAIN_PING and m.request_id]
    return probe


class ProbeTests(SynchronousTestCase):
    def test_round_trip_of_an_echoed_probe(self) -> None:
        """A ready link sends a probe; its echo 40 ms later is a 40 ms round trip,
        told to the owner's hook and kept on the link."""
        w = Wire(timeout=3.0)
        w.link.ready = True
        seen: list[tuple[Side, float]] = []
        w.link.on_rtt = lambda link, rtt: seen.append((link.side, rtt))
        w.clock.advance(0.75)
        probe = probe_of(w.sent())
        w.clock.advance(0.04)
        w.receive(Message(opcode=wire.OP_CHAIN_PING, c_type=wire.CT_CHAIN, op_n=probe.request_id))
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0][0], Side.SUCCESSOR)
        self.assertAlmostEqual(seen[0][1], 0.04, places=6)
        self.assertAlmostEqual(w.link.rtt or 0, 0.04, places=6)

    def test_probe_is_echoed(self) -> None:
        """A peer's probe comes straight back with its number in op_n."""
        w = Wire()
        w.receive(Message(opcode=wire.OP_CHAIN_PING, c_type=wire.CT_CHAIN, request_id=7))
        [echo] = w.sent()
        self.assertEqual((echo.opcode, echo.op_n, echo.request_id), (wire.OP_CHAIN_PING, 7, 0))
        self.assertEqual(w.owner.messages, [])

    def test_stale_or_foreign_echo_is_ignored(self) -> None:
        """An echo of no probe in flight measures nothing; a peer that never echoes
        (an older node) gets a new probe only after a link timeout."""
        w = Wire(timeout=3.0)
        w.link.ready = True
        w.clock.advance(0.75)
        probe = probe_of(w.sent())
        stale = probe.request_id + 5
        w.receive(Message(opcode=wire.OP_CHAIN_PING, c_type=wire.CT_CHAIN, op_n=stale))
        self.assertIsNone(w.link.rtt)
        sent = []
        for _ in range(3):
            w.clock.advance(0.75)
            w.receive(Message(opcode=wire.OP_CHAIN_PING, c_type=wire.CT_CHAIN))  # alive
            sent += [m.request_id for m in w.sent() if m.request_id]
        self.assertEqual(sent, [])
        w.clock.advance(0.75)
        self.assertEqual(probe_of(w.sent()).request_id, probe.request_id + 1)

    def test_no_probe_before_the_hello(self) -> None:
        """Until the link is ready its heartbeats are plain PINGs."""
        w = Wire(timeout=3.0)
        w.clock.advance(1.0)
        pings = [m for m in w.sent() if m.opcode == wire.OP_CHAIN_PING]
        self.assertTrue(pings)
        self.assertFalse([m for m in pings if m.request_id])


class UnackedAgeTests(SynchronousTestCase):
    def test_age_of_the_oldest_unacknowledged_batch(self) -> None:
        """The age runs from the oldest batch sent; an acknowledgement moves it on, and
        with nothing unacknowledged it is 0."""
        w = Wire(timeout=10.0)
        self.assertEqual(w.link.unacked_age(), 0.0)
        w.link.queue_update(Update(seq=1, is_put=True, key=b"k", data=b"v"))
        w.clock.advance(0)
        w.clock.advance(1.0)
        w.link.queue_update(Update(seq=2, is_put=True, key=b"k", data=b"v"))
        w.clock.advance(0)
        w.clock.advance(0.5)
        self.assertAlmostEqual(w.link.unacked_age(), 1.5)
        w.receive(ack(1))
        self.assertAlmostEqual(w.link.unacked_age(), 0.5)
        w.receive(ack(2))
        self.assertEqual(w.link.unacked_age(), 0.0)

    def test_stats_carry_age_and_round_trips(self) -> None:
        """STATS carries the successor's unacknowledged age and each link's round trip;
        a link without a measured one leaves its field out."""
        succ = SimpleNamespace(closed=False, rtt=0.002, unacked_age=lambda: 1.25)
        pred = SimpleNamespace(closed=False, rtt=None)
        replica = SimpleNamespace(
            state=ChainState(), store=SimpleNamespace(), standalone=True, zk=None,
            name=None, succ=succ, pred=pred,
        )
        s = add_operations_fields(Stats(), replica)
        self.assertEqual((s.unacked_age_s, s.succ_rtt_s), (1.25, 0.002))
        self.assertFalse(s.HasField("pred_rtt_s"))


class RowTests(SynchronousTestCase):
    def test_lag_seconds_is_the_heads_unacknowledged_age_when_behind(self) -> None:
        """A member that lacks ops gets the head's unacknowledged age as its lag in
        seconds (a bound); one that lacks none gets 0; the table shows both and RTT."""
        answers = {
            1: stats(role="head", received=50, applied=50, unacked_age_s=0.75, succ_rtt_s=0.0004),
            2: stats(received=50, applied=50, succ_rtt_s=0.0123),
            3: stats(role="tail", received=44, applied=44),
        }
        rows = member_rows(members(1, 2, 3), lambda a: answers[a[1]])
        self.assertEqual([r.lag_s for r in rows], [0.0, 0.0, 0.75])
        self.assertEqual([r.succ_rtt_s for r in rows], [0.0004, 0.0123, None])
        table = status_table(ChainStatus("/chain", None, rows))
        head = next(x for x in table.splitlines() if x.startswith("node0000000001"))
        tail = next(x for x in table.splitlines() if x.startswith("node0000000003"))
        self.assertEqual(head.split()[6:9], ["0", "0", "400µs"])
        self.assertEqual(tail.split()[6:9], ["6", "750.0ms", "-"])
        self.assertIn("LAG S", table.splitlines()[4])

    def test_lag_seconds_unknown_without_the_head(self) -> None:
        """Behind a head whose age is unknown, the lag in seconds is unknown too."""
        self.assertIsNone(lag_seconds(3, None))
        self.assertEqual(lag_seconds(0, None), 0.0)


class MetricsTests(SynchronousTestCase):
    def test_rtt_histogram_and_gauges(self) -> None:
        """Round trips fed to the histograms appear by side; the last one of each link
        up and the unacknowledged age are read at scrape time."""
        h = Histograms()
        node = Node(h=h)
        h.observe_rtt("successor", 0.003)
        h.observe_rtt("successor", 0.2)
        node.replica.succ = SimpleNamespace(  # type: ignore[assignment]
            closed=False, ready=True, rtt=0.2, side=Side.SUCCESSOR, unacked_age=lambda: 2.5
        )
        v = node.values()
        self.assertEqual(v[("kvtwist_link_rtt_seconds_count", (("side", "successor"),))], 2)
        self.assertEqual(
            v[("kvtwist_link_rtt_seconds_bucket", (("le", "0.005"), ("side", "successor")))], 1
        )
        self.assertEqual(v[("kvtwist_link_rtt_last_seconds", (("side", "successor"),))], 0.2)
        self.assertEqual(v[("kvtwist_unacked_age_seconds", ())], 2.5)
