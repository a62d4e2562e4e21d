"""Imported at start-up by a node that ``kvtwist-torture`` runs under libfaketime.

With FAKETIME_DONT_FAKE_MONOTONIC=1, libfaketime 0.9.10 (Debian's) shifts the
absolute CLOCK_MONOTONIC deadline of ``clock_nanosleep`` by the fake wall-clock
offset, so every ``time.sleep`` fails with EINVAL.  Sleeping through
``select`` instead waits the same real time, on the monotonic clock, as
``time.sleep`` does without libfaketime; nothing else in the process changes.
"""

import os
import select
import time
from typing import SupportsIndex

if "libfaketime" in os.environ.get("LD_PRELOAD", ""):

    def _sleep(seconds: float | SupportsIndex) -> None:
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            select.select([], [], [], left)

    time.sleep = _sleep
