"""The client token (--auth-token-file): in memory on the node and the client, then a real
node driven by the shell."""

from __future__ import annotations

import os
import tempfile

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.chain.auth import Initiator, auth_message
from kvtwist.chain.link import LinkConfig
from kvtwist.chain.replica import Replica
from kvtwist.client.protocol import ClientProtocol, KVError, login
from kvtwist.server import NodeFactory, NodeProtocol
from kvtwist.store import InlineRunner, Store
from kvtwist.tap import Options
from kvtwist.wire import Message
from tests.nodes import NodeProcess
from tests.test_shell import run_shell

TOKEN = b"client-token-0123456789abcdef"
KEY = b"cluster-key-0123456789abcdef"


def secret_file(test: SynchronousTestCase, data: bytes, mode: int = 0o600) -> str:
    fd, path = tempfile.mkstemp(prefix="token-")
    os.write(fd, data)
    os.close(fd)
    os.chmod(path, mode)
    test.addCleanup(os.unlink, path)
    return path


class Node:
    """A standalone node with a token, or a chain-mode one with a cluster key too."""

    def __init__(self, token: bytes | None = TOKEN, key: bytes | None = None) -> None:
        self.clock = MemoryReactorClock()
        store = Store(self.clock, InlineRunner())
        chain = key is not None
        self.replica = Replica(
            self.clock,
            store,
            "10.0.0.2:9000",
            zk=object() if chain else None,
            link_config=LinkConfig(key=key),
        )
        if chain:
            self.replica.name = "node0000000002"
        self.factory = NodeFactory(self.clock, self.replica, token=token)

    def connect(self) -> Conn:
        return Conn(self)


class Conn:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.proto: NodeProtocol = node.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.decoder = wire.FrameDecoder(1 << 30)

    def send(self, *msgs: Message) -> list[Message]:
        self.proto.dataReceived(b"".join(wire.frame(m) for m in msgs))
        for _ in range(10):
            self.node.clock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        return [wire.decode(p) for p in self.decoder.feed(data)]


class NodeTokenTests(SynchronousTestCase):
    def test_requests_before_auth_refused(self) -> None:
        """Every client request before AUTH is a non-retryable ERROR; nothing is written."""
        c = Node().connect()
        requests = [
            wire.req_put(b"k", b"v"),
            wire.req_get(b"k"),
            wire.req_del(b"k"),
            wire.req_size(),
            wire.req_getkeys(),
            wire.req_stats(),
            wire.req_range(),
        ]
        for reply in c.send(*requests):
            self.assertEqual(reply.opcode, wire.OP_ERROR)
            self.assertIn("authentication required", reply.error)
            self.assertFalse(reply.retry)
        self.assertFalse(c.transport.disconnecting)
        [ok, size] = c.send(wire.req_auth(TOKEN), wire.req_size())
        self.assertEqual(ok.opcode, wire.OP_AUTH + 1)
        self.assertEqual((size.opcode, size.result), (wire.OP_SIZE + 1, 0))

    def test_wrong_token_closes(self) -> None:
        """A wrong token gets an ERROR and the connection closes; requests after it get nothing."""
        c = Node().connect()
        replies = c.send(wire.req_auth(b"not-the-token-0123456789"), wire.req_put(b"k", b"v"))
        self.assertEqual(len(replies), 1)
        self.assertEqual(replies[0].opcode, wire.OP_ERROR)
        self.assertIn("authentication failed", replies[0].error)
        self.assertTrue(c.transport.disconnecting)
        self.assertEqual(len(c.node.replica.committed_tree), 0)

    def test_prefix_of_token_refused(self) -> None:
        """A token that is only the beginning of the right one, or empty, is wrong."""
        for guess in (TOKEN[:-1], b""):
            c = Node().connect()
            [r] = c.send(wire.req_auth(guess))
            self.assertEqual(r.opcode, wire.OP_ERROR)
            self.assertTrue(c.transport.disconnecting)

    def test_right_token_pipelined(self) -> None:
        """AUTH then requests in one write: each answered in order, the writes applied."""
        c = Node().connect()
        auth, put, get = c.send(wire.req_auth(TOKEN), wire.req_put(b"k", b"v"), wire.req_get(b"k"))
        self.assertEqual(auth.opcode, wire.OP_AUTH + 1)
        self.assertEqual((put.opcode, put.op_n), (wire.OP_PUT + 1, 1))
        self.assertEqual(list(get.values), [b"v"])

    def test_token_is_per_connection(self) -> None:
        """One connection's AUTH does not open another."""
        node = Node()
        first, second = node.connect(), node.connect()
        first.send(wire.req_auth(TOKEN))
        [r] = second.send(wire.req_size())
        self.assertIn("authentication required", r.error)

    def test_wrong_tokens_logged_rate_limited(self) -> None:
        """Wrong tokens log one line per interval, counting those left out."""
        node = Node()
        for _ in range(5):
            node.connect().send(wire.req_auth(b"wrong-token-0123456789"))
        self.assertEqual(node.factory.token_check.refusals.suppressed, 4)
        node.clock.advance(11)
        node.connect().send(wire.req_auth(b"wrong-token-0123456789"))
        self.assertEqual(node.factory.token_check.refusals.suppressed, 0)

    def test_chain_links_not_affected(self) -> None:
        """A chain peer authenticates with the cluster key, without the client token."""
        c = Node(key=KEY).connect()
        initiator = Initiator(KEY, "node0000000001", 0)
        [step2] = c.send(auth_message(initiator.first()))
        self.assertEqual(step2.opcode, wire.OP_CHAIN_AUTH)
        step3 = initiator.receive(step2.auth)
        assert step3 is not None
        [step4] = c.send(auth_message(step3))
        self.assertEqual(step4.auth.step, 4)
        self.assertIsNotNone(c.node.factory.acceptor.proof(c.proto))

    def test_node_without_token_accepts_auth(self) -> None:
        """A node without a token answers AUTH with success, so token clients work there too."""
        c = Node(token=None).connect()
        auth, size = c.send(wire.req_auth(b"anything"), wire.req_size())
        self.assertEqual(auth.opcode, wire.OP_AUTH + 1)
        self.assertEqual(size.opcode, wire.OP_SIZE + 1)


class ClientLoginTests(SynchronousTestCase):
    def connect(self) -> tuple[ClientProtocol, StringTransport]:
        proto = ClientProtocol()
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_login_sends_token_first(self) -> None:
        """login() sends AUTH with the token and fires with the protocol on success."""
        proto, t = self.connect()
        d = login(proto, TOKEN)
        [sent] = [wire.decode(p) for p in wire.FrameDecoder().feed(t.value())]
        self.assertEqual((sent.opcode, sent.token), (wire.OP_AUTH, TOKEN))
        proto.dataReceived(wire.frame(wire.reply(wire.OP_AUTH, c_type=wire.CT_NONE)))
        self.assertIs(self.successResultOf(d), proto)

    def test_login_refused(self) -> None:
        """A refused token fails with a non-retryable KVError and closes the connection."""
        proto, t = self.connect()
        d = login(proto, b"wrong-token-0123456789")
        proto.dataReceived(wire.frame(wire.error_reply("authentication failed: wrong token")))
        err = self.failureResultOf(d, KVError)
        self.assertIn("authentication failed", str(err.value))
        self.assertFalse(err.value.retry)
        self.assertTrue(t.disconnecting)

    def test_no_token_sends_nothing(self) -> None:
        """Without a token, login() fires at once and sends nothing."""
        proto, t = self.connect()
        self.assertIs(self.successResultOf(login(proto, None)), proto)
        self.assertEqual(t.value(), b"")


class OptionTests(SynchronousTestCase):
    def test_token_file_loaded(self) -> None:
        """--auth-token-file loads the token (one trailing newline dropped)."""
        o = Options()
        o.parseOptions(["--in-memory", "--auth-token-file", secret_file(self, TOKEN + b"\n")])
        self.assertEqual(o["token"], TOKEN)

    def test_token_off_by_default(self) -> None:
        """Without the option no token is asked for."""
        o = Options()
        o.parseOptions(["--in-memory"])
        self.assertIsNone(o["token"])

    def test_bad_token_files_refused(self) -> None:
        """Empty, short and world-readable token files are refused in one line."""
        cases = [(b"", 0o600, "empty"), (b"short", 0o600, "at least 16"), (TOKEN, 0o644, "chmod")]
        for data, mode, why in cases:
            with self.assertRaises(usage.UsageError) as cm:
                Options().parseOptions(["--auth-token-file", secret_file(self, data, mode)])
            self.assertIn(why, str(cm.exception))
            self.assertIn("token file", str(cm.exception))


class ShellTokenTests(SynchronousTestCase):
    """A real node with --auth-token-file, driven by kvtwist-client."""

    def setUp(self) -> None:
        self.token = secret_file(self, TOKEN + b"\n")
        self.node = NodeProcess(args=["--in-memory", "--auth-token-file", self.token]).start()
        self.addCleanup(self.node.cleanup)

    def test_shell_with_token(self) -> None:
        """With --token-file the shell writes and reads; without it, it is refused."""
        r = run_shell("--token-file", self.token, self.node.address, stdin=b"put a 1\nget a\n")
        self.assertEqual((r.returncode, r.stdout.decode().split()), (0, ["ok", "op", "1", "1"]))
        r = run_shell(self.node.address, "get", "a")
        self.assertEqual(r.returncode, 1)
        self.assertIn("authentication required", r.stderr.decode())

    def test_shell_wrong_token(self) -> None:
        """A wrong token is one error line and no connection; the node logs the refusal."""
        wrong = secret_file(self, b"not-the-token-0123456789")
        r = run_shell("--token-file", wrong, self.node.address, "get", "a")
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr.decode().strip(), "error: authentication failed: wrong token")
        self.assertIn("wrong client token", self.node.log())

    def test_shell_refuses_open_token_file(self) -> None:
        """The shell refuses a token file others can read, before connecting."""
        open_file = secret_file(self, TOKEN, 0o644)
        r = run_shell("--token-file", open_file, self.node.address, "size")
        self.assertEqual(r.returncode, 2)
        self.assertIn("chmod 600", r.stderr.decode())
