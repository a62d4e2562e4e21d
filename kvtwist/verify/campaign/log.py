"""What a campaign tells as it runs: the events (for report.json and the timeline) and
a progress line on standard error."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


@dataclass
class Progress:
    """Outcome counts, read incrementally from the growing history file."""

    path: Path
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "fail": 0, "unknown": 0})
    _handle: TextIO | None = None
    _partial: str = ""

    def update(self) -> None:
        if self._handle is None:
            if not self.path.exists():
                return
            self._handle = open(self.path, encoding="utf-8")  # noqa: SIM115 (closed by close())
        text = self._partial + self._handle.read()
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            with contextlib.suppress(ValueError, KeyError):
                self.counts[json.loads(line)["outcome"]] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class Log:
    """The campaign's clock, its events and its progress line.

    Times are seconds since the workload started (``restart_clock``), the clock
    the clients' history uses too, so events and operations line up.
    """

    def __init__(self, history_path: Path, duration: float) -> None:
        self.duration = duration
        self.events: list[dict[str, Any]] = []
        self.epoch = time.monotonic()
        self.epoch_wall = time.time()
        self.last_event = ""
        self.progress = Progress(history_path)
        self.tty = sys.stderr.isatty()
        self.last_progress = 0.0
        self.phase = "starting"

    def restart_clock(self) -> None:
        self.epoch = time.monotonic()
        self.epoch_wall = time.time()

    def now(self) -> float:
        return time.monotonic() - self.epoch

    def say(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
        print(text, file=sys.stderr, flush=True)

    def event(self, kind: str, label: str, **extra: Any) -> None:
        e = {"t": round(self.now(), 6), "kind": kind, "label": label, **extra}
        self.events.append(e)
        self.last_event = label
        if not self.tty:
            self.say(f"[{e['t']:7.2f}s] {label}")

    def show_progress(
        self, chain: Callable[[], str], faults: Callable[[], int], force: bool
    ) -> None:
        """At most four times a second on a terminal, every five seconds elsewhere.

        ``chain`` and ``faults`` are asked only when the line is shown: the chain
        comes from ZooKeeper.
        """
        wall = time.monotonic()
        if not force and wall - self.last_progress < (0.25 if self.tty else 5.0):
            return
        self.last_progress = wall
        self.progress.update()
        c = self.progress.counts
        members = chain()
        line = (
            f"[{self.phase} {self.now():5.1f}/{self.duration:g}s] ops {self.progress.total}"
            f" (ok {c['ok']} fail {c['fail']} unknown {c['unknown']})"
            f"  faults {faults()}  chain {members or '-'}  last: {self.last_event or '-'}"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line[:200])
            sys.stderr.flush()
        else:
            print(line, file=sys.stderr, flush=True)
