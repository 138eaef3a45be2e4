// The operator console: renders /api/status (a gateway's or a relay's) and keeps it live over
// /api/status/stream (SSE), polling once a second when the stream is unavailable. Plain JS, no
// dependencies; every value is set as text, never as markup.
"use strict";


const MAX_LOG_LINES = 400;

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function ms(value) { return value === null || value === undefined ? "–" : value.toFixed(1) + " ms"; }
function secs(value) { return value === null || value === undefined ? "–" : value.toFixed(1) + " s"; }
function clock(epoch) { return new Date(epoch * 1000).toLocaleTimeString(); }
function counts(map) {
  const entries = Object.entries(map || {}).sort();
  return entries.length ? entries.map(([k, v]) => k + " " + v).join(", ") : "none";
}

function row(cells, attrs) {
  const tr = el("tr", null, attrs);
  for (const cell of cells) {
    if (cell instanceof Node) { const td = el("td"); td.appendChild(cell); tr.appendChild(td); }
    else tr.appendChild(el("td", cell));
  }
  return tr;
}

function fillTable(id, rows, emptyId) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
  if (emptyId) document.getElementById(emptyId).hidden = rows.length > 0;
}

function fillList(id, pairs) {
  const list = document.getElementById(id);
  const nodes = [];
  for (const [term, value, attrs] of pairs) {
    nodes.push(el("dt", term));
    nodes.push(el("dd", value, attrs));
  }
  list.replaceChildren(...nodes);
}

function badge(up, attrs) {
  return el("span", up ? "up" : "down", Object.assign({ class: "badge " + (up ? "ok" : "bad") }, attrs));
}

function showKind(kind) {
  document.body.dataset.kind = kind;
  for (const section of document.querySelectorAll("section[data-kind]")) {
    section.hidden = section.dataset.kind !== kind;
  }
}

function header(status) {
  document.getElementById("title").textContent = status.kind === "relay" ? "Relay" : "Gateway";
  document.title = (status.kind === "relay" ? "Relay" : "Gateway") + " console";
  const ready = document.getElementById("ready");
  ready.textContent = status.ready ? "ready" : "NOT ready";
  ready.className = "badge " + (status.ready ? "ok" : "bad");
  ready.dataset.ready = status.ready ? "yes" : "no";
  document.getElementById("version").textContent = "version " + status.version;
  document.getElementById("updated").textContent = "updated " + clock(status.time);
  const notReady = document.getElementById("not-ready");
  const parts = status.not_ready || [];
  notReady.hidden = parts.length === 0;
  notReady.textContent = parts.length ? "not ready: " + parts.join(", ") : "";
}

function renderGateway(status) {
  const link = status.control_plane;
  if (link) {
    fillList("link", [
      ["control plane", link.url + " (" + link.tunnel_id + ")"],
      ["connected", link.connected ? "yes" : "no", { "data-connected": link.connected ? "yes" : "no" }],
      ["last poll", link.last_poll_age_s === null ? "never" : secs(link.last_poll_age_s) + " ago"],
      ["poll round trip", link.poll_round_trip_s === null ? "–" : ms(link.poll_round_trip_s * 1000)],
      ["response latency", link.post_latency_s === null ? "–" : ms(link.post_latency_s * 1000)],
      ["errors", counts(link.errors)],
      ["problem", link.problem || "none"],
      ["credential", link.credential.label + ": " + link.credential.state],
      ["in flight", status.inflight + " / " + status.max_inflight],
    ]);
  }
  const channels = document.getElementById("channels");
  const blocks = [];
  for (const channel of status.channels) {
    const block = el("div", null, { class: "channel", "data-channel": channel.name });
    const s = channel.stats;
    block.appendChild(el("h3", channel.name));
    block.appendChild(el("p", s.calls_per_s + " calls/s · p50 " + ms(s.p50_ms) + " · p99 " + ms(s.p99_ms) +
      " · errors: " + counts(s.errors) + " · rejected " + s.rejections, { class: "muted" }));
    block.appendChild(el("p", "allowed tools: " + (channel.allow_tools ? channel.allow_tools.join(", ") : "all"),
      { class: "muted", "data-allow": channel.name }));
    const table = el("table");
    const head = el("thead");
    head.appendChild(row(["server", "state", "era", "restarts", "last exit", "in flight", "calls/s",
      "p50", "p99", "errors", "rejected"]));
    for (const th of head.querySelectorAll("td")) th.replaceWith(el("th", th.textContent));
    table.appendChild(head);
    const body = el("tbody");
    for (const server of channel.servers) {
      const st = server.stats;
      const state = el("span");
      state.appendChild(badge(server.up, { "data-state": server.up ? "up" : "down" }));
      if (!server.up && server.problem) state.appendChild(el("small", " " + server.problem));
      body.appendChild(row([
        server.name + " (" + server.transport + ")", state, server.era || "–", server.restarts,
        server.last_exit || "–", server.inflight, st.calls_per_s, ms(st.p50_ms), ms(st.p99_ms),
        counts(st.errors), st.rejections,
      ], { "data-server": server.name }));
    }
    table.appendChild(body);
    const wrap = el("div", null, { class: "scroll" });
    wrap.appendChild(table);
    block.appendChild(wrap);
    blocks.push(block);
  }
  channels.replaceChildren(...blocks);
  fillTable("failures", status.recent_failures.map((f) => row([
    clock(f.time), f.channel, f.server || "–", f.method, f.name || "–", f.outcome, f.error || "–", f.status,
  ], { "data-failure": f.method })), "no-failures");
  const tenants = Object.entries(status.tenant_allow_tools || {});
  const allow = document.getElementById("tenant-allow");
  allow.hidden = tenants.length === 0;
  allow.textContent = "allowed tools by tenant: " +
    tenants.map(([tenant, tools]) => tenant + ": " + tools.join(", ")).join(" · ");
  document.getElementById("config").textContent = JSON.stringify(status.config, null, 2);
}

function renderRelay(status) {
  fillTable("tunnels", status.tunnels.map((t) => row([
    t.id, t.name || "–", t.gateway_seen ? "yes" : "no", t.queued,
    t.oldest_queued_s === null ? "–" : secs(t.oldest_queued_s), t.in_flight, t.polls_waiting, t.callers_waiting,
  ], { "data-tunnel": t.id })));
  fillTable("gateways", status.gateways.map((g) => row([
    g.tunnel, g.instance_id, g.name || "–", g.version || "–", secs(g.last_poll_age_s) + " ago", g.polls,
  ], { "data-instance": g.instance_id })), "no-gateways");
  fillList("rejections", Object.entries(status.rejections).sort().map(([code, n]) => [code, String(n)]));
  if (Object.keys(status.rejections).length === 0) fillList("rejections", [["none", ""]]);
}

function render(status) {
  showKind(status.kind);
  header(status);
  if (status.kind === "relay") renderRelay(status); else renderGateway(status);
}

// ------------------------------------------------------------------ live status

let pollTimer = null;

async function pollOnce() {
  try {
    const response = await fetch("/api/status", { credentials: "same-origin", cache: "no-store" });
    if (response.ok) render(await response.json());
    else offline("HTTP " + response.status);
  } catch (err) {
    offline("unreachable");
  }
}

function offline(why) {
  const ready = document.getElementById("ready");
  ready.textContent = "no answer (" + why + ")";
  ready.className = "badge bad";
  ready.dataset.ready = "unknown";
}

function startPolling() {
  if (pollTimer === null) pollTimer = setInterval(pollOnce, 1000);
}

function startStatus() {
  if (!window.EventSource) { startPolling(); return; }
  const source = new EventSource("/api/status/stream");
  source.addEventListener("status", (event) => {
    if (pollTimer !== null) { clearInterval(pollTimer); pollTimer = null; }
    render(JSON.parse(event.data));
  });
  source.onerror = () => { startPolling(); };  // EventSource reconnects by itself; poll meanwhile
}

// ------------------------------------------------------------------ log tail

let logSource = null;

function startLogs() {
  if (document.body.dataset.kind !== "gateway" || !window.EventSource) return;
  if (logSource !== null) logSource.close();
  const level = document.getElementById("log-level").value;
  const pre = document.getElementById("logs");
  pre.replaceChildren();
  logSource = new EventSource("/api/logs/stream?level=" + encodeURIComponent(level));
  logSource.addEventListener("log", (event) => {
    const line = JSON.parse(event.data);
    const text = clock(line.time) + " " + line.level + " " + line.logger + ": " + line.message + "\n";
    pre.appendChild(el("span", text, { class: "log " + line.level.toLowerCase(), "data-level": line.level }));
    while (pre.childNodes.length > MAX_LOG_LINES) pre.removeChild(pre.firstChild);
    pre.scrollTop = pre.scrollHeight;
  });
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("log-level").addEventListener("change", startLogs);
  await pollOnce();  // the first picture at once, and the kind of console this is
  startStatus();
  startLogs();
});
