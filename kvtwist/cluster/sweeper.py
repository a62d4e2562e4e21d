"""A cluster server's sweeps of the keys its chains gave away (kvtwist.cluster.sweep).

Every ``SWEEP_PERIOD`` seconds, each chain this server is the head of is
checked against the server's map; one with keys due writes one sweep op,
waits for it to commit, and goes on after ``SWEEP_PAUSE`` until none is left.
One op at a time per chain, so a sweep never holds more than one small batch
of the chain's write path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.replica import Replica
from kvtwist.cluster import sweep
from kvtwist.cluster.shardmap import ShardMap

__all__ = ["SWEEP_PAUSE", "SWEEP_PERIOD", "Sweeper"]

log = Logger(namespace="kvtwist.cluster")

#: Seconds between looks for keys to sweep.
SWEEP_PERIOD = 1.0
#: Seconds between one sweep op's commit and the next one's numbering.
SWEEP_PAUSE = 0.01


class Sweeper:
    def __init__(
        self,
        reactor: Any,
        hosted: Callable[[], dict[str, Replica]],
        current_map: Callable[[], ShardMap | None],
    ) -> None:
        self.reactor = reactor
        self.hosted = hosted
        self.current_map = current_map
        self._loop = LoopingCall(self.tick)
        self._loop.clock = reactor
        self._running: set[str] = set()
        #: per chain: the keys its sweeps from here deleted, all told
        self.swept: dict[str, int] = {}
        self._sweeping: dict[str, int] = {}  # per chain being swept: keys so far (the log)

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(SWEEP_PERIOD, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def tick(self) -> None:
        for chain, replica in sorted(self.hosted().items()):
            self.step(chain, replica)

    def step(self, chain: str, replica: Replica) -> None:
        """Write the chain's next sweep op, if this server heads it and one is due."""
        if chain in self._running or not replica.is_head or replica.fenced:
            return
        state = replica.state
        keys = sweep.next_sweep(self.current_map(), chain, state.bounds, state.committed_tree)
        if not keys:
            total = self._sweeping.pop(chain, None)
            if total is not None:
                log.info("chain {chain}: swept the {n} keys it gave away", chain=chain, n=total)
            return
        if chain not in self._sweeping:
            log.info("chain {chain}: sweeping the keys it gave away", chain=chain)
            self._sweeping[chain] = 0
        self._running.add(chain)

        def done(result: Any) -> None:
            self._running.discard(chain)
            if isinstance(result, Failure):
                log.info("chain {chain}: sweep not written ({e}); trying again later",
                         chain=chain, e=result.getErrorMessage())
                return
            self.swept[chain] = self.swept.get(chain, 0) + len(keys)
            self._sweeping[chain] = self._sweeping.get(chain, 0) + len(keys)
            if self._loop.running and self.hosted().get(chain) is replica:
                self.reactor.callLater(SWEEP_PAUSE, self.step, chain, replica)

        replica.sweep(keys).addBoth(done)
