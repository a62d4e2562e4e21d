"""A chain member (van Renesse & Schneider, OSDI 2004), assembled in layers.

- :mod:`kvtwist.chain.core` — the write and read paths: numbering at the
  head, applying (logged first), forwarding, commitment, the Sent list;
- :mod:`kvtwist.chain.reads` — reads at the tail, from the committed state;
- :mod:`kvtwist.chain.membership` — views, links to the neighbours, the
  chain record that a whole-chain restart relies on;
- :mod:`kvtwist.chain.links` — updates, acknowledgements and hellos as they
  arrive, and the comparison of logs when neighbours link;
- :mod:`kvtwist.chain.joining` — this node's join (``Joining``: catching up
  from the tail by delta or a full copy, waiting for the last configuration)
  and :mod:`kvtwist.chain.serving` — the tail's side of another's join
  (``JoinServer``), both composed into the replica rather than layered;
- :mod:`kvtwist.chain.view` — the pure decisions on a new view and on joining;
- :mod:`kvtwist.chain.lifecycle` — the states a node goes through.

The replica talks to the outside only through :class:`Link` objects,
membership views and its coordinator (:class:`kvtwist.coordinator.Coordinator`),
so unit tests drive it with in-memory transports and a fake coordinator.
"""

from __future__ import annotations

from kvtwist.chain.joining import JoiningReplica
from kvtwist.chain.outcomes import NotHere, ReadView, Unavailable, WriteResult


class Replica(JoiningReplica):
    """One node's part of the chain (standalone: a chain of one)."""


__all__ = ["NotHere", "ReadView", "Replica", "Unavailable", "WriteResult"]
