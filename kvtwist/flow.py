"""Reading from a connection paused for named reasons, resumed when the last one goes.

A client connection stops reading while any cause holds: its replies back up
in the transport ("output"), too many of its requests are unanswered, the
chain downstream is congested.  Each cause pauses and resumes on its own; the
transport reads again only once none is left.  The native and the RESP
connections share this.
"""

from __future__ import annotations

from typing import Any


class ReadPauses:
    """A producer for its transport, paused by reason; see the module docstring."""

    transport: Any
    _pause_reasons: set[str]
    _closing: bool

    def pause(self, reason: str) -> None:
        if not self._pause_reasons and self.transport is not None:
            self.transport.pauseProducing()
        self._pause_reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        reading = not self._pause_reasons and self.transport is not None and not self._closing
        if reading:
            self.transport.resumeProducing()
        self.resumed(reason, reading)

    def resumed(self, reason: str, reading: bool) -> None:
        """``reason`` no longer holds (``reading``: the transport reads again)."""

    def inputPaused(self) -> bool:
        return bool(self._pause_reasons)

    def pauseProducing(self) -> None:
        """The transport's send buffer is full: read no more until it drains."""
        self.pause("output")

    def resumeProducing(self) -> None:
        self.resume("output")

    def stopProducing(self) -> None:
        self._closing = True
