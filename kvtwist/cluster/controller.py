"""The cluster's controller: the only writer of the shard map.

:class:`ControllerCore` decides (events in: the map, the live servers, the
time; out: the next map to write) and touches nothing; :class:`ControllerService`
is its Twisted driver: it stands in the election, and while it holds it feeds
the core what the store's watches deliver and writes the core's maps with
compare-and-set.  A controller that loses the election (its session
suspended or lost) stops deciding at once; its successor starts from the map
in ZooKeeper and from what it sees itself.

Its jobs:

* fill chains whose placement names fewer than R servers, once live servers
  exist to fill them (a cluster created before its servers registered);
* replace a server gone longer than ``replace_after`` seconds by a new member
  of each of its chains, appended at the end (a joiner joins as tail);
* carry out the moves and drains of the request record
  (:mod:`kvtwist.cluster.requests`) in two steps through chain membership
  (:mod:`kvtwist.cluster.moves`), watching the member lists of the chains
  they wait on, and remove each move from the record once the map shows it
  over.  A draining server is given nothing new.

Every change bumps the map's version and each changed chain's version
(:func:`kvtwist.cluster.placement.apply`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.cluster import balance, load, moves, placement
from kvtwist.cluster.load import ChainLoad, Thresholds
from kvtwist.cluster.requests import BadRequests, Requests, ShardSplit
from kvtwist.cluster.shardmap import BadMap, ClusterPaths, Server, ShardMap
from kvtwist.cluster.store import ClusterStore, Election

__all__ = ["DEFAULT_REPLACE_AFTER", "ControllerCore", "ControllerService"]

log = Logger(namespace="kvtwist.cluster")

#: Seconds a server may be gone before its chains get new members: long enough
#: to ride out a restart, short enough that a chain does not run a replica
#: short for long.
DEFAULT_REPLACE_AFTER = 60.0
#: Seconds a chain this controller split is left alone before it may split again:
#: its members' measures catch up with the cut meanwhile.
SPLIT_SETTLE = 3 * load.LOAD_PERIOD
#: Delay before writing again after a write that failed (not a lost race).
WRITE_RETRY_DELAY = 1.0


class ControllerCore:
    """What the controller knows and decides; no I/O, no clock of its own.

    Events in: the map, the live servers, the request record, the member
    lists of the chains :meth:`watched_chains` names, the time.  Out: the next
    map (:meth:`decide`) and the request record without the moves that are
    over (:meth:`finished_requests`).

    A server named by the map and not live counts as gone from the first
    moment this core saw it so: a new controller waits a whole
    ``replace_after`` of its own before replacing, never less.
    """

    def __init__(
        self,
        replace_after: float,
        thresholds: Thresholds | None = None,
        balance_after: float = 0.0,
    ) -> None:
        """``balance_after``: seconds of quiet before a balancing move (0: never)."""
        self.replace_after = replace_after
        self.balance_after = balance_after
        #: since when the map has not changed (as this core saw it: a new core waits a
        #: whole ``balance_after`` of its own)
        self.quiet_since = 0.0
        #: when a shard splits on its own, and what each server measured of its shards
        self.thresholds = thresholds or Thresholds()
        self.loads: dict[str, dict[str, ChainLoad]] = {}
        self._split_at: dict[str, float] = {}  # chain -> when this core last split it
        self.map: ShardMap | None = None
        self.live: dict[str, Server] = {}
        self.gone_since: dict[str, float] = {}
        #: the request record; None while it is unreadable (then no request is acted on)
        self.requests: Requests | None = Requests()
        #: chain id -> its member znodes' addresses, head first, as ZooKeeper lists them
        self.members: dict[str, tuple[str, ...]] = {}

    def map_seen(self, m: ShardMap | None, now: float) -> None:
        if m is None or self.map is None or m.version != self.map.version:
            self.quiet_since = now
        self.map = m
        self._note_gone(now)

    def servers_seen(self, live: dict[str, Server], now: float) -> None:
        self.live = dict(live)
        self._note_gone(now)

    def requests_seen(self, requests: Requests | None) -> None:
        self.requests = requests

    def loads_seen(self, loads: dict[str, dict[str, ChainLoad]]) -> None:
        self.loads = loads

    def members_seen(self, chain: str, addresses: Sequence[str]) -> None:
        self.members[chain] = tuple(addresses)

    def _note_gone(self, now: float) -> None:
        named = {s for p in self.map.chains.values() for s in p.members} if self.map else set()
        gone = named - set(self.live)
        for sid in gone:
            self.gone_since.setdefault(sid, now)
        for sid in set(self.gone_since) - gone:
            del self.gone_since[sid]

    def watched_chains(self) -> set[str]:
        """The chains whose members a move, a drain or a split's end waits on: the
        driver watches these."""
        if self.map is None or self.requests is None:
            return set()
        out = {mv.chain for mv in self.requests.moves if mv.chain in self.map.chains}
        out |= {cid for cid, p in self.map.chains.items() if p.parent is not None}
        for sid in self.requests.draining:
            out |= {p.id for p in self.map.chains_of(sid)}
        return out

    def _plan(self, m: ShardMap) -> moves.Plan:
        if self.requests is None:  # unreadable: no step, no trim, until it is read again
            return moves.Plan()
        joined = moves.joined_servers(self.live, self.members)
        return moves.plan(m, self.requests, self.live, joined)

    def decide(self, now: float) -> ShardMap | None:
        """The next map, or None when the current one needs no change.

        Replacements of gone servers first, then the next step of each move and
        drain, then filling; a draining server is given nothing by any of them.
        """
        if self.map is None:
            return None
        m = self._grown(self._split(self._settle(self.map)), now)
        draining = self.requests.draining if self.requests is not None else ()
        gone_for = {sid: now - t for sid, t in self.gone_since.items()}
        changes = placement.replacements(m, self.live, gone_for, self.replace_after, draining)
        moved = self._plan(placement.apply(m, changes)).changes
        filled = placement.fill(placement.apply(m, [*changes, *moved]), self.live, draining)
        new = placement.apply(m, [*changes, *moved, *filled])
        return None if new is self.map else new

    def _settle(self, m: ShardMap) -> ShardMap:
        """``m`` with each split-off chain whose planned servers are all its members no
        longer split off its parent (``ShardMap.settled``): the parent may sweep."""
        joined = moves.joined_servers(self.live, self.members)
        done = [
            cid
            for cid, plan in m.chains.items()
            if plan.parent is not None
            and plan.members
            and set(plan.members) <= joined.get(cid, set())
        ]
        return m.settled(*done) if done else m

    def _split(self, m: ShardMap) -> ShardMap:
        """``m`` with the pending splits made (a chain that is changing members waits)."""
        for sp in self.requests.splits if self.requests is not None else ():
            plan = m.chains.get(sp.chain)
            if plan is None or _split_over(m, sp) or len(plan.members) > m.replicas:
                continue
            m = m.split(sp.chain, sp.at, m.free_chain_id())
        return m

    def _grown(self, m: ShardMap, now: float) -> ShardMap:
        """``m`` with one shard past a split threshold split at its middle key
        (kvtwist.cluster.load), by what its members last measured; a chain split
        recently, or changing members, waits."""
        if self.thresholds.off:
            return m
        asked = {sp.chain for sp in self.requests.splits} if self.requests is not None else set()
        for shard in m.shards:
            plan = m.chains[shard.chain]
            recent = now - self._split_at.get(shard.chain, -SPLIT_SETTLE) < SPLIT_SETTLE
            if recent or shard.chain in asked or len(plan.members) > m.replicas:
                continue
            reports = [self.loads[s][shard.chain] for s in plan.members
                       if shard.chain in self.loads.get(s, {})]
            at = load.split_due(shard, reports, self.thresholds)
            if at is not None:
                new = m.free_chain_id()
                self._split_at[shard.chain] = self._split_at[new] = now
                return m.split(shard.chain, at, new)
        return m

    def finished_requests(self) -> Requests | None:
        """The request record without the moves and splits the map shows over, or None
        if none is."""
        if self.map is None or self.requests is None:
            return None
        m = self.map
        done = self._plan(m).finished
        split = {sp for sp in self.requests.splits if _split_over(m, sp)}
        if not done and not split:
            return None
        return self.requests.without_moves(done).without_splits(split)

    def balancing_requests(self, now: float) -> Requests | None:
        """The request record with a balancing move (kvtwist.cluster.balance) once the map
        has been quiet for ``balance_after``, or None."""
        if not self.balance_after or self.map is None or self.requests is None:
            return None
        if now - self.quiet_since < self.balance_after:
            return None
        move = balance.balance_move(self.map, self.live, self.requests, bool(self.gone_since))
        return None if move is None else self.requests.with_move(move)

    def progress(self) -> dict[str, str]:
        """Chain id -> what its move or drain is doing or waiting for."""
        return self._plan(self.map).progress if self.map is not None else {}

    def next_tick(self, now: float) -> float | None:
        """Seconds until a gone server passes ``replace_after``, or the quiet before a
        balancing move ends (then decide again)."""
        waits = [t + self.replace_after - now for t in self.gone_since.values()]
        if self.balance_after:
            waits.append(self.quiet_since + self.balance_after - now)
        future = [w for w in waits if w >= 0]
        return min(future) + 0.001 if future else None


def _split_over(m: ShardMap, sp: ShardSplit) -> bool:
    """Made (a shard starts at its key), or moot (its chain gone, its key not inside)."""
    shard = m.shard_of_chain(sp.chain)
    if any(s.start == sp.at for s in m.shards):
        return True
    return shard is None or not shard.holds(sp.at)


class ControllerService(Service):
    """Runs the election and, while elected, the core; see the module docstring."""

    def __init__(
        self,
        reactor: Any,
        store: ClusterStore,
        paths: ClusterPaths,
        replace_after: float = DEFAULT_REPLACE_AFTER,
        candidate: str = "controller",
        thresholds: Thresholds | None = None,
        balance_after: float = 0.0,
    ) -> None:
        if replace_after < 0:
            raise ValueError(f"replace_after must not be negative, not {replace_after!r}")
        self.reactor = reactor
        self.store = store
        self.paths = paths
        self.replace_after = replace_after
        self.thresholds = thresholds or Thresholds()
        self.balance_after = balance_after
        self.candidate = candidate
        #: while elected with a split threshold: reads the servers' load records
        self._loads = LoopingCall(self._poll_loads)
        self._loads.clock = reactor
        self.leading = False
        self.core: ControllerCore | None = None
        self._map: tuple[ShardMap | None, int] = (None, -1)
        self._live: dict[str, Server] = {}
        self._requests: tuple[Requests | None, int] = (Requests(), -1)
        self._requests_read = False  # the record was read (absent, at version -1, or not)
        #: the chains whose members we watch while elected: how to stop each watch
        self._member_watches: dict[str, Callable[[], None]] = {}
        self._election: Election | None = None
        self._writing = False
        self._timer: Any = None
        self._watching = False

    # -- the service ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if not self._watching:
            self._watching = True
            self.store.watch_map(self._map_changed)
            self.store.watch_servers(self._servers_changed)
            self.store.watch_requests(self._requests_changed)
        self._election = self.store.elect(self.candidate, self._won, self._lost)

    def stopService(self) -> Any:
        super().stopService()
        self._lost()
        election, self._election = self._election, None
        return election.cancel() if election is not None else None

    # -- the election -----------------------------------------------------------------

    def _won(self) -> None:
        if self.leading or not self.running:
            return
        log.info("controller of cluster {name}: elected", name=self.paths.name)
        self.leading = True
        now = self.reactor.seconds()
        self.core = ControllerCore(self.replace_after, self.thresholds, self.balance_after)
        if not self.thresholds.off and not self._loads.running:
            self._loads.start(load.LOAD_PERIOD, now=False)
        self.core.servers_seen(self._live, now)
        self.core.map_seen(self._map[0], now)
        self.core.requests_seen(self._requests[0])
        self._watch_members()
        self._step()

    def _lost(self) -> None:
        if self.leading:
            log.info("controller of cluster {name}: no longer elected", name=self.paths.name)
        self.leading = False
        self.core = None
        if self._loads.running:
            self._loads.stop()
        self._cancel_timer()
        for stop in self._member_watches.values():
            stop()
        self._member_watches.clear()

    def _poll_loads(self) -> Deferred[None]:
        def seen(records: dict[str, bytes]) -> None:
            if self.core is None:
                return
            loads = {}
            for sid, data in records.items():
                try:
                    loads[sid] = load.decode(data)
                except BadMap as e:
                    log.debug("load of {sid} ignored: {e}", sid=sid, e=e)
            self.core.loads_seen(loads)
            self._step()

        return self.store.read_loads().addCallbacks(seen, lambda f: None)

    # -- what the watches deliver --------------------------------------------------------

    def _map_changed(self, data: bytes | None, version: int) -> None:
        m: ShardMap | None = None
        if data is not None:
            try:
                m = ShardMap.decode(data)
            except BadMap as e:
                log.error("cluster {name}: the map is unreadable: {e}", name=self.paths.name, e=e)
        self._map = (m, version)
        if self.core is not None:
            self.core.map_seen(m, self.reactor.seconds())
            self._watch_members()
            self._step()

    def _servers_changed(self, live: dict[str, Server]) -> None:
        self._live = dict(live)
        if self.core is not None:
            self.core.servers_seen(self._live, self.reactor.seconds())
            self._step()

    def _requests_changed(self, data: bytes | None, version: int) -> None:
        requests: Requests | None
        try:
            requests = Requests.decode(data)
        except BadRequests as e:
            log.error("cluster {name}: the request record is unreadable, so no move or drain "
                      "is carried out: {e}", name=self.paths.name, e=e)
            requests = None
        self._requests = (requests, version)
        self._requests_read = True
        if self.core is not None:
            self.core.requests_seen(requests)
            self._watch_members()
            self._step()

    def _watch_members(self) -> None:
        """Watch the member lists of exactly the chains a move, a drain or a split waits on."""
        core = self.core
        if core is None:
            return
        wanted = core.watched_chains()
        for cid in sorted(set(self._member_watches) - wanted):
            self._member_watches.pop(cid)()
            core.members.pop(cid, None)
        for cid in sorted(wanted - set(self._member_watches)):
            self._member_watches[cid] = _nothing  # a first delivery may come from inside
            stop = self.store.watch_members(cid, functools.partial(self._members_changed, cid))
            if cid in self._member_watches:
                self._member_watches[cid] = stop
            else:
                stop()

    def _members_changed(self, chain: str, addresses: tuple[str, ...]) -> None:
        if self.core is not None and chain in self._member_watches:
            self.core.members_seen(chain, addresses)
            self._step()

    # -- deciding and writing ---------------------------------------------------------------

    def _step(self) -> None:
        core = self.core
        if core is None or not self.leading or self._writing:
            return
        now = self.reactor.seconds()
        self._cancel_timer()
        new = core.decide(now)
        if new is not None and self._map[0] is not None:
            self._write(new, self._map[1])
            return
        left = core.finished_requests()
        if left is not None and self._requests[1] >= 0:
            self._write_requests(left, self._requests[1])
            return
        more = core.balancing_requests(now) if self._requests_read else None
        if more is not None:  # at version -1 the record is made
            self._write_requests(more, self._requests[1])
            return
        wait = core.next_tick(now)
        if wait is not None:
            self._timer = self.reactor.callLater(wait, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._step()

    def _write(self, new: ShardMap, znode_version: int) -> None:
        old = self._map[0]

        def adopt() -> None:
            log.info("cluster {name}: map version {v} written ({what})",
                     name=self.paths.name, v=new.version, what=describe(old, new))
            if self._map[1] == znode_version:
                # ours now, at the next znode version: decide on from it without
                # waiting for the watch (which then brings nothing new)
                self._map = (new, znode_version + 1)
                if self.core is not None:
                    self.core.map_seen(new, self.reactor.seconds())
                    self._watch_members()

        self._cas(lambda: self.store.write_map(new.encode(), znode_version), znode_version,
                  lambda: self._map[1], adopt, "the map")

    def _write_requests(self, left: Requests, znode_version: int) -> None:
        old = self._requests[0]

        def adopt() -> None:
            before = old.moves if old is not None else ()
            over = [f"move of {mv.chain} {mv.source} -> {mv.target} over"
                    for mv in before if mv not in left.moves]
            new = [f"balancing: move of {mv.chain} {mv.source} -> {mv.target}"
                   for mv in left.moves if mv not in before]
            log.info("cluster {name}: request record written ({what})",
                     name=self.paths.name, what=", ".join(over + new) or "splits over")
            if self._requests[1] == znode_version:
                self._requests = (left, znode_version + 1)
                if self.core is not None:
                    self.core.requests_seen(left)
                    self._watch_members()

        self._cas(lambda: self.store.write_requests(left.encode(), znode_version), znode_version,
                  lambda: self._requests[1], adopt, "the request record")

    def _cas(
        self,
        write: Callable[[], Deferred[bool]],
        znode_version: int,
        seen: Callable[[], int],
        adopt: Callable[[], None],
        what: str,
    ) -> None:
        """Wait for a compare-and-set, then decide again (after a lost race, once the
        watch has brought the winner, or a little later)."""
        self._writing = True

        def done(ok: bool) -> None:
            self._writing = False
            if ok:
                adopt()
            if seen() != znode_version:
                self._step()
            else:  # a lost race whose winner the watch has not brought yet
                self._step_later(WRITE_RETRY_DELAY)

        def failed(f: Failure) -> None:
            self._writing = False
            log.warn("cluster {name}: writing {what} failed: {e}",
                     name=self.paths.name, what=what, e=f.getErrorMessage())
            self._step_later(WRITE_RETRY_DELAY)

        write().addCallbacks(done, failed)

    def _step_later(self, delay: float) -> None:
        """Decide again after ``delay`` seconds."""
        if not self.leading:
            return
        self._cancel_timer()
        self._timer = self.reactor.callLater(delay, self._tick)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _nothing() -> None:
    pass


def describe(old: ShardMap | None, new: ShardMap) -> str:
    """What changed between two maps, one clause per chain, for the log."""
    parts = []
    for cid, plan in sorted(new.chains.items()):
        before = old.chains.get(cid) if old is not None else None
        if before is None or before.members != plan.members:
            was = ",".join(before.members) if before is not None else "-"
            parts.append(f"{cid}: {was or '-'} -> {','.join(plan.members) or '-'}")
    return "; ".join(parts) or "no member changed"
