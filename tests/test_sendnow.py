"""``send_now`` over real loopback sockets: order kept, nothing lost, back-pressure intact."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kvtwist.sendnow import send_now

DEADLINE = 10.0


class Sink(Protocol):
    """Collects what arrives; paused on request so the sender's kernel buffer fills."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.waiting: list[tuple[int, defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for n, d in list(self.waiting):
            if len(self.received) >= n:
                self.waiting.remove((n, d))
                d.callback(None)

    def until(self, n: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if len(self.received) >= n:
            d.callback(None)
        else:
            self.waiting.append((n, d))
        return d.addTimeout(DEADLINE, reactor)


class Sender(Protocol):
    def connectionMade(self) -> None:
        self.factory.connected.callback(self)  # type: ignore[attr-defined]


class SendNowTests(TestCase):
    """Against a TCP connection of the real reactor."""

    def setUp(self) -> defer.Deferred[Any]:
        self.sink = Sink()
        server = Factory.forProtocol(lambda: self.sink)
        self.port = reactor.listenTCP(0, server, interface="127.0.0.1")  # type: ignore[attr-defined]
        client = ClientFactory.forProtocol(Sender)
        client.connected = connected = defer.Deferred()  # type: ignore[attr-defined]
        reactor.connectTCP("127.0.0.1", self.port.getHost().port, client)  # type: ignore[attr-defined]

        def made(sender: Sender) -> None:
            self.sender = sender

        return connected.addCallback(made)

    def tearDown(self) -> defer.Deferred[Any]:
        self.sender.transport.abortConnection()  # type: ignore[union-attr]
        if self.sink.transport is not None:
            self.sink.transport.abortConnection()  # type: ignore[attr-defined]
        return defer.maybeDeferred(self.port.stopListening)

    @defer.inlineCallbacks
    def test_small_replies_go_at_once_in_order(self) -> Any:
        """Replies leave within the call (nothing left to Twisted's buffer) and arrive in order."""
        transport = self.sender.transport
        for i in range(100):
            send_now(transport, b"%05d" % i)
            self.assertFalse(transport._tempDataBuffer)  # type: ignore[union-attr]
        yield self.sink.until(500)
        self.assertEqual(bytes(self.sink.received), b"".join(b"%05d" % i for i in range(100)))

    @defer.inlineCallbacks
    def test_what_the_kernel_refuses_is_buffered_and_later_bytes_wait_behind_it(self) -> Any:
        """A reply larger than the socket buffers is sent in part and the rest buffered;
        a later reply queues behind the rest rather than overtaking it."""
        self.sink.transport.pauseProducing()  # type: ignore[attr-defined]
        transport = self.sender.transport
        big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than loopback buffers hold
        send_now(transport, big)
        self.assertTrue(transport._tempDataBuffer)  # type: ignore[union-attr]
        send_now(transport, b"after")
        self.assertEqual(transport._tempDataBuffer[-1], b"after")  # type: ignore[union-attr]
        self.sink.transport.resumeProducing()  # type: ignore[attr-defined]
        yield self.sink.until(len(big) + 5)
        self.assertEqual(len(self.sink.received), len(big) + 5)
        self.assertTrue(bytes(self.sink.received) == big + b"after")


class OtherTransportTests(SynchronousTestCase):
    def test_other_transports_get_a_plain_write(self) -> None:
        """A transport that is not a plain TCP connection (a test's, TLS) gets ``write``."""
        transport = StringTransport()
        send_now(transport, b"one")
        send_now(transport, b"two")
        self.assertEqual(transport.value(), b"onetwo")
