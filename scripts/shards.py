"""A local demo cluster of many chains: ZooKeeper (etc/zoo.cfg) plus S cluster servers.

    .venv/bin/python scripts/shards.py --servers 4 --shards 4 --replicas 3
                                       (or: make shards S=4 SHARDS=4 R=3)
    .venv/bin/python scripts/shards.py --tour

ZooKeeper listens on 127.0.0.1:2181; ``kvtwist-admin cluster create demo``
cuts the key space into SHARDS shards of R replicas each, and servers s1..sS
listen on 127.0.0.1:7001.., each with --data-dir run/shards/sN, a 2 s
ZooKeeper session timeout and --replace-after 10, so that a server killed
is replaced in its chains about 12 s later. Logs go to run/shards/ too.
Every run is a new cluster: the servers' data directories are emptied first
(and ZooKeeper's, when it starts ZooKeeper itself); a ZooKeeper already
running on the port that holds the cluster is refused.

Without --tour it stays in the foreground, printing the commands to try,
until Ctrl-C, SIGTERM or SIGHUP (the terminal closed), also once the reader
of its output has gone (``make shards | tee log``, then Ctrl-C); then it
stops the servers, then ZooKeeper (only if it started it). With --tour it runs a
scripted tour instead, printed as a shell transcript (puts and a scan, the
status, a split, a server killed and replaced, every key read back), and
then stops everything the same way.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kazoo.client import KazooClient  # noqa: E402
from kazoo.exceptions import NoNodeError  # noqa: E402

from kvtwist.cluster.shardmap import ClusterPaths, ShardMap  # noqa: E402
from kvtwist.kazoolog import silence  # noqa: E402
from kvtwist.membership import MEMBER_PREFIX, parse_address  # noqa: E402
from kvtwist.procs import TWISTD, node_env  # noqa: E402
from kvtwist.procs.demo import (  # noqa: E402
    DemoZooKeeper,
    Failed,
    run_foreground,
    say,
    shown,
    wait,
    zk_ok,
)
from kvtwist.zk.cluster import servers_sync  # noqa: E402

__all__ = ["Shards", "main"]

BIN = Path(sys.executable).parent
#: what the tour writes, and reads back after a server is killed and replaced
TOUR_KEYS = {"42": "answer", "apple": "red", "kiwi": "green", "mango": "orange",
             "zebra": "striped"}


class Shards:
    """ZooKeeper, the cluster's map and its servers; the tour."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = Path(args.run_dir).resolve()
        self.dir = self.run / "shards"
        self.zk = DemoZooKeeper(ROOT / "etc" / "zoo.cfg", self.dir, args.zk_port)
        self.paths = ClusterPaths(args.name)
        self.ports = {f"s{i + 1}": args.base_port + i for i in range(args.servers)}
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self.kazoo: KazooClient | None = None

    # -- starting and stopping

    def start(self) -> None:
        args = self.args
        self.run.mkdir(parents=True, exist_ok=True)
        if not zk_ok(args.zk_port):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.zk.start()
        silence()  # kazoo's retries would be lines of the transcript
        self.kazoo = KazooClient(hosts=self.zk.hosts, timeout=10.0)
        self.kazoo.start(timeout=15)
        if self.kazoo.exists(self.paths.root):
            raise Failed(f"cluster {args.name} exists already in the ZooKeeper on "
                         f"{self.zk.hosts}; pick another --name or stop that ZooKeeper")
        for sid in self.ports:
            shutil.rmtree(self.dir / sid, ignore_errors=True)
            (self.dir / f"{sid}.log").unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        for sid in self.ports:
            with open(self.dir / f"{sid}.log", "ab") as out:  # what twistd says before logging
                self.servers[sid] = subprocess.Popen(
                    self.server_command(sid), env=node_env(), cwd=self.dir,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        wait(self.registered, 60, "the servers to register")
        for sid, p in self.servers.items():
            say(f"server {sid} on 127.0.0.1:{self.ports[sid]} (pid {p.pid}, "
                f"log {shown(self.dir / f'{sid}.log')})")
        # created once every server is registered, so that it places chains on all
        say("")
        self.shell(self.admin("cluster", "create", args.name, "--replicas", str(args.replicas),
                              "--shards", str(args.shards)))
        wait(self.settled, 60, "every chain placed and formed")
        if not args.tour:
            self.show_help()

    def server_command(self, sid: str) -> list[str]:
        a = self.args
        return [TWISTD, "-n", "--pidfile=", f"--logfile={self.dir / sid}.log", "kvnode",
                "--port", str(self.ports[sid]), "--interface", "127.0.0.1",
                "--zk", self.zk.hosts, "--cluster", a.name, "--server-id", sid,
                "--data-dir", str(self.dir / sid), "--replace-after", f"{a.replace_after:g}",
                "--zk-session-timeout", f"{a.session_timeout:g}"]

    def stop(self) -> None:
        """Stop the servers, then ZooKeeper (if it is ours)."""
        if self.kazoo is not None:
            self.kazoo.stop()
            self.kazoo.close()
        say("\nstopping servers")
        for p in self.servers.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.servers.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.zk.stop()

    def show_help(self) -> None:
        a, admin, zk = self.args, shown(BIN / "kvtwist-admin"), self.zk.hosts
        m = self.map()
        first = m.shards[0].chain
        spare = [s for s in self.ports if s not in m.chains[first].members]
        move = (f"  {admin} cluster move {a.name} {first} --to {spare[0]} --zk {zk} --wait\n"
                if spare else "")
        say(f"\ncluster {a.name} up: {a.shards} shards, R = {a.replicas}, "
            f"{a.servers} servers. Try:\n"
            f"  {shown(BIN / 'kvtwist-client')} --zk {zk} --cluster {a.name}\n"
            f"  {admin} cluster status {a.name} --zk {zk}\n"
            f"  {admin} cluster split {a.name} {first} --zk {zk} --wait\n"
            f"{move}"
            f"  {admin} cluster drain {a.name} s1 --zk {zk} --wait   "
            f"(then: cluster undrain {a.name} s1)\n"
            f"  kill -9 <pid>        # a server fails; after {a.session_timeout:g} s + "
            f"{a.replace_after:g} s the controller\n"
            f"                       # gives its chains a new member, if a server is free\n"
            f"Ctrl-C stops everything.")

    # -- what ZooKeeper says

    def map(self) -> ShardMap:
        assert self.kazoo is not None
        return ShardMap.decode(self.kazoo.get(self.paths.map)[0])

    def registered(self) -> bool:
        """Whether every server is registered; Failed if one exited instead."""
        assert self.kazoo is not None
        for sid, p in self.servers.items():
            if p.poll() is not None:
                raise Failed(f"server {sid} exited with status {p.returncode}; "
                             f"see {shown(self.dir / f'{sid}.log')}")
        return set(servers_sync(self.kazoo, self.paths)) >= set(self.servers)

    def listed(self, chain: str) -> set[str]:
        """The servers the chain's own ZooKeeper membership lists."""
        assert self.kazoo is not None
        root = self.paths.chain(chain)
        by_port = {port: sid for sid, port in self.ports.items()}
        out = set()
        try:
            for name in self.kazoo.get_children(root):
                if name.startswith(MEMBER_PREFIX):
                    address = parse_address(self.kazoo.get(f"{root}/{name}")[0])
                    if address is not None:
                        out.add(by_port.get(address[1], "?"))
        except NoNodeError:  # the chain's root not made yet, or a member just gone
            return set()
        return out

    def settled(self, gone: str | None = None) -> bool:
        """Every chain planned with R members (all there are, if fewer), none of them
        ``gone``, and listed by its own membership as exactly those."""
        m = self.map()
        want = min(m.replicas, len(self.servers) - (gone is not None))
        return all(
            len(p.members) == want and gone not in p.members
            and self.listed(cid) == set(p.members)
            for cid, p in m.chains.items()
        )

    # -- the tour

    def admin(self, *words: str) -> list[str]:
        return [str(BIN / "kvtwist-admin"), *words, "--zk", self.zk.hosts]

    def client(self) -> list[str]:
        return [str(BIN / "kvtwist-client"), "--zk", self.zk.hosts, "--cluster", self.args.name]

    def shell(self, command: list[str], lines: list[str] | None = None) -> str:
        """Run ``command`` (fed ``lines`` on stdin), print it and its output as a shell
        transcript; its output.  Failed if it fails."""
        shown_cmd = shlex.join([shown(Path(command[0])), *command[1:]])
        feed = None
        if lines is not None:
            feed = "".join(f"{line}\n" for line in lines)
            printf = shlex.quote(feed.replace("\n", "\\n"))
            shown_cmd = f"printf {printf} \\\n    | {shown_cmd}"
        say(f"$ {shown_cmd}")
        done = subprocess.run(command, input=feed, capture_output=True, text=True,
                              timeout=120, env=node_env())
        out = (done.stdout + done.stderr).rstrip("\n")
        if out:
            say(out)
        if done.returncode != 0:
            raise Failed(f"{shown_cmd} exited with status {done.returncode}")
        return done.stdout

    def tour(self) -> None:
        name = self.args.name
        say(f"\n# {len(self.servers)} servers up; the tour:")
        self.shell(self.client(), [f"put {k} {v}" for k, v in TOUR_KEYS.items()]
                   + ["range a -"])
        self.shell(self.admin("cluster", "status", name))
        chain, at = self.split_point()
        self.shell(self.admin("cluster", "split", name, chain, *at,
                              "--wait", "--wait-timeout", "60"))
        self.shell(self.admin("cluster", "status", name))
        before = {cid: p.members for cid, p in self.map().chains.items()}
        victim = max(sorted(self.servers), key=lambda s: sum(s in p for p in before.values()))
        proc = self.servers[victim]
        say(f"$ kill -9 {proc.pid}       # {victim}, a member of "
            f"{', '.join(c for c, p in before.items() if victim in p)}")
        proc.kill()
        proc.wait()
        say(f"# waiting until the controller has replaced {victim} (its ZooKeeper session "
            f"ends after {self.args.session_timeout:g} s, then --replace-after "
            f"{self.args.replace_after:g} s)")
        killed = time.monotonic()
        wait(lambda: self.settled(gone=victim), self.args.replace_after + 90,
             f"{victim} to be replaced")
        after = self.map().chains
        took = ", ".join(f"{cid}: {victim} -> {next(iter(set(after[cid].members) - set(p)))}"
                         for cid, p in before.items() if victim in p)
        say(f"# replaced after {time.monotonic() - killed:.1f} s ({took}); every chain "
            f"lists its {self.map().replicas} members again")
        self.shell(self.admin("cluster", "status", name))
        got = self.shell(self.client(), [f"get {k}" for k in TOUR_KEYS] + ["size"])
        if got.split("\n")[: len(TOUR_KEYS)] != list(TOUR_KEYS.values()):
            raise Failed(f"the keys did not read back as written: {got!r}")

    def split_point(self) -> tuple[str, tuple[str, ...]]:
        """The chain whose shard holds most tour keys, and its middle key as AT_KEY
        (none, the middle of the range, if that key starts the shard)."""
        m = self.map()
        keys = sorted(k.encode() for k in TOUR_KEYS)

        def inside(start: bytes, end: bytes | None) -> list[bytes]:
            return [k for k in keys if start <= k and (end is None or k < end)]

        shard = max(m.shards, key=lambda s: len(inside(s.start, s.end)))
        mine = inside(shard.start, shard.end)
        at = mine[len(mine) // 2] if mine else shard.start
        return shard.chain, (at.decode(),) if at > shard.start else ()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--servers", type=int, default=4, metavar="S")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--replicas", type=int, default=3, metavar="R")
    ap.add_argument("--name", default="demo", help="the cluster's name (demo)")
    ap.add_argument("--zk-port", type=int, default=2181)
    ap.add_argument("--base-port", type=int, default=7001, help="s1's port (7001); sN's is N-1 on")
    ap.add_argument("--session-timeout", type=float, default=2.0)
    ap.add_argument("--replace-after", type=float, default=10.0)
    ap.add_argument("--run-dir", default=str(ROOT / "run"), help="where shards/ goes (run/)")
    ap.add_argument("--tour", action="store_true", help="run the scripted tour, then stop")
    args = ap.parse_args(argv)
    if args.servers < 1 or args.shards < 1 or args.replicas < 1:
        ap.error("--servers, --shards and --replicas must be at least 1")
    if args.tour and args.servers <= args.replicas:
        ap.error("--tour needs more servers than replicas, so that a killed one can be replaced")
    why = DemoZooKeeper.unavailable()
    if why:
        print(f"shards: {why}", file=sys.stderr)
        return 1
    shards = Shards(args)
    return run_foreground("shards", shards.start, shards.stop, shards.tour if args.tour else None)


if __name__ == "__main__":
    sys.exit(main())
