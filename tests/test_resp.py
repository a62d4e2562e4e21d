"""The RESP port in memory: the parser and encoders byte for byte, each command's
reply bytes, AUTH, pipelining and ordering, over a StringTransport."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.resp import RespFactory, codec
from kvtwist.resp.commands import cursor_of, glob_match, key_of
from kvtwist.resp.protocol import RespConnection
from kvtwist.wire import Message
from tests.test_server import Harness


def cmd(*args: bytes | str) -> bytes:
    return codec.encode_command(*(a.encode() if isinstance(a, str) else a for a in args))


class ParserTests(SynchronousTestCase):
    def test_multibulk_across_reads(self) -> None:
        p = codec.RequestParser()
        data = b"*2\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n*1\r\n$4\r\nPING\r\n"
        got = []
        for i in range(len(data)):
            got += p.feed(data[i : i + 1])
        self.assertEqual(got, [[b"GET", b"k\r\n"], [b"PING"]])

    def test_inline_and_empty(self) -> None:
        p = codec.RequestParser()
        self.assertEqual(p.feed(b"SET a  b\r\n\r\n*0\r\nPING\n"), [[b"SET", b"a", b"b"], [b"PING"]])

    def test_errors(self) -> None:
        for bad, why in [
            (b"*x\r\n", "invalid multibulk length"),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\n$-3\r\n", "invalid bulk length"),
            (b"*1\r\n$1\r\nab\r\n", "not ended by CRLF"),
        ]:
            p = codec.RequestParser()
            self.assertEqual(p.feed(b"PING\r\n" + bad + b"PING\r\n"), [[b"PING"]])
            self.assertIn(why, str(p.error))
            self.assertEqual(p.feed(b"PING\r\n"), [], "read on past malformed input")

    def test_encoders(self) -> None:
        self.assertEqual(codec.bulk(b"ab"), b"$2\r\nab\r\n")
        self.assertEqual(codec.bulk(None), b"$-1\r\n")
        self.assertEqual(codec.bulk(None, 3), b"_\r\n")
        self.assertEqual(codec.integer(-3), b":-3\r\n")
        self.assertEqual(codec.error("ERR a\r\nb"), b"-ERR a  b\r\n")
        self.assertEqual(codec.bulks([b"a", None]), b"*2\r\n$1\r\na\r\n$-1\r\n")
        pair = [(codec.bulk(b"k"), codec.integer(1))]
        self.assertEqual(codec.mapping(pair, 2), b"*2\r\n$1\r\nk\r\n:1\r\n")
        self.assertEqual(codec.mapping(pair, 3), b"%1\r\n$1\r\nk\r\n:1\r\n")
        self.assertEqual(codec.verbatim(b"x", 3), b"=5\r\ntxt:x\r\n")

    def test_glob(self) -> None:
        self.assertTrue(glob_match(b"user:*", b"user:1"))
        self.assertTrue(glob_match(b"h?llo", b"hallo"))
        self.assertTrue(glob_match(b"h[ae]llo", b"hello"))
        self.assertFalse(glob_match(b"h[^e]llo", b"hello"))
        self.assertTrue(glob_match(b"h[a-c]llo", b"hbllo"))
        self.assertTrue(glob_match(b"a\\*", b"a*"))
        self.assertFalse(glob_match(b"a\\*", b"ab"))

    def test_cursor_round_trip(self) -> None:
        for key in (b"k", b"\x00\xff", b"user:0001"):
            c = cursor_of(key)
            self.assertTrue(c.isdigit())
            self.assertEqual(key_of(c), key)
        self.assertIsNone(key_of(b"0"))


class Resp:
    """One RESP connection to an in-memory node."""

    def __init__(self, h: Harness, token: bytes | None = None) -> None:
        self.h = h
        self.factory = RespFactory(h.reactor, h.factory.dispatcher.for_chain(""), token, port=6379)
        self.proto: RespConnection = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        self.h.settle()
        out = self.transport.value()
        self.transport.clear()
        return out

    def __call__(self, *args: bytes | str) -> bytes:
        return self.send(cmd(*args))


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.r = Resp(Harness())

    def test_connection_commands(self) -> None:
        r = self.r
        self.assertEqual(r("PING"), b"+PONG\r\n")
        self.assertEqual(r("PING", "hi"), b"$2\r\nhi\r\n")
        self.assertEqual(r("ECHO", "x"), b"$1\r\nx\r\n")
        self.assertEqual(r("SELECT", "0"), b"+OK\r\n")
        self.assertEqual(r("SELECT", "1"), b"-ERR DB index is out of range\r\n")
        self.assertEqual(r("CLIENT", "SETNAME", "me"), b"+OK\r\n")
        self.assertEqual(r("CLIENT", "GETNAME"), b"$2\r\nme\r\n")
        self.assertEqual(r("CLIENT", "ID"), b":1\r\n")
        self.assertEqual(r("CLIENT", "SETINFO", "LIB-NAME", "redis-py"), b"+OK\r\n")
        self.assertEqual(r("COMMAND", "DOCS"), b"*0\r\n")
        self.assertTrue(r("COMMAND", "COUNT").startswith(b":"))
        self.assertEqual(len(r("TIME").split(b"\r\n")), 6)

    def test_errors_as_redis_words_them(self) -> None:
        r = self.r
        self.assertEqual(
            r("FOO", "a", "b"),
            b"-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n",
        )
        self.assertEqual(r("GET"), b"-ERR wrong number of arguments for 'get' command\r\n")
        self.assertEqual(r("SET", "k", "v", "NX", "XX"), b"-ERR syntax error\r\n")
        self.assertIn(b"EX is not supported", r("SET", "k", "v", "EX", "10"))
        self.assertIn(b"--resp-allow-flush", r("FLUSHALL"))
        self.assertEqual(r("INCRBY", "n", "x"), b"-ERR value is not an integer or out of range\r\n")

    def test_strings(self) -> None:
        r = self.r
        self.assertEqual(r("GET", "k"), b"$-1\r\n")
        self.assertEqual(r("SET", "k", "v"), b"+OK\r\n")
        self.assertEqual(r("GET", "k"), b"$1\r\nv\r\n")
        self.assertEqual(r("SET", "k", "w", "NX"), b"$-1\r\n")
        self.assertEqual(r("SET", "k", "w", "XX", "GET"), b"$1\r\nv\r\n")
        self.assertEqual(r("SET", "n", "1", "XX"), b"$-1\r\n")
        self.assertEqual(r("SETNX", "k", "z"), b":0\r\n")
        self.assertEqual(r("SETNX", "j", "z"), b":1\r\n")
        self.assertEqual(r("GETSET", "k", "u"), b"$1\r\nw\r\n")
        self.assertEqual(r("APPEND", "k", "vw"), b":3\r\n")
        self.assertEqual(r("STRLEN", "k"), b":3\r\n")
        self.assertEqual(r("TYPE", "k"), b"+string\r\n")
        self.assertEqual(r("TYPE", "nope"), b"+none\r\n")
        self.assertEqual(r("GETDEL", "k"), b"$3\r\nuvw\r\n")
        self.assertEqual(r("GETDEL", "k"), b"$-1\r\n")
        self.assertEqual(r("INCR", "n"), b":1\r\n")
        self.assertEqual(r("INCRBY", "n", "10"), b":11\r\n")
        self.assertEqual(r("DECR", "n"), b":10\r\n")
        self.assertEqual(r("DECRBY", "n", "20"), b":-10\r\n")
        self.assertEqual(r("INCR", "j"), b"-ERR value is not an integer or out of range\r\n")
        self.assertEqual(r("GET", "j"), b"$1\r\nz\r\n")

    def test_mget_and_exists_are_one_read(self) -> None:
        """MGET and EXISTS of several keys ask the node once, for all their keys: at a
        member that relays reads to the tail, GETs sent one by one could each be
        answered after a different write, and an MGET would see half of an EXEC."""
        r = self.r
        r("MSET", "a", "1", "b", "2")
        dispatcher = r.factory.dispatcher
        asked: list[Message] = []
        handle = dispatcher.handle

        def spy(msg: Message, *rest: Any) -> Any:
            asked.append(msg)
            return handle(msg, *rest)

        self.patch(dispatcher, "handle", spy)
        self.assertEqual(r("MGET", "a", "x", "b"), b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n")
        self.assertEqual(r("EXISTS", "b", "x", "b"), b":2\r\n")
        self.assertEqual([list(m.keys) for m in asked], [[b"a", b"x", b"b"], [b"b", b"x", b"b"]])
        self.assertEqual({m.c_type for m in asked}, {wire.CT_KEYS})

    def test_keyspace(self) -> None:
        r = self.r
        self.assertEqual(r("MSET", "a", "1", "b", "2", "c", "3"), b"+OK\r\n")
        self.assertEqual(r("MGET", "a", "x", "c"), b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n3\r\n")
        self.assertEqual(r("EXISTS", "a", "a", "x"), b":2\r\n")
        self.assertEqual(r("DBSIZE"), b":3\r\n")
        self.assertEqual(r("KEYS", "[ab]"), b"*2\r\n$1\r\na\r\n$1\r\nb\r\n")
        first = r("SCAN", "0", "COUNT", "2")
        cursor = cursor_of(b"b")
        self.assertEqual(
            first, b"*2\r\n$%d\r\n%s\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n" % (len(cursor), cursor)
        )
        self.assertEqual(r("SCAN", cursor, "COUNT", "2"), b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nc\r\n")
        self.assertEqual(r("SCAN", "0", "MATCH", "c"), b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nc\r\n")
        self.assertEqual(r("DEL", "a", "b", "x"), b":2\r\n")
        self.assertEqual(r("UNLINK", "c"), b":1\r\n")
        self.assertEqual(r("DBSIZE"), b":0\r\n")

    def test_info(self) -> None:
        """INFO has the fields clients read to learn the server: redis-py's own test
        suite reads arch_bits and cluster_enabled before it starts."""
        self.r("SET", "k", "v")
        out = self.r("INFO")
        self.assertIn(b"redis_version:", out)
        self.assertIn(b"arch_bits:64", out)
        self.assertIn(b"# Cluster\r\ncluster_enabled:0\r\n", out)
        self.assertIn(b"chain_role:standalone", out)
        self.assertIn(b"db0:keys=1,expires=0,avg_ttl=0", out)
        self.assertNotIn(b"# Keyspace", self.r("INFO", "server"))

    def test_hello_3(self) -> None:
        out = self.r("HELLO", "3")
        self.assertTrue(out.startswith(b"%7\r\n$6\r\nserver\r\n"))
        self.assertIn(b"$5\r\nproto\r\n:3\r\n", out)
        self.assertEqual(self.r("GET", "nope"), b"_\r\n")
        self.assertEqual(self.r("HELLO", "4"), b"-NOPROTO unsupported protocol version\r\n")

    def test_pipelined_replies_in_order(self) -> None:
        """A write then a read of the same key, pipelined: the read sees the write."""
        data = b"".join(
            [cmd("SET", "k", "1"), cmd("GET", "k"), cmd("INCR", "k"), cmd("GET", "k")]
            + [cmd("INCR", "c") for _ in range(50)]
            + [cmd("GET", "c"), cmd("PING")]
        )
        out = self.r.send(data)
        expect = b"+OK\r\n$1\r\n1\r\n:2\r\n$1\r\n2\r\n"
        expect += b"".join(b":%d\r\n" % i for i in range(1, 51)) + b"$2\r\n50\r\n+PONG\r\n"
        self.assertEqual(out, expect)

    def test_protocol_error_closes(self) -> None:
        out = self.r.send(cmd("PING") + b"*1\r\n:x\r\n")
        self.assertEqual(out, b"+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n")
        self.assertTrue(self.r.transport.disconnecting)

    def test_quit(self) -> None:
        self.assertEqual(self.r.send(cmd("QUIT") + cmd("PING")), b"+OK\r\n")
        self.assertTrue(self.r.transport.disconnecting)


class AuthTests(SynchronousTestCase):
    def test_token(self) -> None:
        r = Resp(Harness(), token=b"s3cret")
        self.assertEqual(r("GET", "k"), b"-NOAUTH Authentication required.\r\n")
        self.assertEqual(r("AUTH", "default", "s3cret"), b"+OK\r\n")
        self.assertEqual(r("GET", "k"), b"$-1\r\n")

    def test_wrong_token_closes(self) -> None:
        r = Resp(Harness(), token=b"s3cret")
        self.assertEqual(
            r("AUTH", "nope"),
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        )
        self.assertTrue(r.transport.disconnecting)

    def test_hello_auth(self) -> None:
        r = Resp(Harness(), token=b"s3cret")
        self.assertIn(b"proto", r("HELLO", "2", "AUTH", "default", "s3cret"))
        self.assertEqual(r("PING"), b"+PONG\r\n")

    def test_no_token(self) -> None:
        r = Resp(Harness())
        self.assertTrue(r("AUTH", "x").startswith(b"-ERR AUTH <password> called without"))
        self.assertEqual(r("AUTH", "default", "x"), b"+OK\r\n")
