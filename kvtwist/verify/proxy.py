"""A fault-injecting TCP proxy for campaigns: partitions without network namespaces.

``kvtwist-torture`` runs one proxy process (``python -m kvtwist.verify.proxy``)
holding one *route* per node and one per node's ZooKeeper connection:

- node route: listens on a port of its own and forwards to the node; the node
  is started with ``--advertise 127.0.0.1:<route port>``, so every connection
  *to* it -- chain links from its neighbours, joiners, clients found through
  ZooKeeper -- passes this route;
- ZooKeeper route: the node is started with ``--zk 127.0.0.1:<route port>``,
  so its session alone runs through it.

Who is on the other end?  A chain link is dialled by either neighbour (a
predecessor dials its successor, a joiner dials the tail), from an ephemeral
port.  The proxy asks the kernel: it finds the dialling socket in
``/proc/net/tcp`` by its port and then the process holding that socket among
the processes the campaign registered (``owner``: pid -> label).  So a
connection is labelled with the node that made it, whatever the wire protocol
says (it works unchanged when links gain authentication), and anything else
(clients, strangers) is labelled ``client``.  Linux only, like the campaign.

Rules, per route and source label (``*``: every source):

- ``drop``: existing connections are aborted (RST), new ones accepted and
  closed at once -- a link that keeps failing to connect;
- ``blackhole``: connections stay open but nothing is forwarded either way,
  new ones are accepted and go nowhere -- a silent partition; when the rule is
  cleared the bytes held back flow again, as after a healed network;
- ``slow``: forward at most ``rate`` bytes a second each way (a state
  transfer stretched long enough to be faulted in its middle);
- ``pass``: forward as if there were no rule: the exception to a ``*`` rule
  (a member cut off from everyone but the clients on its side).

Cutting the link between nodes A and B is then two rules: on A's route for
source B and on B's route for source A.  Isolating a node from ZooKeeper is
``*`` on its ZooKeeper route while its chain links stay up.

Control: JSON lines on a loopback TCP port printed as ``control <port>`` on
stdout; :class:`ProxyControl` is the blocking client the campaign uses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MODES", "ProxyControl", "socket_owner"]

MODES = ("drop", "blackhole", "slow", "pass")
CLIENT = "client"
CHUNK = 65536


def socket_owner(peer_port: int, local_port: int, pids: dict[int, str]) -> str:
    """The label of the registered process whose socket dialled us, else ``client``.

    ``peer_port`` is the dialler's port, ``local_port`` the port it dialled.
    """
    inode = _inode(peer_port, local_port)
    if inode is None:
        return CLIENT
    target = f"socket:[{inode}]"
    for pid, label in list(pids.items()):
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            with contextlib.suppress(OSError):
                if os.readlink(fd_dir / name) == target:
                    return label
    return CLIENT


def _inode(peer_port: int, local_port: int) -> int | None:
    """The inode of the socket bound to 127.0.0.1:peer_port connected to :local_port."""
    want_local = f"0100007F:{peer_port:04X}"
    want_remote = f":{local_port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) > 9 and parts[1] == want_local and parts[2].endswith(want_remote):
                    return int(parts[9])
    except OSError:
        return None
    return None


@dataclass
class Rule:
    mode: str
    rate: float = 0.0


@dataclass(eq=False)
class Conn:
    """One proxied connection: client side, upstream side, and its gate."""

    source: str
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    rate: float = 0.0

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                w.transport.abort()

    def apply(self, rule: Rule | None) -> None:
        if rule is None or rule.mode == "pass":
            self.rate = 0.0
            self.gate.set()
        elif rule.mode == "drop":
            self.abort()
        elif rule.mode == "blackhole":
            self.gate.clear()
        else:
            self.rate = rule.rate
            self.gate.set()


class Route:
    """One listening port forwarding to one target port, with its rules."""

    def __init__(self, proxy: Proxy, name: str, target: int) -> None:
        self.proxy = proxy
        self.name = name
        self.target = target
        self.port = 0
        self.rules: dict[str, Rule] = {}
        self.conns: set[Conn] = set()
        self.server: asyncio.Server | None = None
        self.accepted = 0

    async def listen(self) -> int:
        self.server = await asyncio.start_server(self.accept, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    def rule_for(self, source: str) -> Rule | None:
        return self.rules.get(source) or self.rules.get("*")

    def set_rule(self, source: str, rule: Rule | None) -> None:
        if rule is None:
            self.rules.pop(source, None)
        else:
            self.rules[source] = rule
        for conn in list(self.conns):
            conn.apply(self.rule_for(conn.source))

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        peer = writer.get_extra_info("peername")
        source = socket_owner(int(peer[1]), self.port, self.proxy.owners)
        conn = Conn(source, writer)
        rule = self.rule_for(source)
        if rule is not None and rule.mode == "drop":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        conn.upstream = up_writer
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.apply(self.rule_for(source))  # the rule may have changed while we dialled
        self.conns.add(conn)
        try:
            pumps = [
                asyncio.ensure_future(self.pump(reader, up_writer, conn)),
                asyncio.ensure_future(self.pump(up_reader, writer, conn)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for p in pumps:
                p.cancel()
        finally:
            self.conns.discard(conn)
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Conn) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await conn.gate.wait()
                size = CHUNK if not conn.rate else max(1024, min(CHUNK, int(conn.rate / 20)))
                data = await reader.read(size)
                if not data:
                    return
                await conn.gate.wait()
                writer.write(data)
                await writer.drain()
                if conn.rate:
                    await asyncio.sleep(len(data) / conn.rate)


class Proxy:
    """The routes of one process and the pids whose connections it can name."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.owners: dict[int, str] = {}

    async def command(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "route":
            name = str(req["name"])
            if name in self.routes:
                return {"ok": True, "port": self.routes[name].port}
            route = Route(self, name, int(req["target"]))
            self.routes[name] = route
            return {"ok": True, "port": await route.listen()}
        if op == "owner":
            pid = int(req["pid"])
            if req.get("label") is None:
                self.owners.pop(pid, None)
            else:
                self.owners[pid] = str(req["label"])
            return {"ok": True}
        if op == "rule":
            route = self.routes[str(req["route"])]
            mode = req.get("mode")
            if mode is not None and mode not in MODES:
                return {"ok": False, "error": f"unknown mode {mode!r}"}
            rule = None if mode is None else Rule(str(mode), float(req.get("rate", 0.0)))
            route.set_rule(str(req.get("source", "*")), rule)
            return {"ok": True}
        if op == "clear":
            for route in self.routes.values():
                route.rules.clear()
                for conn in list(route.conns):
                    conn.apply(None)
            return {"ok": True}
        if op == "stats":
            return {
                "ok": True,
                "routes": {
                    r.name: {
                        "port": r.port,
                        "accepted": r.accepted,
                        "open": sorted(c.source for c in r.conns),
                        "rules": {s: rule.mode for s, rule in r.rules.items()},
                    }
                    for r in self.routes.values()
                },
            }
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # CancelledError: the proxy is shutting down under a waiting campaign; a handler
        # ending cancelled would make asyncio log a traceback that reads like a fault
        with contextlib.suppress(OSError, ConnectionError, asyncio.CancelledError):
            while line := await reader.readline():
                try:
                    reply = await self.command(json.loads(line))
                except (KeyError, ValueError, TypeError) as e:
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        writer.close()


async def serve() -> None:
    proxy = Proxy()
    server = await asyncio.start_server(proxy.control, "127.0.0.1", 0)
    print(f"control {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # the campaign holds our stdin: when it goes away, so do we
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(0, 4096) else None)
    await stop.wait()


class ProxyControl:
    """The campaign's handle on a proxy process it started: routes, owners, rules."""

    def __init__(self, log: Path) -> None:
        import subprocess

        with open(log, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kvtwist.verify.proxy"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "control":
            self.close()
            raise RuntimeError(f"the proxy did not start (see {log})")
        self.sock = socket.create_connection(("127.0.0.1", int(line[1])), timeout=10)
        self.file = self.sock.makefile("rb")

    def call(self, **req: Any) -> dict[str, Any]:
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        reply: dict[str, Any] = json.loads(self.file.readline())
        if not reply.get("ok"):
            raise RuntimeError(f"proxy {req}: {reply.get('error')}")
        return reply

    def route(self, name: str, target: int) -> int:
        """A route to 127.0.0.1:target; its listening port (the same for the same name)."""
        return int(self.call(op="route", name=name, target=target)["port"])

    def owner(self, pid: int, label: str | None) -> None:
        """Name connections dialled by ``pid`` as ``label`` (None: forget the pid)."""
        self.call(op="owner", pid=pid, label=label)

    def rule(self, route: str, source: str, mode: str | None, rate: float = 0.0) -> None:
        """Set (or with mode None clear) the rule for ``source`` on ``route``."""
        self.call(op="rule", route=route, source=source, mode=mode, rate=rate)

    def clear(self) -> None:
        """Remove every rule: everything flows again."""
        self.call(op="clear")

    def stats(self) -> dict[str, Any]:
        return self.call(op="stats")["routes"]  # type: ignore[no-any-return]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sock.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except Exception:
                self.process.kill()
                self.process.wait()


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m kvtwist.verify.proxy",
        description="Fault-injecting TCP proxy of kvtwist-torture (controlled over JSON lines).",
    ).parse_args(argv)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
