"""``kvtwist-admin``: look at a chain's record, restart an empty chain on purpose,
copy a store.

``status`` prints the chain record (epoch, last configuration), the current
members and the nodes waiting to restart an empty chain.  ``force-start``
accepts the loss of whatever the last configuration's members held and lets
one waiting node (the one with the most ops, or the one named) restart the
chain from its own copy.  ``copy`` copies every key and value from a running
node or chain -- kvtwist or the original C system -- into another
(docs/migrating.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoAuthError, NoNodeError

from kvtwist.chain.record import ChainRecord
from kvtwist.membership import parse_address, validate_root
from kvtwist.zk import digest_acl

#: The two stores of ``copy``; each has its own TLS and token options.
SIDES = ("source", "target")


def _record(zk: KazooClient, root: str) -> ChainRecord:
    try:
        data, stat = zk.get(f"{root}-state")
    except NoNodeError:
        return ChainRecord()
    return ChainRecord.decode(data, stat.version)


def _waiting(zk: KazooClient, root: str) -> dict[str, dict[str, object]]:
    base = f"{root}-waiting"
    out: dict[str, dict[str, object]] = {}
    try:
        names = zk.get_children(base)
    except NoNodeError:
        return out
    for name in names:
        try:
            out[name] = json.loads(zk.get(f"{base}/{name}")[0])
        except (NoNodeError, ValueError):
            continue
    return out


def status(zk: KazooClient, root: str) -> int:
    record = _record(zk, root)
    print(f"record      {record.describe() if record.version >= 0 else 'none yet'}")
    members = []
    if zk.exists(root):
        for name in sorted(zk.get_children(root)):
            try:
                address = parse_address(zk.get(f"{root}/{name}")[0])
            except NoNodeError:
                continue
            members.append(f"{name} ({address[0]}:{address[1]})" if address else name)
    print(f"members     {' -> '.join(members) or 'none'}")
    for node_id, info in sorted(_waiting(zk, root).items()):
        print(
            f"waiting     {node_id} at {info.get('address')}: op {info.get('last_op')}, "
            f"epoch {info.get('epoch')}, last name {info.get('name') or '-'}"
        )
    return 0


def force_start(zk: KazooClient, root: str, node_id: str | None) -> int:
    if zk.exists(root) and zk.get_children(root):
        print("kvtwist-admin: the chain has members; nothing to force", file=sys.stderr)
        return 1
    waiting = _waiting(zk, root)
    if not waiting:
        print("kvtwist-admin: no node is waiting to restart the chain", file=sys.stderr)
        return 1
    if node_id is None:

        def progress(n: str) -> tuple[int, int]:
            return int(str(waiting[n].get("epoch", 0))), int(str(waiting[n].get("last_op", 0)))

        node_id = max(waiting, key=progress)
    elif node_id not in waiting:
        print(f"kvtwist-admin: node {node_id} is not waiting", file=sys.stderr)
        return 1
    record = _record(zk, root)
    new = ChainRecord(record.epoch, record.config, record.members, node_id)
    try:
        if record.version < 0:
            zk.create(f"{root}-state", new.encode(), makepath=True)
        else:
            zk.set(f"{root}-state", new.encode(), version=record.version)
    except BadVersionError:
        print("kvtwist-admin: the record changed meanwhile; try again", file=sys.stderr)
        return 1
    except NoAuthError:
        print(
            "kvtwist-admin: ZooKeeper refused the change: the chain's znodes are protected, "
            "give the nodes' --zk-auth USER:PASSWORD",
            file=sys.stderr,
        )
        return 1
    info = waiting[node_id]
    where, op = info.get("address"), info.get("last_op")
    print(f"node {node_id} at {where} may restart the chain from op {op}")
    return 0


def open_store(spec: str, timeout: float, secure: Any = None) -> Any:
    """A blocking client of ``HOST:PORT`` (one node) or ``zk://HOSTS/ROOT`` (a chain).

    ``secure`` is a ``kvtwist.client.shell.Security``: the TLS and the client
    token to use (None: plain, no token).
    """
    from kvtwist.client.blocking import BlockingClient
    from kvtwist.client.chain import ChainClient

    tls = getattr(secure, "tls", None)
    token = getattr(secure, "token", None)
    if spec.startswith("zk://"):
        hosts, slash, root = spec[len("zk://") :].partition("/")
        root = validate_root("/" + root if slash else "/chain")

        def make(reactor: Any) -> Any:
            return ChainClient.connect(
                reactor, hosts, root, deadline=timeout, tls=tls, token=token
            )

        return BlockingClient(make, timeout=timeout, description=spec)
    return BlockingClient.connect(spec, timeout=timeout, tls=tls, token=token)


def copy_keys(src: Any, dst: Any, page: int = 1000) -> tuple[int, int]:
    """Copy every key; returns (copied, vanished meanwhile).

    GETKEYS then GET per key works against the original C servers too; a store
    too big for one listing (kvtwist's --max-reply) is read page by page with
    RANGE instead.
    """
    from kvtwist.client.protocol import KVError

    copied = vanished = 0
    try:
        keys = src.keys()
    except KVError as e:
        if "RANGE" not in e.reason:
            raise
        start: bytes | None = None
        while True:
            try:
                rows = src.range(start, None, page)
            except KVError as e:
                if "RANGE" not in e.reason or page == 1:
                    raise
                page = max(1, page // 4)  # the page is too big for the reply limit
                continue
            for key, value in rows:
                dst.put(key, value)
                copied += 1
            if len(rows) < page:
                return copied, vanished
            start = rows[-1][0] + b"\x00"  # the next key in bytewise order
    for key in keys:
        value = src.get(key)
        if value is None:
            vanished += 1  # deleted since the listing
            continue
        dst.put(key, value)
        copied += 1
    return copied, vanished


def copy(source: str, target: str, timeout: float, secure: dict[str, Any] | None = None) -> int:
    sides = secure or {}
    with (
        open_store(source, timeout, sides.get("source")) as src,
        open_store(target, timeout, sides.get("target")) as dst,
    ):
        started = time.monotonic()
        copied, vanished = copy_keys(src, dst)
        seconds = time.monotonic() - started
    print(
        f"copied {copied} keys from {source} to {target} in {seconds:.1f}s"
        + (f" ({vanished} deleted at the source meanwhile)" if vanished else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvtwist-admin", description=__doc__.split("\n")[0])
    parser.add_argument("--zk", default="127.0.0.1:2181", help="ZooKeeper hosts")
    parser.add_argument("--zk-root", default="/chain", help="the chain's znode")
    parser.add_argument(
        "--zk-auth",
        metavar="USER:PASSWORD",
        help="ZooKeeper digest auth, as the nodes use it (needed by force-start "
        "when they run with --zk-auth)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="the chain record, members and waiting nodes")
    force = sub.add_parser("force-start", help="let a waiting node restart an empty chain")
    force.add_argument("node_id", nargs="?", help="the node (default: the one with most ops)")
    cp = sub.add_parser("copy", help="copy every key and value from one store into another")
    cp.add_argument("source", help="HOST:PORT of a node, or zk://HOSTS/ROOT of a chain")
    cp.add_argument("target", help="HOST:PORT of a node, or zk://HOSTS/ROOT of a chain")
    cp.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    for side in SIDES:
        cp.add_argument(
            f"--{side}-tls-ca",
            metavar="FILE",
            help=f"speak TLS to the {side}, accepting only a certificate signed by a CA in FILE",
        )
        cp.add_argument(
            f"--{side}-tls",
            action="store_true",
            help=f"speak TLS to the {side}, verifying it against the system's trust store",
        )
        cp.add_argument(
            f"--{side}-token-file",
            metavar="FILE",
            help=f"send the client token in FILE to the {side} (its nodes' --auth-token-file)",
        )
    args = parser.parse_args(argv)
    if args.command == "copy":
        from kvtwist.client.protocol import ConnectionFailed, KVError
        from kvtwist.client.shell import UsageError, security

        try:
            secure = {
                side: security(
                    argparse.Namespace(
                        tls_ca=getattr(args, f"{side}_tls_ca"),
                        tls=getattr(args, f"{side}_tls"),
                        token_file=getattr(args, f"{side}_token_file"),
                    )
                )
                for side in SIDES
            }
        except UsageError as e:
            parser.error(str(e))
        try:
            return copy(args.source, args.target, args.timeout, secure)
        except (ConnectionFailed, KVError, ValueError) as e:
            print(f"kvtwist-admin: {e}", file=sys.stderr)
            return 1
    try:
        root = validate_root(args.zk_root)
        acl = digest_acl(args.zk_auth) if args.zk_auth is not None else None
    except ValueError as e:
        parser.error(str(e))
    if acl is None:
        zk = KazooClient(args.zk)
    else:
        zk = KazooClient(args.zk, auth_data=[("digest", args.zk_auth)], default_acl=acl)
    try:
        zk.start(timeout=10)
    except Exception as e:
        print(f"kvtwist-admin: cannot reach ZooKeeper at {args.zk}: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "status":
            return status(zk, root)
        return force_start(zk, root, args.node_id)
    finally:
        zk.stop()
        zk.close()


if __name__ == "__main__":
    sys.exit(main())
