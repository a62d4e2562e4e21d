"""A cluster server's measure of its shards, written for the controller (kvtwist.cluster.load).

Every ``LOAD_PERIOD`` seconds, each chain this server is the serving tail of
is measured on a reader thread, from its committed state and only within its
shard; the results go to ``load/ID`` in one write.  One measurement at a
time: a slow one delays the next rather than piling up.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.replica import Replica
from kvtwist.cluster import load
from kvtwist.cluster.store import ClusterStore

__all__ = ["LoadReporter"]

log = Logger(namespace="kvtwist.cluster")


class LoadReporter:
    def __init__(
        self,
        reactor: Any,
        store: ClusterStore,
        server_id: str,
        hosted: Callable[[], dict[str, Replica]],
        thresholds: load.Thresholds,
    ) -> None:
        self.store = store
        self.server_id = server_id
        self.hosted = hosted
        self.thresholds = thresholds
        self._loop = LoopingCall(self.report)
        self._loop.clock = reactor
        self._busy = False

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(load.LOAD_PERIOD, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def report(self) -> Deferred[None] | None:
        """Measure and write once (skipped while the last one runs)."""
        if self._busy:
            return None
        self._busy = True
        tails = [(c, r) for c, r in sorted(self.hosted().items()) if r.serving_reads]
        limits = self.thresholds
        measured = [r.store.read(partial(load.measure, r.committed_view(), limits), big=True)
                    for _, r in tails]

        def write(loads: list[load.ChainLoad]) -> Any:
            record = {chain: c for (chain, _), c in zip(tails, loads, strict=True)}
            return self.store.write_load(self.server_id, load.encode(record))

        def done(result: Any) -> None:
            self._busy = False
            if isinstance(result, Failure):
                log.debug("writing the shards' load failed: {e}", e=result.getErrorMessage())

        d = defer.gatherResults(measured, consumeErrors=True).addCallback(write)
        d.addBoth(done)
        return d
