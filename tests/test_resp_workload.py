"""The RESP workload's pieces in memory: the checker's counter and SET NX model
(histories that are and are not linearizable), durability's reading of them,
the history format, and the workload's RESP client and reply parser."""

from __future__ import annotations

import json

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.verify.durability import lost_writes
from kvtwist.verify.history import Op, dumps, op_from_dict
from kvtwist.verify.linearizability import check
from kvtwist.verify.resp_workload import ReplyError, RespClient, parse_reply


def op(
    p: int,
    kind: str,
    value: str | None,
    start: float,
    end: float | None,
    outcome: str = "ok",
    key: str = "k",
) -> Op:
    return Op(p, kind, key, value, start, end, outcome)  # type: ignore[arg-type]


class CheckerTests(SynchronousTestCase):
    def test_counter(self) -> None:
        """Concurrent INCRs answered 1 and 2 in either order are fine; a read must agree."""
        ok = [op(0, "incr", "2", 0, 3), op(1, "incr", "1", 1, 2), op(2, "get", "2", 4, 5)]
        self.assertTrue(check(ok).linearizable)
        twice = [op(0, "incr", "1", 0, 1), op(1, "incr", "1", 2, 3)]
        self.assertFalse(check(twice).linearizable, "two INCRs answered the same number")
        stale = [op(0, "incr", "1", 0, 1), op(1, "get", None, 2, 3)]
        self.assertFalse(check(stale).linearizable, "a read after an INCR missed it")

    def test_unknown_incr_may_count(self) -> None:
        """An INCR whose answer was lost may explain a later answer, or not have happened."""
        h = [op(0, "incr", None, 0, None, "unknown"), op(1, "incr", "2", 1, 2)]
        self.assertTrue(check(h).linearizable)
        h = [op(0, "incr", None, 0, None, "unknown"), op(1, "incr", "1", 1, 2)]
        self.assertTrue(check(h).linearizable)
        h = [op(1, "incr", "3", 1, 2)]
        self.assertFalse(check(h).linearizable)

    def test_many_unknowns_stay_fast_and_strict(self) -> None:
        """Dozens of INCRs and writes of unknown outcome: decided at once, and a
        violation among them is still found."""
        unknown = [op(9, "incr", None, i, None, "unknown") for i in range(40)]
        ok = [op(1, "incr", "41", 50, 51), op(2, "get", "41", 52, 53)]
        r = check(unknown + ok, timeout=10)
        self.assertTrue(r.linearizable and r.decided)
        bad = [op(1, "incr", "42", 50, 51), op(2, "get", "41", 52, 53)]
        r = check(unknown + bad, timeout=10)
        self.assertTrue(r.decided)
        self.assertFalse(r.linearizable, "a read below an acknowledged INCR")
        writes = [op(9, "put", f"u{i}", i, None, "unknown") for i in range(40)]
        writes.append(op(1, "setnx_refused", "z", 50, 51))
        self.assertTrue(check(writes, timeout=10).linearizable, "an unknown put explains it")
        writes.append(op(2, "get", None, 52, 53))
        r = check(writes, timeout=10)
        self.assertTrue(r.decided)
        self.assertFalse(r.linearizable, "absent after a refusal, and nothing deleted it")

    def test_setnx(self) -> None:
        """One SET NX wins an absent key; the loser must find it present."""
        h = [op(0, "setnx", "a", 0, 2), op(1, "setnx_refused", "b", 1, 3), op(2, "get", "a", 4, 5)]
        self.assertTrue(check(h).linearizable)
        both = [op(0, "setnx", "a", 0, 1), op(1, "setnx", "b", 2, 3)]
        self.assertFalse(check(both).linearizable, "two SET NX won one key")
        refused = [op(0, "setnx_refused", "a", 0, 1)]
        self.assertFalse(check(refused).linearizable, "refused on an absent key")

    def test_refusal_explained_by_an_unread_unknown_put(self) -> None:
        """A put whose outcome is unknown and that nobody read may still be why a SET NX lost."""
        h = [op(0, "put", "x", 0, None, "unknown"), op(1, "setnx_refused", "y", 1, 2)]
        self.assertTrue(check(h).linearizable)

    def test_durability_and_format(self) -> None:
        """INCR's answer is the value it wrote; a refused SET NX wrote nothing."""
        h = [op(0, "incr", "1", 0, 1), op(1, "setnx_refused", "z", 2, 3)]
        self.assertEqual(lost_writes(h, {"k": "1"}), [])
        self.assertEqual(len(lost_writes(h, {"k": "z"})), 1)
        unknown = [op(2, "incr", None, 4, None, "unknown")]
        self.assertEqual(lost_writes(h[:1] + unknown, {"k": "2"}), [], "the unknown INCR counted")
        self.assertEqual(len(lost_writes(h[:1] + unknown, {"k": "3"})), 1)
        for o in h:
            self.assertEqual(op_from_dict(json.loads(dumps(o))), o)


class ParserTests(SynchronousTestCase):
    def test_replies(self) -> None:
        self.assertEqual(parse_reply(b"+OK\r\n"), ("OK", 5))
        self.assertEqual(parse_reply(b":12\r\n"), (12, 5))
        self.assertEqual(parse_reply(b"$-1\r\n"), (None, 5))
        self.assertEqual(parse_reply(b"$3\r\nabc\r\n"), (b"abc", 9))
        self.assertIsNone(parse_reply(b"$3\r\nab"))
        self.assertEqual(parse_reply(b"*2\r\n:1\r\n$1\r\nx\r\n"), ([1, b"x"], 15))
        err, _ = parse_reply(b"-TRYAGAIN the head is unreachable\r\n")  # type: ignore[misc]
        self.assertIsInstance(err, ReplyError)
        self.assertTrue(err.retry)

    def test_client_answers_in_order(self) -> None:
        """Pipelined commands get their replies in order; a lost connection fails the rest."""
        c = RespClient()
        t = StringTransport()
        c.makeConnection(t)
        got: list[object] = []
        c.command(b"SET", b"k", b"v").addCallback(got.append)
        c.command(b"INCR", b"k").addErrback(lambda f: got.append(f.value))
        c.command(b"GET", b"k").addErrback(lambda f: got.append(type(f.value).__name__))
        self.assertEqual(
            t.value(),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
            b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        )
        c.dataReceived(b"+OK\r\n-ERR value is not an integer")
        c.dataReceived(b" or out of range\r\n")
        self.assertEqual(got[0], "OK")
        self.assertIsInstance(got[1], ReplyError)
        c.connectionLost(None)
        self.assertEqual(got[2], "ConnectionLost")
