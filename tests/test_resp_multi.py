"""The RESP port's groups and transactions in memory: MSET, MSETNX, RENAME,
SETRANGE, GETRANGE, INCRBYFLOAT, WAIT, FLUSHDB, MULTI/EXEC/DISCARD with
Redis's reply bytes, each group one op of the chain, and the native port's
limits and back-pressure on RESP connections."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.resp import RespFactory
from kvtwist.server.limits import Limits
from kvtwist.verify.resp_workload import parse_reply
from tests.test_resp import Resp, cmd
from tests.test_server import Harness

#: Pieces of commands the garbage test mixes in: MULTI states, arities, groups, bad lengths.
FRAGMENTS = [
    cmd("MULTI"),
    cmd("EXEC"),
    cmd("DISCARD"),
    cmd("SET", "k", "v"),
    cmd("INCR", "k"),
    cmd("MSET", "a"),
    cmd("RENAME", "k", "j"),
    cmd("SETRANGE", "k", "-5", "x"),
    cmd("GETRANGE", "k", "0"),
    cmd("INCRBYFLOAT", "k", "nan"),
    cmd("WATCH", "k"),
    b"*2\r\n$3\r\nGET\r\n$99999999999\r\n",
    b"*-1\r\n",
    b"$3\r\n",
]


class Node:
    """A RESP connection whose factory shares the node's limits and client set."""

    def __init__(self, limits: Limits | None = None, allow_flush: bool = False) -> None:
        self.h = Harness(limits)
        lone = self.h.factory.dispatcher.for_chain("")
        assert lone is not None
        self.factory = RespFactory(
            self.h.reactor,
            lone,
            allow_flush=allow_flush,
            clients=self.h.factory.connections,
        )

    def connect(self) -> Resp:
        r = Resp(self.h)
        r.factory = self.factory
        r.proto = self.factory.buildProtocol(None)
        r.transport = StringTransport()
        r.proto.makeConnection(r.transport)
        return r


class GroupCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = Node()
        self.r = self.node.connect()

    def test_mset_is_one_op(self) -> None:
        """MSET's keys are written by one op of the chain: no reader sees some without the rest."""
        before = self.node.h.replica.committed_seq
        self.assertEqual(self.r("MSET", "a", "1", "b", "2", "c", "3"), b"+OK\r\n")
        self.assertEqual(self.node.h.replica.committed_seq, before + 1)
        self.assertEqual(self.r("MGET", "a", "b", "c"), b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n")
        self.assertEqual(
            self.r("MSET", "a"), b"-ERR wrong number of arguments for 'mset' command\r\n"
        )

    def test_msetnx(self) -> None:
        r = self.r
        self.assertEqual(r("MSETNX", "a", "1", "b", "2"), b":1\r\n")
        self.assertEqual(r("MSETNX", "b", "x", "c", "3"), b":0\r\n")
        self.assertEqual(r("EXISTS", "c"), b":0\r\n", "nothing of a failed MSETNX is written")
        self.assertEqual(r("GET", "b"), b"$1\r\n2\r\n")

    def test_rename(self) -> None:
        r = self.r
        r("SET", "a", "v")
        self.assertEqual(r("RENAME", "a", "b"), b"+OK\r\n")
        self.assertEqual(r("MGET", "a", "b"), b"*2\r\n$-1\r\n$1\r\nv\r\n")
        self.assertEqual(r("RENAME", "a", "c"), b"-ERR no such key\r\n")
        self.assertEqual(r("RENAME", "b", "b"), b"+OK\r\n")
        self.assertEqual(r("GET", "b"), b"$1\r\nv\r\n")

    def test_renamenx(self) -> None:
        """RENAMENX answers 1 when it moved the key, 0 when the new name is taken (or is
        the same), and Redis's error for a missing key; inside MULTI too."""
        r = self.r
        r("MSET", "a", "v", "t", "taken")
        self.assertEqual(r("RENAMENX", "a", "t"), b":0\r\n")
        self.assertEqual(r("RENAMENX", "a", "a"), b":0\r\n")
        self.assertEqual(r("MGET", "a", "t"), b"*2\r\n$1\r\nv\r\n$5\r\ntaken\r\n")
        self.assertEqual(r("RENAMENX", "a", "b"), b":1\r\n")
        self.assertEqual(r("MGET", "a", "b"), b"*2\r\n$-1\r\n$1\r\nv\r\n")
        self.assertEqual(r("RENAMENX", "a", "c"), b"-ERR no such key\r\n")
        out = r.send(cmd("MULTI") + cmd("DEL", "t") + cmd("RENAMENX", "b", "t") + cmd("EXEC"))
        self.assertTrue(out.endswith(b"*2\r\n:1\r\n:1\r\n"), out)
        self.assertEqual(r("GET", "t"), b"$1\r\nv\r\n")

    def test_setrange_getrange(self) -> None:
        r = self.r
        self.assertEqual(r("SET", "k", "Hello World"), b"+OK\r\n")
        self.assertEqual(r("SETRANGE", "k", "6", "Redis"), b":11\r\n")
        self.assertEqual(r("GET", "k"), b"$11\r\nHello Redis\r\n")
        self.assertEqual(r("SETRANGE", "pad", "2", "x"), b":3\r\n")
        self.assertEqual(r("GET", "pad"), b"$3\r\n\x00\x00x\r\n")
        self.assertEqual(r("SETRANGE", "none", "5", ""), b":0\r\n")
        self.assertEqual(r("EXISTS", "none"), b":0\r\n", "an empty SETRANGE creates nothing")
        self.assertEqual(r("SETRANGE", "k", "-1", "x"), b"-ERR offset is out of range\r\n")
        self.assertEqual(r("GETRANGE", "k", "0", "4"), b"$5\r\nHello\r\n")
        self.assertEqual(r("GETRANGE", "k", "-5", "-1"), b"$5\r\nRedis\r\n")
        self.assertEqual(r("GETRANGE", "k", "5", "2"), b"$0\r\n\r\n")
        self.assertEqual(r("GETRANGE", "k", "0", "100"), b"$11\r\nHello Redis\r\n")
        self.assertEqual(r("GETRANGE", "nope", "0", "-1"), b"$0\r\n\r\n")
        self.assertEqual(
            r("GETRANGE", "k", "x", "1"), b"-ERR value is not an integer or out of range\r\n"
        )

    def test_incrbyfloat(self) -> None:
        r = self.r
        self.assertEqual(r("SET", "f", "10.50"), b"+OK\r\n")
        self.assertEqual(r("INCRBYFLOAT", "f", "0.1"), b"$4\r\n10.6\r\n")
        self.assertEqual(r("INCRBYFLOAT", "f", "-5"), b"$3\r\n5.6\r\n")
        self.assertEqual(r("SET", "e", "5.0e3"), b"+OK\r\n")
        self.assertEqual(r("INCRBYFLOAT", "e", "2.0e2"), b"$4\r\n5200\r\n")
        self.assertEqual(r("INCRBYFLOAT", "f", "abc"), b"-ERR value is not a valid float\r\n")
        r("SET", "t", "text")
        self.assertEqual(r("INCRBYFLOAT", "t", "1"), b"-ERR value is not a valid float\r\n")
        self.assertEqual(r("GET", "t"), b"$4\r\ntext\r\n")
        r("SET", "big", "1e308")
        self.assertEqual(
            r("INCRBYFLOAT", "big", "1e308"),
            b"-ERR increment would produce NaN or Infinity\r\n",
        )

    def test_client_list(self) -> None:
        """CLIENT LIST: a line per connection of the port, by id; TYPE and ID filter
        them as in Redis (every RESP connection is a normal client)."""
        other = self.node.connect()
        other("CLIENT", "SETNAME", "second")
        out = self.r("CLIENT", "LIST")
        lines = out.split(b"\r\n", 1)[1].rstrip(b"\r\n").split(b"\n")
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith(b"id=1 "))
        self.assertIn(b"name=second", lines[1])
        r = self.r
        self.assertEqual(r("CLIENT", "LIST", "TYPE", "NORMAL"), out)
        self.assertEqual(r("CLIENT", "LIST", "TYPE", "pubsub"), b"$0\r\n\r\n")
        self.assertEqual(r("CLIENT", "LIST", "TYPE", "x"), b"-ERR Unknown client type 'x'\r\n")
        self.assertIn(b"name=second", r("CLIENT", "LIST", "ID", "2", "9"))
        self.assertNotIn(b"name=second", r("CLIENT", "LIST", "ID", "1"))
        self.assertEqual(r("CLIENT", "LIST", "ID", "x"), b"-ERR Invalid client ID\r\n")
        self.assertEqual(r("CLIENT", "LIST", "NOPE"), b"-ERR syntax error\r\n")

    def test_wait_standalone(self) -> None:
        """A standalone node has no other member: WAIT answers 0 at once."""
        self.assertEqual(self.r("WAIT", "1", "0"), b":0\r\n")
        self.assertEqual(self.r("WAIT", "1", "-1"), b"-ERR timeout is negative\r\n")

    def test_flush_refused_unless_allowed(self) -> None:
        self.r("SET", "a", "1")
        self.assertEqual(
            self.r("FLUSHDB"),
            b"-ERR FLUSHDB is refused: the node was not started with --resp-allow-flush\r\n",
        )
        self.assertEqual(self.r("DBSIZE"), b":1\r\n")

    def test_flush_option(self) -> None:
        """--resp-allow-flush is a flag of the node, off unless given."""
        from kvtwist.options import NodeOptions

        o = NodeOptions()
        o.parseOptions(["--in-memory", "--resp-allow-flush"])
        self.assertTrue(o["resp-allow-flush"])
        o = NodeOptions()
        o.parseOptions(["--in-memory"])
        self.assertFalse(o["resp-allow-flush"])

    def test_flush_allowed(self) -> None:
        """With --resp-allow-flush, FLUSHALL deletes every key, page after page."""
        node = Node(allow_flush=True)
        r = node.connect()
        args = ["MSET"]
        for i in range(2500):
            args += [f"k{i:05d}", "v"]
        self.assertEqual(r(*args), b"+OK\r\n")
        self.assertEqual(r("FLUSHALL", "SYNC"), b"+OK\r\n")
        self.assertEqual(r("DBSIZE"), b":0\r\n")
        self.assertEqual(r("FLUSHDB", "NOW"), b"-ERR syntax error\r\n")


class TransactionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = Node()
        self.r = self.node.connect()

    def test_exec_applies_as_one_op_in_order(self) -> None:
        """EXEC's writes are one op, decided in order; each command gets its own reply."""
        r = self.r
        before = self.node.h.replica.committed_seq
        out = r.send(
            cmd("MULTI")
            + cmd("SET", "k", "1")
            + cmd("INCR", "k")
            + cmd("GET", "k")
            + cmd("MGET", "k", "x")
            + cmd("DEL", "k", "x")
            + cmd("EXISTS", "k")
            + cmd("EXEC")
        )
        self.assertEqual(
            out,
            b"+OK\r\n"
            + b"+QUEUED\r\n" * 6
            + b"*6\r\n+OK\r\n:2\r\n$1\r\n2\r\n*2\r\n$1\r\n2\r\n$-1\r\n:1\r\n:0\r\n",
        )
        self.assertEqual(self.node.h.replica.committed_seq, before + 1)

    def test_runtime_error_in_its_place(self) -> None:
        """A command that fails when run is an error in EXEC's array; the others apply."""
        r = self.r
        r("SET", "t", "text")
        out = r.send(cmd("MULTI") + cmd("INCR", "t") + cmd("SET", "u", "1") + cmd("EXEC"))
        self.assertTrue(
            out.endswith(b"*2\r\n-ERR value is not an integer or out of range\r\n+OK\r\n"), out
        )
        self.assertEqual(r("GET", "u"), b"$1\r\n1\r\n")

    def test_queue_errors_abort(self) -> None:
        """An unknown command, a wrong arity or an unsupported command while queuing: EXECABORT."""
        r = self.r
        for bad in (cmd("NOPE"), cmd("GET"), cmd("KEYS", "*"), cmd("MSETNX", "a", "1")):
            out = r.send(cmd("MULTI") + cmd("SET", "a", "1") + bad + cmd("EXEC"))
            self.assertTrue(
                out.endswith(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
            )
            self.assertEqual(r("EXISTS", "a"), b":0\r\n", "nothing of an aborted EXEC is written")

    def test_control_errors(self) -> None:
        r = self.r
        self.assertEqual(r("EXEC"), b"-ERR EXEC without MULTI\r\n")
        self.assertEqual(r("DISCARD"), b"-ERR DISCARD without MULTI\r\n")
        self.assertEqual(r("WATCH", "a"), b"+OK\r\n")
        self.assertEqual(r("UNWATCH"), b"+OK\r\n")
        self.assertEqual(r("MULTI"), b"+OK\r\n")
        self.assertEqual(r("MULTI"), b"-ERR MULTI calls can not be nested\r\n")
        self.assertEqual(r("WATCH", "a"), b"-ERR WATCH inside MULTI is not allowed\r\n")
        self.assertEqual(r("SET", "a", "1"), b"+QUEUED\r\n")
        self.assertEqual(r("DISCARD"), b"+OK\r\n")
        self.assertEqual(r("EXISTS", "a"), b":0\r\n", "DISCARD drops the queued commands")
        self.assertEqual(r("MULTI") + r("PING") + r("EXEC"), b"+OK\r\n+QUEUED\r\n*1\r\n+PONG\r\n")
        self.assertEqual(r("MULTI") + r("EXEC"), b"+OK\r\n*0\r\n")
        self.assertEqual(r.send(cmd("MULTI") + cmd("QUIT")), b"+OK\r\n+OK\r\n")
        self.assertTrue(r.transport.disconnecting, "QUIT inside MULTI still closes")

    def test_other_connections_never_see_half(self) -> None:
        """Another connection reading between its commands finds all of EXEC or none."""
        a, b = self.r, self.node.connect()
        a.proto.dataReceived(cmd("MULTI") + cmd("SET", "x", "1") + cmd("SET", "y", "1"))
        self.assertEqual(b("MGET", "x", "y"), b"*2\r\n$-1\r\n$-1\r\n")
        a.send(cmd("EXEC"))
        self.assertEqual(b("MGET", "x", "y"), b"*2\r\n$1\r\n1\r\n$1\r\n1\r\n")


class LimitTests(SynchronousTestCase):
    def test_congested_chain_pauses_resp_clients(self) -> None:
        """The replica's congestion pauses RESP connections with the native ones."""
        node = Node()
        r = node.connect()
        self.assertIn(r.proto, node.h.factory.connections)
        node.h.factory.connections.congestion(True)
        self.assertEqual(r.transport.producerState, "paused")
        node.h.factory.connections.congestion(False)
        self.assertEqual(r.transport.producerState, "producing")

    def test_connection_limit_is_shared(self) -> None:
        """RESP connections count toward --max-connections; one too many is told and closed."""
        node = Node(Limits(max_connections=1))
        node.connect()
        extra = node.connect()
        self.assertEqual(extra.transport.value(), b"-ERR max number of clients reached\r\n")
        self.assertTrue(extra.transport.disconnecting)

    def test_huge_bulk_is_a_protocol_error(self) -> None:
        """A bulk longer than any key or value the node takes closes the connection at once."""
        r = Node(Limits(max_value=1000, max_frame=4096)).connect()
        out = r.send(b"*2\r\n$3\r\nGET\r\n$999999999\r\n")
        self.assertEqual(out, b"-ERR Protocol error: invalid bulk length\r\n")
        self.assertTrue(r.transport.disconnecting)

    def test_value_limit(self) -> None:
        r = Node(Limits(max_value=10)).connect()
        self.assertEqual(
            r("SET", "k", "x" * 11), b"-ERR value of 11 bytes exceeds the limit of 10\r\n"
        )
        self.assertEqual(
            r("APPEND", "k", "x" * 11), b"-ERR value of 11 bytes exceeds the limit of 10\r\n"
        )

    def test_max_pending_pauses_reading(self) -> None:
        """Past --max-pending unanswered commands the connection stops reading."""
        node = Node(Limits(max_pending=4))
        r = node.connect()
        r.proto.dataReceived(cmd("GET", "k") * 6)
        self.assertEqual(r.transport.producerState, "paused")
        node.h.settle()
        self.assertEqual(r.transport.producerState, "producing")


class GarbageTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.binary(max_size=40) | st.sampled_from(FRAGMENTS), max_size=12))
    def test_garbage_never_raises(self, parts: list[bytes]) -> None:
        """Any bytes, commands among them: nothing raised out of the connection, every
        reply well formed, and the node still answers a new connection."""
        node = Node()
        r = node.connect()
        out = r.send(b"".join(parts) + cmd("DISCARD") + cmd("PING"))
        pos = 0
        while pos < len(out):  # replies only, each whole
            got = parse_reply(out, pos)
            assert got is not None, out
            pos = got[1]
        self.assertEqual(node.connect()("PING"), b"+PONG\r\n")
