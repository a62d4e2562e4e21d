"""The chain's znode ACLs: what ``--zk-auth`` creates, and what undoes it."""

from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.security import ACL, Permissions, make_acl, make_digest_acl
from twisted.logger import Logger

__all__ = ["digest_acl", "open_paths", "open_to_writes", "warn_open"]

_log = Logger(namespace="kvtwist.zk")  # one namespace for the whole adapter


def digest_acl(auth: str) -> list[ACL]:
    """The ACL for ``USER:PASSWORD``: everything for that digest identity, READ for anyone.

    Reads stay open so that clients without credentials (the original C
    client, the chain client) still find the head and the tail.
    """
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ValueError("needs the form USER:PASSWORD, both non-empty")
    return [make_digest_acl(user, password, all=True), make_acl("world", "anyone", read=True)]


def open_to_writes(acl: list[ACL]) -> bool:
    """Whether ``acl`` lets anyone at all (world:anyone) create, delete or write."""
    changes = Permissions.CREATE | Permissions.DELETE | Permissions.WRITE | Permissions.ADMIN
    return any(entry.id.scheme == "world" and entry.perms & changes for entry in acl)


def open_paths(client: KazooClient, paths: list[str]) -> list[str]:
    """Blocking: those of ``paths`` that exist and anyone may change.

    Missing ones are fine: they get the creator's ACL when first needed.
    """
    found = []
    for path in paths:
        try:
            acl = client.get_acls(path)[0]
        except NoNodeError:
            continue
        if open_to_writes(acl):
            found.append(path)
    return found


def warn_open(paths: list[str]) -> None:
    """Log each path a protected node found writable by anyone: ``--zk-auth`` is undone there."""
    for path in paths:
        _log.warn(
            "{path} lets anyone change it (it was created without --zk-auth): "
            "anyone can then change the chain's membership or record; set its ACL "
            "by hand, see docs/security.md",
            path=path,
        )
