"""The chain record: what a restart of the whole chain needs, kept in ZooKeeper.

Member znodes are ephemeral: after a ZooKeeper outage or a full restart the
chain's root is empty and says nothing about who held the data.  So a
persistent znode beside the root (``<root>-state``) records:

- ``epoch``: bumped by every node that becomes head, before it numbers a write;
  updates carry it, so logs can be compared (kvtwist.chain.epochs);
- ``members``: the znode names (and addresses) of the last configuration that
  committed anything.  Every one of them holds every committed write: the tail
  commits only while the record lists exactly the members of its view, and
  rewrites it first when they differ;
- ``config``: the view (root cversion) that list was read from; a record is
  never overwritten from an older view;
- ``force``: the node id an operator allowed to restart an empty chain from
  its own copy, accepting the loss of what the last members held.

An empty chain restarts only from a node whose last znode name is in
``members`` (or the forced one); anyone else waits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from kvtwist.membership import format_address


@dataclass(frozen=True)
class ChainRecord:
    epoch: int = 0
    config: int = -1
    members: tuple[tuple[str, str], ...] = ()  # (znode name, "host:port")
    force: str = ""
    version: int = field(default=-1, compare=False)  # the znode's version; -1: none yet

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.members)

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "epoch": self.epoch,
            "config": self.config,
            "members": [{"name": n, "address": a} for n, a in self.members],
        }
        if self.force:
            body["force"] = self.force
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes | None, version: int) -> ChainRecord:
        """Parse the znode's data; an absent znode is the empty record."""
        if data is None:
            return cls(version=version)
        try:
            body = json.loads(data)
            members = tuple((str(m["name"]), str(m.get("address", ""))) for m in body["members"])
            return cls(
                epoch=int(body["epoch"]),
                config=int(body["config"]),
                members=members,
                force=str(body.get("force", "")),
                version=version,
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"unreadable chain record: {e}") from None

    def with_view(self, view: Any, epoch: int | None = None) -> ChainRecord:
        """This record rewritten for ``view`` (and a new epoch, when given)."""
        return replace(
            self,
            epoch=self.epoch if epoch is None else epoch,
            config=view.config,
            members=view_members(view),
            force="",
        )

    def describe(self) -> str:
        who = ", ".join(f"{n} ({a})" for n, a in self.members) or "nobody"
        return f"epoch {self.epoch}, members {who}"


def view_members(view: Any) -> tuple[tuple[str, str], ...]:
    return tuple((m.name, format_address(m.address)) for m in view.members)


def matches(record: ChainRecord, view: Any) -> bool:
    """True when the record lists exactly the members of ``view``."""
    return record.version >= 0 and record.names == frozenset(m.name for m in view.members)


def may_start(record: ChainRecord, last_name: str | None, node_id: str, config: int = 0) -> bool:
    """May this node start an empty chain from its own copy?

    ``config`` is the root's child version: a root that has had members but has
    no record was used by something else (the original C servers, say), whose
    data this node does not hold, so only an operator may restart it.
    """
    if record.version < 0:
        return config <= 0  # a brand-new chain
    if not record.members and not record.force:
        return True  # a chain that never committed anything
    if record.force:
        return record.force == node_id
    return last_name is not None and last_name in record.names
