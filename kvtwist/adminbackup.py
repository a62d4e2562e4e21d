"""``kvtwist-admin backup`` and ``restore``: the commands around kvtwist.backup.

``backup`` reads the committed state of one node (the one named, or the
chain's tail, which has committed the most) and writes it to a file;
``restore`` checks a file and makes a data directory of it.  Both print one
line, or one JSON object with ``-o json``; every failure is one line on
stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kvtwist.backup import Backup, BadBackup, fetch, restore, save
from kvtwist.membership import Member, format_address
from kvtwist.wire import Message

#: Opens a connection to one node and returns a function sending one request.
Dial = Callable[[str], Any]


def dial_with(timeout: float, secure: Any = None) -> Dial:
    """A BlockingClient of one node, with the TLS and token given (a context manager)."""
    from kvtwist.client.blocking import BlockingClient

    tls = getattr(secure, "tls", None)
    token = getattr(secure, "token", None)

    def dial(address: str) -> Any:
        return BlockingClient.connect(address, timeout=timeout, tls=tls, token=token)

    return dial


def take_backup(dial: Dial, address: str) -> Backup:
    """The backup of the node at ``address``; BadBackup or a client error if it fails."""
    with dial(address) as client:

        def ask(msg: Message) -> Message:
            reply: Message = client.raw(msg)
            return reply

        return fetch(ask)


def from_chain(dial: Dial, members: Sequence[Member]) -> tuple[Backup, str]:
    """A backup from the tail, else from the member nearest to it that answers.

    Every member's committed state is committed by the chain; the tail's is
    the newest.
    """
    from kvtwist.client.protocol import ConnectionFailed, KVError

    reasons = []
    for m in reversed(members):
        if m.address is None:
            continue
        where = format_address(m.address)
        try:
            return take_backup(dial, where), where
        except (BadBackup, ConnectionFailed, KVError) as e:
            reasons.append(f"{m.name} at {where}: {e}")
    if not reasons:
        raise BadBackup("the chain has no members to back up")
    raise BadBackup("no member gave a backup: " + "; ".join(reasons))


def report_backup(backup: Backup, source: str, out: str, size: int, output: str) -> None:
    if output == "json":
        body = {
            "file": out,
            "op": backup.seq,
            "epoch": backup.epoch,
            "keys": len(backup.keys),
            "clients": len(backup.clients),
            "bytes": size,
            "source": source,
        }
        print(json.dumps(body, sort_keys=True))
        return
    print(
        f"backup of {len(backup.keys)} keys at op {backup.seq} (epoch {backup.epoch}) "
        f"from {source} written to {out} ({size} bytes)"
    )


def backup_command(
    dial: Dial, out: str, output: str, address: str | None, members: Callable[[], list[Member]]
) -> int:
    """``backup``: from ``address``, or from the chain ``members()`` lists."""
    from kvtwist.client.protocol import ConnectionFailed, KVError

    try:
        if address is not None:
            backup, source = take_backup(dial, address), address
        else:
            backup, source = from_chain(dial, members())
        size = save(backup, out)
    except (BadBackup, ConnectionFailed, KVError, ValueError) as e:
        print(f"kvtwist-admin: backup failed: {e}", file=sys.stderr)
        return 1
    report_backup(backup, source, out, size, output)
    return 0


def restore_command(path: str, data_dir: str, force: bool, output: str) -> int:
    """``restore``: check ``path`` and prepare ``data_dir`` from it."""
    try:
        backup = restore(path, data_dir, force)
    except BadBackup as e:
        print(f"kvtwist-admin: restore failed: {e}", file=sys.stderr)
        return 1
    if output == "json":
        body = {"data_dir": data_dir, "op": backup.seq, "epoch": backup.epoch,
                "keys": len(backup.keys)}
        print(json.dumps(body, sort_keys=True))
    else:
        print(
            f"restored {len(backup.keys)} keys at op {backup.seq} (epoch {backup.epoch}) "
            f"into {data_dir}"
        )
    return 0
