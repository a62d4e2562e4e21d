"""The client token of a node's ports (``--auth-token-file``): one check for all of them."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from twisted.logger import Logger

from kvtwist.logs import LogLimiter

log = Logger(namespace="kvtwist.server")


class TokenCheck:
    """Compares what a client shows with the token in constant time, and logs
    refusals at a bounded rate, so a client guessing tokens cannot flood the log."""

    def __init__(self, token: bytes | None, now: Callable[[], float]) -> None:
        self.token = token
        self.refusals = LogLimiter(now=now)

    def accepts(self, shown: bytes, peer: str) -> bool:
        """Whether ``shown`` is the token (any is, on a node without one)."""
        if self.token is None or hmac.compare_digest(shown, self.token):
            return True
        left_out = self.refusals.allow()
        if left_out is not None:
            log.warn(
                "{peer}: wrong client token; closing{more}",
                peer=peer,
                more=f" ({left_out} more refusals not logged)" if left_out else "",
            )
        return False
