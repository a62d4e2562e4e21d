"""A self-contained HTML timeline of a campaign: who did what when, and what broke.

One row per client, one bar per operation from invocation to completion,
coloured by outcome (an unknown outcome runs to the end: it may take effect
at any time); faults are vertical lines with labels, one colour per kind
(solid for a fault, dashed for its recovery), with a legend of the kinds
that occurred.  Everything (data,
drawing code) is inline, so the file opens offline and can be attached to a
bug report.  A canvas rather than SVG keeps tens of thousands of bars light;
the mouse wheel zooms, dragging pans, hovering names the operation.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kvtwist.verify.history import Op
from kvtwist.verify.nemesis import KINDS

__all__ = ["write_timeline"]

_KINDS = ["get", "put", "del", "incr", "setnx", "setnx_refused"]
_OUTCOMES = ["ok", "fail", "unknown"]

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font: 13px system-ui, sans-serif; margin: 12px; color: #222; }
h1 { font-size: 16px; margin: 0 0 6px; }
.verdict { font-weight: bold; padding: 2px 6px; border-radius: 3px; }
.good { background: #d4f4dd; } .bad { background: #ffd6d6; }
table.summary td { padding: 1px 10px 1px 0; }
#wrap { position: relative; border: 1px solid #ccc; margin-top: 8px; }
canvas { display: block; cursor: grab; }
#tip { position: absolute; pointer-events: none; background: #fffbe6; border: 1px solid #aaa;
       padding: 3px 6px; font: 12px monospace; white-space: pre; display: none; }
.legend span { display: inline-block; margin-right: 14px; }
.sw { display: inline-block; width: 12px; height: 10px; margin-right: 4px; vertical-align: middle; }
pre.info { background: #f6f6f6; padding: 6px; overflow-x: auto; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
__SUMMARY__
<div class="legend">
<span><i class="sw" style="background:#2e9e44"></i>ok</span>
<span><i class="sw" style="background:#d62728"></i>fail</span>
<span><i class="sw" style="background:#ff9f1c"></i>unknown (may take effect any time later)</span>
__EVENT_LEGEND__
&nbsp; wheel: zoom &middot; drag: pan &middot; double-click: reset
</div>
<div id="wrap"><canvas id="c"></canvas><div id="tip"></div></div>
__DETAILS__
<script>
"use strict";
const DATA = __DATA__;
const KINDS = ["get", "put", "del", "incr", "setnx", "setnx_refused"];
const OUTCOMES = ["ok", "fail", "unknown"];
const COLORS = ["#2e9e44", "#d62728", "#ff9f1c"];
const EVENT_COLORS = DATA.colors;
const FAULTS = new Set(DATA.faults);
const canvas = document.getElementById("c"), tip = document.getElementById("tip");
const ctx = canvas.getContext("2d");
const ROW = 14, TOP = 70, LEFT = 70, BOTTOM = 24;
const procs = [...new Set(DATA.ops.map(o => o[0]))].sort((a, b) => (a < 0) - (b < 0) || a - b);
const rowOf = new Map(procs.map((p, i) => [p, i]));
const byRow = procs.map(() => []);
for (const o of DATA.ops) byRow[rowOf.get(o[0])].push(o);
for (const r of byRow) r.sort((a, b) => a[4] - b[4]);
const t0 = DATA.start, t1 = DATA.end;
let view = [t0, t1], drag = null;

function size() {
  canvas.width = Math.max(600, document.getElementById("wrap").clientWidth);
  canvas.height = TOP + procs.length * ROW + BOTTOM;
  draw();
}
function plotWidth() { return canvas.width - LEFT - 10; }
function x(t) { return LEFT + (t - view[0]) / (view[1] - view[0]) * plotWidth(); }
function tAt(px) { return view[0] + (px - LEFT) / plotWidth() * (view[1] - view[0]); }
function draw() {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#333";
  procs.forEach((p, i) => {
    ctx.fillText(p < 0 ? "final" : "client " + p, 4, TOP + i * ROW + 10);
    if (i % 2) { ctx.fillStyle = "#f7f7f7"; ctx.fillRect(LEFT, TOP + i * ROW, canvas.width, ROW);
                 ctx.fillStyle = "#333"; }
  });
  ctx.save();
  ctx.beginPath(); ctx.rect(LEFT, 0, canvas.width - LEFT, canvas.height); ctx.clip();
  byRow.forEach((ops, i) => {
    const y = TOP + i * ROW + 2;
    for (const o of ops) {
      const end = o[5] === null ? t1 : o[5];
      if (end < view[0] || o[4] > view[1]) continue;
      const a = x(o[4]), b = Math.max(x(end), a + 1);
      ctx.globalAlpha = o[5] === null ? 0.35 : 1;
      ctx.fillStyle = COLORS[o[6]];
      ctx.fillRect(a, y, b - a, ROW - 4);
    }
  });
  ctx.globalAlpha = 1;
  let lane = 0;
  for (const e of DATA.events) {
    if (e.t < view[0] || e.t > view[1]) continue;
    const px = x(e.t);
    ctx.strokeStyle = EVENT_COLORS[e.kind] || "#000";
    ctx.setLineDash(FAULTS.has(e.kind) ? [] : [4, 3]);
    ctx.lineWidth = FAULTS.has(e.kind) ? 2 : 1;
    ctx.beginPath(); ctx.moveTo(px, 12 + 12 * lane); ctx.lineTo(px, canvas.height - BOTTOM);
    ctx.stroke();
    ctx.fillStyle = EVENT_COLORS[e.kind] || "#000";
    ctx.fillText(e.label, px + 2, 10 + 12 * lane);
    lane = (lane + 1) % 5;
  }
  ctx.setLineDash([]);
  ctx.restore();
  // time axis
  ctx.fillStyle = "#333"; ctx.strokeStyle = "#999";
  const span = view[1] - view[0];
  const step = Math.pow(10, Math.floor(Math.log10(span / 8)));
  const nice = [1, 2, 5, 10].map(m => m * step).find(s => span / s <= 12) || step * 10;
  for (let t = Math.ceil(view[0] / nice) * nice; t <= view[1]; t += nice) {
    const px = x(t);
    const base = canvas.height - BOTTOM;
    ctx.beginPath(); ctx.moveTo(px, base); ctx.lineTo(px, base + 4); ctx.stroke();
    ctx.fillText(t.toFixed(nice < 1 ? 2 : 0) + "s", px - 8, canvas.height - 6);
  }
}
function opAt(mx, my) {
  const i = Math.floor((my - TOP) / ROW);
  if (i < 0 || i >= procs.length) return null;
  const t = tAt(mx), ops = byRow[i], tol = 3 * (view[1] - view[0]) / canvas.width;
  let lo = 0, hi = ops.length;
  while (lo < hi) { const m = (lo + hi) >> 1; if (ops[m][4] <= t + tol) lo = m + 1; else hi = m; }
  for (let k = lo - 1; k >= 0 && k >= lo - 50; k--) {
    const o = ops[k], end = o[5] === null ? t1 : o[5];
    if (o[4] - tol <= t && t <= end + tol) return o;
  }
  return null;
}
function describe(o) {
  const v = o[1] === 2 ? "" : " " + JSON.stringify(o[3]);
  const end = o[5] === null ? "?" : o[5].toFixed(4);
  return `client ${o[0]}: ${KINDS[o[1]]} ${JSON.stringify(o[2])}${v}\\n` +
         `[${o[4].toFixed(4)}, ${end}] ${OUTCOMES[o[6]]}`;
}
canvas.addEventListener("wheel", ev => {
  ev.preventDefault();
  const t = tAt(ev.offsetX), f = ev.deltaY > 0 ? 1.25 : 0.8;
  view = [t - (t - view[0]) * f, t + (view[1] - t) * f];
  draw();
}, {passive: false});
canvas.addEventListener("mousedown", ev => { drag = [ev.offsetX, view.slice()]; });
window.addEventListener("mouseup", () => { drag = null; });
canvas.addEventListener("dblclick", () => { view = [t0, t1]; draw(); });
canvas.addEventListener("mousemove", ev => {
  if (drag) {
    const dt = (ev.offsetX - drag[0]) / (canvas.width - LEFT - 10) * (drag[1][1] - drag[1][0]);
    view = [drag[1][0] - dt, drag[1][1] - dt];
    draw();
    return;
  }
  const o = opAt(ev.offsetX, ev.offsetY);
  if (!o) { tip.style.display = "none"; return; }
  tip.textContent = describe(o);
  tip.style.display = "block";
  tip.style.left = (ev.offsetX + 12) + "px";
  tip.style.top = (ev.offsetY + 12) + "px";
});
window.addEventListener("resize", size);
size();
</script>
</body>
</html>
"""


#: Colours of the campaign's events: faults solid and thick, recoveries dashed.
EVENT_COLORS = {
    "kill": "#c00",
    "pause": "#7b3fb5",
    "short-pause": "#b07be0",
    "zk-pause": "#1f77b4",
    "zk-restart": "#0b3d91",
    "partition": "#e377c2",
    "join-fault": "#8c564b",
    "crash-restart": "#ff4500",
    "stranger": "#17becf",
    "combined": "#000",
    "exit": "#c00",
    "resume": "#7b3fb5",
    "restart": "#ff4500",
    "heal": "#888",
    "start": "#888",
    "stranger-end": "#17becf",
    "probe": "#2e9e44",
}
#: The nemesis's kinds, and a node that exited by itself.
FAULT_KINDS = frozenset(KINDS) | {"exit"}


def _legend(kinds: Iterable[str]) -> str:
    spans = []
    for kind in sorted(set(kinds), key=lambda k: (k not in FAULT_KINDS, k)):
        colour = EVENT_COLORS.get(kind, "#000")
        style = "" if kind in FAULT_KINDS else ";opacity:0.5"
        spans.append(
            f'<span><i class="sw" style="background:{colour}{style}"></i>{html.escape(kind)}</span>'
        )
    return "\n".join(spans)


def _summary(summary: Mapping[str, Any]) -> str:
    rows = []
    for key, value in summary.items():
        if isinstance(value, dict | list):
            continue
        text = html.escape(str(value))
        if isinstance(value, bool):
            text = f'<span class="verdict {"good" if value else "bad"}">{text}</span>'
        rows.append(f"<tr><td>{html.escape(key)}</td><td>{text}</td></tr>")
    return '<table class="summary">' + "".join(rows) + "</table>"


def write_timeline(
    path: str | Path,
    ops: Sequence[Op],
    events: Iterable[Mapping[str, Any]],
    summary: Mapping[str, Any],
    details: str = "",
    title: str = "kvtwist torture campaign",
) -> None:
    """Write the page.  ``events`` are ``{"t", "kind", "label"}``; times as in ``ops``."""
    event_list = [{"t": e["t"], "kind": e["kind"], "label": e["label"]} for e in events]
    times = [op.invoke for op in ops] + [op.complete for op in ops if op.complete is not None]
    times += [e["t"] for e in event_list]
    start = min(times, default=0.0)
    end = max(times, default=1.0)
    if end <= start:
        end = start + 1.0
    data = {
        "start": start,
        "end": end,
        "ops": [
            [
                op.process,
                _KINDS.index(op.op),
                op.key,
                op.value,
                round(op.invoke, 6),
                None if op.complete is None else round(op.complete, 6),
                _OUTCOMES.index(op.outcome),
            ]
            for op in ops
        ],
        "events": event_list,
        "colors": {e["kind"]: EVENT_COLORS.get(e["kind"], "#000") for e in event_list},
        "faults": sorted(FAULT_KINDS),
    }
    # "</" must not appear inside the script element
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    extra = f'<pre class="info">{html.escape(details)}</pre>' if details else ""
    page = (
        _PAGE.replace("__TITLE__", html.escape(title))
        .replace("__SUMMARY__", _summary(summary))
        .replace("__EVENT_LEGEND__", _legend(e["kind"] for e in event_list))
        .replace("__DETAILS__", extra)
        .replace("__DATA__", payload)
    )
    Path(path).write_text(page, encoding="utf-8")
