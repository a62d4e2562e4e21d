"""JSON logs for a node: ``twistd --logger=kvtwist.jsonlog.observer -n kvnode ...``.

twistd's ``--logger`` takes a factory called with no arguments; this one
returns twisted.logger's ``jsonFileLogObserver`` on standard output (where
systemd's journal or a log shipper reads it), one JSON object per line, with
no record separator, so that line-based tools read it as it is.  Each object
is a twisted.logger event: ``log_namespace`` (``kvtwist.chain``, …),
``log_level``, ``log_time`` (Unix seconds), ``log_format`` and the values it
names; ``twisted.logger.eventsFromJSONLogFile`` reads them back (with
``recordSeparator=""``) and ``formatEvent`` renders an event's text.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import FileLogObserver, jsonFileLogObserver


def observer(out: IO[str] | None = None) -> FileLogObserver:
    """A JSON-lines observer writing to ``out`` (standard output by default)."""
    return jsonFileLogObserver(out if out is not None else sys.stdout, recordSeparator="")
