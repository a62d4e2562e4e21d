"""A node's life as an explicit state machine.

Every change of state goes through :meth:`Lifecycle.to`, which refuses a
transition that is not in the table and logs each change once, so a node's
history reads straight from its log.  ``generation`` grows whenever a node
starts over (a join attempt, a fence, a wait): callbacks of an abandoned
attempt compare it and drop out, and every :class:`~kvtwist.chain.attempt.Attempt`
begun through :meth:`Lifecycle.begin` ends.

::

    standalone                                   (no ZooKeeper: always serving)
    starting -> joining -> registering -> member
                  |  ^          |            |
                  v  |          v            v
                waiting  <--  fenced  <------+     (keeps its data, rejoins)
"""

from __future__ import annotations

import enum

from twisted.logger import Logger

from kvtwist.chain.attempt import Attempt, Era

log = Logger(namespace="kvtwist.chain")


class State(enum.Enum):
    STANDALONE = "standalone"
    STARTING = "starting"  # waiting for ZooKeeper
    JOINING = "joining"  # holding the join lock, catching up from the tail
    WAITING = "waiting"  # the chain is empty and we may not restart it
    REGISTERING = "registering"  # our znode exists; waiting to see it in a view
    MEMBER = "member"
    FENCED = "fenced"  # out of the chain (session lost, refused, disk trouble)
    STOPPED = "stopped"


_ALLOWED: dict[State, frozenset[State]] = {
    State.STANDALONE: frozenset({State.STOPPED}),
    State.STARTING: frozenset({State.JOINING, State.FENCED, State.STOPPED}),
    State.JOINING: frozenset(
        {State.JOINING, State.REGISTERING, State.WAITING, State.FENCED, State.STOPPED}
    ),
    State.WAITING: frozenset({State.JOINING, State.FENCED, State.STOPPED}),
    State.REGISTERING: frozenset({State.MEMBER, State.JOINING, State.FENCED, State.STOPPED}),
    State.MEMBER: frozenset({State.FENCED, State.STOPPED}),
    State.FENCED: frozenset({State.JOINING, State.STOPPED}),
    State.STOPPED: frozenset(),
}

#: Entering these starts a new attempt: callbacks of the old one are stale.
_NEW_GENERATION = frozenset({State.JOINING, State.WAITING, State.FENCED, State.STOPPED})


class BadTransition(Exception):
    pass


class Lifecycle:
    def __init__(self, standalone: bool) -> None:
        self.state = State.STANDALONE if standalone else State.STARTING
        self.why = ""
        self.generation = 0
        self._era = Era()

    def begin(self, what: str) -> Attempt:
        """An attempt that lasts until it ends, or until the node starts over
        (one begun by a stopped node is over from the start)."""
        attempt = Attempt(what, self._era)
        if self.state is State.STOPPED:
            attempt.end()
        return attempt

    def to(self, state: State, why: str = "") -> int:
        """Move to ``state``; returns the generation the new state belongs to."""
        if state not in _ALLOWED[self.state]:
            raise BadTransition(f"{self.state.value} -> {state.value}")
        if state is not self.state or why != self.why:
            log.info(
                "state {old} -> {new}{why}",
                old=self.state.value,
                new=state.value,
                why=f": {why}" if why else "",
            )
        self.state = state
        self.why = why
        if state in _NEW_GENERATION:
            self.start_over()
        return self.generation

    def start_over(self) -> None:
        """End every attempt of the present life (its answers, when they come, are void)."""
        self.generation += 1
        self._era.live = False
        self._era = Era()

    def is_(self, *states: State) -> bool:
        return self.state in states

    @property
    def serving(self) -> bool:
        return self.state in (State.STANDALONE, State.MEMBER)

    def describe(self) -> str:
        return f"{self.state.value}: {self.why}" if self.why else self.state.value
