"""An in-memory coordinator: ZooKeeper's znode list of a chain root, and a fake session on it.

Everything answers at once (already-fired Deferreds) unless a test holds it
back; no threads, no sockets.  The real adapter is exercised by
tests/test_zk.py and the chain on real ZooKeeper by tests/test_chain.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError

from kvtwist.coordinator import Coordinator, Release
from kvtwist.membership import Member, Membership

__all__ = ["MemoryZooKeeper", "Registry"]


class Registry:
    """The znode list of a chain root: sequence order, config grows on every change."""

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.config = 0
        self.seq = 0
        self.watchers: list[Callable[[Membership], None]] = []
        self.record: tuple[bytes | None, int] = (None, -1)  # the chain record znode
        self.waiting: dict[str, bytes] = {}
        #: when set, a changed membership goes here instead of to the watchers
        #: (a test that delivers views itself, late or out of order)
        self.deliver: Callable[[Membership], None] | None = None

    def view(self) -> Membership:
        return Membership(self.config, tuple(self.members))

    def add(self, address: str) -> str:
        name = f"node{self.seq:010d}"
        host, port = address.rsplit(":", 1)
        self.members.append(Member(name, self.seq, (host, int(port))))
        self.seq += 1
        self.changed()
        return name

    def remove(self, name: str) -> None:
        self.members = [m for m in self.members if m.name != name]
        self.changed()

    def changed(self) -> None:
        self.config += 1
        view = self.view()
        if self.deliver is not None:
            self.deliver(view)
            return
        for w in list(self.watchers):
            w(view)


class MemoryZooKeeper:
    """What a Replica asks of ZooKeeper, answered from a Registry.

    ``cut()`` models a node cut off from ZooKeeper: reads fail, no views
    arrive, and its lease runs out ``lease_length`` after the cut (it was
    renewed just before); connected, the lease holds while the node's znode
    does, as the real lease probe's linearized read checks.  The session
    itself is not modelled beyond ``state``/``connected``: a test removes
    znodes through the Registry and delivers session events with ``set_state``.
    """

    lease_length = 1.2  # LEASE_FRACTION of effective_session_timeout
    effective_session_timeout = 2.0
    hosts = "memory"

    def __init__(self, registry: Registry, clock: Any = None) -> None:
        self.registry = registry
        self.clock = clock
        self.lease = True
        self.lease_name: str | None = None
        self.cut_at: float | None = None
        self.failing_reads = 0  # so many members() reads fail first
        self.read_times: list[float] = []  # when each members() read was asked
        #: a test's own answer to a call, by method name (members, register,
        #: remove_member, write_record): called with the call's arguments, its
        #: Deferred is the answer; ``answer`` gives the fake's own
        self.overrides: dict[str, Callable[..., defer.Deferred[Any]]] = {}
        self.state = "connected"
        self.connected = True
        self.started = False
        self.stopped = False
        self.state_callbacks: list[Callable[[str], None]] = []
        self.gone_callbacks: list[Callable[[str], None]] = []

    def cut(self) -> None:
        self.cut_at = self.clock.seconds()

    # -- the session ---------------------------------------------------------

    def start(self, timeout: float = 15.0) -> defer.Deferred[None]:
        self.started = True
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        self.stopped = True
        return defer.succeed(None)

    def drop_session(self) -> None:
        """The connection goes; a test removes the node's znodes if it means expiry."""
        self.connected = False

    def resume_session(self) -> defer.Deferred[None]:
        self.connected = True
        return defer.succeed(None)

    def on_state(self, callback: Callable[[str], None]) -> None:
        self.state_callbacks.append(callback)

    def set_state(self, state: str) -> None:
        """Deliver a session event ("connected", "suspended", "lost") as the adapter does."""
        self.state = state
        self.connected = state == "connected"
        for callback in list(self.state_callbacks):
            callback(state)

    # -- membership ----------------------------------------------------------

    def answer(self, method: str, *args: Any) -> defer.Deferred[Any]:
        """What the fake itself answers to ``method`` (for an override that defers to it)."""
        return getattr(type(self), method)(self, *args)  # type: ignore[no-any-return]

    def members(self) -> defer.Deferred[Membership]:
        if (f := self.overrides.get("members")) is not None:
            return f()
        self.read_times.append(self.clock.seconds() if self.clock is not None else 0.0)
        if self.cut_at is not None:
            return defer.fail(ConnectionRefusedError("ZooKeeper unreachable"))
        if self.failing_reads:
            self.failing_reads -= 1
            return defer.fail(ConnectionRefusedError("connection to ZooKeeper lost"))
        return defer.succeed(self.registry.view())

    def watch_members(self, callback: Callable[[Membership], None]) -> None:
        """Call ``callback`` with every later view of the registry, none while cut off.

        Unlike the adapter it does not deliver the current view first: the
        harness starts each join itself.
        """

        def deliver(view: Membership) -> None:
            if self.cut_at is None:
                callback(view)

        self.registry.watchers.append(deliver)

    def _unreachable(self) -> defer.Deferred[Any] | None:
        """A failed call while cut off from ZooKeeper: nothing reaches it."""
        if self.cut_at is None:
            return None
        return defer.fail(ConnectionRefusedError("ZooKeeper unreachable"))

    def register(self, address: str, record_version: int | None = None) -> defer.Deferred[str]:
        if (f := self.overrides.get("register")) is not None:
            return f(address, record_version)
        if (cut := self._unreachable()) is not None:
            return cut
        if record_version is not None and record_version != self.registry.record[1]:
            return defer.fail(RuntimeError("the chain record changed"))
        return defer.succeed(self.registry.add(address))

    def unregister(self, name: str) -> defer.Deferred[None]:
        if (cut := self._unreachable()) is not None:
            return cut
        if any(m.name == name for m in self.registry.members):
            self.registry.remove(name)
        return defer.succeed(None)

    def remove_member(self, name: str) -> defer.Deferred[None]:
        if (f := self.overrides.get("remove_member")) is not None:
            return f(name)
        return self.unregister(name)

    # -- the chain record ----------------------------------------------------

    def read_record(self) -> defer.Deferred[tuple[bytes | None, int]]:
        if (cut := self._unreachable()) is not None:
            return cut
        return defer.succeed(self.registry.record)

    def write_record(self, data: bytes, version: int) -> defer.Deferred[bool]:
        if (f := self.overrides.get("write_record")) is not None:
            return f(data, version)
        if (cut := self._unreachable()) is not None:
            return cut
        if version != self.registry.record[1]:
            return defer.succeed(False)
        self.registry.record = (data, version + 1)
        return defer.succeed(True)

    def bump_record(self) -> defer.Deferred[int]:
        if (cut := self._unreachable()) is not None:
            return cut
        data, version = self.registry.record
        if version < 0:
            return defer.succeed(-1)
        self.registry.record = (data, version + 1)
        return defer.succeed(version + 1)

    # -- waiting for the last configuration ----------------------------------

    def advertise_waiting(self, node_id: str, data: bytes) -> defer.Deferred[None]:
        self.registry.waiting[node_id] = data
        return defer.succeed(None)

    def withdraw_waiting(self, node_id: str) -> defer.Deferred[None]:
        self.registry.waiting.pop(node_id, None)
        return defer.succeed(None)

    # -- the join lock: granted at once (one process, one clock) -------------

    def lock(
        self, path_suffix: str = "join", timeout: float | None = None
    ) -> defer.Deferred[Release]:
        return defer.succeed(lambda: defer.succeed(None))

    # -- the read lease ------------------------------------------------------

    def lease_valid(self) -> bool:
        if not self.lease:
            return False
        if self.cut_at is not None:
            return bool(self.clock.seconds() < self.cut_at + self.lease_length)
        name = self.lease_name
        return name is None or name in self.registry.view()

    def lease_member(self, name: str | None) -> None:
        self.lease_name = name

    def on_gone(self, callback: Callable[[str], None]) -> None:
        self.gone_callbacks.append(callback)


def _provides_the_interface(registry: Registry) -> Coordinator:
    """Never called: mypy checks here that the fake offers all of Coordinator."""
    return MemoryZooKeeper(registry)
