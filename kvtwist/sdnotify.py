"""systemd's readiness protocol (``Type=notify``), without a dependency.

systemd passes a datagram socket in ``$NOTIFY_SOCKET`` (a path, or an
abstract name written with a leading ``@``); a service says ``READY=1`` on it
once it serves, so that units ordered after it start only then, and
``STOPPING=1`` as it begins to stop.  Without the variable nothing is sent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="kvtwist.node")


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``, ...); whether there was a socket.

    A socket that cannot be reached is logged, never raised: readiness is a
    courtesy to the supervisor, not a condition of serving.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
    except OSError as e:
        log.warn("cannot notify systemd ({state}): {e}", state=state, e=e)
    return True


class ReadinessService(service.Service):
    """Says READY=1 once ``serving()`` holds (checked every ``interval`` seconds) and
    STOPPING=1 when the node stops.

    A chain node serves once it is a member: while ZooKeeper is out of reach or
    the node is catching up it is not ready, and systemd keeps it "activating".
    """

    def __init__(
        self,
        reactor: Any,
        serving: Callable[[], bool],
        interval: float = 0.2,
        send: Callable[[str], bool] = notify,
    ) -> None:
        self.serving = serving
        self.send = send
        self.ready = False
        self._loop = LoopingCall(self._check)
        self._loop.clock = reactor
        self.interval = interval

    def startService(self) -> None:
        super().startService()
        # Not now: services start before the reactor runs and installs its
        # SIGTERM handler.  A supervisor told READY=1 that early may stop the
        # node at once, and the signal's default action would end it without
        # STOPPING=1 or a clean leave.  A timed call fires only once it runs.
        self._loop.start(self.interval, now=False)

    def _check(self) -> None:
        if self.ready or not self.serving():
            return
        self.ready = True
        self._loop.stop()
        self.send("READY=1")

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.send("STOPPING=1")
