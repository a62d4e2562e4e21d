"""Client TLS (--tls-cert/--tls-key): options, the link handshake's channel binding, a real
TLS node with the client library and the shell, and a TLS chain of two real nodes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvtwist import tls, wire
from kvtwist.chain.auth import AuthError, Initiator, Responder
from kvtwist.client.api import DirectClient
from kvtwist.client.blocking import BlockingClient
from kvtwist.client.chain import ChainClient
from kvtwist.client.protocol import ConnectionFailed
from kvtwist.client.shell import UsageError as ShellUsageError
from kvtwist.client.shell import build_parser, security, split_argv
from kvtwist.tap import Options
from tests.certs import LocalCA
from tests.nodes import NodeProcess, RawClient, wait_for
from tests.test_blocking import private_reactor
from tests.test_shell import run_shell
from tests.zkserver import ZooKeeperCase

KEY = b"cluster-key-0123456789abcdef"
TOKEN = b"client-token-0123456789abcdef"
SESSION = 2.0


def temp_dir(test: SynchronousTestCase) -> Path:
    path = Path(tempfile.mkdtemp(prefix="kvtwist-tls-"))

    def remove() -> None:
        for p in path.iterdir():
            p.unlink()
        path.rmdir()

    test.addCleanup(remove)
    return path


def secret(directory: Path, name: str, data: bytes) -> str:
    path = directory / name
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return str(path)


class OptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.ca = LocalCA(self.dir)
        self.node = self.ca.issue("node")

    def test_off_by_default(self) -> None:
        """Without --tls-cert the node speaks plain TCP."""
        o = Options()
        o.parseOptions(["--in-memory"])
        self.assertIsNone(o["tls"])

    def test_cert_and_key_loaded(self) -> None:
        """--tls-cert and --tls-key give the listener's TLS options."""
        o = Options()
        o.parseOptions(["--in-memory", "--tls-cert", self.node.cert, "--tls-key", self.node.key])
        self.assertIsNotNone(o["tls"])

    def test_peer_ca(self) -> None:
        """--tls-peer-ca makes members check each other; it needs TLS and a usable file."""
        o = Options()
        o.parseOptions(["--in-memory", "--tls-cert", self.node.cert, "--tls-key", self.node.key])
        self.assertIsNone(o["peer-tls"])
        self.assertFalse(tls.links().verify)
        o = Options()
        o.parseOptions(
            ["--in-memory", "--tls-cert", self.node.cert, "--tls-key", self.node.key]
            + ["--tls-peer-ca", self.ca.path]
        )
        self.assertTrue(o["peer-tls"].verify)
        self.assertEqual(o["peer-tls"].ca_file, self.ca.path)
        with self.assertRaises(usage.UsageError) as e:
            Options().parseOptions(["--in-memory", "--tls-peer-ca", self.ca.path])
        self.assertIn("needs --tls-cert", str(e.exception))
        with self.assertRaises(usage.UsageError) as e:
            Options().parseOptions(
                ["--in-memory", "--tls-cert", self.node.cert, "--tls-key", self.node.key]
                + ["--tls-peer-ca", self.node.key]
            )
        self.assertIn("--tls-peer-ca", str(e.exception))

    def test_cert_without_key(self) -> None:
        """One of the two alone is a usage error."""
        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(["--tls-cert", self.node.cert])
        self.assertIn("go together", str(cm.exception))

    def test_mismatched_key(self) -> None:
        """A key that is not the certificate's stops the node with one line."""
        other = self.ca.issue("other")
        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(["--tls-cert", self.node.cert, "--tls-key", other.key])
        self.assertIn("does not go with", str(cm.exception))

    def test_unusable_files(self) -> None:
        """A missing file, or one that holds no certificate, is named in the error."""
        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(["--tls-cert", self.node.key, "--tls-key", self.node.key])
        self.assertIn("no PEM certificate", str(cm.exception))
        missing = str(self.dir / "missing.pem")
        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(["--tls-cert", self.node.cert, "--tls-key", missing])
        self.assertIn("missing.pem", str(cm.exception))


class ShellOptionTests(SynchronousTestCase):
    def test_option_values_are_not_commands(self) -> None:
        """--tls-ca and --token-file take the next word; the command starts after them."""
        options, words = split_argv(["--tls-ca", "ca.pem", "--token-file", "t", "get", "a"])
        self.assertEqual(words, ["get", "a"])
        ns = build_parser().parse_args(options)
        self.assertEqual((ns.tls_ca, ns.token_file, ns.tls), ("ca.pem", "t", False))

    def test_unusable_ca_file(self) -> None:
        """A CA file without a certificate is a usage error naming --tls-ca."""
        path = temp_dir(self) / "empty.pem"
        path.write_bytes(b"")
        ns = build_parser().parse_args(["--tls-ca", str(path)])
        with self.assertRaises(ShellUsageError) as cm:
            security(ns)
        self.assertIn("--tls-ca", str(cm.exception))
        self.assertIn("no PEM certificate", str(cm.exception))

    def test_plain_by_default(self) -> None:
        """Without the options the shell speaks plain TCP and sends no token."""
        ns = build_parser().parse_args([])
        self.assertEqual((security(ns).tls, security(ns).token), (None, None))


class BindingStateTests(SynchronousTestCase):
    def exchange(self, ibinding: bytes, rbinding: bytes) -> None:
        initiator = Initiator(KEY, "node0000000001", 7)
        initiator.binding = ibinding
        responder = Responder(KEY, "node0000000002", binding=rbinding)
        step3 = initiator.receive(responder.receive(initiator.first()))
        assert step3 is not None
        responder.receive(step3)

    def test_same_session_accepted(self) -> None:
        """Both ends of one TLS session (the same exporter value) complete the handshake."""
        self.exchange(b"s" * 32, b"s" * 32)

    def test_relayed_handshake_refused(self) -> None:
        """A handshake relayed between two TLS sessions (different values) fails."""
        with self.assertRaises(AuthError) as cm:
            self.exchange(b"a" * 32, b"b" * 32)
        self.assertIn("does not match", str(cm.exception))
        with self.assertRaises(AuthError):
            self.exchange(b"", b"b" * 32)


class Recorder(protocol.Protocol):
    """Keeps its session's channel binding and echoes what it gets."""

    def __init__(self) -> None:
        self.binding: bytes | None = None
        self.got: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.binding = tls.channel_binding(self.transport)
        if self.factory_side:
            self.transport.write(data)
        elif not self.got.called:
            self.got.callback(data)

    factory_side = False


class LoopbackTLSTests(TestCase):
    """TLS over loopback inside the test process (the global reactor)."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.ca = LocalCA(self.dir)
        self.servers: list[Recorder] = []

    def listen(self, hosts: tuple[str, ...] = ("127.0.0.1",)) -> int:
        cert = self.ca.issue("server", hosts)

        def build() -> Recorder:
            r = Recorder()
            r.factory_side = True
            self.servers.append(r)
            return r

        factory = protocol.Factory.forProtocol(build)  # type: ignore[arg-type]
        port = reactor.listenSSL(  # type: ignore[attr-defined]
            0, factory, tls.server_options(cert.cert, cert.key), interface="127.0.0.1"
        )
        self.addCleanup(self.closed)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def closed(self) -> defer.Deferred[Any]:
        """Wait for the server side of every connection to go."""
        for server in self.servers:
            if server.transport is not None and not server.lost.called:
                server.transport.loseConnection()
        return defer.gatherResults([s.lost for s in self.servers])

    @defer.inlineCallbacks
    def dial_link(self, port: int) -> Any:
        ep = wrapClientTLS(
            tls.links().creator("127.0.0.1"), TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        )
        client = yield connectProtocol(ep, Recorder())

        def close() -> defer.Deferred[None]:
            client.transport.loseConnection()
            return client.lost

        self.addCleanup(close)
        client.transport.write(b"x")
        yield client.got
        return client

    @defer.inlineCallbacks
    def test_binding_shared_by_both_ends(self) -> None:
        """Both ends of a link's TLS session export the same value; another session another."""
        port = self.listen()
        first = yield self.dial_link(port)
        second = yield self.dial_link(port)
        self.assertEqual(len(first.binding), tls.EXPORTER_BYTES)
        self.assertEqual(first.binding, self.servers[0].binding)
        self.assertEqual(second.binding, self.servers[1].binding)
        self.assertNotEqual(first.binding, second.binding)

    def test_no_binding_without_tls(self) -> None:
        """A plain transport has no binding: the handshake is the one without TLS."""
        from twisted.internet.testing import StringTransport

        self.assertEqual(tls.channel_binding(StringTransport()), b"")

    @defer.inlineCallbacks
    def test_certificate_for_another_name_refused(self) -> None:
        """A node certificate that does not name the address dialled is refused."""
        port = self.listen(hosts=("node.example",))
        d = DirectClient.connect(reactor, "127.0.0.1", port, 5, tls=tls.ClientTLS(self.ca.path))
        err = yield self.assertFailure(d, ConnectionFailed)
        self.assertIn("does not name the host", str(err))

    @defer.inlineCallbacks
    def test_peer_ca_refuses_a_member_signed_by_another(self) -> None:
        """Dialled with --tls-peer-ca, a member whose certificate another CA signed is refused;
        without it, the same member is reached (encrypted, unchecked)."""
        port = self.listen()
        other = LocalCA(self.dir, "other")
        d = DirectClient.connect(reactor, "127.0.0.1", port, 5, tls=tls.links(other.path))
        yield self.assertFailure(d, ConnectionFailed)
        ok = yield DirectClient.connect(reactor, "127.0.0.1", port, 5, tls=tls.links())
        yield ok.close()


class NodeTLSTests(SynchronousTestCase):
    """One real node with --tls-cert/--tls-key."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.ca = LocalCA(self.dir)
        cert = self.ca.issue("node")
        self.node = NodeProcess(
            args=["--in-memory", "--tls-cert", cert.cert, "--tls-key", cert.key]
        ).start()
        self.addCleanup(self.node.cleanup)

    def client(self, trust: tls.ClientTLS | None) -> BlockingClient:
        kv = BlockingClient.connect(self.node.address, 10, reactor=private_reactor(), tls=trust)
        self.addCleanup(kv.close)
        return kv

    def test_client_with_ca(self) -> None:
        """The client library, trusting the CA, writes and reads."""
        kv = self.client(tls.ClientTLS(self.ca.path))
        self.assertEqual(kv.put("a", b"1").op_n, 1)
        self.assertEqual(kv.get("a"), b"1")
        self.assertEqual(kv.keys(), [b"a"])

    def test_plain_client_refused(self) -> None:
        """A plain client gets no answer: its connection is closed."""
        raw = RawClient(self.node.port, timeout=10)
        try:
            raw.sock.sendall(wire.frame(wire.req_size()))
            with self.assertRaises(ConnectionError):
                raw.read(1)
        finally:
            raw.close()
        kv = self.client(None)
        with self.assertRaises(ConnectionFailed):
            kv.size()
        wait_for(lambda: "TLS handshake failed" in self.node.log(), 10, "the refusal logged")

    def test_other_ca_refused(self) -> None:
        """A client that trusts another CA (or only the system's) does not connect."""
        other = LocalCA(self.dir, "other")
        for trust in (tls.ClientTLS(other.path), tls.ClientTLS()):
            with self.assertRaises(ConnectionFailed) as cm:
                self.client(trust)
            self.assertIn("certificate verify failed", str(cm.exception))

    def test_shell_with_ca(self) -> None:
        """kvtwist-client --tls-ca writes and reads; without it the node does not answer."""

        r = run_shell("--tls-ca", self.ca.path, self.node.address, stdin=b"put k v\nget k\n")
        self.assertEqual((r.returncode, r.stdout.decode().split()), (0, ["ok", "op", "1", "v"]))
        r = run_shell(self.node.address, "get", "k")
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(r.stdout, b"")
        r = run_shell("--tls", self.node.address, "get", "k")
        self.assertEqual(r.returncode, 2)
        self.assertIn("certificate verify failed", r.stderr.decode())


class PlainNodeTests(SynchronousTestCase):
    def test_tls_client_against_plain_node(self) -> None:
        """A TLS client meeting a plain node fails to connect, saying the node is not TLS."""
        ca = LocalCA(temp_dir(self))
        node = NodeProcess(args=["--in-memory"]).start()
        self.addCleanup(node.cleanup)
        with self.assertRaises(ConnectionFailed) as cm:
            BlockingClient.connect(
                node.address, 10, reactor=private_reactor(), tls=tls.ClientTLS(ca.path)
            )
        self.assertIn("does not seem to speak TLS", str(cm.exception))


class ChainTLSTests(ZooKeeperCase):
    """A chain of two real nodes with TLS, a cluster key and a client token."""

    def setUp(self) -> None:
        super().setUp()
        self.dir = temp_dir(self)
        self.ca = LocalCA(self.dir)
        self.trust = tls.ClientTLS(self.ca.path)
        self.key = secret(self.dir, "cluster.key", KEY)
        self.token = secret(self.dir, "token", TOKEN)

    def node(self, name: str, *extra: str) -> NodeProcess:
        cert = self.ca.issue(name)
        args = [
            "--in-memory",
            *("--tls-cert", cert.cert, "--tls-key", cert.key),
            *("--cluster-key-file", self.key, "--auth-token-file", self.token),
            *extra,
        ]
        n = NodeProcess.member(self.zk.hosts, self.root, SESSION, extra_args=args).start()
        self.addCleanup(n.cleanup)
        return n

    def members(self) -> list[str]:
        return sorted(self.kazoo.get_children(self.root)) if self.kazoo.exists(self.root) else []

    def direct(self, node: NodeProcess) -> BlockingClient:
        kv = BlockingClient.connect(
            node.address, 10, reactor=private_reactor(), tls=self.trust, token=TOKEN
        )
        self.addCleanup(kv.close)
        return kv

    def local_copy(self, node: NodeProcess) -> list[bytes]:
        msg = wire.req_getkeys()
        msg.local = True
        reply = self.direct(node).raw(msg)
        self.assertEqual(reply.opcode, wire.OP_GETKEYS + 1, reply.error)
        return list(reply.keys)

    def test_chain_links_and_replicates(self) -> None:
        """Links between TLS nodes come up; writes reach both copies; forwarding works."""
        self.replicates_and_forwards()

    def test_members_checked_against_the_peer_ca(self) -> None:
        """With --tls-peer-ca, links and forwarded requests verify the member they dial."""
        self.replicates_and_forwards("--tls-peer-ca", self.ca.path)

    def replicates_and_forwards(self, *extra: str) -> None:
        head = self.node("head", *extra)
        wait_for(lambda: len(self.members()) == 1, 30, "the head to register")
        tail = self.node("tail", *extra)
        wait_for(lambda: len(self.members()) == 2, 30, "the tail to register")

        def make(r: Any) -> Any:
            return ChainClient.connect(
                r, self.zk.hosts, self.root, deadline=30, tls=self.trust, token=TOKEN
            )

        chain = BlockingClient(make, timeout=40, reactor=private_reactor())
        self.addCleanup(chain.close)
        for i in range(20):
            chain.put(f"k{i:02}", str(i).encode())
        self.assertEqual(chain.get("k07"), b"7")
        expected = [f"k{i:02}".encode() for i in range(20)]
        self.assertEqual(self.local_copy(tail), expected)
        wait_for(lambda: self.local_copy(head) == expected, 30, "the head to commit")
        # the head is no tail: it forwards the read over TLS with its token
        self.assertEqual(self.direct(head).get("k19"), b"19")
        for n in (head, tail):
            self.assertNotIn("refused", n.log())
            self.assertNotIn("authentication failed", n.log())
