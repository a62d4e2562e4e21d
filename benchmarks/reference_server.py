"""The reference server: answers every frame at once with a canned reply.

It does the least any kvtwist server must do (split the byte stream into
length-prefixed frames and write one reply frame per request, in order) and
nothing else: no protobuf parsing, no tree, no threads.  Its throughput under
``kvtwist-bench`` is the bench's own ceiling on this machine, and the yardstick
the node is measured against in the same run.

The reply depends only on the request's opcode byte: a GET gets a VALUE reply
carrying ``--value-size`` bytes (as a node holding such values would send), a
PUT gets a RESULT, anything else a RESULT for its opcode + 1.

    python benchmarks/reference_server.py --port 9100 [--value-size 32]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct
import sys

HEADER = struct.Struct(">I")
_unpack = HEADER.unpack_from


def canned_replies(value_size: int) -> dict[int, bytes]:
    """Reply frames by request opcode, built once with the real message code."""
    from kvtwist import wire

    replies = {
        wire.OP_GET: wire.frame(
            wire.reply(wire.OP_GET, c_type=wire.CT_VALUE, values=[b"v" * value_size])
        )
    }
    for op in (10, 20, 30, 50, 60, 70, 80, 110, 120):
        replies[op] = wire.frame(wire.result_reply(op, 1))
    return replies


class Canned(asyncio.Protocol):
    def __init__(self, replies: dict[int, bytes]) -> None:
        self.replies = replies
        self.default = replies[50]
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = len(buf)
        pos = 0
        out = []
        replies = self.replies
        default = self.default
        while end - pos >= 4:
            (length,) = _unpack(buf, pos)
            stop = pos + 4 + length
            if stop > end:
                break
            op = buf[pos + 5] if length >= 2 else 0
            out.append(replies.get(op, default))
            pos = stop
        if pos:
            del buf[:pos]
            assert self.transport is not None
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))


async def serve(host: str, port: int, value_size: int) -> None:
    loop = asyncio.get_running_loop()
    replies = canned_replies(value_size)
    server = await loop.create_server(lambda: Canned(replies), host, port, backlog=1024)
    sockname = server.sockets[0].getsockname()
    print(f"reference server listening on {sockname[0]}:{sockname[1]}", flush=True)
    stop: asyncio.Future[None] = loop.create_future()

    def done() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done)
    async with server:
        await stop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--value-size", type=int, default=32, help="bytes in a GET reply's value")
    args = p.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.value_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
