"""WATCH on the RESP port in memory, with Redis's reply bytes: EXEC answers a
null array and applies nothing when a watched key was written by anyone
(even to the same value, or deleted) since its WATCH; UNWATCH, EXEC and
DISCARD forget the watches; a pipelined WATCH is ordered with the
connection's other commands; a bad WATCH gets an error, never a crash; and a
group whose reply was lost is answered TRYAGAIN, never re-sent by the node."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.wire import Message
from tests.test_resp import cmd
from tests.test_resp_multi import Node

NULL2 = b"*-1\r\n"
INCRED = b"*1\r\n:1\r\n"


class WatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = Node()
        self.r = self.node.connect()
        self.other = self.node.connect()

    def exec_incr(self) -> bytes:
        """MULTI, INCR n, EXEC: the EXEC's reply."""
        return self.r.send(cmd("MULTI") + cmd("INCR", "n") + cmd("EXEC")).split(b"+QUEUED\r\n", 1)[
            1
        ]

    def test_unwritten_watch_passes(self) -> None:
        """No write of the watched key (writes of others aside): EXEC applies."""
        self.assertEqual(self.r("WATCH", "w", "v"), b"+OK\r\n")
        self.other("SET", "elsewhere", "1")
        self.assertEqual(self.exec_incr(), INCRED)
        self.assertEqual(self.r("GET", "n"), b"$1\r\n1\r\n")

    def test_a_write_by_anyone_aborts(self) -> None:
        """A SET (even of the same value), a DEL, an INCR of the watched key, by another
        connection or this one, after WATCH: EXEC is a null array, nothing applied."""
        self.r("SET", "w", "same")
        writes = [
            (self.other, cmd("SET", "w", "same")),
            (self.other, cmd("DEL", "w")),
            (self.other, cmd("INCR", "w")),
            (self.other, cmd("MSET", "x", "1", "w", "2")),
            (self.r, cmd("SET", "w", "mine")),
        ]
        for conn, write in writes:
            self.assertEqual(self.r("WATCH", "w"), b"+OK\r\n")
            conn.send(write)
            self.assertEqual(self.exec_incr(), NULL2, write)
        self.assertEqual(self.r("EXISTS", "n"), b":0\r\n", "no aborted EXEC applied")
        self.assertEqual(self.exec_incr(), INCRED, "EXEC forgot the watches")

    def test_resp3_null(self) -> None:
        """Under RESP3 an aborted EXEC is the null ``_``."""
        r = self.r
        r("HELLO", "3")
        r("WATCH", "w")
        self.other("SET", "w", "1")
        self.assertEqual(
            r.send(cmd("MULTI") + cmd("SET", "a", "1") + cmd("EXEC")), b"+OK\r\n+QUEUED\r\n_\r\n"
        )

    def test_unwatch_and_discard_forget(self) -> None:
        """UNWATCH and DISCARD drop the watches: a later write aborts nothing."""
        r = self.r
        for forget in (cmd("UNWATCH"), cmd("MULTI") + cmd("DISCARD")):
            r("WATCH", "w")
            r.send(forget)
            self.other("SET", "w", "x")
            self.assertEqual(self.exec_incr()[:2], b"*1")

    def test_empty_exec_is_still_checked(self) -> None:
        """MULTI then EXEC with nothing queued: null if a watched key was written, else []."""
        r = self.r
        r("WATCH", "w")
        self.other("SET", "w", "1")
        self.assertEqual(r("MULTI") + r("EXEC"), b"+OK\r\n" + NULL2)
        r("WATCH", "w")
        self.assertEqual(r("MULTI") + r("EXEC"), b"+OK\r\n*0\r\n")

    def test_pipelined_check_and_set(self) -> None:
        """WATCH, GET, MULTI, SET, EXEC sent at once: the GET sees the state at the watch
        point and a write before the WATCH in the pipe does not abort it."""
        out = self.r.send(
            cmd("SET", "w", "1")
            + cmd("WATCH", "w")
            + cmd("GET", "w")
            + cmd("MULTI")
            + cmd("SET", "w", "2")
            + cmd("EXEC")
            + cmd("GET", "w")
        )
        self.assertEqual(
            out, b"+OK\r\n+OK\r\n$1\r\n1\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n$1\r\n2\r\n"
        )

    def test_watch_errors(self) -> None:
        """WATCH inside MULTI, without keys: Redis's errors, and the transaction goes
        on; an empty key, one over --max-key, or more keys than a group may carry:
        refused."""
        r = self.r
        self.assertEqual(r("WATCH"), b"-ERR wrong number of arguments for 'watch' command\r\n")
        self.assertEqual(r("WATCH", ""), b"-ERR the key is empty\r\n")
        self.assertEqual(r("MULTI"), b"+OK\r\n")
        self.assertEqual(r("WATCH", "a"), b"-ERR WATCH inside MULTI is not allowed\r\n")
        self.assertEqual(r("SET", "a", "1"), b"+QUEUED\r\n")
        self.assertEqual(r("EXEC"), b"*1\r\n+OK\r\n")
        max_key = self.node.factory.limits.max_key
        self.assertTrue(r("WATCH", "k" * (max_key + 1)).startswith(b"-ERR key of"))
        many = [f"{i:0{max_key}d}" for i in range(16)]
        self.assertTrue(r("WATCH", *many).startswith(b"-ERR a connection may watch at most"))
        self.assertEqual(r("WATCH", *many[:8]), b"+OK\r\n", "within the bound")


class LostReplyTests(SynchronousTestCase):
    def test_a_lost_group_is_never_resent(self) -> None:
        """A group whose head became unreachable is answered TRYAGAIN and not sent again
        by the node: its outcome is the client's to learn, and each send of it is
        applied at most once, whole or not at all."""
        node = Node()
        sent: list[list[Message]] = []
        lost = wire.frame(wire.error_reply("the head is unreachable: connection lost", True))

        def write_many(msgs: list[Message], peer: object) -> Deferred[list[bytes]]:
            sent.append(msgs)
            return succeed([lost] * len(msgs))

        node.factory.dispatcher.write_many = write_many  # type: ignore[method-assign]
        r = node.connect()
        tryagain = b"-TRYAGAIN the head is unreachable: connection lost\r\n"
        self.assertEqual(r("MSET", "a", "1", "b", "2"), tryagain)
        out = r.send(cmd("MULTI") + cmd("INCR", "n") + cmd("EXEC"))
        self.assertEqual(out, b"+OK\r\n+QUEUED\r\n" + tryagain)
        self.assertEqual([len(m) for m in sent], [1, 1], "each sent once, as one group")
        self.assertEqual([m[0].opcode for m in sent], [wire.OP_MULTI] * 2)
        self.assertEqual([m[0].client_id for m in sent], ["", ""], "no retry identity")
