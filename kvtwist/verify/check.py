"""``python -m kvtwist.verify.check HISTORY.jsonl``: one line of verdict.

Exit status 0 when the history is linearizable, 1 when it is not (or the
search timed out: nothing proved), 2 when the history cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys

from kvtwist.verify.history import HistoryError, read_history
from kvtwist.verify.linearizability import check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvtwist.verify.check",
        description="Check that a key-value history (JSON lines) is linearizable.",
    )
    parser.add_argument("history", help="history file, one JSON operation a line")
    parser.add_argument(
        "--timeout", type=float, default=None, help="give up after this many seconds"
    )
    parser.add_argument(
        "--explain", action="store_true", help="on failure, print the diagnosis as JSON"
    )
    args = parser.parse_args(argv)
    try:
        ops = read_history(args.history)
    except (OSError, HistoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = check(ops, timeout=args.timeout)
    print(result.verdict())
    if args.explain and not result.linearizable:
        print(json.dumps(result.info, indent=2))
    return 0 if result.linearizable else 1


if __name__ == "__main__":
    sys.exit(main())
