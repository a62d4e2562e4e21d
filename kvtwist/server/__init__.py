"""A node's client port, by job.

- :mod:`kvtwist.server.protocol` — one connection: pipelining, flow control,
  the client token;
- :mod:`kvtwist.server.dispatch` — the table from opcode to handler, the
  batched GET and write paths, relays to the head or tail;
- :mod:`kvtwist.server.requests` — validation of each kind of request, and
  the reads they become;
- :mod:`kvtwist.server.acceptor` — incoming chain links: the handshake pool,
  authentication, the hand-over to the link protocol;
- :mod:`kvtwist.server.factory` — what the connections share;
- :mod:`kvtwist.server.limits`, :mod:`kvtwist.server.metrics` — the limits
  and the counters.
"""

from __future__ import annotations

from kvtwist.server.acceptor import ChainAcceptor
from kvtwist.server.factory import ClientConnections, NodeFactory
from kvtwist.server.limits import (
    CHAIN_GRACE,
    CHAIN_RESERVE,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_KEY,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_REPLY,
    DEFAULT_RANGE_LIMIT,
    DEFAULT_REPLY_BUDGET,
    HANDSHAKE_POOL,
    Limits,
)
from kvtwist.server.metrics import Metrics
from kvtwist.server.protocol import NodeProtocol
from kvtwist.server.requests import BadRequest

__all__ = [
    "CHAIN_GRACE",
    "CHAIN_RESERVE",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_MAX_KEY",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_REPLY",
    "DEFAULT_RANGE_LIMIT",
    "DEFAULT_REPLY_BUDGET",
    "HANDSHAKE_POOL",
    "BadRequest",
    "ChainAcceptor",
    "ClientConnections",
    "Limits",
    "Metrics",
    "NodeFactory",
    "NodeProtocol",
]
