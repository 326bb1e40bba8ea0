// Dashboard: polls GET /stats and draws queue depths, answer speed and recent tasks. For
// operators only: the API answers 403 to users outside the admins group, and the page says so.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const samples = []; // {t, ttft50, ttft95, tps50, depth}
let apiUrl = "";
let timer = null;
let epoch = 0; // bumped on sign-in and sign-out: answers that arrive later are dropped

function fmt(v, digits = 2) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

function line(svg, values, max, color) {
  if (values.length < 2) return;
  const pts = values.map((v, i) => `${(i / (values.length - 1)) * 300},${100 - ((v ?? 0) / max) * 95}`);
  const path = document.createElementNS(SVG, "polyline");
  path.setAttribute("points", pts.join(" "));
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", color);
  path.setAttribute("stroke-width", "2");
  svg.appendChild(path);
}

function chart(id, series) {
  const svg = $(id);
  svg.replaceChildren();
  const max = Math.max(1e-6, ...series.flatMap((s) => s.values.map((v) => v ?? 0))) * 1.1;
  for (const s of series) line(svg, s.values, max, s.color);
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", "4"); label.setAttribute("y", "12"); label.setAttribute("font-size", "10");
  label.setAttribute("fill", "#4a5160");
  label.textContent = `max ${fmt(max / 1.1)}`;
  svg.appendChild(label);
}

function operatorsOnly(on) {
  $("not-admin").hidden = !on;
  $("stats").hidden = on;
}

async function refresh() {
  const e = epoch;
  const res = await authFetch(`${apiUrl}/stats`, { cache: "no-store" });
  if (e !== epoch) return;
  if (res.status === 403) { // not an operator: no data, and no more asking
    stop();
    operatorsOnly(true);
    $("updated").textContent = "";
    return;
  }
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  const s = await res.json();
  if (e !== epoch) return;
  operatorsOnly(false);
  let depth = 0;
  for (const [name, q] of Object.entries(s.queues)) {
    $(`q-${name}`).textContent = q.visible;
    $(`q-${name}-sub`).textContent = `${q.in_flight} in flight`;
    depth += q.visible;
  }
  $("running").textContent = s.requests.running ?? 0;
  $("by-status").textContent = Object.entries(s.requests).map(([k, v]) => `${k} ${v}`).join(" · ");
  $("ttft").textContent = `${fmt(s.ttft_seconds.p50)} s`;
  $("ttft-sub").textContent = `p95 ${fmt(s.ttft_seconds.p95)} s · ${s.ttft_seconds.count} answers`;
  $("tps").textContent = fmt(s.tokens_per_second.p50, 1);
  $("tps-sub").textContent = `p95 ${fmt(s.tokens_per_second.p95, 1)}`;
  samples.push({ ttft50: s.ttft_seconds.p50, ttft95: s.ttft_seconds.p95,
                 tps50: s.tokens_per_second.p50, depth });
  if (samples.length > 90) samples.shift();
  chart("chart-ttft", [{ values: samples.map((x) => x.ttft50), color: "#1746a2" },
                       { values: samples.map((x) => x.ttft95), color: "#a4161a" }]);
  chart("chart-tps", [{ values: samples.map((x) => x.tps50), color: "#137333" }]);
  chart("chart-depth", [{ values: samples.map((x) => x.depth), color: "#8a5a00" }]);
  const rows = s.recent.map((t) => {
    const tr = document.createElement("tr");
    // No task ids: a task is its owner's alone, even on the operators' dashboard.
    const cells = [new Date(t.created_at * 1000).toLocaleTimeString(), t.status, t.priority,
                   t.first_token_at ? `${fmt(t.first_token_at - t.created_at)} s` : "–",
                   t.finished_at ? `${fmt(t.finished_at - t.created_at, 1)} s` : "–"];
    cells.forEach((v) => {
      const td = document.createElement("td");
      td.textContent = String(v);
      tr.appendChild(td);
    });
    tr.dataset.status = t.status;
    return tr;
  });
  $("recent").replaceChildren(...rows);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function tick() {
  const e = epoch;
  refresh().catch((err) => {
    if (e === epoch && !(err instanceof Auth.SignedOut)) $("updated").textContent = `stats unavailable: ${err.message || err}`;
  });
}

function start() {
  stop();
  epoch += 1;
  operatorsOnly(false);
  tick();
  timer = setInterval(tick, 2000);
}

function stop() {
  clearInterval(timer);
  timer = null;
}

function signedOut() {
  stop();
  epoch += 1;
  samples.length = 0;
  $("updated").textContent = "";
  $("recent").replaceChildren();
}

fetch("config.json", { cache: "no-store" }).then((r) => r.json()).then((c) => {
  apiUrl = c.apiUrl.replace(/\/$/, "");
  return Auth.start(c.auth, { onSignIn: start, onSignOut: signedOut });
}).catch((err) => {
  $("signin").hidden = false;
  $("signin-error").textContent = `could not load config.json: ${err}`;
});
