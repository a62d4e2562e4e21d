"""What a client's request comes to at a chain node: results and refusals."""

from __future__ import annotations

from dataclasses import dataclass

from kvtwist.chain.rmw import RmwResult
from kvtwist.tree import BTree


class Unavailable(Exception):
    """This node cannot serve the request now; a retry (maybe elsewhere) may succeed."""


class Refused(Exception):
    """The request is refused for good: no retry of it can succeed."""


class NotHere(Exception):
    """The request belongs to another member: ``target`` is its address, if known."""

    def __init__(self, role: str, target: tuple[str, int] | None) -> None:
        where = f"{target[0]}:{target[1]}" if target else "unknown"
        super().__init__(f"this node is not the {role}; the {role} is at {where}")
        self.role = role
        self.target = target


@dataclass(frozen=True)
class WriteResult:
    op_n: int
    found: bool
    rmw: RmwResult | None = None  # a read-modify-write's answer
    group: tuple[RmwResult, ...] | None = None  # a group's answers, one per request


@dataclass(frozen=True)
class ReadView:
    """What a read sees: the committed tree, the op number it includes, and the keys
    of the tree that are the chain's (a cluster chain's shard, narrowed by its splits
    up to ``seq``: a split leaves the keys above it in the tree, no longer served)."""

    tree: BTree
    seq: int
    start: bytes = b""
    end: bytes | None = None

    @property
    def whole(self) -> bool:
        return self.start == b"" and self.end is None

    def holds(self, key: bytes) -> bool:
        return self.start <= key and (self.end is None or key < self.end)
