"""The chain-link places of a port grow with the chains it serves: a cluster server
in many chains links every one of them (``kvtwist-torture --cluster`` found a server
in nine chains refusing its neighbours' links, and a joiner retrying for ever)."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from kvtwist.chain.link import LinkConfig
from kvtwist.server.acceptor import ChainAcceptor
from kvtwist.server.chains import Chains
from kvtwist.server.limits import CHAIN_RESERVE
from kvtwist.wire import Message


class Link:
    """A connection that has proved itself a chain link."""

    transport: Any = None
    closing = False
    has_requests = False

    def __init__(self) -> None:
        self.refused: Message | None = None
        self.entered = False

    def peerName(self) -> str:
        return "peer"

    def close_with(self, reply: Message) -> None:
        self.refused = reply
        self.closing = True

    def enter_chain(self, max_frame: int) -> None:
        self.entered = True


def acceptor(chains: int) -> ChainAcceptor:
    served = Chains({f"c{i}": object() for i in range(chains)})  # type: ignore[misc]
    return ChainAcceptor(MemoryReactorClock(), served, LinkConfig(), set())


class PlacesTests(SynchronousTestCase):
    def test_a_lone_chain_keeps_its_reserve(self) -> None:
        """One chain: CHAIN_RESERVE links, the next refused (retryable)."""
        a = acceptor(1)
        links = [Link() for _ in range(CHAIN_RESERVE + 1)]
        taken = [a._become_chain(link) for link in links]  # type: ignore[arg-type]
        self.assertEqual(taken, [True] * CHAIN_RESERVE + [False])
        refused = links[-1].refused
        assert refused is not None
        self.assertTrue(refused.retry)

    def test_places_grow_with_the_chains_served(self) -> None:
        """Nine chains: nine reserves of links, each chain's neighbours and joiners."""
        a = acceptor(9)
        links = [Link() for _ in range(9 * CHAIN_RESERVE)]
        self.assertTrue(all(a._become_chain(link) for link in links))  # type: ignore[arg-type]
        self.assertFalse(a._become_chain(Link()))  # type: ignore[arg-type]
