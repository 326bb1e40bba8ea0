// Dashboard: polls GET /stats and draws queue depths, answer speed and recent tasks.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const samples = []; // {t, ttft50, ttft95, tps50, depth}
let apiUrl = "";

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

async function refresh() {
  const res = await fetch(`${apiUrl}/stats`, { cache: "no-store" });
  const s = await res.json();
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
    const cells = [t.task_id.slice(0, 12), t.status, t.priority,
                   new Date(t.created_at * 1000).toLocaleTimeString(),
                   t.first_token_at ? `${fmt(t.first_token_at - t.created_at)} s` : "–"];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = String(v);
      if (i === 0) td.className = "mono";
      tr.appendChild(td);
    });
    tr.dataset.status = t.status;
    return tr;
  });
  $("recent").replaceChildren(...rows);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

fetch("config.json", { cache: "no-store" }).then((r) => r.json()).then((c) => {
  apiUrl = c.apiUrl.replace(/\/$/, "");
  const tick = () => refresh().catch((e) => { $("updated").textContent = `stats unavailable: ${e}`; });
  tick();
  setInterval(tick, 2000);
});
