"""The status page in a real headless browser (Debian's chromium), loaded from the
metrics port of a real chain's member: what the rendered page shows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from kvtwist import wire
from kvtwist.procs import free_port
from tests.nodes import NodeProcess, RawClient, wait_for
from tests.test_chain import SESSION, ChainCase

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(which: Any = shutil.which, environ: Any = os.environ) -> str:
    """The browser; a missing one skips the test, or fails it under CI=true."""
    path = which("chromium")
    if path is None:
        message = "chromium is not installed (sh scripts/setup.sh --test installs it)"
        if environ.get("CI") == "true":
            raise AssertionError(message)
        raise SkipTest(message)
    return path


class Rows(HTMLParser):
    """The members table of a dumped page: per row, each cell's text by its class."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.boxes: list[str] = []
        self._cell: str | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append({})
        elif tag == "td" and self._in_body:
            self._cell = a.get("class") or ""
        elif tag == "div" and "box" in (a.get("class") or "").split():
            self.boxes.append(a.get("data-name") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None and self.rows:
            self.rows[-1][self._cell] = self.rows[-1].get(self._cell, "") + data


class StatusPageBrowserTests(ChainCase):
    def setUp(self) -> None:
        super().setUp()
        self.browser = chromium()
        self.tmp = Path(tempfile.mkdtemp(prefix="kvpage-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def browse(self, url: str, *extra: str) -> str:
        """What chromium renders of ``url`` after a few seconds of the page's time."""
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.tmp)
        done = subprocess.run(
            [self.browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--virtual-time-budget=4000", *extra, url],
            capture_output=True, text=True, timeout=90,
        )
        self.assertEqual(done.returncode, 0, f"chromium failed: {done.stderr[-2000:]}")
        return done.stdout

    def rows(self, port: int) -> Rows:
        parsed = Rows()
        parsed.feed(self.browse(f"http://127.0.0.1:{port}/", "--dump-dom"))
        return parsed

    def start_member(self) -> tuple[NodeProcess, int]:
        metrics = free_port()
        n = NodeProcess.member(
            self.zk.hosts, self.root, SESSION, extra_args=["--metrics-port", str(metrics)]
        ).start()
        self.nodes.append(n)
        wait_for(lambda: n.port in self.member_ports(), 30, f"node {n.port} to join")
        return n, metrics

    def shown(self, port: int, committed: str) -> Rows:
        """The page once every member row shows ``committed`` (the page polls each second)."""
        seen: list[Rows] = []

        def all_there() -> bool:
            seen.append(self.rows(port))
            rows = seen[-1].rows
            return len(rows) == 3 and all(r.get("committed") == committed for r in rows)

        try:
            wait_for(all_there, 60, f"the page to show op {committed}")
        except Exception:
            last = seen[-1].rows if seen else "nothing"
            raise AssertionError(f"the page showed {last}") from None
        return seen[-1]

    def test_page_shows_the_chain_and_follows_writes(self) -> None:
        """From the middle's metrics port the page draws all three members in chain
        order with their roles, and its op numbers move with the writes."""
        nodes = [self.start_member() for _ in range(3)]
        with RawClient(nodes[0][0].port) as c:
            for i in range(10):
                self.assertEqual(c.one(wire.req_put(b"k%d" % i, b"v")).op_n, i + 1)
        middle = nodes[1][1]
        page = self.shown(middle, "10")
        names = [r["name"] for r in page.rows]
        self.assertEqual(names, sorted(names))
        self.assertEqual(page.boxes, names)
        self.assertEqual([r["role"] for r in page.rows], ["head", "middle", "tail"])
        self.assertEqual([r["keys"] for r in page.rows], ["10"] * 3)
        self.assertEqual(page.rows[0]["address"], f"127.0.0.1:{nodes[0][0].port}")
        with RawClient(nodes[0][0].port) as c:
            for i in range(15):
                c.one(wire.req_put(b"more%d" % i, b"v"))
        page = self.shown(middle, "25")
        self.assertEqual([r["received"] for r in page.rows], ["25"] * 3)
        self.assertEqual([r["lag"] for r in page.rows], ["0"] * 3)
        # the links' probes came back: head and middle show a round trip, the tail none
        rtts = [r["rtt"] for r in page.rows]
        self.assertEqual(rtts[2], "-")
        self.assertTrue(all(x.endswith("s") and x != "-" for x in rtts[:2]), rtts)

    def test_screenshot_with_throughput(self) -> None:
        """Under a writer the page's JSON gathers throughput samples, and chromium
        renders the page into a PNG (kept where KVTWIST_STATUS_SCREENSHOT says)."""
        nodes = [self.start_member() for _ in range(3)]
        _, out = self.start_writer("page")
        tail = nodes[2][1]

        def rates() -> list[dict[str, Any]]:
            with urllib.request.urlopen(f"http://127.0.0.1:{tail}/status.json", timeout=5) as r:
                body: dict[str, Any] = json.load(r)
            found: list[dict[str, Any]] = body["throughput"]["rates"]
            return found if len(found) >= 4 else []

        found = wait_for(rates, 60, "throughput samples")
        self.assertTrue(any(p["writes_per_s"] > 0 for p in found), found)
        self.assertGreater(len(self.acked(out)), 0)
        png = self.tmp / "status-page.png"
        self.browse(
            f"http://127.0.0.1:{tail}/", f"--screenshot={png}", "--window-size=1000,620",
            "--hide-scrollbars",
        )
        data = png.read_bytes()
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(len(data), 10_000)
        keep = os.environ.get("KVTWIST_STATUS_SCREENSHOT")
        if keep:
            shutil.copyfile(png, keep)


class ChromiumRequiredTests(SynchronousTestCase):
    """In memory: what a machine without chromium does to the browser tests."""

    def test_missing_browser_fails_under_ci(self) -> None:
        """Under CI=true a missing chromium is a failure, elsewhere a skip."""
        with self.assertRaises(AssertionError):
            chromium(lambda name: None, {"CI": "true"})
        with self.assertRaises(SkipTest):
            chromium(lambda name: None, {})
        found = chromium(lambda name: "/usr/bin/" + name, {"CI": "true"})
        self.assertEqual(found, "/usr/bin/chromium")
