"""A stranger on the chain port: chain opcodes from a process outside the cluster.

Run by ``kvtwist-torture`` (nemesis kind ``stranger``) as ``python -m
kvtwist.verify.stranger``.  It knows what anyone who can read ZooKeeper knows
(the members' znode names, addresses and the configuration number) but not
the cluster key, and for each member in turn it tries, on fresh connections:

- ``hello+update``: a HELLO claiming to be the member's predecessor and, if
  the member answers it, UPDATEs numbered right after the op it says it
  holds, writing ``stranger-*`` values to the campaign's keys (a value no
  client wrote: if it is ever read, the linearizability check fails);
- ``update``: the same UPDATE with no HELLO before it;
- ``ack``: an ACK claiming to come from the member's successor, for an op
  number far ahead (a head that believed it would answer clients too early);
- ``join``: a JOIN, then reading whatever state transfer follows.

Each attempt is judged from what comes back: ``refused`` (an ERROR reply, or
the connection closed with nothing else), ``accepted`` (any other reply --
a HELLO back, snapshot chunks: the member took the stranger for a peer) or
``silent`` (nothing within the wait; not proof either way).  The summary is
one JSON object on stdout: ``{"attempts": [...], "accepted": N}``.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from kvtwist import wire
from kvtwist.proto.kvtwist_pb2 import ChainHello, Update
from kvtwist.wire import Message

#: How long to listen for an answer to each attempt.
WAIT = 0.7


def forged(opcode: int, sender: str, config: int, **fields: Any) -> Message:
    hello = ChainHello(sender=sender, config=config, address="127.0.0.1:9", last_op=0)
    return Message(opcode=opcode, c_type=wire.CT_CHAIN, hello=hello, **fields)  # type: ignore[arg-type]


def updates(rng: random.Random, keys: int, start: int, n: int = 4) -> list[Update]:
    return [
        Update(
            seq=start + i,
            is_put=True,
            key=f"k{rng.randrange(keys)}".encode(),
            data=f"stranger-{rng.randrange(1 << 30)}".encode(),
            client_id=f"stranger-{rng.randrange(1 << 30)}",
            request_id=1,
        )
        for i in range(n)
    ]


def attempt(
    port: int, messages: list[Message], follow: Callable[[Message], list[Message]] | None = None
) -> tuple[str, str]:
    """Send ``messages`` on a fresh connection; the verdict and what came back.

    ``follow`` turns a HELLO answered by the member into what to send next
    (updates numbered right after the op the member says it holds).
    """
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError as e:
        return "refused", f"connect: {e}"
    decoder = wire.FrameDecoder(1 << 30)
    seen: list[str] = []
    try:
        sock.sendall(b"".join(wire.frame(m) for m in messages))
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                break
            if not data:
                seen.append("closed")
                break
            for payload in decoder.feed(data):
                msg = wire.decode(payload)
                if msg.opcode == wire.OP_ERROR:
                    seen.append(f"ERROR {msg.error}")
                    continue
                seen.append(wire.op_name(msg.opcode))
                if follow is not None and msg.opcode == wire.OP_CHAIN_HELLO:
                    sock.sendall(b"".join(wire.frame(m) for m in follow(msg)))
                    follow = None
    except OSError as e:
        seen.append(f"reset ({e})")
    finally:
        sock.close()
    if any(not s.startswith(("ERROR", "closed", "reset")) for s in seen):
        return "accepted", ", ".join(seen[:6])
    if seen:
        return "refused", ", ".join(seen[:3])
    return "silent", "no answer"


def run(members: list[tuple[str, int]], config: int, keys: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    names = [name for name, _ in members]
    results = []
    far = 1 << 40
    for i, (name, port) in enumerate(members):
        pred = names[i - 1] if i > 0 else "node9999999999"
        succ = names[i + 1] if i + 1 < len(names) else "node9999999999"

        def after_hello(reply: Message, pred: str = pred) -> list[Message]:
            start = reply.hello.last_op + 1
            return [forged(wire.OP_CHAIN_UPDATE, pred, config, updates=updates(rng, keys, start))]

        tries: dict[str, tuple[list[Message], Any]] = {
            "hello+update": ([forged(wire.OP_CHAIN_HELLO, pred, config)], after_hello),
            "update": (
                [forged(wire.OP_CHAIN_UPDATE, pred, config, updates=updates(rng, keys, 1))],
                None,
            ),
            "ack": ([forged(wire.OP_CHAIN_ACK, succ, config, op_n=far)], None),
            "join": ([forged(wire.OP_CHAIN_JOIN, "", config)], None),
        }
        for what, (messages, follow) in tries.items():
            verdict, seen = attempt(port, messages, follow)
            results.append(
                {"member": name, "port": port, "try": what, "verdict": verdict, "seen": seen}
            )
            print(f"{name} {what}: {verdict} ({seen})", file=sys.stderr, flush=True)
    accepted = sum(1 for r in results if r["verdict"] == "accepted")
    return {"attempts": results, "accepted": accepted}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m kvtwist.verify.stranger")
    p.add_argument("--member", action="append", default=[], help="ZNODE=PORT, head first")
    p.add_argument("--config", type=int, default=0, help="the chain's configuration number")
    p.add_argument("--keys", type=int, default=8, help="the campaign's keys k0..k<N-1>")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    members = []
    for m in args.member:
        name, _, port = m.partition("=")
        members.append((name, int(port)))
    print(json.dumps(run(members, args.config, args.keys, args.seed)), flush=True)


if __name__ == "__main__":
    main()
