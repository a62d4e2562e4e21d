"""``kvtwist-admin``: see a chain's members and health, restart an empty chain on
purpose, copy a store.

``status`` shows the chain record and one row per member: its role, op
numbers, lag behind the head, Sent list, uptime, version, disk use and
ZooKeeper session, from ZooKeeper and each member's STATS reply; it also lists
the nodes waiting to restart an empty chain.  ``health`` exits 0 only when the
chain has its members and a head and a tail that answer.  ``force-start``
accepts the loss of whatever the last configuration's members held and lets
one waiting node (the one with the most ops, or the one named) restart the
chain from its own copy.  ``backup`` writes the committed state at one op to
a checksummed file while the chain serves, and ``restore`` makes a data
directory of one (docs/operations.md).  ``copy`` copies every key and value from a running
node or chain -- kvtwist or the original C system -- into another
(docs/migrating.md).  Every command prints text for people, or JSON with
``-o json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoAuthError, NoNodeError

from kvtwist import __version__, admincluster
from kvtwist.adminbackup import backup_command, dial_with, restore_command
from kvtwist.adminstatus import (
    AskStats,
    ChainStatus,
    health_json,
    health_table,
    member_rows,
    problems,
    status_json,
    status_table,
)
from kvtwist.chain.record import ChainRecord
from kvtwist.membership import Member, format_address, parse_seq, validate_root
from kvtwist.zk import digest_acl
from kvtwist.zkhosts import USAGE, BadHosts, check_hosts

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


def _members(zk: KazooClient, root: str) -> list[Member]:
    """The member znodes in chain order (head first), as the nodes read them."""
    if not zk.exists(root):
        return []
    members = []
    for name in zk.get_children(root):
        if parse_seq(name) < 0:
            continue
        try:
            members.append(Member.from_znode(name, zk.get(f"{root}/{name}")[0]))
        except NoNodeError:
            continue  # it left meanwhile
    return sorted(members, key=lambda m: (m.seq, m.name))


def stats_asker(timeout: float, secure: Any = None, chain: str | None = None) -> AskStats:
    """Asks a member for STATS over the client protocol (with the TLS and token given);
    with ``chain``, of that chain on a server hosting many."""
    from kvtwist import wire
    from kvtwist.client.blocking import BlockingClient
    from kvtwist.client.protocol import KVError

    tls = getattr(secure, "tls", None)
    token = getattr(secure, "token", None)

    def ask(address: tuple[str, int]) -> Any:
        spec = format_address(address)
        request = wire.req_stats()
        if chain:
            request.chain = chain
        with BlockingClient.connect(spec, timeout=timeout, tls=tls, token=token) as c:
            reply = c.raw(request)
        if reply.opcode != wire.OP_STATS + 1:
            raise KVError(reply.error or f"reply opcode {reply.opcode} to STATS")
        return reply.stats

    return ask


def gather(zk: KazooClient, root: str, ask: AskStats) -> ChainStatus:
    record = _record(zk, root)
    waiting = [{"node_id": n, **info} for n, info in sorted(_waiting(zk, root).items())]
    return ChainStatus(
        root,
        record if record.version >= 0 else None,
        member_rows(_members(zk, root), ask),
        waiting,
    )


def status(zk: KazooClient, root: str, ask: AskStats, output: str = "table") -> int:
    chain = gather(zk, root, ask)
    print(status_json(chain) if output == "json" else status_table(chain))
    return 0


def health(zk: KazooClient, root: str, ask: AskStats, want: int, output: str = "table") -> int:
    found = problems(gather(zk, root, ask), want)
    print(health_json(found) if output == "json" else health_table(found))
    return 1 if found else 0


def force_start(
    zk: KazooClient, root: str, node_id: str | None, output: str = "table"
) -> int:
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
    if output == "json":
        print(json.dumps({"forced": node_id, "address": where, "op": op}, sort_keys=True))
    else:
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


def copy(
    source: str,
    target: str,
    timeout: float,
    secure: dict[str, Any] | None = None,
    output: str = "table",
) -> int:
    sides = secure or {}
    with (
        open_store(source, timeout, sides.get("source")) as src,
        open_store(target, timeout, sides.get("target")) as dst,
    ):
        started = time.monotonic()
        copied, vanished = copy_keys(src, dst)
        seconds = time.monotonic() - started
    if output == "json":
        body = {
            "copied": copied,
            "vanished": vanished,
            "seconds": round(seconds, 3),
            "source": source,
            "target": target,
        }
        print(json.dumps(body, sort_keys=True))
        return 0
    print(
        f"copied {copied} keys from {source} to {target} in {seconds:.1f}s"
        + (f" ({vanished} deleted at the source meanwhile)" if vanished else "")
    )
    return 0


#: The options every command takes, before or after its name.
OUTPUTS = ("table", "json")


def _common(p: argparse.ArgumentParser, top: bool) -> None:
    """The options shared by every command; on a subcommand they default to nothing, so
    that one given before the command name is not reset by the subcommand's parser."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    p.add_argument(
        "--zk", default=default("127.0.0.1:2181"), metavar="HOSTS",
        help="ZooKeeper hosts, HOST:PORT[,HOST:PORT...] (default 127.0.0.1:2181)",
    )
    p.add_argument(
        "--zk-root", default=default("/chain"), metavar="PATH",
        help="the chain's znode (default /chain)",
    )
    p.add_argument(
        "--zk-auth",
        default=default(None),
        metavar="USER:PASSWORD",
        help="ZooKeeper digest auth, as the nodes use it (needed by force-start "
        "when they run with --zk-auth)",
    )
    p.add_argument(
        "-o", "--output", choices=OUTPUTS, default=default("table"),
        help="table for people (the default) or json for programs",
    )


def _member_options(
    p: argparse.ArgumentParser, timeout: float = 5.0, what: str = "to answer STATS"
) -> None:
    """How status, health and backup reach the members: TLS, the client token, a timeout."""
    p.add_argument(
        "--timeout", type=float, default=timeout, metavar="SECONDS",
        help=f"how long a member has {what} (default {timeout:g})",
    )
    p.add_argument(
        "--tls-ca", metavar="FILE",
        help="speak TLS to the members, accepting only certificates signed by a CA in FILE",
    )
    p.add_argument(
        "--tls", action="store_true",
        help="speak TLS to the members, verifying them against the system's trust store",
    )
    p.add_argument(
        "--token-file", metavar="FILE",
        help="send the client token in FILE (the members' --auth-token-file)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvtwist-admin",
        description=(__doc__ or "").split("\n\n", 1)[1].strip().replace("``", "'"),
        epilog="exit status: 0 done (health: healthy); 1 the command failed (health: "
        "a problem); 2 a usage error or ZooKeeper out of reach",
    )
    parser.add_argument("--version", action="version", version=f"kvtwist-admin {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, top=False)
        return p

    st = command("status", "the chain record, one row per member, and the waiting nodes")
    _member_options(st)
    hl = command("health", "exit 0 only if the chain has its members and a head and a tail "
                 "that answer; otherwise print one line per problem and exit 1")
    _member_options(hl)
    hl.add_argument(
        "--members", type=int, default=1, metavar="N",
        help="how many members the chain must have (default 1)",
    )
    force = command("force-start", "let a waiting node restart an empty chain")
    force.add_argument("node_id", nargs="?", help="the node (default: the one with most ops)")
    bk = command(
        "backup",
        "write the committed state of the chain's tail (or of the node HOST:PORT) to a file",
    )
    bk.add_argument("node", nargs="?", metavar="HOST:PORT", help="back up this node instead")
    bk.add_argument("--out", required=True, metavar="FILE", help="the backup file to write")
    _member_options(bk, 30.0, "for each chunk")
    rs = command("restore", "check a backup file and make a data directory a node starts from")
    rs.add_argument("file", help="the backup file")
    rs.add_argument("--data-dir", required=True, metavar="DIR", help="the directory to prepare")
    rs.add_argument(
        "--force", action="store_true", help="replace the log and snapshots DIR holds"
    )
    cp = command("copy", "copy every key and value from one store into another")
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
    admincluster.add_commands(sub, _common, _member_options)
    return parser


def _usage(message: str) -> int:
    print(f"kvtwist-admin: {message}", file=sys.stderr)
    return USAGE


def _copy(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from kvtwist.client.protocol import ConnectionFailed, KVError
    from kvtwist.client.shell import UsageError, security

    for spec in (args.source, args.target):
        if spec.startswith("zk://"):
            try:
                check_hosts(spec[len("zk://") :].partition("/")[0], f"{spec}:")
            except BadHosts as e:
                return _usage(str(e))
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
        return copy(args.source, args.target, args.timeout, secure, args.output)
    except (ConnectionFailed, KVError, ValueError) as e:
        print(f"kvtwist-admin: {e}", file=sys.stderr)
        return 1


def _backup(parser: argparse.ArgumentParser, args: argparse.Namespace, root: str | None) -> int:
    """``backup``: of the node named, else of the chain under ``root``."""
    from kvtwist.client.shell import UsageError, security

    try:
        dial = dial_with(args.timeout, security(args))
    except UsageError as e:
        parser.error(str(e))
    if root is None:
        return backup_command(dial, args.out, args.output, args.node, list)
    zk = _connect(args)
    if zk is None:
        return USAGE
    try:
        return backup_command(dial, args.out, args.output, None, lambda: _members(zk, root))
    finally:
        zk.stop()
        zk.close()


def _connect(args: argparse.Namespace) -> KazooClient | None:
    """A started ZooKeeper client, or None (and one line said why)."""
    from kvtwist.kazoolog import silence

    silence()  # every retry would be a line; the admin says itself what failed
    if args.zk_auth is None:
        zk = KazooClient(args.zk)
    else:
        acl = digest_acl(args.zk_auth)
        zk = KazooClient(args.zk, auth_data=[("digest", args.zk_auth)], default_acl=acl)
    try:
        zk.start(timeout=10)
    except Exception as e:
        print(f"kvtwist-admin: cannot reach ZooKeeper at {args.zk}: {e}", file=sys.stderr)
        return None
    return zk


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "copy":
        return _copy(parser, args)
    if args.command == "restore":
        return restore_command(args.file, args.data_dir, args.force, args.output)
    if args.command == "backup" and args.node is not None:
        return _backup(parser, args, None)
    try:
        check_hosts(args.zk)
    except BadHosts as e:
        return _usage(str(e))
    try:
        root = validate_root(args.zk_root)
        if args.zk_auth is not None:
            digest_acl(args.zk_auth)  # a malformed USER:PASSWORD is a usage error
    except ValueError as e:
        parser.error(str(e))
    if args.command == "cluster" and (problem := admincluster.check_args(args)) is not None:
        parser.error(problem)
    ask: Any = None
    if args.command == "backup":
        return _backup(parser, args, root)
    if args.command in ("status", "health") or getattr(args, "verb", None) == "status":
        from kvtwist.client.shell import UsageError, security

        try:
            secure = security(args)
        except UsageError as e:
            parser.error(str(e))
        if args.command == "cluster":  # an asker per chain, by its id
            ask = functools.partial(stats_asker, args.timeout, secure)
        else:
            ask = stats_asker(args.timeout, secure)
    zk = _connect(args)
    if zk is None:
        # a monitor running health reads any failure as unhealthy: status 1, as documented
        return 1 if args.command == "health" else USAGE
    try:
        if args.command == "cluster":
            return admincluster.run(zk, args, ask)
        if args.command == "status":
            assert ask is not None
            return status(zk, root, ask, args.output)
        if args.command == "health":
            assert ask is not None
            return health(zk, root, ask, args.members, args.output)
        return force_start(zk, root, args.node_id, args.output)
    finally:
        zk.stop()
        zk.close()


if __name__ == "__main__":
    sys.exit(main())
