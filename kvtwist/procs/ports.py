"""Free loopback ports, and waiting on conditions with deadlines."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def _ephemeral_start() -> int:
    """Where the kernel's range of ports for outgoing connections begins."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Taken below the kernel's range for outgoing connections: a port from that
    range can be handed to some process's outgoing connection between this
    check and the server's bind ("address already in use"); one below it never is.
    """
    top = _ephemeral_start()
    for _ in range(200):
        port = random.randrange(10000, top) if top > 11000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(cond: Callable[[], _T], timeout: float = 15.0, what: str = "condition") -> _T:
    """Poll ``cond`` until it returns something true; TimeoutError on the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
