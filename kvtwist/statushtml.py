"""The status page itself: one HTML document with its style and script inline.

It polls ``status.json`` (relative, so it works behind a path prefix) once a
second and redraws in place: the chain as boxes head to tail, a table of the
members' roles, op numbers, lag and link round trips, and the throughput of
the last minutes as an inline SVG line.  Nothing is fetched from anywhere
else.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>kvtwist status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2733; background: #f6f7f9; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  #summary { color: #55606e; margin-bottom: 1em; }
  #error { color: #b00020; font-weight: bold; min-height: 1.2em; }
  #chain { display: flex; flex-wrap: wrap; align-items: center; gap: .4em; margin: 1em 0; }
  .box { border: 2px solid #8fa1b3; border-radius: 6px; padding: .4em .7em;
         background: #fff; min-width: 9em; }
  .box.own { border-color: #2a6fdb; }
  .box.down { border-color: #b00020; background: #fdecee; }
  .box .r { font-weight: bold; text-transform: uppercase; font-size: .8em; letter-spacing: .05em; }
  .arrow { color: #8fa1b3; font-size: 1.4em; }
  table { border-collapse: collapse; background: #fff; }
  th, td { padding: .3em .7em; border-bottom: 1px solid #e1e5ea; text-align: right;
           white-space: nowrap; }
  th { background: #eef1f4; font-weight: 600; }
  td.name, td.role, td.address, th.l { text-align: left; }
  tr.down td { color: #b00020; }
  #tput { margin-top: 1.2em; }
  svg { background: #fff; border: 1px solid #e1e5ea; }
  .legend span { margin-right: 1.2em; }
</style>
</head>
<body>
<h1>kvtwist <span id="self"></span></h1>
<div id="summary">loading&hellip;</div>
<div id="error"></div>
<div id="chain"></div>
<table id="members">
  <thead><tr>
    <th class="l">name</th><th class="l">role</th><th class="l">address</th>
    <th>received</th><th>applied</th><th>committed</th><th>lag</th><th>lag s</th>
    <th>rtt</th><th>sent</th><th>keys</th>
  </tr></thead>
  <tbody></tbody>
</table>
<div id="tput">
  <div class="legend"><b>throughput</b> (up to the last 10 minutes):
    <span style="color:#2a6fdb">&#9632; writes committed/s <b id="wps">-</b></span>
    <span style="color:#e07b00">&#9632; requests answered here/s <b id="rps">-</b></span>
  </div>
  <svg id="chart" width="640" height="160" viewBox="0 0 640 160"></svg>
</div>
<script>
"use strict";
function secs(s) {
  if (s === null || s === undefined) return "-";
  if (s === 0) return "0";
  if (s < 0.001) return Math.round(s * 1e6) + "\u00b5s";
  if (s < 1) return (s * 1e3).toFixed(1) + "ms";
  return s.toFixed(2) + "s";
}
function cell(v) { return v === null || v === undefined ? "-" : String(v); }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function drawChain(members) {
  const chain = document.getElementById("chain");
  chain.replaceChildren();
  members.forEach(function (m, i) {
    if (i) chain.appendChild(el("span", "arrow", "\u2192"));
    const box = el("div", "box" + (m.own ? " own" : "") + (m.answered ? "" : " down"));
    box.dataset.name = m.name;
    box.appendChild(el("div", "r", m.answered ? m.role : "no answer"));
    box.appendChild(el("div", "", m.name));
    box.appendChild(el("div", "", "op " + cell(m.committed)));
    chain.appendChild(box);
  });
}
function drawTable(members) {
  const body = document.querySelector("#members tbody");
  body.replaceChildren();
  members.forEach(function (m) {
    const tr = el("tr", m.answered ? "" : "down");
    tr.dataset.name = m.name;
    const cells = [
      ["name", m.name], ["role", m.answered ? m.role : "does not answer: " + m.error],
      ["address", cell(m.address)], ["received", cell(m.received)],
      ["applied", cell(m.applied)], ["committed", cell(m.committed)],
      ["lag", cell(m.lag)], ["lag-s", secs(m.lag_s)], ["rtt", secs(m.succ_rtt_s)],
      ["sent", cell(m.sent_count)], ["keys", cell(m.keys)]
    ];
    cells.forEach(function (c) { tr.appendChild(el("td", c[0], c[1])); });
    body.appendChild(tr);
  });
}
function line(points, key, max, span, color) {
  const w = 640, h = 160;
  const xy = points.map(function (p) {
    const x = w - (p.ago_s / span) * w;
    const y = h - 10 - (p[key] / max) * (h - 20);
    return x.toFixed(1) + "," + y.toFixed(1);
  });
  const pl = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  pl.setAttribute("points", xy.join(" "));
  pl.setAttribute("fill", "none");
  pl.setAttribute("stroke", color);
  pl.setAttribute("stroke-width", "2");
  return pl;
}
function drawThroughput(t) {
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const pts = t.rates.filter(function (p) { return p.ago_s <= 600; });
  let max = 1, span = 10;
  pts.forEach(function (p) {
    max = Math.max(max, p.writes_per_s, p.requests_per_s);
    span = Math.max(span, p.ago_s + t.every_s);
  });
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "4"); label.setAttribute("y", "14");
  label.setAttribute("font-size", "11"); label.setAttribute("fill", "#55606e");
  label.textContent = "max " + max.toFixed(0) + "/s over the last " +
    (span >= 120 ? (span / 60).toFixed(0) + " min" : span.toFixed(0) + " s");
  svg.appendChild(label);
  if (pts.length) {
    svg.appendChild(line(pts, "requests_per_s", max, span, "#e07b00"));
    svg.appendChild(line(pts, "writes_per_s", max, span, "#2a6fdb"));
    const last = pts[pts.length - 1];
    document.getElementById("wps").textContent = last.writes_per_s.toFixed(1);
    document.getElementById("rps").textContent = last.requests_per_s.toFixed(1);
  }
}
function draw(s) {
  const n = s.node;
  document.getElementById("self").textContent = "\u2014 " + (n.name || "") + " " + n.address;
  document.getElementById("summary").textContent =
    "this node: " + n.role + " (" + n.state + "), op " + n.committed + " committed, " +
    n.members_text + "; updated " + new Date(s.time * 1000).toLocaleTimeString();
  drawChain(s.members);
  drawTable(s.members);
  drawThroughput(s.throughput);
}
function poll() {
  fetch("status.json", {cache: "no-store"}).then(function (r) {
    if (!r.ok) throw new Error("status.json: HTTP " + r.status);
    return r.json();
  }).then(function (s) {
    s.node.members_text = s.members.length + (s.members.length === 1 ? " member" : " members");
    draw(s);
    document.getElementById("error").textContent = "";
  }).catch(function (e) {
    document.getElementById("error").textContent = "cannot reach the node: " + e.message;
  }).finally(function () { setTimeout(poll, 1000); });
}
poll();
</script>
</body>
</html>
"""
