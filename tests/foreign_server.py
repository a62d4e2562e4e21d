"""A stand-in for the original C server, as a chain neighbour sees it.

It behaves as the original servers do at the chain level: it registers
``host:port`` and a NUL as an ephemeral sequential ``<root>/node<seq>``,
answers the original requests (SIZE, HEIGHT, DEL, GET, PUT, GETKEYS,
GETVALUES, VERIFY) with replies that carry only the original message's fields
(1-6), forwards every write it applies to its successor as an ordinary PUT or
DEL on a plain client connection, and treats a frame that is not its own
Message (an opcode or c_type the original enums lack, such as every kvtwist
chain opcode, or bytes that do not parse) as fatal: it exits at once, its
session left to expire (``--on-bad exit``), or drops the connection
(``--on-bad drop``).  Every such frame is printed first (``bad frame ...``),
so a test can tell whether a kvtwist node ever sent it one.

Run as a process: ``python tests/foreign_server.py --zk HOSTS --root /chain``;
it prints ``registered NAME HOST:PORT`` once it is a member.  In memory,
:class:`OriginalFactory` serves the same protocol.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.proto.kvtwist_pb2 import Message

HEADER = struct.Struct(">I")
ORIGINAL_OPS = frozenset(
    {
        wire.OP_SIZE,
        wire.OP_HEIGHT,
        wire.OP_DEL,
        wire.OP_GET,
        wire.OP_PUT,
        wire.OP_GETKEYS,
        wire.OP_GETVALUES,
        wire.OP_VERIFY,
    }
)
ORIGINAL_CTYPES = frozenset(
    {
        wire.CT_BAD,
        wire.CT_KEY,
        wire.CT_VALUE,
        wire.CT_ENTRY,
        wire.CT_KEYS,
        wire.CT_VALUES,
        wire.CT_RESULT,
        wire.CT_NONE,
    }
)


def original(msg: Message) -> Message:
    """``msg`` cut to the original message's fields, as the C servers send it."""
    out = Message(opcode=msg.opcode, c_type=msg.c_type, result=msg.result)
    if msg.HasField("entry"):
        out.entry.CopyFrom(msg.entry)
    out.keys.extend(msg.keys)
    out.values.extend(msg.values)
    return out


def parse(payload: bytes) -> Message | None:
    """The frame as the original server's own Message, or None when it is not one."""
    try:
        msg = wire.decode(payload)
    except DecodeError:
        return None
    if msg.opcode not in ORIGINAL_OPS or msg.c_type not in ORIGINAL_CTYPES:
        return None
    return msg


class OriginalServer:
    """The store of one original server and its place in its chain."""

    def __init__(self, on_bad: Callable[[Protocol, str], None], out: Any = None) -> None:
        self.data: dict[str, bytes] = {}
        self.last_op = 0
        self.bad: list[str] = []  # every frame it could not take
        self.on_bad = on_bad
        self.out = out  # a text stream for the lines tests read
        self.forward: Callable[[Message], None] = lambda msg: None

    def say(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)

    def answer(self, msg: Message) -> Message:
        op = msg.opcode
        if op == wire.OP_PUT and msg.c_type == wire.CT_ENTRY:
            self.data[msg.entry.key] = bytes(msg.entry.data)
            return self._wrote(msg)
        if op == wire.OP_DEL and msg.c_type == wire.CT_KEY and msg.keys:
            self.data.pop(msg.keys[0], None)
            return self._wrote(msg)
        if op == wire.OP_GET and msg.c_type == wire.CT_KEY and msg.keys:
            value = self.data.get(msg.keys[0])
            return Message(
                opcode=op + 1, c_type=wire.CT_VALUE, values=[] if value is None else [value]
            )
        if op == wire.OP_SIZE:
            return Message(opcode=op + 1, c_type=wire.CT_RESULT, result=len(self.data))
        if op == wire.OP_HEIGHT:
            return Message(opcode=op + 1, c_type=wire.CT_RESULT, result=len(self.data).bit_length())
        if op == wire.OP_GETKEYS:
            return Message(opcode=op + 1, c_type=wire.CT_KEYS, keys=sorted(self.data))
        if op == wire.OP_GETVALUES:
            values = [self.data[k] for k in sorted(self.data)]
            return Message(opcode=op + 1, c_type=wire.CT_VALUES, values=values)
        if op == wire.OP_VERIFY and msg.c_type == wire.CT_RESULT:
            done = 0 < msg.result <= self.last_op
            return Message(opcode=op + 1, c_type=wire.CT_RESULT, result=int(done))
        return Message(opcode=wire.OP_ERROR, c_type=wire.CT_NONE)

    def _wrote(self, msg: Message) -> Message:
        self.last_op += 1
        self.forward(original(msg))
        return Message(opcode=msg.opcode + 1, c_type=wire.CT_RESULT, result=self.last_op)


class OriginalProtocol(Protocol):
    """Length-framed original Messages, one reply per request."""

    def __init__(self, server: OriginalServer) -> None:
        self.server = server
        self._buf = b""

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            if length > wire.DEFAULT_MAX_FRAME:
                self._bad(f"a header announcing {length} bytes")
                return
            if len(self._buf) < HEADER.size + length:
                return
            payload = self._buf[HEADER.size : HEADER.size + length]
            self._buf = self._buf[HEADER.size + length :]
            msg = parse(payload)
            if msg is None:
                try:
                    what = f"opcode {wire.decode(payload).opcode}"
                except DecodeError:
                    what = f"{length} bytes that do not parse"
                self._bad(what)
                return
            self.transport.write(wire.frame(original(self.server.answer(msg))))

    def _bad(self, what: str) -> None:
        self.server.bad.append(what)
        self.server.say(f"bad frame: {what}")
        self._buf = b""
        self.server.on_bad(self, what)


class OriginalFactory(Factory):
    def __init__(self, server: OriginalServer) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> OriginalProtocol:
        return OriginalProtocol(self.server)


def drop(proto: Protocol, what: str) -> None:
    """``--on-bad drop``: close the connection the frame came on."""
    if proto.transport is not None:
        proto.transport.loseConnection()


class Forwarder(Protocol):
    """The plain client connection to the successor: requests out, replies ignored."""

    def __init__(self) -> None:
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True


def main() -> None:
    from kazoo.client import KazooClient
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    parser = argparse.ArgumentParser()
    parser.add_argument("--zk", required=True)
    parser.add_argument("--root", default="/chain")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--on-bad", choices=["exit", "drop"], default="exit")
    parser.add_argument("--session-timeout", type=float, default=10.0)
    args = parser.parse_args()

    def fatal(proto: Protocol, what: str) -> None:
        os._exit(3)  # as a crash: no clean close, the znode stays until the session expires

    server = OriginalServer(fatal if args.on_bad == "exit" else drop, out=sys.stdout)
    port = reactor.listenTCP(args.port, OriginalFactory(server), interface="127.0.0.1")  # type: ignore[attr-defined]
    address = f"127.0.0.1:{port.getHost().port}"
    zk = KazooClient(hosts=args.zk, timeout=args.session_timeout)
    zk.start(timeout=15)
    zk.ensure_path(args.root)
    name = zk.create(
        f"{args.root}/node", address.encode() + b"\x00", ephemeral=True, sequence=True
    ).rsplit("/", 1)[1]

    link: dict[str, Any] = {"to": None, "proto": None}

    def successor(children: list[str]) -> None:
        later = sorted(c for c in children if c.startswith("node") and c > name)
        target = None
        if later:
            try:
                data, _ = zk.get(f"{args.root}/{later[0]}")
                host, _, p = data.rstrip(b"\x00").decode().rpartition(":")
                target = (host, int(p))
            except Exception:
                target = None
        reactor.callFromThread(set_successor, target)  # type: ignore[attr-defined]

    def set_successor(target: tuple[str, int] | None) -> None:
        if target == link["to"]:
            return
        link["to"], link["proto"] = target, None
        if target is None:
            return
        server.say(f"successor {target[0]}:{target[1]}")
        proto = Forwarder()
        ep = TCP4ClientEndpoint(reactor, target[0], target[1], timeout=5)
        connectProtocol(ep, proto).addCallbacks(
            lambda p: link.__setitem__("proto", p) if link["to"] == target else None,
            lambda f: None,
        )

    def forward(msg: Message) -> None:
        proto = link["proto"]
        if proto is not None and not proto.lost and proto.transport is not None:
            proto.transport.write(wire.frame(msg))

    server.forward = forward
    zk.ChildrenWatch(args.root, successor)
    server.say(f"registered {name} {address}")

    def stop(*_: object) -> None:
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    signal.signal(signal.SIGTERM, stop)
    reactor.run()  # type: ignore[attr-defined]
    zk.stop()
    zk.close()


if __name__ == "__main__":
    main()
