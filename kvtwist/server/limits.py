"""What a node allows its clients, and the places it keeps for chain links."""

from __future__ import annotations

from dataclasses import dataclass

from kvtwist import wire

DEFAULT_MAX_KEY = wire.DEFAULT_MAX_KEY
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_RANGE_LIMIT = 10_000
DEFAULT_MAX_PENDING = 1024
DEFAULT_MAX_INFLIGHT = 64
DEFAULT_MAX_REPLY = 64 * 1024 * 1024
DEFAULT_REPLY_BUDGET = 64 * 1024 * 1024
#: Chain links that proved themselves (or, without a cluster key, said HELLO or
#: JOIN): neighbours, joiners, links being replaced.  They do not count as clients.
CHAIN_RESERVE = 16
#: Connections in a chain handshake not yet proved, and connections beyond
#: --max-connections not yet in one: strangers may fill this, and only this.
#: A newcomer to a full pool pushes out its oldest member, so keeping a member
#: out takes a steady stream of connections, not 16 idle ones.
HANDSHAKE_POOL = 16
#: How long a connection beyond the limit has to open a handshake.
CHAIN_GRACE = 1.0


@dataclass
class Limits(wire.ClientLimits):
    """What a node allows its clients: the sizes of ``wire.ClientLimits`` (its chain
    links size their frames by them), connections, pending requests and replies."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    range_limit: int = DEFAULT_RANGE_LIMIT
    max_pending: int = DEFAULT_MAX_PENDING
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    idle_timeout: float | None = None
    max_reply: int = DEFAULT_MAX_REPLY
    #: Bytes of replies a connection may hold being built or waiting for their turn.
    reply_budget: int = DEFAULT_REPLY_BUDGET
