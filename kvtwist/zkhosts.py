"""Checking a ZooKeeper host string before anything hands it to kazoo.

kazoo parses ``HOST[:PORT][,HOST[:PORT]...][/CHROOT]`` only when a client is
made, deep inside a node's startup or a tool's connection, where a typo
becomes a traceback.  Every command checks its ``--zk`` here first, so a bad
one is a single line and exit status 2.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from kazoo.hosts import collect_hosts

#: The form every ``--zk`` takes, for messages.
FORM = "HOST:PORT[,HOST:PORT...]"

#: Exit status of a usage error in every kvtwist command.
USAGE = 2


class BadHosts(ValueError):
    """A ZooKeeper host string that does not parse; the message is one line."""


def check_hosts(hosts: str, option: str = "--zk") -> str:
    """``hosts`` unchanged if kazoo can use it, else BadHosts saying what is wrong."""
    try:
        parsed, _chroot = collect_hosts(hosts)
    except ValueError as e:
        raise BadHosts(f"{option} {hosts!r} is not {FORM}: {e}") from None
    if any(not host for host, _port in parsed):
        raise BadHosts(f"{option} {hosts!r} is not {FORM}: a host is empty")
    for item in hosts.partition("/")[0].split(","):
        if urlsplit("zk://" + item).port == 0:  # kazoo would quietly take 2181
            raise BadHosts(f"{option} {hosts!r} is not {FORM}: port 0 is out of range")
    return hosts
