// onvm dashboard: plain JavaScript, no build step, no outside scripts.
// It reads /api/status, /api/history and /api/events once, then follows
// /api/stream (server-sent events) for new samples and log lines.
"use strict";

const HISTORY = 240;
const COLORS = ["#2563eb", "#e67e22", "#16a085", "#8e44ad", "#c0392b", "#2c3e50", "#d4ac0d", "#7f8c8d"];
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const series = { nfs: new Map(), ports: new Map() }; // id -> {label, points: [[t, rx, tx]]}
let last = null;

function fmt(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + "G";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return String(Math.round(n));
}
function lat(l) {
  if (!l || !l.count) return "–";
  return `${l.p50_us.toFixed(1)} / ${l.p99_us.toFixed(1)} / ${l.max_us.toFixed(1)}`;
}
function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function cell(tr, text, cls, id) {
  const td = el("td", cls ? { class: cls } : {}, text);
  if (id) td.id = id;
  tr.appendChild(td);
  return td;
}
function message(text) { $("message").textContent = text; }

// ---- charts ---------------------------------------------------------------
function push(kind, id, label, t, rx, tx) {
  let s = series[kind].get(id);
  if (!s) { s = { label, points: [] }; series[kind].set(id, s); }
  s.label = label;
  s.points.push([t, rx, tx]);
  if (s.points.length > HISTORY) s.points.shift();
}

function drawChart(canvas, legend, kind, withTx) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const all = [...series[kind].values()];
  const now = Date.now() / 1000;
  let first = now;
  for (const s of all) if (s.points.length) first = Math.min(first, s.points[0][0]);
  const span = Math.min(120, Math.max(20, now - first)); // fill the width while history is short
  let max = 1;
  for (const s of all) for (const p of s.points) if (p[0] > now - span) max = Math.max(max, p[1], withTx ? p[2] : 0);
  max *= 1.1;
  const left = 56, bottom = h - 18;
  g.strokeStyle = "#dde1e6"; g.fillStyle = "#6b7480"; g.font = "11px system-ui"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = bottom - (bottom - 8) * i / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(w - 4, y); g.stroke();
    g.fillText(fmt(max * i / 4), 4, y + 4);
  }
  g.fillText(`last ${Math.round(span)} s`, w - 60, h - 4);
  const x = (t) => left + (w - 4 - left) * (1 - (now - t) / span);
  const y = (v) => bottom - (bottom - 8) * v / max;
  legend.textContent = "";
  all.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    for (const col of withTx ? [1, 2] : [1]) {
      g.strokeStyle = color; g.lineWidth = 2; g.setLineDash(col === 2 ? [5, 4] : []);
      g.beginPath();
      s.points.filter((p) => p[0] > now - span).forEach((p, j) => (j ? g.lineTo(x(p[0]), y(p[col])) : g.moveTo(x(p[0]), y(p[col]))));
      g.stroke();
    }
    g.setLineDash([]);
    const item = el("span", {}, s.label);
    const sw = el("i"); sw.style.background = color;
    item.prepend(sw);
    legend.appendChild(item);
  });
}

// ---- graph ----------------------------------------------------------------
function box(svg, x, y, w, h, title, sub, cls, id) {
  const g = el("svg:g", { class: "node " + (cls || ""), transform: `translate(${x},${y})` });
  if (id) g.id = id;
  g.appendChild(el("svg:rect", { width: w, height: h }));
  g.appendChild(el("svg:text", { x: 8, y: 17 }, title));
  (sub || []).forEach((line, i) => g.appendChild(el("svg:text", { x: 8, y: 33 + 14 * i, class: "sub" }, line)));
  svg.appendChild(g);
}
function edge(svg, x1, y1, x2, y2, label) {
  svg.appendChild(el("svg:path", { class: "edge", d: `M${x1},${y1} C${x1 + 30},${y1} ${x2 - 30},${y2} ${x2},${y2}` }));
  if (label) svg.appendChild(el("svg:text", { class: "edge-label", x: (x1 + x2) / 2 - 14, y: (y1 + y2) / 2 - 6 }, label));
}

function drawGraph(st, services, chains) {
  const svg = $("graph");
  svg.textContent = "";
  const defs = el("svg:defs");
  const marker = el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.appendChild(el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a94a3" }));
  defs.appendChild(marker); svg.appendChild(defs);
  const bySvc = new Map(services.map((s) => [s.id, s]));
  const nfById = new Map(st.nfs.map((n) => [n.id, n]));
  const ports = new Map(st.ports.map((p) => [p.id, p]));
  const W = 150, GAP = 60;
  const hops = (chains.find((c) => c.id === 0) || { hops: [] }).hops;
  const inputs = st.ports.filter((p) => p.kind === "gen" || p.kind === "pcap");
  const cols = [];
  cols.push(inputs.map((p) => ({ kind: "port", p })));
  for (const h of hops) {
    if (h.action === "tonf") cols.push([{ kind: "svc", id: h.dest, s: bySvc.get(h.dest) }]);
    else if (h.action === "out") cols.push([{ kind: "port", p: ports.get(h.dest) || { id: h.dest, kind: "?", uri: "?" } }]);
  }
  const inChain = new Set(hops.filter((h) => h.action === "tonf").map((h) => h.dest));
  const others = services.filter((s) => !inChain.has(s.id));
  let prev = [];
  cols.forEach((col, ci) => {
    const cur = [];
    col.forEach((node, ri) => {
      const x = 10 + ci * (W + GAP), y = 10 + ri * 70;
      let h = 56;
      if (node.kind === "port") {
        const p = node.p;
        box(svg, x, y, W, h, `port ${p.id} ${p.kind}`, [`rx ${fmt(p.rx_pps || 0)}/s  tx ${fmt(p.tx_pps || 0)}/s`], "port", `g-port-${p.id}`);
      } else {
        const s = node.s;
        const names = s ? s.instances.map((i) => `${i.name} #${i.nf}`) : ["no instance"];
        h = 40 + 14 * names.length;
        box(svg, x, y, W, h, `service ${node.id}`, names, s ? "" : "empty", `g-svc-${node.id}`);
      }
      cur.push({ x, y, h, pps: node.kind === "svc" ? (node.s ? node.s.tx_pps : 0) : node.p.rx_pps || 0 });
    });
    for (const a of prev) for (const b of cur) edge(svg, a.x + W, a.y + a.h / 2, b.x, b.y + b.h / 2, fmt(a.pps) + "/s");
    if (cur.length) prev = cur;
  });
  const x0 = 10 + cols.length * (W + GAP);
  others.forEach((s, i) => {
    const names = s.instances.map((n) => `${n.name} #${n.nf}`);
    box(svg, x0 + i * (W + 20), 10, W, 40 + 14 * names.length, `service ${s.id} (own traffic)`, names, "", `g-svc-${s.id}`);
  });
  const width = x0 + others.length * (W + 20) + 10;
  let height = 80;
  for (const node of svg.querySelectorAll("g.node")) {
    const m = /translate\(([-\d.]+),([-\d.]+)\)/.exec(node.getAttribute("transform"));
    const r = node.querySelector("rect");
    if (m && r) height = Math.max(height, Number(m[2]) + Number(r.getAttribute("height")) + 10);
  }
  const vw = Math.max(width, 1000);
  svg.setAttribute("viewBox", `0 0 ${vw} ${height}`);
  svg.style.height = Math.min(400, Math.round(height * svg.clientWidth / vw)) + "px";
  void nfById;
}

// ---- tables ---------------------------------------------------------------
function stopButton(nf) {
  const b = el("button", { class: "stop", type: "button", title: "ask the NF to stop (needs the token)" }, "stop");
  b.addEventListener("click", async () => {
    const token = sessionStorage.getItem("onvm-token") || "";
    if (!token) { message("enter the token printed by the manager to make changes"); return; }
    const r = await fetch(`/api/nfs/${nf.id}/stop`, { method: "POST", headers: { Authorization: "Bearer " + token } });
    const body = await r.json().catch(() => ({}));
    message(r.ok ? `NF ${nf.id} is stopping` : `stop NF ${nf.id}: ${body.error || r.status}`);
  });
  return b;
}

// ---- capture, trace, explain ------------------------------------------------
async function post(path, body) {
  const token = sessionStorage.getItem("onvm-token") || "";
  if (!token) throw new Error("enter the token printed by the manager first");
  const r = await fetch(path, { method: "POST", body: JSON.stringify(body),
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" } });
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `HTTP ${r.status}`);
  return r;
}

function show(text) { $("inside-out").textContent = text; }

function traceText(t) {
  const lines = [`trace '${t.filter}': ${t.packets.length} packets, ${t.remaining} still to take` +
    (t.lost ? `, ${t.lost} events lost` : "")];
  for (const p of t.packets) {
    const from = p.classified === "injected" ? "made by an NF" : `in port ${p.in_port}`;
    lines.push(`packet ${p.packet}: ${p.len} B, ${from}, ${p.classified}, chain ${p.chain}: ${p.end}`);
    for (const h of p.hops) lines.push(`  ${h.t_us.toFixed(3).padStart(10)} us  ${h.by.padEnd(24)} hop ${h.hop}  ${h.what}`);
  }
  return lines.join("\n");
}

function explainText(e) {
  const lines = [`flow ${e.flow}`];
  if (e.entry) lines.push(`  ${["nf", "api"].includes(e.entry.origin) ? "exact" : "cached"} entry: chain ${e.entry.chain}, made by ${e.entry.origin}`);
  for (const m of e.missed) lines.push(`  rule ${m.id} '${m.rule}': no (${m.why})`);
  if (e.missed_total > e.missed.length) lines.push(`  ... and ${e.missed_total - e.missed.length} more rules above`);
  if (e.rule) lines.push(`  rule ${e.rule.id} '${e.rule.rule}': matches`);
  lines.push(`  -> chain ${e.chain} (${e.decided_by}: ${e.why})`);
  for (const h of e.hops) lines.push(`  hop ${h.hop}: ${h.what}`);
  if (e.warning) lines.push(`  warning: ${e.warning}`);
  return lines.join("\n");
}

function inside() {
  const guard = (fn) => async (ev) => {
    ev.preventDefault();
    try { await fn(); } catch (e) { show(String(e.message || e)); }
  };
  $("capture-form").addEventListener("submit", guard(async () => {
    const body = { [$("cap-tap").value]: Number($("cap-id").value), direction: $("cap-dir").value,
      filter: $("cap-filter").value, count: Number($("cap-count").value), seconds: Number($("cap-seconds").value) };
    show("capturing…");
    const r = await post("/api/capture", body);
    const blob = await r.blob();
    const a = el("a", { href: URL.createObjectURL(blob), download: "onvm-capture.pcap" });
    document.body.appendChild(a); a.click(); a.remove();
    show(`${r.headers.get("X-Onvm-Captured")} packets captured, ${r.headers.get("X-Onvm-Dropped")} dropped by the capture`);
  }));
  $("trace-form").addEventListener("submit", guard(async () => {
    const t = await (await post("/api/control/trace_add", { count: Number($("trace-count").value),
      filter: $("trace-filter").value })).json();
    show(`trace armed: the next ${t.count} packets '${t.filter}'; press show`);
  }));
  $("trace-show").addEventListener("click", guard(async () => show(traceText(await (await post("/api/control/trace_show", {})).json()))));
  $("trace-clear").addEventListener("click", guard(async () => {
    show(`${(await (await post("/api/control/trace_clear", {})).json()).cleared} events cleared`);
  }));
  $("explain-form").addEventListener("submit", guard(async () => {
    show(explainText(await (await post("/api/control/flow_explain", { flow: $("explain-flow").value })).json()));
  }));
}

function busyCells(tr, t, id) {
  cell(tr, `${Math.round(100 * (t.busy || 0))}%`, "num", `${id}-busy`);
  cell(tr, t.ns_per_packet == null ? "–" : Math.round(t.ns_per_packet), "num", `${id}-ns`);
}

function drawTables(st) {
  const ringSize = st.manager.ring_size || 4096;
  const nb = $("nfs").tBodies[0];
  nb.textContent = "";
  for (const n of st.nfs) {
    const tr = el("tr", { id: `nf-${n.id}` });
    cell(tr, n.id);
    cell(tr, n.name, "name", `nf-${n.id}-name`);
    cell(tr, `${n.service}.${n.instance}`);
    cell(tr, n.state);
    cell(tr, n.cpu_now ?? "–", "num", `nf-${n.id}-cpu`);
    cell(tr, n.rx, "num", `nf-${n.id}-rx`);
    cell(tr, n.tx, "num", `nf-${n.id}-tx`);
    cell(tr, fmt(n.rx_pps || 0), "num");
    cell(tr, n.drops_total || 0, "num" + (n.drops_total ? " drops" : ""));
    const ring = cell(tr, "");
    const bar = el("span", { class: "bar" }); const fill = el("i");
    fill.style.width = Math.min(100, 100 * n.rx_ring / ringSize) + "%";
    bar.appendChild(fill); ring.appendChild(bar); ring.appendChild(document.createTextNode(String(n.rx_ring)));
    busyCells(tr, n, `nf-${n.id}`);
    cell(tr, lat(n.latency), "num", `nf-${n.id}-lat`);
    cell(tr, "").appendChild(stopButton(n));
    nb.appendChild(tr);
  }
  const wb = $("workers").tBodies[0];
  wb.textContent = "";
  for (const w of st.workers || []) {
    const tr = el("tr", { id: `worker-${w.id}` });
    cell(tr, w.id);
    cell(tr, `${w.role.toUpperCase()} ${w.index}`);
    cell(tr, w.cpu ?? "–", "num");
    cell(tr, w.packets, "num", `worker-${w.id}-packets`);
    cell(tr, fmt(w.pps || 0), "num");
    busyCells(tr, w, `worker-${w.id}`);
    wb.appendChild(tr);
  }
  const pb = $("ports").tBodies[0];
  pb.textContent = "";
  for (const p of st.ports) {
    const tr = el("tr", { id: `port-${p.id}` });
    cell(tr, p.id);
    cell(tr, p.uri);
    cell(tr, p.rx, "num", `port-${p.id}-rx`);
    cell(tr, p.tx, "num", `port-${p.id}-tx`);
    cell(tr, fmt(p.rx_pps || 0), "num");
    cell(tr, fmt(p.tx_pps || 0), "num");
    cell(tr, p.drops_total || 0, "num" + (p.drops_total ? " drops" : ""));
    cell(tr, lat(p.latency), "num", `port-${p.id}-lat`);
    pb.appendChild(tr);
  }
}

function addEvent(ev) {
  const li = el("li", { "data-id": ev.id });
  li.appendChild(el("time", {}, new Date(ev.time * 1000).toLocaleTimeString()));
  li.appendChild(document.createTextNode(ev.text));
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

// Where the pipeline runs: packed onto one CPU at low load, or spread (onvm/manager/packing.py).
function packing(pk) {
  if (!pk.enabled) return "as placed";
  const load = `${(pk.load || 0).toFixed(2)} CPU busy`;
  if (pk.packed_on !== null && pk.packed_on !== undefined) return `packed on CPU ${pk.packed_on}, ${load}`;
  const kept = (pk.pipelines || []).length; // local replicas, each with its RX and TX worker
  return kept ? `spread, ${kept} local pipeline${kept > 1 ? "s" : ""} on a CPU each, ${load}` : `spread, ${load}`;
}

// ---- updates --------------------------------------------------------------
function onSample(s) {
  const st = s.status;
  last = s;
  $("mgr-name").textContent = st.manager.name;
  $("mgr-uptime").textContent = Math.round(st.manager.uptime);
  $("mgr-chain").textContent = st.manager.default_chain;
  $("mgr-packing").textContent = packing(st.manager.packing || {});
  $("pool-free").textContent = st.pool.free;
  $("pool-total").textContent = st.pool.total;
  $("pool-lent").textContent = st.pool.lent ? `, ${st.pool.lent} lent to ports` : "";
  for (const n of st.nfs) push("nfs", n.id, `${n.name} #${n.id}`, s.time, n.rx_pps || 0, n.tx_pps || 0);
  for (const p of st.ports) push("ports", p.id, `port ${p.id} ${p.kind}`, s.time, p.rx_pps || 0, p.tx_pps || 0);
  const live = new Set(st.nfs.map((n) => n.id));
  for (const id of [...series.nfs.keys()]) if (!live.has(id)) series.nfs.delete(id);
  drawGraph(st, s.services, s.chains);
  drawTables(st);
  drawChart($("chart-nfs"), $("legend-nfs"), "nfs", false);
  drawChart($("chart-ports"), $("legend-ports"), "ports", true);
}

async function start() {
  inside();
  const saved = sessionStorage.getItem("onvm-token");
  if (saved) $("token").value = saved;
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("onvm-token", $("token").value.trim());
    message("token kept for this tab");
  });
  let lastEvent = 0;
  try {
    const hist = await (await fetch("/api/history")).json();
    for (const pt of hist) {
      for (const [id, v] of Object.entries(pt.nfs)) push("nfs", Number(id), `NF ${id}`, pt.time, v[0], v[1]);
      for (const [id, v] of Object.entries(pt.ports)) push("ports", Number(id), `port ${id}`, pt.time, v[0], v[1]);
    }
    const st = await (await fetch("/api/status")).json();
    onSample({ time: st.time, status: st, services: st.services, chains: st.chains });
    for (const ev of await (await fetch("/api/events")).json()) { addEvent(ev); lastEvent = ev.id; }
  } catch (e) {
    message("cannot read the API: " + e);
  }
  const es = new EventSource("/api/stream");
  es.addEventListener("open", () => { $("conn").textContent = "live"; $("conn").className = "conn up"; });
  es.addEventListener("error", () => { $("conn").textContent = "disconnected"; $("conn").className = "conn down"; });
  es.addEventListener("sample", (e) => onSample(JSON.parse(e.data)));
  es.addEventListener("log", (e) => {
    const ev = JSON.parse(e.data);
    if (ev.id > lastEvent) { addEvent(ev); lastEvent = ev.id; }
  });
  window.addEventListener("resize", () => {
    drawChart($("chart-nfs"), $("legend-nfs"), "nfs", false);
    drawChart($("chart-ports"), $("legend-ports"), "ports", true);
  });
}

start();
