"""The live status page on the metrics port: ``/`` (HTML and JS, self-contained) and
``/status.json``, the data it polls.

``/status.json`` is this node's view of the chain: the members it knows (its
last membership view; itself alone when standalone), each with the role and
op numbers from its own STATS reply, asked over the node's forwarding
connections, so the page of any member shows the whole chain; and the
throughput of the last minutes from a ring buffer the node fills every
``SAMPLE_EVERY`` seconds.  The page needs nothing beyond the node: no CDN, no
external file, so it works offline.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.web import resource, server

from kvtwist import wire
from kvtwist.adminstatus import answered, blank_rows, with_lag
from kvtwist.membership import Member, parse_address
from kvtwist.server.metrics import stats_reply

#: seconds between two throughput samples, and how many are kept (10 minutes)
SAMPLE_EVERY = 2.0
SAMPLES = 300
#: how long a member has to answer the page's STATS
ASK_TIMEOUT = 2.0


class Throughput:
    """A ring buffer of (time, committed op, requests answered) samples."""

    def __init__(self, size: int = SAMPLES) -> None:
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=size)

    def sample(self, now: float, committed: int, requests: int) -> None:
        self.samples.append((now, committed, requests))

    def rates(self) -> list[dict[str, float]]:
        """Per interval between samples: its end (seconds before the newest sample), the
        writes committed per second and the requests this node answered per second."""
        out: list[dict[str, float]] = []
        points = list(self.samples)
        if not points:
            return out
        newest = points[-1][0]
        for (t0, c0, r0), (t1, c1, r1) in zip(points, points[1:], strict=False):
            span = t1 - t0
            if span <= 0:
                continue
            out.append(
                {
                    "ago_s": round(newest - t1, 3),
                    "writes_per_s": round(max(0, c1 - c0) / span, 3),
                    "requests_per_s": round(max(0, r1 - r0) / span, 3),
                }
            )
        return out


def requests_answered(factory: Any) -> int:
    return sum(c.count for c in factory.metrics.ops.values())


def view_members(replica: Any) -> list[Member]:
    """The members this node knows, head first; a standalone node is its own chain,
    and a chain node that has seen no view yet shows itself alone."""
    view = replica.view
    if replica.standalone or view is None:
        address = parse_address(replica.address.encode()) if replica.address else None
        name = "standalone" if replica.standalone else replica.name or "this node"
        return [Member(name, -1, address)]
    return list(view.members)


def node_json(metrics: Any) -> dict[str, Any]:
    """This node as it sees itself."""
    from kvtwist.nodestats import unacked_age

    replica = metrics.replica
    state = replica.state
    links = {}
    for side, link in (("successor", replica.succ), ("predecessor", replica.pred)):
        if link is not None and not link.closed:
            links[side] = {"peer": link.peer, "ready": link.ready, "rtt_s": link.rtt}
    return {
        "name": replica.name,
        "address": replica.address,
        "role": replica.role,
        "state": replica.life.describe(),
        "received": state.last_received,
        "applied": state.applied_seq,
        "committed": state.committed_seq,
        "unacked_age_s": round(unacked_age(replica), 6),
        "links": links,
    }


def gather(metrics: Any, reactor: Any) -> Deferred[dict[str, Any]]:
    """The page's data: every member's STATS (our own read directly), then the lag."""
    replica, factory = metrics.replica, metrics.factory
    members = view_members(replica)
    rows = blank_rows(members)
    own = members[0].name if replica.standalone or replica.view is None else replica.name

    def ask(member: Member) -> Deferred[Any]:
        if member.name == own or replica.standalone:
            reply = stats_reply(replica, factory.metrics, len(factory.connections))
            return defer.succeed(reply.stats)
        assert member.address is not None
        d = factory.forwarder.request(member.address, wire.req_stats())
        d.addTimeout(ASK_TIMEOUT, reactor)

        def stats_of(reply: wire.Message) -> Any:
            if reply.opcode != wire.OP_STATS + 1:
                raise RuntimeError(reply.error or f"reply opcode {reply.opcode}")
            return reply.stats

        return d.addCallback(stats_of)

    def one(row: Any, member: Member) -> Deferred[None]:
        d = ask(member)
        d.addCallbacks(
            lambda stats: answered(row, stats, None),
            lambda f: answered(row, None, f.getErrorMessage() or type(f.value).__name__),
        )
        return d

    asked = [
        one(row, m)
        for row, m in zip(rows, members, strict=True)
        if m.address is not None or m.name == own
    ]

    def done(_: Any) -> dict[str, Any]:
        return {
            "time": time.time(),
            "node": node_json(metrics),
            "members": [dict(asdict(r), own=r.name == own) for r in with_lag(rows)],
            "throughput": {"every_s": SAMPLE_EVERY, "rates": metrics.throughput.rates()},
        }

    return defer.gatherResults(asked).addCallback(done)


class StatusJSON(resource.Resource):
    isLeaf = True

    def __init__(self, metrics: Any, reactor: Any) -> None:
        super().__init__()
        self.metrics = metrics
        self.reactor = reactor

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")

        def write(body: dict[str, Any]) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(json.dumps(body, sort_keys=True).encode())
                request.finish()

        def failed(f: Any) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.setResponseCode(500)
                request.write(json.dumps({"error": f.getErrorMessage()}).encode())
                request.finish()

        gather(self.metrics, self.reactor).addCallbacks(write, failed)
        return server.NOT_DONE_YET


class StatusPage(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        from kvtwist.statushtml import PAGE

        return PAGE.encode()
