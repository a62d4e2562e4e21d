"""A cluster server: one port, one ZooKeeper session, a replica of each chain placed here.

The server registers itself under the cluster's ``servers`` (ephemeral, so it
is gone with its session), watches the shard map, and serves exactly the
chains the map places on it: a chain newly placed here gets a replica, on its
own store and data directory, that joins the chain as any joiner does (as its
tail, by state transfer); a chain placed elsewhere stops being served here.
Every replica's coordinator is an adapter of the one session, rooted at its
chain's root, so the session's loss fences every chain of the server at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist.chain.replica import Replica
from kvtwist.cluster.controller import ControllerService
from kvtwist.cluster.load import Thresholds
from kvtwist.cluster.reporting import LoadReporter
from kvtwist.cluster.shardmap import BadMap, ClusterPaths, Server, ShardMap
from kvtwist.cluster.store import ClusterStore
from kvtwist.cluster.sweeper import Sweeper
from kvtwist.server.chains import Chains
from kvtwist.services import retry_zookeeper
from kvtwist.storage import ClientRow, DataDir
from kvtwist.tree import BTree
from kvtwist.zk import ZooKeeper
from kvtwist.zk.session import Session

__all__ = ["ClusterServer", "Hosted"]


def _unseeded(replica: Replica) -> bool:
    """A replica of a split-off chain that never took its state (nothing on disk)."""
    state = replica.state
    return not state.last_received and not len(state.committed_tree) and (
        "split_from" not in replica.store.meta
    )

log = Logger(namespace="kvtwist.cluster")

#: Seconds a server waits for the members placed before it in a chain to register
#: before it joins anyway: a joiner joins as the tail, so waiting for them makes the
#: chain's order the placement's (which spreads heads and tails over the servers),
#: and not waiting for ever keeps a chain whose first server is down serving.
ORDER_WAIT = 10.0

#: How often a server placed on a chain split off one it hosts looks whether its
#: replica of that chain has committed the split marker (then it takes the state).
SEED_POLL = 0.2
#: How long it looks: a replica of the parent that lost its copy of the marker
#: (it rejoined by a full copy) never sees it; then the server joins the new chain,
#: as a server that does not host the parent does, and never starts it.
SEED_WAIT = 30.0

#: Makes the replica of chain ``id`` (store recovered from its data directory) on
#: ``zk``, re-reading the map (the third argument) before it registers.
OpenChain = Callable[
    [str, ZooKeeper, Callable[[], Deferred[None]]], "tuple[Replica, DataDir | None]"
]


@dataclass
class Hosted:
    """One chain served here."""

    replica: Replica
    zk: ZooKeeper
    journal: DataDir | None


class ClusterServer(service.Service):
    """Serves what the shard map places here; see the module docstring."""

    def __init__(
        self,
        reactor: Any,
        session: Session,
        store: ClusterStore,
        paths: ClusterPaths,
        me: Server,
        chains: Chains,
        open_chain: OpenChain,
        make_zk: Callable[[str], ZooKeeper],
        replace_after: float = 60.0,
        thresholds: Thresholds | None = None,
        balance_after: float = 0.0,
    ) -> None:
        """``store``: the cluster's znodes on ``session``; ``make_zk(root)``: an adapter of
        ``session`` rooted at a chain's root; ``replace_after``: the controller's, when
        this server is elected it (every server stands)."""
        self.reactor = reactor
        self.session = session
        self.store = store
        thresholds = thresholds or Thresholds()
        self.controller = ControllerService(
            reactor, store, paths, replace_after, me.id, thresholds, balance_after
        )
        #: this server's measure of the shards it is the tail of, for the controller
        self.reporter = LoadReporter(
            reactor, store, me.id, lambda: {c: h.replica for c, h in self.hosted.items()},
            thresholds,
        )
        #: deletes what the chains headed here gave away in splits, once they may
        self.sweeper = Sweeper(
            reactor, lambda: {c: h.replica for c, h in self.hosted.items()}, lambda: self.map
        )
        self.paths = paths
        self.me = me
        self.chains = chains
        self.open_chain = open_chain
        self.make_zk = make_zk
        self.hosted: dict[str, Hosted] = {}
        self.map: ShardMap | None = None
        self._retry: Any = None
        self._no_map_logged = False

    # -- the session --------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.session.begin()
        self._open()

    def _open(self) -> None:
        self._retry = None
        d = self.session.call(self.session.open, 15.0, lambda: None)
        d.addCallbacks(self._opened, self._failed)

    def _failed(self, f: Failure) -> None:
        if not self.running:
            return
        self._retry = retry_zookeeper(self.reactor, self.session.hosts, f, self._open)

    def _opened(self, _: object) -> None:
        if not self.running:
            return
        self.store.register_server(self.me).addCallbacks(
            lambda _: log.info(
                "cluster {name}: server {id} at {address} registered",
                name=self.paths.name,
                id=self.me.id,
                address=self.me.address,
            ),
            lambda f: log.failure("cluster {name}: registering failed", f, name=self.paths.name),
        )
        self.store.watch_map(lambda data, version: self.map_changed(data))
        self.controller.startService()
        self.reporter.start()
        self.sweeper.start()

    def drop_session(self) -> None:
        self.session.drop()

    def resume_session(self) -> Deferred[None] | None:
        return self.session.resume()

    # -- the map -------------------------------------------------------------

    def map_changed(self, data: bytes | None) -> None:
        if not self.running:
            return
        if data is None:
            if not self._no_map_logged:
                self._no_map_logged = True
                log.warn(
                    "no cluster {name} in ZooKeeper yet: serving nothing until "
                    "'kvtwist-admin cluster create {name} ...'",
                    name=self.paths.name,
                )
            return
        try:
            new = ShardMap.decode(data)
        except BadMap as e:
            log.error("cluster {name}: shard map ignored: {e}", name=self.paths.name, e=e)
            return
        if self.map is not None and new.version <= self.map.version:
            return  # a reconnect may read a server that lags the one read before
        self.map = new
        self.chains.map_version = new.version
        self.chains.ranges = {s.chain: (s.start, s.end) for s in new.shards}
        for chain, hosted in self.hosted.items():
            self._bound(chain, hosted.replica)
        wanted = {plan.id for plan in new.chains_of(self.me.id)}
        for chain in sorted(wanted - set(self.hosted)):
            self._serve(chain)
        for chain in sorted(set(self.hosted) - wanted):
            self._leave(chain)

    def _bound(self, chain: str, replica: Replica) -> None:
        """Tell the replica its shard's range, and whether the next shard was split off it."""
        m = self.map
        shard = m.shard_of_chain(chain) if m is not None else None
        if m is None or shard is None:
            return
        after = m.shard_for(shard.end) if shard.end is not None else None
        split = after is not None and m.chains[after.chain].parent == chain
        replica.keep_within(shard.start, shard.end, split)

    def refresh_map(self) -> Deferred[None]:
        """Read the map afresh (after a sync) and act on it: a replica does so before it
        registers, so that it learns of any split its copied state already obeys."""
        return self.store.read_map(fresh=True).addCallback(lambda found: self.map_changed(found[0]))

    def _serve(self, chain: str) -> None:
        zk = self.make_zk(self.paths.chain(chain))
        replica, journal = self.open_chain(chain, zk, self.refresh_map)
        self.hosted[chain] = Hosted(replica, zk, journal)
        self.chains.add(chain, replica)
        self._bound(chain, replica)
        assert self.map is not None
        parent = self.map.chains[chain].parent
        if parent is not None and _unseeded(replica):
            replica.seeded = False
            if parent in self.hosted:
                # take the state from our replica of the parent, then go on
                self._seed(chain, replica, parent).addCallback(lambda _: self._start(chain))
                return
        self._start(chain)

    def _seed(self, chain: str, replica: Replica, parent: str) -> Deferred[None]:
        """Give ``replica`` the keys of its shard from our replica of ``parent``, as
        committed at or after the parent's split marker (no later op of the parent
        touches them), with the parent's retry table, so a write acknowledged by the
        parent and retried here is answered, never applied twice."""
        done: Deferred[None] = Deferred()
        shard = self.map.shard_of_chain(chain) if self.map is not None else None
        until = self.reactor.seconds() + SEED_WAIT
        running = False  # the chain has members: someone started it
        unwatch: list[Callable[[], None]] = []

        def join_instead() -> None:
            """Go on unseeded: the replica joins the chain, never starts it."""
            for stop in unwatch:
                stop()
            if not done.called:
                done.callback(None)

        def members(addresses: tuple[str, ...]) -> None:
            nonlocal running
            running = bool(addresses)

        def look() -> None:
            mine = self.hosted.get(chain)
            if done.called or mine is None or mine.replica is not replica or shard is None:
                for stop in unwatch:
                    stop()
                return  # joining instead, or not served here any more
            hosted = self.hosted.get(parent)
            if hosted is None or self.reactor.seconds() > until:
                # the parent left this server, or our replica of it has not shown the
                # committed marker in SEED_WAIT: join the new chain, never start it
                log.info("chain {chain}: not taking {parent}'s state here; joining",
                         chain=chain, parent=parent)
                join_instead()
                return
            state = hosted.replica.state
            op = state.bounds.marker_op(shard.start)
            if op is None and running:
                # The chain runs already, and our replica of the parent has no marker:
                # it may never see one (its state was copied from a member after the
                # marker was logged), so join the chain by state transfer instead.
                log.info("chain {chain}: it has members and our {parent} holds no split "
                         "marker; joining it", chain=chain, parent=parent)
                join_instead()
                return
            if op is None or state.committed_seq < op:
                self.reactor.callLater(SEED_POLL, look)
                return
            for stop in unwatch:
                stop()
            tree, seq = state.committed_tree, state.committed_seq
            rows = [ClientRow(c, r, 0, f) for c, r, _seq, f in state.dedup.rows(op - 1)]
            read = hosted.replica.store.read(lambda: tree.range(shard.start, shard.end), big=True)
            read.addCallback(take, rows, seq)
            read.addErrback(lambda f: log.failure("chain {c}: taking its state failed", f, c=chain))

        def take(items: list[tuple[bytes, bytes]], rows: list[ClientRow], seq: int) -> Any:
            store = replica.store
            keys, values = [k for k, _ in items], [v for _, v in items]
            table = [(r.client_id, r.request_id, r.seq, r.found) for r in rows]

            def loaded(tree: BTree) -> Deferred[None]:
                replica.restore(tree, 0, (), table)
                return store.save_meta({**store.meta, "split_from": parent})

            def saved(_: object) -> None:
                log.info(
                    "chain {chain}: {n} keys taken from {parent} (its committed op {seq})",
                    chain=chain, n=len(items), parent=parent, seq=seq,
                )
                replica.seeded = True
                done.callback(None)

            return store.load(keys, values, 0, (), rows).addCallback(loaded).addCallback(saved)

        unwatch.append(self.store.watch_members(chain, members))
        look()
        return done

    def _start(self, chain: str) -> None:
        hosted_now = self.hosted.get(chain)
        if hosted_now is None or self.map is None or chain not in self.map.chains:
            return
        replica, zk = hosted_now.replica, hosted_now.zk
        if self.me.id not in self.map.chains[chain].members:
            return
        zk.on_state(replica.zk_state)
        zk.on_gone(replica.znode_gone)
        ahead = self.map.chains[chain].members.index(self.me.id)
        joined = False
        ready = False  # the adapter has started: the replica may register
        timer: Any = None
        members = 0

        def join() -> None:
            nonlocal joined
            hosted = self.hosted.get(chain)
            if joined or not ready or hosted is None or hosted.replica is not replica:
                return
            joined = True
            if timer is not None and timer.active():
                timer.cancel()
            replica.join()

        def view(membership: Any) -> None:
            nonlocal members
            members = len(membership.members)
            replica.set_view(membership)
            if members >= ahead:
                join()

        zk.watch_members(view)
        log.info(
            "cluster {name}: serving chain {chain} (placed {n} of {r})",
            name=self.paths.name,
            chain=chain,
            n=ahead + 1,
            r=len(self.map.chains[chain].members),
        )

        def started(_: object) -> None:
            nonlocal timer, ready
            ready = True
            if members >= ahead:
                join()
            else:
                timer = self.reactor.callLater(ORDER_WAIT, join)

        def failed(f: Failure) -> None:
            log.failure("chain {chain}: joining failed", f, chain=chain)

        zk.start().addCallback(started).addErrback(failed)

    def _leave(self, chain: str) -> Deferred[None]:
        hosted = self.hosted.pop(chain)
        self.chains.remove(chain)
        hosted.replica.stop()
        log.info("cluster {name}: chain {chain} not served here any more",
                 name=self.paths.name, chain=chain)
        d = hosted.zk.stop()
        journal = hosted.journal
        if journal is not None:
            store = hosted.replica.store
            store.stop_sync_timer()
            # the writer thread takes jobs in order: this one follows the store's last batch
            d.addBoth(lambda _: store.runner.write(journal.close))
        return d

    # -- stopping ------------------------------------------------------------


    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.reporter.stop()
        self.sweeper.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self.controller.running:
            self.controller.stopService()
        for chain in list(self.hosted):
            hosted = self.hosted.pop(chain)
            hosted.replica.stop()
            hosted.zk.stop()
        if not self.session.started:
            return succeed(None)
        return self.session.stop()
