"""What the adapter writes: the chain root, member znodes, the chain record, the waiting list.

Ephemeral nodes die with the session (LOST) and are not recreated here:
whoever registered must register again when ``on_state`` says "lost".
"""

from __future__ import annotations

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from twisted.internet.defer import Deferred

from kvtwist.membership import MEMBER_PREFIX, parse_address, sibling_path
from kvtwist.zk.acl import open_paths
from kvtwist.zk.session import Session

__all__ = ["ChainWrites", "RegistrationRaced"]


class RegistrationRaced(Exception):
    """A conditional registration found the chain record changed."""


class ChainWrites:
    """The znodes a chain member creates, changes and deletes, under ``root`` and beside it."""

    def __init__(self, session: Session, root: str, protected: bool, create_root: bool) -> None:
        self._session = session
        self.root = root
        self.protected = protected
        self.create_root = create_root

    def sibling_path(self, suffix: str) -> str:
        return sibling_path(self.root, suffix)

    def prepare_root(self) -> list[str]:
        """Blocking: create the root; the chain's znodes a protected node found open.

        The root, the record, the join lock and the waiting list all decide
        who is in the chain: any of them left writable by anyone undoes
        ``--zk-auth``.
        """
        if not self.create_root:
            return []
        client = self._session.client
        client.ensure_path(self.root)
        if not self.protected:
            return []
        return open_paths(
            client, [self.root] + [self.sibling_path(s) for s in ("state", "join", "waiting")]
        )

    def delete_quietly(self, path: str) -> None:
        """Blocking: delete ``path``; already gone is fine."""
        try:
            self._session.client.delete(path)
        except NoNodeError:
            pass

    # -- registration -----------------------------------------------------------

    def register(self, address: str, record_version: int | None = None) -> Deferred[str]:
        """See :meth:`kvtwist.zk.ZooKeeper.register`."""
        data = address.encode("ascii")
        if parse_address(data) is None:
            raise ValueError(f"not a host:port address: {address!r}")
        # The original C servers end the address with a NUL, and the original
        # client relies on it when it reads a member's data.
        data += b"\x00"
        return self._session.call(self._register_in_thread, data, record_version)

    def _register_in_thread(self, data: bytes, record_version: int | None) -> str:
        client = self._session.client
        path = f"{self.root}/{MEMBER_PREFIX}"
        if record_version is None:
            created = client.create(path, data, ephemeral=True, sequence=True)
        else:
            t = client.transaction()
            t.check(self.sibling_path("state"), record_version)
            t.create(path, data, ephemeral=True, sequence=True)
            check, created = t.commit()
            if isinstance(check, Exception) or isinstance(created, Exception):
                raise RegistrationRaced(
                    "the chain record changed while we caught up (the tail may have "
                    "given up on us); joining again"
                )
        return str(created).rsplit("/", 1)[1]

    def unregister(self, name: str) -> Deferred[None]:
        """Delete the member znode ``name`` (already gone is fine)."""
        if not name or "/" in name:
            raise ValueError(f"not a member name: {name!r}")
        return self._session.call(self.delete_quietly, f"{self.root}/{name}")

    # -- the chain record ------------------------------------------------------

    def bump_record(self) -> Deferred[int]:
        """See :meth:`kvtwist.zk.ZooKeeper.bump_record`."""
        return self._session.call(self._bump_in_thread)

    def _bump_in_thread(self) -> int:
        client = self._session.client
        path = self.sibling_path("state")
        while True:
            try:
                data, stat = client.get(path)
            except NoNodeError:
                return -1
            try:
                return int(client.set(path, data, version=stat.version).version)
            except BadVersionError:
                continue

    def read_record(self) -> Deferred[tuple[bytes | None, int]]:
        """The persistent chain record: ``(data, version)``, ``(None, -1)`` if absent."""
        return self._session.call(self._read_record_in_thread)

    def _read_record_in_thread(self) -> tuple[bytes | None, int]:
        try:
            data, stat = self._session.client.get(self.sibling_path("state"))
        except NoNodeError:
            return None, -1
        return data, stat.version

    def write_record(self, data: bytes, version: int) -> Deferred[bool]:
        """Compare-and-set the chain record; False when someone changed it first."""
        return self._session.call(self._write_record_in_thread, data, version)

    def _write_record_in_thread(self, data: bytes, version: int) -> bool:
        client = self._session.client
        path = self.sibling_path("state")
        try:
            if version < 0:
                client.create(path, data, makepath=True)
            else:
                client.set(path, data, version=version)
        except (BadVersionError, NodeExistsError, NoNodeError):
            return False
        return True

    # -- nodes waiting for the last configuration --------------------------------

    def advertise_waiting(self, node_id: str, data: bytes) -> Deferred[None]:
        """Say (ephemerally) that this node waits to restart an empty chain, and with what."""
        return self._session.call(self._advertise_in_thread, node_id, data)

    def _advertise_in_thread(self, node_id: str, data: bytes) -> None:
        client = self._session.client
        path = f"{self.sibling_path('waiting')}/{node_id}"
        try:
            client.create(path, data, ephemeral=True, makepath=True)
        except NodeExistsError:
            client.set(path, data)

    def withdraw_waiting(self, node_id: str) -> Deferred[None]:
        return self._session.call(
            self.delete_quietly, f"{self.sibling_path('waiting')}/{node_id}"
        )

    def waiting(self) -> Deferred[dict[str, bytes]]:
        """Every waiting node's advertisement, by node id."""
        return self._session.call(self._waiting_in_thread)

    def _waiting_in_thread(self) -> dict[str, bytes]:
        client = self._session.client
        base = self.sibling_path("waiting")
        try:
            names = client.get_children(base)
        except NoNodeError:
            return {}
        out: dict[str, bytes] = {}
        for name in names:
            try:
                out[name] = client.get(f"{base}/{name}")[0]
            except NoNodeError:
                pass
        return out
