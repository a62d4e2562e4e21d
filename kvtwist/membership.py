"""The chain's membership as values: znode names, member addresses, chain roots.

Pure: no ZooKeeper client, no reactor.  The chain layout: every child of the
root named ``node<10 digits>`` is a member whose data is its "host:port";
sequence order is chain order (head first).  Anything that is not a chain
member (such as the join lock) lives in a *sibling* of the root, never under
it.  The adapter that reads these from ZooKeeper is :mod:`kvtwist.zk`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MEMBER_PREFIX",
    "Member",
    "Membership",
    "format_address",
    "parse_address",
    "parse_seq",
    "sibling_path",
    "validate_root",
]

MEMBER_PREFIX = "node"
_MEMBER_RE = re.compile(r"node([0-9]+)\Z")
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?\Z")
# Characters ZooKeeper refuses in a path (PathUtils.validatePath).
_BAD_PATH_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\uf8ff\ufff0-\uffff]")


def parse_seq(name: str) -> int:
    """The sequence number of a ``node<digits>`` znode name, or -1.

    ZooKeeper appends a 10-digit counter to sequential nodes; it orders the chain.
    """
    match = _MEMBER_RE.match(name)
    return int(match.group(1)) if match else -1


def parse_address(data: bytes | None) -> tuple[str, int] | None:
    """Parse a member's znode data, ASCII ``host:port``, or return None.

    Member data is written by other processes (possibly C clients, which add a
    trailing NUL), so junk must never raise: it yields None and the member is
    shown without an address.  IPv6 hosts must be bracketed, ``[::1]:7000``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        return None
    raw = bytes(data)
    if raw.endswith(b"\x00"):
        raw = raw[:-1]
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not _PORT_RE.match(port_text):
        return None
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _IPV6_RE.match(host) or ":" not in host:
            return None
    elif not _HOSTNAME_RE.match(host):
        return None
    return host, port


def format_address(address: tuple[str, int] | None) -> str:
    """``host:port`` as members advertise it, an IPv6 host in brackets ('' for None)."""
    if not address:
        return ""
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    return f"{host}:{address[1]}"


def validate_root(path: str) -> str:
    """Check ``path`` is usable as a chain root and return it unchanged.

    Enforces ZooKeeper's path rules up front so a typo fails with a clear
    message at startup instead of a BadArgumentsError deep inside kazoo.
    """
    if not isinstance(path, str):
        raise ValueError(f"chain root must be a string, not {type(path).__name__}")
    if not path:
        raise ValueError("chain root must not be empty")
    if not path.startswith("/"):
        raise ValueError(f"chain root {path!r} must start with '/'")
    if path == "/":
        raise ValueError("chain root must not be '/': every child of the root is a member")
    if path.endswith("/"):
        raise ValueError(f"chain root {path!r} must not end with '/'")
    bad = _BAD_PATH_CHARS.search(path)
    if bad:
        raise ValueError(f"chain root {path!r} contains a forbidden character {bad.group()!r}")
    for segment in path[1:].split("/"):
        if segment == "":
            raise ValueError(f"chain root {path!r} has an empty segment ('//')")
        if segment in (".", ".."):
            raise ValueError(f"chain root {path!r} has a relative segment {segment!r}")
    if path == "/zookeeper" or path.startswith("/zookeeper/"):
        raise ValueError(f"chain root {path!r} is inside ZooKeeper's reserved /zookeeper")
    return path


def sibling_path(root: str, suffix: str) -> str:
    """``{root}-{suffix}``: beside the root, never under it (every child of
    the root is read as a chain member)."""
    if not suffix or "/" in suffix:
        raise ValueError(f"suffix must be a non-empty name without '/': {suffix!r}")
    return validate_root(f"{root}-{suffix}")


@dataclass(frozen=True)
class Member:
    """One chain member: a ``node<seq>`` child of the root."""

    name: str
    """The znode name, e.g. ``node0000000003``."""
    seq: int
    """The sequence number parsed from the name (-1 if unparsable)."""
    address: tuple[str, int] | None
    """The ``(host, port)`` from the znode data; None if the data was junk."""

    @classmethod
    def from_znode(cls, name: str, data: bytes | None) -> Member:
        return cls(name=name, seq=parse_seq(name), address=parse_address(data))


@dataclass(frozen=True)
class Membership:
    """A snapshot of the chain: members in sequence order, head first."""

    config: int
    """The root's cversion: grows on every child change, so snapshots order."""
    members: tuple[Member, ...]
    """Sorted by ``seq``: head first, tail last."""

    def head(self) -> Member | None:
        return self.members[0] if self.members else None

    def tail(self) -> Member | None:
        return self.members[-1] if self.members else None

    def index(self, name: str) -> int | None:
        for i, member in enumerate(self.members):
            if member.name == name:
                return i
        return None

    def get(self, name: str) -> Member | None:
        i = self.index(name)
        return None if i is None else self.members[i]

    def predecessor(self, name: str) -> Member | None:
        """The member before ``name`` (None for the head or a non-member)."""
        i = self.index(name)
        return self.members[i - 1] if i is not None and i > 0 else None

    def successor(self, name: str) -> Member | None:
        """The member after ``name`` (None for the tail or a non-member)."""
        i = self.index(name)
        return self.members[i + 1] if i is not None and i + 1 < len(self.members) else None

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, name: object) -> bool:
        return any(member.name == name for member in self.members)


