// cocoon's live dashboard: reads /dashboard/events (server-sent events, one JSON view of
// this node a second) and draws the network, the charts and the tables. No build step, no
// third-party code; nothing leaves the page.
"use strict";

const HISTORY = 300; // seconds of charts
const WINDOW = 5; // seconds a rate is measured over
const SHOWN = 15; // recent requests listed
const series = { rps: [], ttft: [], tps: [] };
const views = []; // the last WINDOW + 1 views, for rates
let last = null; // the previous view

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (n, d = 0) => n == null || Number.isNaN(n) ? "–" :
  Number(n).toLocaleString(undefined, { maximumFractionDigits: d, minimumFractionDigits: d });
const ton = (nano) => nano == null ? "–" : fmt(nano / 1e9, 9).replace(/\.?0+$/, "") + " TON";
const short = (h) => h ? h.slice(0, 12) + "…" : "–";
const tierClass = (t) => (t || "none").split(" ")[0];

function dl(el, rows) {
  el.innerHTML = rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
}

function push(name, value) {
  const s = series[name];
  s.push(value);
  if (s.length > HISTORY) s.shift();
}

function chart(el, values, nowEl, digits) {
  const w = 300, h = 100;
  const vs = values.filter((v) => v != null);
  const max = Math.max(1, ...vs) * 1.1;
  const step = w / (HISTORY - 1); // the newest at the right edge, older to its left
  const pts = values.map((v, i) => v == null ? null :
    [w - (values.length - 1 - i) * step, h - (v / max) * h]);
  let d = "", pen = false;
  for (const p of pts) {
    if (!p) { pen = false; continue; }
    d += (pen ? "L" : "M") + p[0].toFixed(1) + "," + p[1].toFixed(1);
    pen = true;
  }
  el.innerHTML = `<line x1="0" y1="${h - 0.5}" x2="${w}" y2="${h - 0.5}" stroke="#2a323c"/>` +
    `<text x="2" y="10" fill="#8b96a1" font-size="9">${fmt(max, 0)}</text>` +
    `<path d="${d}" fill="none" stroke="#58a6ff" stroke-width="1.5"/>`;
  nowEl.textContent = fmt(vs.length ? vs[vs.length - 1] : null, digits);
}

function median(xs) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function drawNetwork(view) {
  const svg = $("network");
  const workers = view.workers || [];
  const cx = 300, cy = 150;
  const centre = view.role === "client" ? "client" : "proxy";
  let out = "";
  workers.forEach((w, i) => {
    const a = (2 * Math.PI * i) / Math.max(1, workers.length) - Math.PI / 2;
    const r = workers.length > 1 ? 110 : 0;
    const x = cx + Math.cos(a) * (r + 120) * (workers.length > 1 ? 1 : 0) + (workers.length > 1 ? 0 : 200);
    const y = cy + Math.sin(a) * r * 0.9;
    const load = w.capacity ? w.active / w.capacity : 0;
    out += `<line x1="${cx}" y1="${cy}" x2="${x}" y2="${y}" stroke="#58a6ff" ` +
      `stroke-opacity="${0.25 + 0.75 * load}" stroke-width="${1 + 6 * load}"/>`;
    const colour = { tdx: "#3fb950", "fake-tdx": "#d29922" }[tierClass(w.tier)] || "#8b96a1";
    out += `<g class="worker" data-worker="${esc(w.node_id)}">` +
      `<circle cx="${x}" cy="${y}" r="22" fill="#1a2129" stroke="${colour}" stroke-width="3"/>` +
      `<text x="${x}" y="${y + 4}" text-anchor="middle" fill="#e6e9ec" font-size="11">` +
      `${esc(w.active ?? "")}${w.capacity ? "/" + esc(w.capacity) : ""}</text>` +
      `<text x="${x}" y="${y + 38}" text-anchor="middle" fill="#e6e9ec" font-size="11">` +
      `${esc(w.node_id)}</text>` +
      `<text x="${x}" y="${y + 51}" text-anchor="middle" fill="#8b96a1" font-size="9">` +
      `${esc((w.models || []).join(", "))}</text></g>`;
  });
  out += `<circle cx="${cx}" cy="${cy}" r="30" fill="#0f1419" stroke="#58a6ff" stroke-width="3"/>` +
    `<text x="${cx}" y="${cy + 4}" text-anchor="middle" fill="#e6e9ec" font-size="12">${centre}</text>`;
  if (!workers.length) {
    out += `<text x="${cx}" y="${cy + 60}" text-anchor="middle" fill="#8b96a1" font-size="12">` +
      `no worker connected</text>`;
  }
  svg.innerHTML = out;
}

function render(view) {
  $("role").textContent = `${view.role} ${view.node_id}`;
  drawNetwork(view);
  const t = view.totals || {};
  dl($("totals"), [
    ["requests", fmt(t.requests)], ["completed", fmt(t.completed)], ["failed", fmt(t.failed)],
    ["in flight", fmt(view.in_flight)], ["queued now", fmt(view.queue)],
    ["tokens in / out", `${fmt(t.prompt_tokens)} / ${fmt(t.completion_tokens)}`],
    ["attestation", `${view.attestation?.tier ?? "–"} ${short(view.attestation?.image_hash)}`],
    ["up", `${fmt(view.uptime_s)} s`],
  ]);
  const m = view.money;
  $("money-title").textContent = view.role === "client" ? "Channels" : "Ledger";
  if (!m) dl($("money"), [["billing", "off"]]);
  else if (view.role === "client") {
    dl($("money"), (m.channels || []).flatMap((c) => [
      ["channel", short(c.channel)], ["deposit", ton(c.deposit)], ["spent", ton(c.charged)],
      ["available", ton(c.available)], ["unsigned", ton(c.unsigned)]]));
  } else {
    dl($("money"), [["charged", ton(m.charged)], ["earned by workers", ton(m.earned)],
      ["commission", ton(m.commission)], ["reserved now", ton(m.reserved)],
      ["deposited", ton(m.deposited)], ["settled requests", fmt(m.settled_requests)],
      ...(m.clients || []).map((c) => [`client ${short(c.channel || c.account)}`,
        `${ton(c.available)} of ${ton(c.deposit)}`]),
      ...(m.workers || []).map((w) => [`${w.account.replace(/^worker:/, "")} earned`,
        ton(w.earned)])]);
  }
  $("workers").tBodies[0].innerHTML = (view.workers || []).map((w) => `<tr data-worker="${esc(w.node_id)}">` +
    `<td>${esc(w.node_id)}</td><td><span class="tier ${esc(tierClass(w.tier))}">${esc(w.tier || "–")}</span></td>` +
    `<td title="${esc(w.image_hash)}">${esc(short(w.image_hash))}</td><td>${esc((w.models || []).join(", "))}</td>` +
    `<td class="num">${w.capacity != null ? `${fmt(w.active)}/${fmt(w.capacity)}` : "–"}</td>` +
    `<td class="num">${w.coefficient != null ? fmt(w.coefficient / 1000, 2) + "×" : "–"}</td>` +
    `<td class="num">${w.ttft_ms != null ? fmt(w.ttft_ms, 0) + " ms" : "–"}</td>` +
    `<td class="num">${fmt(w.tokens_per_s, 1)}</td>` +
    `<td class="num">${w.error_rate != null ? fmt(100 * w.error_rate, 1) + "%" : "–"}</td></tr>`).join("");
  $("recent").tBodies[0].innerHTML = (view.recent || []).slice(-SHOWN).reverse().map((r) =>
    `<tr class="request"><td>${esc(new Date(r.t * 1000).toLocaleTimeString())}</td>` +
    `<td>${esc(r.model)}</td><td>${esc(r.worker || "–")}</td>` +
    `<td class="${r.outcome === "ok" ? "ok" : "err"}">${esc(r.outcome)}</td>` +
    `<td class="num">${r.ttft_ms != null ? fmt(r.ttft_ms, 0) + " ms" : "–"}</td>` +
    `<td class="num">${fmt(r.duration_ms, 0)} ms</td>` +
    `<td class="num">${fmt(r.prompt_tokens)} / ${fmt(r.completion_tokens)}</td>` +
    `<td class="num">${fmt(r.bytes)}</td><td class="num">${r.cost != null ? ton(r.cost) : "–"}</td></tr>`).join("");
  // charts: rates from the previous view, TTFT from requests that ended since
  views.push(view);
  if (views.length > WINDOW + 1) views.shift();
  if (last) {
    const first = views[0];
    const dt = Math.max(0.001, view.time - first.time);
    push("rps", ((t.requests ?? 0) - (first.totals?.requests ?? 0)) / dt);
    push("tps", ((t.completion_tokens ?? 0) - (first.totals?.completion_tokens ?? 0)) / dt);
    push("ttft", median((view.recent || []).filter((r) => r.t > first.time && r.ttft_ms != null)
      .map((r) => r.ttft_ms)));
  }
  last = view;
  chart($("chart-rps"), series.rps, $("now-rps"), 1);
  chart($("chart-ttft"), series.ttft, $("now-ttft"), 0);
  chart($("chart-tps"), series.tps, $("now-tps"), 0);
}

function connect() {
  const source = new EventSource("/dashboard/events");
  source.onmessage = (e) => {
    $("status").textContent = "live";
    $("status").className = "status live";
    render(JSON.parse(e.data));
  };
  source.onerror = () => {
    $("status").textContent = "reconnecting…";
    $("status").className = "status down";
  };
}

connect();
