"""The chains one port serves: a lone node's one replica, or a cluster server's many.

A request names its chain in ``Message.chain`` (empty: a lone node's only
chain); the router sends it to that chain's dispatcher.  A chain this server
does not serve (moved away, or not placed here yet) gets a retryable ERROR
carrying the shard map version the server knows, so a client holding an older
map reads the new one before it retries.  So does a key outside the range of
the shard the chain serves (a client routing by an older map): no chain ever
stores a key that is not its shard's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from kvtwist import wire
from kvtwist.chain.replica import Replica
from kvtwist.server.dispatch import Dispatcher, Found, Handler, answer_gets
from kvtwist.wire import Message

__all__ = ["Chains", "Router"]

LONE = ""


class Chains:
    """Replicas by chain id, and what the port asks of all of them together."""

    def __init__(self, replicas: dict[str, Replica] | None = None) -> None:
        self._replicas: dict[str, Replica] = dict(replicas or {})
        #: the shard map version this server acts on (0: none, a lone node)
        self.map_version = 0
        #: each chain's key range ``[start, end)`` (end None: to the last key), by
        #: the map of ``map_version``; a lone node's chain has none and takes any key
        self.ranges: dict[str, tuple[bytes, bytes | None]] = {}
        self._watchers: list[Callable[[str, Replica | None], None]] = []

    @classmethod
    def lone(cls, replica: Replica) -> Chains:
        return cls({LONE: replica})

    def get(self, chain: str) -> Replica | None:
        return self._replicas.get(chain)

    def __iter__(self) -> Iterator[tuple[str, Replica]]:
        return iter(list(self._replicas.items()))

    def __len__(self) -> int:
        return len(self._replicas)

    def add(self, chain: str, replica: Replica) -> None:
        if chain in self._replicas:
            raise ValueError(f"chain {chain!r} is served here already")
        self._replicas[chain] = replica
        for watch in self._watchers:
            watch(chain, replica)

    def remove(self, chain: str) -> Replica | None:
        replica = self._replicas.pop(chain, None)
        if replica is not None:
            for watch in self._watchers:
                watch(chain, None)
        return replica

    def watch(self, callback: Callable[[str, Replica | None], None]) -> None:
        """Call ``callback(chain, replica)`` when a chain is added (None: removed)."""
        self._watchers.append(callback)

    @property
    def only(self) -> Replica | None:
        """A lone node's replica; None on a cluster server."""
        return self._replicas.get(LONE) if len(self._replicas) == 1 else None

    @property
    def standalone(self) -> bool:
        """A lone node without ZooKeeper: it takes no chain links."""
        only = self.only
        return only is not None and only.standalone

    @property
    def congested(self) -> bool:
        return any(r.congested for r in self._replicas.values())

    def not_here(self, chain: str) -> Message:
        """The ERROR for a request of a chain this server does not serve."""
        if chain == LONE and LONE not in self._replicas:
            why = "this server is part of a cluster: name the request's chain (a cluster client)"
        elif chain != LONE and self.map_version == 0:
            why = f"chain {chain!r}: this node serves a lone chain, not a cluster's"
        else:
            why = f"chain {chain!r} is not served here (shard map version {self.map_version})"
        # a request that names no chain never succeeds here, however often it is sent
        reply = wire.error_reply(why, retry=chain != LONE and self.map_version > 0)
        reply.map_version = self.map_version
        return reply

    def misplaced(self, msg: Message) -> Message | None:
        """The ERROR for a request whose key (or scan) lies outside its chain's shard."""
        bounds = self.ranges.get(msg.chain)
        if bounds is None:
            return None
        start, end = bounds
        op = msg.opcode
        if op == wire.OP_RANGE:
            spec = msg.range
            low = spec.start if spec.HasField("start") else None
            high = spec.stop if spec.HasField("stop") else None
            inside = (low is not None and low >= start or start == b"") and (
                end is None or (high is not None and high <= end)
            )
            what = "scan"
        else:
            outside = [k for k in keys_of(msg) if not (start <= k and (end is None or k < end))]
            # SIZE, GETKEYS, ... name no key: the chain's whole content is its shard's
            inside = not outside
            what = f"key {outside[0][:40]!r}" if outside else ""
        if inside:
            return None
        reply = wire.error_reply(
            f"{what} is outside chain {msg.chain!r}'s shard "
            f"(shard map version {self.map_version}): read the map again",
            retry=True,
        )
        reply.map_version = self.map_version
        return reply

    def misplaced_run(self, msgs: list[Message]) -> list[Message | None] | None:
        """``misplaced`` of each request of a run of one chain; None when all are inside.

        Every routed GET and PUT batch comes through here, so their one key is
        checked where it is (``keys[0]``, ``entry.key``: the key the request
        uses) instead of through ``keys_of``, which cost a cluster server a
        sixth of its time answering pipelined GETs; any other request, or a key
        outside, takes the full check.
        """
        bounds = self.ranges.get(msgs[0].chain)
        if bounds is None:
            return None
        start, end = bounds
        if not start and end is None:  # the whole key space
            return None
        get, put = wire.OP_GET, wire.OP_PUT
        for m in msgs:
            op = m.opcode
            if op == get:
                keys = m.keys
                if len(keys) != 1:
                    break
                k: bytes | None = keys[0]
            elif op == put:
                k = m.entry.key or None
            else:
                break
            if k is not None and not (start <= k and (end is None or k < end)):
                break
        else:
            return None
        return [self.misplaced(m) for m in msgs]


def keys_of(msg: Message) -> list[bytes]:
    """The keys a request names: PUT, CAS, APPEND and SETRANGE in the entry; GET, DEL,
    INCR and RENAME (both names) in ``keys``; a MULTI those of its requests, and
    the keys it watches."""
    keys = [msg.entry.key] if msg.entry.key else []
    keys.extend(msg.keys)
    keys.extend(msg.watch_keys)
    for op in msg.ops:
        keys.extend(keys_of(op))
    return keys


class Router:
    """What a connection asks of "the dispatcher": each request to its chain's."""

    def __init__(self, chains: Chains, make: Callable[[Replica], Dispatcher]) -> None:
        self.chains = chains
        self._make = make
        self._by_chain: dict[str, Dispatcher] = {c: make(r) for c, r in chains}
        chains.watch(self._changed)

    def _changed(self, chain: str, replica: Replica | None) -> None:
        if replica is None:
            self._by_chain.pop(chain, None)
        else:
            self._by_chain[chain] = self._make(replica)

    def for_chain(self, chain: str) -> Dispatcher | None:
        return self._by_chain.get(chain)

    @property
    def only(self) -> Dispatcher | None:
        return self._by_chain.get(LONE) if len(self._by_chain) == 1 else None

    def handle(
        self, msg: Message, peer: Callable[[], str], handler: Handler | None = None
    ) -> Deferred[bytes]:
        d = self._by_chain.get(msg.chain)
        if d is None:
            return defer.succeed(wire.frame(self.chains.not_here(msg.chain)))
        if self.chains.ranges:
            wrong = self.chains.misplaced(msg)
            if wrong is not None:
                return defer.succeed(wire.frame(wrong))
        return d.handle(msg, peer, handler)

    def write_many(self, msgs: list[Message], peer: Callable[[], str]) -> Deferred[list[bytes]]:
        return self._runs(msgs, lambda d, run: d.write_many(run, peer))

    def get_many(
        self, msgs: list[Message], peer: Callable[[], str], room: int | None = None
    ) -> Deferred[list[Any]]:
        """GETs of one or more chains, in the order given, answered together.

        A connection's pipeline to a server that hosts several chains mixes
        their keys; answered one chain's run at a time, the run claims the
        connection's reply room and the next waits a turn, so a pipeline of
        alternating chains was answered a request or two per turn.  Here every
        chain's run is looked up in the same turn and the replies are built
        for the prefix that fits ``room``, as for one chain.
        """
        groups: list[list[Message]] = [[msgs[0]]]
        for m in msgs[1:]:
            if m.chain == groups[-1][0].chain:
                groups[-1].append(m)
            else:
                groups.append([m])
        if len(groups) == 1:
            return self._runs(msgs, lambda d, run: d.get_many(run, peer, room))
        parts = [
            self._runs(
                group,
                lambda d, run: d.find_many(run, peer, room),
                lambda d, run: d.get_many(run, peer),
                Found.built,
            )
            for group in groups
        ]
        return defer.gatherResults(parts).addCallback(answer_gets, room)

    def _runs(
        self,
        msgs: list[Message],
        call: Callable[[Dispatcher, list[Message]], Deferred[Any]],
        answers: Callable[[Dispatcher, list[Message]], Deferred[list[bytes]]] | None = None,
        built: Callable[[list[bytes]], Any] = list,
    ) -> Deferred[Any]:
        """A run of requests, all of one chain, through ``call``; refused here, or with
        some keys outside the shard, its reply frames (``answers``, by default ``call``,
        one request at a time) wrapped as ``call``'s result by ``built``."""
        d = self._by_chain.get(msgs[0].chain)
        if d is None:
            frames = [wire.frame(self.chains.not_here(msgs[0].chain))] * len(msgs)
            return defer.succeed(built(frames))
        if self.chains.ranges:
            wrong = self.chains.misplaced_run(msgs)
            if wrong is not None and any(w is not None for w in wrong):
                return self._split(msgs, wrong, d, answers or call).addCallback(built)
        return call(d, msgs)

    def _split(
        self,
        msgs: list[Message],
        wrong: list[Message | None],
        d: Dispatcher,
        call: Callable[[Dispatcher, list[Message]], Deferred[list[Any]]],
    ) -> Deferred[list[Any]]:
        """A run with misplaced keys: those refused in their places, the rest one by one."""
        parts = [
            defer.succeed([wire.frame(w)]) if w is not None else call(d, [m])
            for m, w in zip(msgs, wrong, strict=True)
        ]
        return defer.gatherResults(parts).addCallback(lambda ls: [f for part in ls for f in part])
