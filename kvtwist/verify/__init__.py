"""Evidence that kvtwist keeps its promises under faults.

``check`` decides whether a history of client operations is linearizable;
``kvtwist-torture`` (kvtwist.verify.torture) produces such histories from a
real chain while a nemesis crashes and pauses its nodes.
"""

from kvtwist.verify.history import HistoryError, Op, read_history, write_history
from kvtwist.verify.linearizability import KeyResult, Result, check, check_key

__all__ = [
    "HistoryError",
    "KeyResult",
    "Op",
    "Result",
    "check",
    "check_key",
    "read_history",
    "write_history",
]
