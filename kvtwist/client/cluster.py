"""A client of a cluster of many chains: the calls of ChainClient, routed by the shard map.

It watches the cluster's map in ZooKeeper and keeps one ChainClient per chain
(rooted at ``ClusterPaths(name).chain(id)``, all on one ZooKeeper session and
one connection pool), each naming its chain in every request.  A single-key
operation goes to its key's shard: writes to the chain's head, reads to its
tail, as ChainClient does.  SIZE, HEIGHT, GETKEYS, GETVALUES and RANGE fan
out over the shards in key order and merge: each shard's part is consistent
on its own, but the whole is not one snapshot (a write to another shard may
land between two parts).  An ERROR carrying a ``map_version`` (the server
does not serve that chain under the map it knows) makes the client re-read
the map, route again and retry, within the deadline.

VERIFY and STATS are refused: op numbers and statistics belong to one chain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.client.api import Client, Data, Stats, as_bytes
from kvtwist.client.chain import DEFAULT_DEADLINE, ChainClient
from kvtwist.client.protocol import ConnectionFailed, ConnectionPool, KVError
from kvtwist.cluster.shardmap import BadMap, ClusterPaths, Shard, ShardMap
from kvtwist.cluster.store import ClusterStore
from kvtwist.tls import ClientTLS
from kvtwist.wire import Message

__all__ = ["ClusterClient", "StaleMap"]

log = Logger(namespace="kvtwist.client")

#: Makes the client of one chain, by chain id: anything with ``raw(msg)``.
ChainFactory = Callable[[str], Any]


class StaleMap(Exception):
    """A server answered that it does not serve the chain under the map it knows."""

    def __init__(self, version: int, reason: str) -> None:
        super().__init__(reason or f"wrong shard (the server knows map version {version})")
        self.version = version


def _checked(reply: Message) -> Message:
    if reply.opcode == wire.OP_ERROR and reply.map_version:
        raise StaleMap(int(reply.map_version), reply.error)
    return reply


def _clamp(shard: Shard, start: bytes | None, stop: bytes | None) -> tuple[bytes, bytes | None]:
    """The part of ``[start, stop)`` inside ``shard``."""
    lo = shard.start if start is None or start < shard.start else start
    if shard.end is None:
        return lo, stop
    return lo, shard.end if stop is None or stop > shard.end else stop


class ClusterClient(Client):
    """Routes each request by the shard map to its chain's ChainClient; see the module."""

    def __init__(
        self,
        reactor: Any,
        store: ClusterStore,
        chain_client: ChainFactory,
        deadline: float | None = DEFAULT_DEADLINE,
        name: str = "",
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.store = store
        self.deadline = deadline
        self.name = name
        self.map: ShardMap | None = None
        self._make_chain = chain_client
        self._chains: dict[str, Any] = {}
        self._closers: list[Callable[[], Any]] = []

    @classmethod
    def connect(
        cls,
        reactor: Any,
        zk_hosts: str,
        name: str,
        deadline: float | None = DEFAULT_DEADLINE,
        session_timeout: float = 10.0,
        *,
        tls: ClientTLS | None = None,
        token: bytes | None = None,
    ) -> Deferred[ClusterClient]:
        """Connect to ZooKeeper and read cluster ``name``'s map, within ``deadline``.

        It only reads ZooKeeper, so it needs no ZooKeeper credentials.  Fails
        with ConnectionFailed when ZooKeeper is out of reach or the cluster
        has no map.
        """
        from kvtwist.zk.cluster import ChainMembers, ZooKeeperClusterStore, open_session

        paths = ClusterPaths(name)
        pool = ConnectionPool(reactor, timeout=3, tls=tls, token=token)

        def opened(session: Any) -> Deferred[ClusterClient]:
            def chain(cid: str) -> ChainClient:
                members = ChainMembers(session, paths.chain(cid))
                c = ChainClient(reactor, members, deadline, tls=tls, token=token, chain=cid)
                c.pool = pool  # one connection per server, shared by its chains
                members.watch_members(c._set_view)
                return c

            client = cls(reactor, ZooKeeperClusterStore(session, paths), chain, deadline, name)
            client._closers += [pool.close, session.stop]
            return client.start()

        def failed(f: Failure) -> Failure:
            raise ConnectionFailed(
                f"cannot reach ZooKeeper at {zk_hosts}: {f.getErrorMessage()}"
            )

        timeout = 15.0 if deadline is None else deadline
        return open_session(reactor, zk_hosts, timeout, session_timeout).addCallbacks(
            opened, failed
        )

    def start(self) -> Deferred[ClusterClient]:
        """Watch the map and read it once; fails (closing) when there is none."""
        self.store.watch_map(self._map_seen)

        def first(value: tuple[bytes | None, int]) -> Any:
            self._map_seen(*value)
            if self.map is None:
                where = self.name or "the cluster"
                return self.close().addCallback(
                    lambda _: Failure(ConnectionFailed(f"no shard map for cluster {where}"))
                )
            return self

        return self.store.read_map().addCallback(first)

    def _map_seen(self, data: bytes | None, version: int) -> None:
        if data is None:
            return
        try:
            m = ShardMap.decode(data)
        except BadMap as e:
            log.error("cluster {name}: the shard map is unreadable: {e}", name=self.name, e=e)
            return
        if self.map is None or m.version > self.map.version:
            self.map = m

    def _refresh(self) -> Deferred[None]:
        return self.store.read_map().addCallbacks(
            lambda v: self._map_seen(*v), _unless_cancelled
        )

    def chain(self, chain_id: str) -> Any:
        """The client of one chain (made on first use)."""
        c = self._chains.get(chain_id)
        if c is None:
            c = self._chains[chain_id] = self._make_chain(chain_id)
        return c

    # -- retrying under the newest map -------------------------------------------------

    @inlineCallbacks
    def _retrying(
        self, action: Callable[[ShardMap, int], Deferred[Any]], why: list[str]
    ) -> Generator[Deferred[Any], Any, Any]:
        """``action(map, attempt)`` until it does not raise StaleMap, re-reading the map
        and backing off between attempts; ``why[0]`` is the last refusal."""
        attempt = 0
        while True:
            m = self.map
            if m is not None:
                try:
                    return (yield action(m, attempt))
                except StaleMap as e:
                    why[0] = f"{e} (this client has map version {m.version})"
            attempt += 1
            yield self._refresh()
            yield deferLater(self.reactor, min(0.05 * 2 ** min(attempt, 4), 0.5), lambda: None)

    def _bounded(self, d: Deferred[Any], why: list[str]) -> Deferred[Any]:
        if self.deadline is None:
            return d

        def gave_up(_: Any, seconds: float) -> Failure:
            return Failure(KVError(f"gave up after {seconds:g}s: {why[0]}", retry=True))

        return d.addTimeout(self.deadline, self.reactor, onTimeoutCancel=gave_up)

    def _why(self) -> list[str]:
        return [f"no answer from cluster {self.name} in time"]

    def _send(self, msg: Message, write: bool) -> Deferred[Message]:
        key = request_key(msg)

        def action(m: ShardMap, attempt: int) -> Deferred[Message]:
            sending = msg
            if attempt and write:  # an earlier attempt may have reached a head: say so
                sending = Message()
                sending.CopyFrom(msg)
                sending.resend = True
            chain = self.chain(m.shard_for(key).chain)
            return chain.raw(sending).addCallback(_checked)

        why = self._why()
        return self._bounded(self._retrying(action, why), why)

    def _each_shard(self, request: Callable[[], Message]) -> Deferred[list[Message]]:
        """``request()`` sent to every shard's chain at once; the replies in key order."""

        def action(m: ShardMap, attempt: int) -> Deferred[list[Message]]:
            sends = []
            for shard in m.shards:
                sends.append(self.chain(shard.chain).raw(request()).addCallback(_checked))
            return defer.gatherResults(sends, consumeErrors=True).addErrback(_first)

        why = self._why()
        return self._bounded(self._retrying(action, why), why).addCallback(
            lambda replies: [wire_check(r) for r in replies]
        )

    # -- the fan-out calls ------------------------------------------------------------

    def size(self) -> Deferred[int]:
        return self._each_shard(wire.req_size).addCallback(
            lambda rs: sum(int(r.result) for r in rs)
        )

    def height(self) -> Deferred[int]:
        """The tallest shard's tree."""
        return self._each_shard(wire.req_height).addCallback(
            lambda rs: max(int(r.result) for r in rs)
        )

    def keys(self) -> Deferred[list[bytes]]:
        return self._each_shard(wire.req_getkeys).addCallback(
            lambda rs: [bytes(k) for r in rs for k in r.keys]
        )

    def values(self) -> Deferred[list[bytes]]:
        return self._each_shard(wire.req_getvalues).addCallback(
            lambda rs: [bytes(v) for r in rs for v in r.values]
        )

    def range(
        self, start: Data | None = None, stop: Data | None = None, limit: int = 0
    ) -> Deferred[list[tuple[bytes, bytes]]]:
        """Entries with start <= key < stop in key order, at most ``limit`` (0: all),
        shard after shard; each shard's part is asked for only what is still wanted."""
        lo = None if start is None else as_bytes(start)
        hi = None if stop is None else as_bytes(stop)
        why = self._why()
        return self._bounded(self._scan(lo, hi, limit, why), why)

    @inlineCallbacks
    def _scan(
        self, start: bytes | None, stop: bytes | None, limit: int, why: list[str]
    ) -> Generator[Deferred[Any], Any, list[tuple[bytes, bytes]]]:
        out: list[tuple[bytes, bytes]] = []
        cursor = start
        while True:
            if stop is not None and cursor is not None and cursor >= stop:
                return out
            want = limit - len(out) if limit else 0
            if limit and want <= 0:
                return out
            piece = functools.partial(self._piece, cursor=cursor, stop=stop, want=want)
            reply, end = yield self._retrying(piece, why)
            out += [(bytes(k), bytes(v)) for k, v in zip(reply.keys, reply.values, strict=True)]
            if end is None:
                return out
            cursor = end

    def _piece(
        self, m: ShardMap, attempt: int, *, cursor: bytes | None, stop: bytes | None, want: int
    ) -> Deferred[tuple[Message, bytes | None]]:
        """RANGE of the shard holding ``cursor``, clamped to it; with the shard's end."""
        shard = m.shard_for(cursor or b"")
        lo, hi = _clamp(shard, cursor, stop)
        msg = wire.req_range(lo, hi, want)
        d = self.chain(shard.chain).raw(msg).addCallback(_checked)
        return d.addCallback(lambda r: (wire_check(r), shard.end))

    # -- what a cluster cannot answer ------------------------------------------------------

    def verify(self, op_n: int) -> Deferred[bool]:
        return defer.fail(KVError("VERIFY is per chain: op numbers are not cluster-wide"))

    def stats(self) -> Deferred[Stats]:
        return defer.fail(KVError("STATS is per server: ask kvtwist-admin cluster status"))

    def close(self) -> Deferred[None]:
        closers, self._closers = self._closers, []
        for close in closers[:-1]:
            close()
        if closers:
            return defer.maybeDeferred(closers[-1]).addCallback(lambda _: None)
        return defer.succeed(None)


def _unless_cancelled(f: Failure) -> Failure | None:
    """A failed map read is tried again later, but a cancellation must go through."""
    return f if f.check(defer.CancelledError) else None


def request_key(msg: Message) -> bytes:
    """The key a single-key request is for: its entry's (PUT, CAS, APPEND) or its first."""
    if msg.HasField("entry"):
        return bytes(msg.entry.key)
    return bytes(msg.keys[0]) if msg.keys else b""


def _first(f: Failure) -> Failure:
    """The failure of the first request that failed, not gatherResults' wrapper."""
    if isinstance(f.value, defer.FirstError):
        sub: Failure = f.value.subFailure
        return sub
    return f


def wire_check(reply: Message) -> Message:
    """Raise KVError for an ERROR reply (after StaleMap was dealt with), else return it."""
    if reply.opcode == wire.OP_ERROR:
        raise KVError(reply.error, reply.retry)
    return reply
