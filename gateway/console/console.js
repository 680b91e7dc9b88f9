// The operator console: read-only views over the gateway's JSON API, drawn with the DOM and
// SVG (no framework, no build step, nothing from a CDN). Data is only ever put on the page
// as text (textContent), never as HTML: campaign names come from upstream jobs.
"use strict";

const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh") || 2000);
const COLORS = {sent: "#2c8a4b", deferred: "#c98a00", suppressed: "#7a8394", capped: "#8a5cc2",
                failed: "#c23b3b", invalid_token: "#d9731a"};
const PALETTE = ["#2f6fde", "#2c8a4b", "#c23b3b", "#c98a00", "#8a5cc2", "#1b9aaa", "#d9731a"];
const SVG = "http://www.w3.org/2000/svg";
let selected = null;

function el(tag, attrs = {}, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = String(text);
  return node;
}

async function api(path) {
  const key = sessionStorage.getItem("gateway-key");
  const headers = key ? {Authorization: "Bearer " + key} : {};
  const response = await fetch(path, {headers});
  if (response.status === 401) throw Object.assign(new Error("unauthorized"), {unauthorized: true});
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function setStatus(text, error = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", error);
}

function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("main").hidden = true;
  setStatus("an API key is needed");
}

function progressBar(done, total) {
  const bar = el("span", {class: "bar", title: `${done} of ${total} recipients decided`});
  const fill = el("span");
  fill.style.width = `${total ? (100 * done / total).toFixed(1) : 100}%`;  // CSSOM: the CSP allows no style attributes
  bar.append(fill);
  return bar;
}

function outcomesText(counts) {
  return Object.entries(counts).filter(([, n]) => n).map(([o, n]) => `${o} ${n}`).join(", ") || "-";
}

function renderJobs(jobs) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const row = el("tr", {"data-job": job.job_id, "data-state": job.state});
    row.append(el("td", {}, job.job_id.slice(0, 12)), el("td", {}, job.campaign), el("td", {}, job.state));
    const cell = el("td");
    cell.append(progressBar(job.recipients_done, job.recipients), ` ${job.recipients_done}/${job.recipients}`);
    row.append(cell, el("td", {}, outcomesText(job.counts)), el("td", {}, job.created_at.replace("T", " ").slice(0, 19)));
    row.addEventListener("click", () => { selected = job.job_id; showDetail(); });
    body.append(row);
  }
  if (!jobs.length) {
    const empty = el("tr");
    empty.append(el("td", {colspan: 6}, "no jobs yet"));
    body.append(empty);
  }
}

function renderChannels(channels) {
  const list = document.getElementById("channels");
  list.replaceChildren();
  for (const [name, health] of Object.entries(channels)) {
    const item = el("li", {"data-channel": name, "data-state": health.state});
    item.append(el("span", {class: "state " + health.state}, health.state), " " + name);
    for (const [provider, state] of Object.entries(health.providers || {})) item.append(` · ${provider}: ${state}`);
    list.append(item);
  }
  if (!Object.keys(channels).length) list.append(el("li", {}, "no channels configured"));
}

function mix(hex, amount) {  // towards white by `amount` (0..1)
  const channel = i => Math.round(parseInt(hex.slice(i, i + 2), 16) * (1 - amount) + 255 * amount);
  return `rgb(${channel(1)}, ${channel(3)}, ${channel(5)})`;
}

function barChart(container, rows, legend) {
  // rows: [{label, parts: [{name, value, color}]}]: one stacked horizontal bar per row.
  const width = Math.max(320, Math.min(640, container.clientWidth || 640)), rowHeight = 22, left = 150, top = legend ? 22 : 4;
  const max = Math.max(1, ...rows.map(r => r.parts.reduce((s, p) => s + p.value, 0)));
  const svg = el("svg:svg", {width, height: top + rows.length * rowHeight + 4, role: "img"});
  rows.forEach((row, i) => {
    const y = top + i * rowHeight;
    svg.append(el("svg:text", {x: 0, y: y + 14}, row.label));
    let x = left;
    for (const part of row.parts) {
      const w = (width - left - 60) * part.value / max;
      const rect = el("svg:rect", {x, y: y + 3, width: Math.max(w, 1), height: rowHeight - 6, fill: part.color,
                                   "data-part": `${row.label}|${part.name}`});
      rect.append(el("svg:title", {}, `${row.label}: ${part.name} ${part.value}`));
      svg.append(rect);
      x += w;
    }
    svg.append(el("svg:text", {x: x + 4, y: y + 14}, row.parts.reduce((s, p) => s + p.value, 0)));
  });
  if (legend) {
    let x = 0;
    for (const [name, color] of legend) {
      svg.append(el("svg:rect", {x, y: 4, width: 10, height: 10, fill: color}), el("svg:text", {x: x + 14, y: 13}, name));
      x += 18 + 7 * name.length;
    }
  }
  container.replaceChildren(svg);
}

function lineChart(container, series, field, unit) {
  const width = Math.max(320, container.clientWidth || 460), height = 160, left = 44, bottom = 18;  // the panel's width
  const names = Object.keys(series);
  const max = Math.max(1e-9, ...names.flatMap(n => series[n].map(p => p[field])));
  const svg = el("svg:svg", {width, height, role: "img", "data-series": names.join(",")});
  svg.append(el("svg:line", {x1: left, y1: height - bottom, x2: width, y2: height - bottom, stroke: "#9aa3b1"}));
  svg.append(el("svg:text", {x: 0, y: 12}, `${max.toPrecision(3)} ${unit}`), el("svg:text", {x: 0, y: height - bottom}, "0"));
  svg.append(el("svg:text", {x: left, y: height - 2}, "60 min ago"), el("svg:text", {x: width - 30, y: height - 2}, "now"));
  names.forEach((name, i) => {
    const points = series[name].map((p, j, all) =>
      `${left + (width - left) * j / Math.max(1, all.length - 1)},${(height - bottom) * (1 - p[field] / max)}`);
    const color = PALETTE[i % PALETTE.length];
    svg.append(el("svg:polyline", {points: points.join(" "), fill: "none", stroke: color, "stroke-width": 2}));
    const label = el("svg:text", {x: left + 4 + 80 * i, y: 26}, name);
    label.style.fill = color;  // over the stylesheet's text colour
    svg.append(label);
  });
  if (!names.length) svg.append(el("svg:text", {x: left + 10, y: height / 2}, "nothing sent in the last hour"));
  container.replaceChildren(svg);
}

function renderDeferred(deferred) {
  const rows = Object.entries(deferred).map(([reason, n]) => ({label: reason, parts: [{name: reason, value: n, color: COLORS.deferred}]}));
  const box = document.getElementById("deferred");
  if (!rows.length) { box.replaceChildren(el("p", {class: "note"}, "nothing deferred")); return; }
  barChart(box, rows);
}

async function showDetail() {
  if (!selected) return;
  const job = await api(`/v1/jobs/${encodeURIComponent(selected)}?limit=1000`);
  const byChannel = {};
  for (const d of job.decisions) {
    const key = d.reason ? `${d.outcome}: ${d.reason}` : d.outcome;
    ((byChannel[d.channel] ??= {})[key] ??= {n: 0, outcome: d.outcome}).n++;
  }
  const keys = [...new Set(Object.values(byChannel).flatMap(c => Object.keys(c)))].sort();
  // An outcome's colour, lighter for each further reason of it: suppressed: no_device and
  // suppressed: unsubscribed side by side stay apart.
  const shade = key => {
    const outcome = key.split(":")[0];
    const rank = keys.filter(k => k.split(":")[0] === outcome).indexOf(key);
    return mix(COLORS[outcome] || "#555555", rank * 0.22);
  };
  const rows = Object.entries(byChannel).map(([channel, counts]) => ({
    label: channel, parts: keys.filter(k => counts[k]).map(k => ({name: k, value: counts[k].n, color: shade(k)})),
  }));
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-id").textContent = job.job_id;
  changed("detail", rows, () => barChart(document.getElementById("detail-chart"), rows, keys.map(k => [k, shade(k)])));
  document.getElementById("detail-note").textContent = job.next_offset === null ? `${job.state}` :
    `${job.state}; the first 1,000 decisions shown`;
}

const shown = {};

function changed(part, data, render) {
  const text = JSON.stringify(data);
  if (shown[part] !== text) {
    shown[part] = text;
    render(data);
  }
}

async function refresh() {
  try {
    const summary = await api("/v1/console/summary");
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    // Redrawn only when changed: what is on the page stays put between refreshes.
    changed("jobs", summary.jobs, renderJobs);
    changed("channels", summary.channels, renderChannels);
    changed("deferred", summary.deferred, renderDeferred);
    changed("history", summary.history, history => {
      lineChart(document.getElementById("rate"), history, "per_second", "/s");
      lineChart(document.getElementById("latency"), history, "latency_ms", "ms");
    });
    if (selected) await showDetail();
    setStatus(`${summary.status} · updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    if (error.unauthorized) showLogin(); else setStatus(String(error.message || error), true);
  }
}

document.getElementById("login").addEventListener("submit", event => {
  event.preventDefault();
  sessionStorage.setItem("gateway-key", document.getElementById("key").value);
  refresh();
});
refresh();
setInterval(refresh, REFRESH_MS);
