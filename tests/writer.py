"""A chain client process that writes keys one after another and logs each acknowledgement.

Run by the chain tests while they kill nodes: every line ``ok KEY OP`` on
stdout is a write the chain acknowledged; ``error ...`` is a failure a user
would have seen.  SIGTERM stops it after the write in flight.
"""

from __future__ import annotations

import signal
import sys

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorCore

from kvtwist.client.chain import ChainClient

stopping = False


@defer.inlineCallbacks
def run(reactor: IReactorCore, hosts: str, root: str, prefix: str, deadline: float) -> object:
    client = yield ChainClient.connect(reactor, hosts, root, deadline=deadline)
    errors = 0
    i = 0
    while not stopping:
        key = f"{prefix}{i:06d}"
        try:
            result = yield client.put(key, f"v{i}")
            print(f"ok {key} {result.op_n}", flush=True)
        except Exception as e:
            errors += 1
            print(f"error {key} {e}", flush=True)
        i += 1
    yield client.close()
    if errors:
        raise RuntimeError(f"{errors} writes failed")
    return None


def main() -> None:
    hosts, root, prefix = sys.argv[1:4]
    deadline = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0

    def stop(*_: object) -> None:
        global stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)

    def go(reactor: IReactorCore) -> object:
        return run(reactor, hosts, root, prefix, deadline)

    task.react(go)


if __name__ == "__main__":
    main()
