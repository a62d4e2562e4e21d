"""Frames sent in the reactor turn that made them: replies, and chain traffic.

Twisted's ``transport.write`` only buffers: it asks the reactor to watch the
socket for writability (one ``epoll_ctl``), the next poll reports it, and
``doWrite`` sends and stops watching (another ``epoll_ctl``).  For a reply of a
few hundred bytes to a socket whose kernel buffer is empty that is three
system calls and a reactor turn where one ``send`` would do; measured on a
node answering 50 connections one request at a time, the watch and unwatch
were a fifth of the reactor thread's time, and a chain member pays them twice
per batch (the update down, the acknowledgement up).

``send_now`` sends at once when the transport is a plain TCP connection with
nothing buffered before ``data`` (so order is kept), and hands whatever the
kernel did not take, or any error, to ``transport.write``: Twisted then
buffers, applies back-pressure and notices a dead socket as it always does.
Anything else (TLS, test transports) goes to ``transport.write`` unchanged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def send_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``, sending it at once where that is safe."""
    if (
        data
        and isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error Twisted's own write path will meet and report
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
