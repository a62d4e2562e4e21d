"""Writes 6 MB values through the chain client for SECONDS seconds, then prints how many.

    python tests/bigwriter.py HOSTS ROOT PREFIX SECONDS

SECONDS 0 writes one small value instead. Any failed write exits non-zero.
"""

from __future__ import annotations

import os
import sys
import time

from kvtwist.client.blocking import BlockingClient
from kvtwist.client.chain import ChainClient


def main() -> None:
    hosts, root, prefix, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = BlockingClient(
        lambda r: ChainClient.connect(r, hosts, root, deadline=60), timeout=60, description=root
    )
    with client as kv:
        if seconds == 0:
            kv.put(prefix, b"small")
            print("wrote 1")
            return
        value = os.urandom(6_000_000)
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            kv.put(f"{prefix}-{n:04d}", value)
            n += 1
        print(f"wrote {n}")


if __name__ == "__main__":
    main()
