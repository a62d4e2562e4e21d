"""One load process: asyncio connections that keep ``pipeline`` requests in flight.

A *slot* is one client connection as the user sees it (``--connections``):
it keeps up to ``pipeline`` requests outstanding and sends a new one for every
reply.  Against a chain a slot has two sockets, writes going to the head and
reads to the tail; against one node it has one; against a cluster one per
server its shards' heads and tails are on, each request going to its key's
chain.  Replies come back in request
order per socket, so send times wait in a FIFO and each reply's latency is the
time since its request was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from kvtwist.bench.hist import Histogram
from kvtwist.bench.workload import OP_ERROR, Requests, Route, Zipfian

_HEADER = struct.Struct(">I")
_unpack = _HEADER.unpack_from


@dataclass
class WorkerSpec:
    """Everything one load process needs (picklable, for multiprocessing)."""

    head: tuple[str, int]
    tail: tuple[str, int]
    slots: list[int]  # global indices of this process's connections
    total_slots: int
    pipeline: int = 1
    workload: str = "get"
    read_fraction: float = 0.5
    keys: int = 10_000
    value_size: int = 32
    key_dist: str = "uniform"
    key_prefix: str = ""  # before every key name, so the bench's keys are recognisable
    duration: float | None = 10.0
    requests: list[int] | None = None  # per slot, in --requests mode
    warmup: float = 0.0
    seed: int = 0
    drain_timeout: float = 10.0
    connect_timeout: float = 10.0
    routes: list[Route] | None = None  # a cluster's shards in key order


@dataclass
class WorkerResult:
    worker: int
    pid: int
    sent: int = 0
    ok: int = 0
    errors: int = 0
    unanswered: int = 0
    connection_errors: list[str] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int = 0
    cpu_s: float = 0.0
    hist_get: dict[str, Any] = field(default_factory=dict)
    hist_put: dict[str, Any] = field(default_factory=dict)
    errors_get: int = 0
    errors_put: int = 0
    unsolicited: int = 0
    error_sample: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stats:
    """Counters shared by a process's connections; reset when the warmup ends."""

    def __init__(self) -> None:
        self.hists = (Histogram(), Histogram())  # [is_write]
        self.errors = [0, 0]
        self.ok = 0
        self.sent = 0
        self.last_reply_ns = 0
        self.error_sample = ""
        self.unsolicited = 0

    def reset(self) -> None:
        for h in self.hists:
            h.reset()
        self.errors = [0, 0]
        self.ok = 0
        self.sent = 0


class _Conn(asyncio.Protocol):
    """One socket: writes frames, matches replies to send times in FIFO order."""

    def __init__(self, slot: _Slot, stats: _Stats) -> None:
        self.slot = slot
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent: deque[int] = deque()  # send time * 2 + is_write
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, frames: list[bytes], stamps: list[int]) -> None:
        assert self.transport is not None
        self.sent.extend(stamps)
        if len(frames) == 1:
            self.transport.write(frames[0])
        else:
            self.transport.write(b"".join(frames))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = len(buf)
        pos = 0
        now = time.perf_counter_ns()
        stats = self.stats
        hists = stats.hists
        errors = stats.errors
        popleft = self.sent.popleft
        n = 0
        while end - pos >= 4:
            (length,) = _unpack(buf, pos)
            stop = pos + 4 + length
            if stop > end:
                break
            if not self.sent:  # a frame nobody asked for (e.g. "idle timeout; closing")
                stats.unsolicited += 1
                if not stats.error_sample:
                    stats.error_sample = _error_text(bytes(buf[pos + 4 : stop]))
                pos = stop
                continue
            stamp = popleft()
            w = stamp & 1
            hists[w].record(now - (stamp >> 1))
            if length >= 2 and buf[pos + 4] == 0x08 and buf[pos + 5] == OP_ERROR:
                errors[w] += 1
                if not stats.error_sample:
                    stats.error_sample = _error_text(bytes(buf[pos + 4 : stop]))
            else:
                stats.ok += 1
            pos = stop
            n += 1
        if pos:
            del buf[:pos]
        if n:
            stats.last_reply_ns = now
            self.slot.replied(n)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.slot.conn_lost(self, exc)


def _error_text(payload: bytes) -> str:
    try:
        from kvtwist.wire import decode

        return decode(payload).error or "ERROR"
    except Exception:
        return "ERROR (undecodable)"


class _Slot:
    """One logical client connection."""

    def __init__(self, run: _Run, requests: Requests, quota: int | None) -> None:
        self.run = run
        self.requests = requests
        self.quota = quota  # requests left to send, None: until the deadline
        self.inflight = 0
        self.write_conn: _Conn | None = None
        self.read_conn: _Conn | None = None
        #: against a cluster: per route, its (head, tail) connections
        self.routed: list[tuple[_Conn, _Conn]] | None = None
        self.dead = False

    def fill(self) -> None:
        if self.dead or self.run.stopping:
            return
        n = self.run.pipeline - self.inflight
        if self.quota is not None:
            n = min(n, self.quota)
            self.quota -= n
        if n <= 0:
            return
        now = time.perf_counter_ns() << 1
        reqs = self.requests.next(n)
        self.inflight += n
        self.run.stats.sent += n
        if self.routed is not None:
            self._send_routed(reqs, now)
            return
        wc, rc = self.write_conn, self.read_conn
        if wc is rc:
            assert wc is not None
            wc.send([f for f, _ in reqs], [now | w for _, w in reqs])
            return
        wf: list[bytes] = []
        ws: list[int] = []
        rf: list[bytes] = []
        rs: list[int] = []
        for f, w in reqs:
            if w:
                wf.append(f)
                ws.append(now | 1)
            else:
                rf.append(f)
                rs.append(now)
        if wf:
            assert wc is not None
            wc.send(wf, ws)
        if rf:
            assert rc is not None
            rc.send(rf, rs)

    def _send_routed(self, reqs: list[tuple[bytes, int]], now: int) -> None:
        """Each request to its route's head (a write) or tail (a read)."""
        assert self.routed is not None
        batches: dict[_Conn, tuple[list[bytes], list[int]]] = {}
        for f, w in reqs:
            write = w & 1
            conn = self.routed[w >> 1][0 if write else 1]
            frames, stamps = batches.setdefault(conn, ([], []))
            frames.append(f)
            stamps.append(now | write)
        for conn, (frames, stamps) in batches.items():
            conn.send(frames, stamps)

    def conns(self) -> set[_Conn]:
        out = {c for c in (self.write_conn, self.read_conn) if c is not None}
        for head, tail in self.routed or ():
            out |= {head, tail}
        return out

    def replied(self, n: int) -> None:
        self.inflight -= n
        self.fill()
        if self.inflight == 0:
            self.run.slot_idle()

    def conn_lost(self, conn: _Conn, exc: Exception | None) -> None:
        if self.dead:
            return
        self.dead = True
        lost = len(conn.sent)
        for other in self.conns() - {conn}:
            lost += len(other.sent)
            other.sent.clear()
            if other.transport is not None:
                other.transport.close()
        conn.sent.clear()
        self.run.unanswered += lost
        self.inflight = 0
        if not self.run.stopping:
            self.run.connection_errors.append(f"connection closed by the server: {exc or 'EOF'}")
        self.run.slot_idle()


class _Run:
    def __init__(self, spec: WorkerSpec, progress: Any = None, index: int = 0) -> None:
        self.spec = spec
        self.pipeline = spec.pipeline
        self.stats = _Stats()
        self.stopping = False
        self.unanswered = 0
        self.connection_errors: list[str] = []
        self.slots: list[_Slot] = []
        self.conns: list[_Conn] = []
        self.idle: asyncio.Event | None = None
        self.progress = progress
        self.index = index
        self.start_ns = 0
        self.cpu_start = 0.0
        self.cpu_end = 0.0

    def slot_idle(self) -> None:
        if self.idle is not None and all(s.inflight == 0 for s in self.slots):
            if self.stopping or all(s.quota == 0 or s.dead for s in self.slots):
                self.idle.set()

    async def connect(self) -> None:
        spec = self.spec
        zipf = None
        if spec.key_dist == "zipfian":
            zipf = Zipfian(spec.keys)
        same = spec.head == spec.tail
        need_write = spec.workload != "get"
        need_read = spec.workload != "put"
        for k, g in enumerate(spec.slots):
            reqs = Requests(
                spec.workload,
                spec.keys,
                spec.value_size,
                spec.key_dist,
                spec.read_fraction,
                seed=spec.seed * 1_000_003 + g,
                start=g,
                stride=spec.total_slots,
                zipf=zipf,
                key_prefix=spec.key_prefix.encode("utf-8"),
                routes=spec.routes,
            )
            quota = spec.requests[k] if spec.requests is not None else None
            slot = _Slot(self, reqs, quota)
            if spec.routes:
                await self._open_routed(slot, spec.routes)
            elif same:
                slot.write_conn = slot.read_conn = await self._open(slot, spec.head)
            else:
                if need_write:
                    slot.write_conn = await self._open(slot, spec.head)
                if need_read:
                    slot.read_conn = await self._open(slot, spec.tail)
                slot.write_conn = slot.write_conn or slot.read_conn
                slot.read_conn = slot.read_conn or slot.write_conn
            self.slots.append(slot)

    async def _open_routed(self, slot: _Slot, routes: list[Route]) -> None:
        """One connection per server the routes' heads and tails are on."""
        by_address: dict[tuple[str, int], _Conn] = {}
        for _start, _chain, head, tail in routes:
            for addr in (head, tail):
                if addr not in by_address:
                    by_address[addr] = await self._open(slot, addr)
        slot.routed = [(by_address[head], by_address[tail]) for _, _, head, tail in routes]
        slot.write_conn = slot.read_conn = slot.routed[0][0]

    async def _open(self, slot: _Slot, addr: tuple[str, int]) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(partial(_Conn, slot, self.stats), addr[0], addr[1]),
            self.spec.connect_timeout,
        )
        self.conns.append(conn)
        return conn

    async def run(self) -> None:
        spec = self.spec
        self.idle = asyncio.Event()
        ticker = asyncio.ensure_future(self._tick())
        self.start_ns = time.perf_counter_ns()
        self.cpu_start = time.process_time()
        for s in self.slots:
            s.fill()
        self.slot_idle()
        if spec.warmup > 0 and spec.requests is None:
            await asyncio.sleep(spec.warmup)
            self.stats.reset()
            self.unanswered = 0
            # in-flight requests sent before the reset are not in ``sent``: count them
            self.stats.sent = sum(s.inflight for s in self.slots)
            self.start_ns = time.perf_counter_ns()
            self.cpu_start = time.process_time()
        if spec.duration is not None and spec.requests is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.idle.wait(), spec.duration)
            self.stopping = True
            self.slot_idle()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.idle.wait(), spec.drain_timeout if self.stopping else None)
        self.stopping = True
        self.cpu_end = time.process_time()
        ticker.cancel()
        self._report_progress()
        for s in self.slots:
            if s.inflight and not s.dead:
                self.unanswered += s.inflight
                s.inflight = 0
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()
        await asyncio.sleep(0)

    async def _tick(self) -> None:
        while True:
            self._report_progress()
            await asyncio.sleep(0.1)

    def _report_progress(self) -> None:
        if self.progress is not None:
            st = self.stats
            self.progress[self.index] = st.ok + st.errors[0] + st.errors[1]

    def result(self, index: int) -> WorkerResult:
        st = self.stats
        return WorkerResult(
            worker=index,
            pid=os.getpid(),
            sent=st.sent,
            ok=st.ok,
            errors=st.errors[0] + st.errors[1],
            unanswered=self.unanswered,
            connection_errors=self.connection_errors[:10],
            start_ns=self.start_ns,
            end_ns=max(st.last_reply_ns, self.start_ns),
            cpu_s=max(0.0, self.cpu_end - self.cpu_start),
            hist_get=st.hists[0].to_dict(),
            hist_put=st.hists[1].to_dict(),
            errors_get=st.errors[0],
            errors_put=st.errors[1],
            unsolicited=st.unsolicited,
            error_sample=st.error_sample,
        )


def run_worker(
    spec: WorkerSpec, index: int = 0, progress: Any = None, start: Any = None, ready: Any = None
) -> WorkerResult:
    """Connect, wait for ``start`` (a multiprocessing Event) if given, run, return results.

    ``ready`` (a multiprocessing Queue) is told ``(index, None)`` once
    connected, or ``(index, reason)`` if connecting failed.
    """
    return asyncio.run(_main(spec, index, progress, start, ready))


async def _main(
    spec: WorkerSpec, index: int, progress: Any, start: Any, ready: Any
) -> WorkerResult:
    r = _Run(spec, progress, index)
    try:
        await r.connect()
    except (TimeoutError, OSError) as e:
        if ready is not None:
            ready.put((index, f"cannot connect: {e}"))
        res = r.result(index)
        res.connection_errors.append(f"cannot connect: {e}")
        return res
    if ready is not None:
        ready.put((index, None))
    if start is not None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, start.wait)
    await r.run()
    return r.result(index)


def worker_process(
    spec: WorkerSpec, index: int, progress: Any, start: Any, ready: Any, results: Any
) -> None:
    """multiprocessing target: run and put the result dict on ``results``."""
    try:
        res = run_worker(spec, index, progress, start, ready)
        results.put(res.to_dict())
    except BaseException as e:  # report, never hang the parent
        results.put({"worker": index, "fatal": f"{type(e).__name__}: {e}"})
        raise
