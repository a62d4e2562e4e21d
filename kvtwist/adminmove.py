"""``kvtwist-admin cluster move``, ``drain``, ``undrain`` and ``split``: ask the controller.

The admin never edits the shard map: the controller is its only writer.  These
commands check a request against the map and the live servers, add it to the
request record (``/kvtwist/NAME/requests``, :mod:`kvtwist.cluster.requests`)
with compare-and-set, and exit 0 once it is accepted; the controller carries
it out.  With ``--wait`` they wait, up to ``--wait-timeout`` seconds, until
it is done: for a move, the map and the chain's own ZooKeeper membership hold
the target and not the source; for a drain, the server is in no chain of
the map nor of any chain's membership; for a split, the map has the new
shard and every live server planned for its chain is a member of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient

from kvtwist.client.shell_syntax import escape
from kvtwist.cluster.requests import (
    BadRequests,
    Move,
    Refused,
    Requests,
    ShardSplit,
    check_cancel,
    check_drain,
    check_move,
    check_split,
    check_undrain,
)
from kvtwist.cluster.shardmap import BadMap, ClusterPaths, Server, ShardMap, check_name
from kvtwist.zk.cluster import read_map_sync, read_requests_sync, servers_sync, write_requests_sync

__all__ = ["VERBS", "add_commands", "check_args", "member_addresses", "run"]

VERBS = ("move", "drain", "undrain", "split")
#: how often ``--wait`` looks again
POLL = 0.25
#: compare-and-set attempts before giving up on a record others keep writing
ATTEMPTS = 20

Edit = Callable[[ShardMap, dict[str, Server], Requests], Requests]


def add_commands(verbs: Any, common: Any) -> None:
    """``move``, ``drain`` and ``undrain`` under the ``cluster`` verbs."""
    move = verbs.add_parser(
        "move", help="ask the controller to move a shard's chain from one server to another"
    )
    common(move, top=False)
    move.add_argument("name", help="the cluster's name")
    move.add_argument("shard", help="the shard, by the chain serving it (status: CHAIN)")
    move.add_argument("--to", metavar="SERVER", help="the server to move to")
    move.add_argument(
        "--cancel", action="store_true",
        help="cancel the shard's pending move instead: a target appended already leaves "
        "the chain again (--wait: until the chain is back at R members)",
    )
    move.add_argument(
        "--from", dest="source", metavar="SERVER",
        help="the member to take out (default: the one in the target's zone, else the "
        "one serving most chains)",
    )
    drain = verbs.add_parser(
        "drain", help="ask the controller to move every chain off a server, and place "
        "nothing new on it until undrain"
    )
    undrain = verbs.add_parser("undrain", help="end a drain: the server may be placed on again")
    split = verbs.add_parser(
        "split", help="ask the controller to cut a shard in two: the keys from AT_KEY on go "
        "to a new chain on the same servers"
    )
    common(split, top=False)
    split.add_argument("name", help="the cluster's name")
    split.add_argument("shard", help="the shard, by the chain serving it (status: CHAIN)")
    split.add_argument(
        "at", nargs="?", metavar="AT_KEY",
        help="the first key of the new shard (\\xHH is a byte; default: the middle of "
        "the shard's key range, not of its data)",
    )
    for p in (move, drain, undrain, split):
        if p is split:
            p.add_argument("--wait", action="store_true", help="wait until it is done")
            p.add_argument(
                "--wait-timeout", type=float, default=600.0, metavar="SECONDS",
                help="how long --wait waits (default 600); exit 1 when it passes",
            )
            continue
        if p is not move:
            common(p, top=False)
            p.add_argument("name", help="the cluster's name")
            p.add_argument("server", help="the server's id")
        if p is not undrain:
            p.add_argument("--wait", action="store_true", help="wait until it is done")
            p.add_argument(
                "--wait-timeout", type=float, default=600.0, metavar="SECONDS",
                help="how long --wait waits (default 600); exit 1 when it passes",
            )


def check_args(args: argparse.Namespace) -> None:
    """Raises BadMap or ValueError for a malformed server name or timeout."""
    for server in (getattr(args, "to", None), getattr(args, "source", None),
                   getattr(args, "server", None)):
        if server is not None:
            check_name("server", server)
    if getattr(args, "wait_timeout", 1.0) <= 0:
        raise ValueError("--wait-timeout must be positive")
    if args.verb == "move" and (args.to is None) == (not args.cancel):
        raise ValueError("move needs --to SERVER, or --cancel (not both)")
    if args.verb == "move" and args.cancel and args.source is not None:
        raise ValueError("--cancel takes no --from: it cancels the shard's pending move")
    if args.verb == "split" and args.at is not None:
        args.at = split_key(args.at)


def split_key(text: str) -> bytes:
    """AT_KEY as bytes; ValueError when it is empty or several keys."""
    from kvtwist.admincluster import parse_keys

    keys = parse_keys(text)
    if len(keys) != 1 or not keys[0]:
        raise ValueError(f"AT_KEY must be one key, not empty: {text!r}")
    return keys[0]


def run(zk: KazooClient, paths: ClusterPaths, args: argparse.Namespace) -> int:
    """One of :data:`VERBS`, on a started client; the exit status."""
    asked: list[Move] = []
    cut: list[ShardSplit] = []

    def move(m: ShardMap, live: dict[str, Server], requests: Requests) -> Requests:
        if args.cancel:
            left, mv = check_cancel(requests, args.shard)
            asked[:] = [mv]
            return left
        mv = check_move(m, live, requests, args.shard, args.to, args.source)
        asked[:] = [mv]
        return requests.with_move(mv)

    def drain(m: ShardMap, live: dict[str, Server], requests: Requests) -> Requests:
        return check_drain(m, live, requests, args.server)

    def undrain(m: ShardMap, live: dict[str, Server], requests: Requests) -> Requests:
        return check_undrain(requests, args.server)

    def split(m: ShardMap, live: dict[str, Server], requests: Requests) -> Requests:
        sp = check_split(m, requests, args.shard, args.at)
        cut[:] = [sp]
        return requests if requests.split_of(sp.chain) == sp else requests.with_split(sp)

    edit: Edit = {"move": move, "drain": drain, "undrain": undrain, "split": split}[args.verb]
    try:
        changed = edit_requests(zk, paths, edit)
    except (Refused, BadRequests, BadMap) as e:
        print(f"kvtwist-admin: {e}", file=sys.stderr)
        return 1
    if args.verb == "move" and args.cancel:
        what = f"cancel of the move of {asked[0].chain} from {asked[0].source} to " \
            f"{asked[0].target}"
        done = lambda: cancel_done(zk, paths, asked[0].chain)  # noqa: E731
    elif args.verb == "move":
        what = f"move of {asked[0].chain} from {asked[0].source} to {asked[0].target}"
        done = lambda: move_done(zk, paths, asked[0])  # noqa: E731
    elif args.verb == "split":
        what = f"split of {cut[0].chain} at {escape(cut[0].at)}"
        done = lambda: split_done(zk, paths, cut[0])  # noqa: E731
    else:
        what = f"{args.verb} of {args.server}"
        done = lambda: drain_done(zk, paths, args.server)  # noqa: E731
    result: dict[str, Any] = {"cluster": paths.name, "asked": what, "new": changed}
    if asked:
        result["move"] = {"chain": asked[0].chain, "from": asked[0].source, "to": asked[0].target}
    if cut:
        result["split"] = {"chain": cut[0].chain, "at": cut[0].at.hex()}
    status = 0
    if getattr(args, "wait", False):
        started = time.monotonic()
        result["done"] = wait_until(done, args.wait_timeout)
        result["waited_s"] = round(time.monotonic() - started, 3)
        status = 0 if result["done"] else 1
    if args.output == "json":
        print(json.dumps(result, sort_keys=True))
    elif "done" in result:
        state = "done" if result["done"] else "not done"
        print(f"{what}: {state} after {result['waited_s']:.1f} s")
    else:
        again = "" if changed else " (asked already)"
        print(f"{what}: asked{again}; the controller carries it out "
              f"('kvtwist-admin cluster status {paths.name}' shows it)")
    return status


def edit_requests(zk: KazooClient, paths: ClusterPaths, edit: Edit) -> bool:
    """Apply ``edit`` to the request record with compare-and-set, checked against the
    map and live servers of the moment; whether the record changed."""
    for _ in range(ATTEMPTS):
        data, _version = read_map_sync(zk, paths)
        if data is None:
            raise Refused(f"no cluster {paths.name} (no {paths.map})")
        m = ShardMap.decode(data)
        live = servers_sync(zk, paths)
        raw, version = read_requests_sync(zk, paths)
        requests = Requests.decode(raw)
        new = edit(m, live, requests)
        if new == requests:
            return False
        if write_requests_sync(zk, paths, new.encode(), version):
            return True
    raise Refused(f"the request record of {paths.name} keeps changing; try again")


def member_addresses(zk: KazooClient, paths: ClusterPaths, chain: str) -> list[str]:
    """The chain's member znodes' addresses, head first, as ZooKeeper lists them."""
    from kvtwist.admin import _members
    from kvtwist.membership import format_address

    return [format_address(mb.address) for mb in _members(zk, paths.chain(chain)) if mb.address]


def _address(zk: KazooClient, paths: ClusterPaths, server: str) -> str | None:
    live = servers_sync(zk, paths)
    return live[server].address if server in live else None


def move_done(zk: KazooClient, paths: ClusterPaths, move: Move) -> bool:
    """The move's chain has the target and not the source, in the map and as ZooKeeper
    lists its members (the source's replica stopped and deleted its znode)."""
    data, _ = read_map_sync(zk, paths)
    if data is None:
        return False
    plan = ShardMap.decode(data).chains.get(move.chain)
    if plan is None or move.source in plan.members or move.target not in plan.members:
        return False
    listed = member_addresses(zk, paths, move.chain)
    source, target = _address(zk, paths, move.source), _address(zk, paths, move.target)
    return target in listed and source not in listed


def cancel_done(zk: KazooClient, paths: ClusterPaths, chain: str) -> bool:
    """The chain is back at R members (or gone), so nothing of the move is left."""
    data, _ = read_map_sync(zk, paths)
    if data is None:
        return True
    m = ShardMap.decode(data)
    plan = m.chains.get(chain)
    return plan is None or len(plan.members) <= m.replicas


def split_done(zk: KazooClient, paths: ClusterPaths, split: ShardSplit) -> bool:
    """The map has a shard from the split key on, and every live server planned for
    its chain is a member of that chain as ZooKeeper lists them."""
    data, _ = read_map_sync(zk, paths)
    if data is None:
        return False
    m = ShardMap.decode(data)
    shard = next((s for s in m.shards if s.start == split.at), None)
    if shard is None:
        return False
    live = servers_sync(zk, paths)
    listed = set(member_addresses(zk, paths, shard.chain))
    planned = [live[s].address for s in m.chains[shard.chain].members if s in live]
    return bool(planned) and all(a in listed for a in planned)


def drain_done(zk: KazooClient, paths: ClusterPaths, server: str) -> bool:
    """The server is in no chain of the map, nor in any chain's membership."""
    data, _ = read_map_sync(zk, paths)
    if data is None:
        return False
    m = ShardMap.decode(data)
    if m.chains_of(server):
        return False
    address = _address(zk, paths, server)
    return address is None or all(
        address not in member_addresses(zk, paths, cid) for cid in m.chains
    )


def wait_until(done: Callable[[], bool], timeout: float) -> bool:
    """Whether ``done()`` became true within ``timeout`` seconds (looking every POLL)."""
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
