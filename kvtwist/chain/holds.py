"""Two small decisions of a member, kept apart from its I/O (no clock, no reactor).

- :class:`TailHolds`: how long a member may neither commit as tail nor
  serve reads, by reason (a member it removed may still serve until its lease
  is out; a restarted chain may have one). The driver asks with its clock's
  time and arms the timer that looks again when the holds end.
- :class:`Intake`: whether client writes must pause because the successor
  falls behind (a full link, or too many bytes held for it), with hysteresis
  so that intake does not flap at the bound.
"""

from __future__ import annotations


class TailHolds:
    """Holds on commits and reads as tail, by what they wait for."""

    def __init__(self) -> None:
        self._ends: dict[str, float] = {}

    @property
    def until(self) -> float:
        """No commit as tail, and no read served, before this time (0: none)."""
        return max(self._ends.values(), default=0.0)

    def held(self, now: float) -> bool:
        return now < self.until

    def hold(self, now: float, seconds: float, why: str = "") -> float:
        """Hold for ``seconds`` from ``now`` on account of ``why``: the end of all holds.

        A new hold for the same ``why`` replaces the old one (the answer to a
        removal ends the hold that waited for it); holds for other reasons stay.
        """
        ends = {k: end for k, end in self._ends.items() if end > now}
        ends[why] = now + seconds
        self._ends = ends
        return self.until


class Intake:
    """Whether client intake is paused for a slow successor."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # bytes held for a neighbour beyond which intake pauses
        self.paused = False
        self.link_full = False

    def decide(self, unsent: int) -> bool | None:
        """With ``unsent`` bytes held for neighbours: the new state if it changes.

        Intake pauses past the limit (or on a full link) and resumes only below
        half of it (and a drained link).
        """
        bound = self.limit // 2 if self.paused else self.limit
        want = self.link_full or unsent > bound
        if want == self.paused:
            return None
        self.paused = want
        return want
