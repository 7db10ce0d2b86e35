// crmsync dashboard: polls the JSON API and renders tables and small SVG line charts. No framework, no build.
"use strict";

const $ = (selector) => document.querySelector(selector);
const COLORS = ["#1565c0", "#2e7d32", "#c62828", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037"];

function text(value, digits = 0) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return value.toFixed(digits);
  return String(value);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "∞";
  return seconds < 120 ? `${seconds.toFixed(1)} s` : `${(seconds / 60).toFixed(1)} min`;
}

function cell(value, attributes = {}) {
  const td = document.createElement("td");
  td.textContent = value;
  for (const [name, v] of Object.entries(attributes)) td.setAttribute(name, v);
  return td;
}

function fill(tableId, rows) {
  const body = $(`#${tableId} tbody`);
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }));
}

function renderGroups(groups) {
  fill("groups", groups.map((g) => {
    const status = cell(g.status, { "data-group": g.group, "data-field": "status" });
    status.replaceChildren(Object.assign(document.createElement("span"), { className: `status ${g.status}`, textContent: g.status }));
    const field = (name, value) => cell(value, { "data-group": g.group, "data-field": name });
    return [cell(g.group), cell(g.direction), status, cell(g.state), field("lag", text(g.lag)),
      field("lag_seconds", text(g.lag_seconds, 1)), field("eta", g.lag === 0 ? "caught up" : duration(g.eta_seconds)),
      cell(text(g.consume_rate, 1)), cell(text(g.produce_rate, 1))];
  }));
}

function renderFreshness(rows) {
  if (rows.length === 0) {
    fill("freshness", [[cell("no record applied since the writers started", { colspan: 5 })]]);
    return;
  }
  fill("freshness", rows.map((f) => {
    const key = `${f.mapping} ${f.direction}`;
    return [cell(f.mapping), cell(f.direction), cell(text(f.last_seconds, 3), { "data-freshness": key }),
      cell(text(f.mean_seconds, 3), { "data-freshness-mean": key }), cell(text(f.count), { "data-freshness-count": key })];
  }));
}

function renderApi(rows) {
  fill("api", rows.map((a) => [cell(a.account), cell(a.window ? `per ${a.window}` : "—", { "data-api-window": a.account }),
    cell(text(a.used), { "data-api-used": a.account }), cell(text(a.limit)),
    cell(text(a.remaining), { "data-api-remaining": a.account }), cell(text(a.calls)),
    cell(text(a.projected), { "data-api-projected": a.account,
      class: a.budget != null && a.projected > a.budget ? "over" : "" }),
    cell(text(a.budget), { "data-api-budget": a.account })]));
}

function renderSources(capture, pollers) {
  fill("sources", [
    ...capture.map((c) => [cell(`slot ${c.slot} lag (bytes)`), cell(text(c.value), { "data-slot-lag": c.slot })]),
    ...pollers.map((p) => [cell(`poller ${p.account}/${p.object} cursor age (s)`), cell(text(p.value, 1))]),
  ]);
}

function renderRejects(summary) {
  $("#rejects-open").textContent = summary.open;
  fill("rejects", summary.by_reason.map((r) => [cell(r.stage), cell(r.object), cell(r.error_code, { "data-reject-code": r.error_code }),
    cell(r.status), cell(text(r.count)), cell(r.example)]));
}

// One SVG line chart: series = {name: [[t, value], ...]}
function chart(svgId, series) {
  const svg = $(`#${svgId}`);
  const width = svg.width.baseVal.value, height = svg.height.baseVal.value, pad = 30;
  const points = Object.values(series).flat().filter((p) => p[1] !== null && p[1] !== undefined);
  svg.replaceChildren();
  if (points.length === 0) return;
  const t0 = Math.min(...points.map((p) => p[0])), t1 = Math.max(...points.map((p) => p[0]), t0 + 1);
  const top = Math.max(...points.map((p) => p[1]), 1);
  const x = (t) => pad + (t - t0) / (t1 - t0) * (width - pad - 10);
  const y = (v) => height - pad + 10 - v / top * (height - pad - 10);
  const ns = "http://www.w3.org/2000/svg";
  const label = (content, lx, ly) => { const t = document.createElementNS(ns, "text"); t.textContent = content;
    t.setAttribute("x", lx); t.setAttribute("y", ly); svg.append(t); };
  label(text(top, top < 10 ? 1 : 0), 2, 14);
  label("0", 2, height - pad + 10);
  label(`${((t1 - t0) / 60).toFixed(0)} min`, width - 50, height - 5);
  Object.entries(series).forEach(([name, values], i) => {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", values.filter((p) => p[1] !== null).map((p) => `${x(p[0])},${y(p[1])}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("data-series", name);
    svg.append(line);
    label(name, pad + 5, 12 + 11 * (i + 1));
    svg.lastChild.style.fill = COLORS[i % COLORS.length];  // the legend in the line's colour
  });
}

function seriesOf(history, field) {
  const series = {};
  for (const point of history) {
    for (const [name, value] of Object.entries(point[field] || {})) {
      (series[name] = series[name] || []).push([point.at, value]);
    }
  }
  return series;
}

async function getJson(url) {
  const answer = await fetch(url);
  return { ok: answer.ok, body: await answer.json() };
}

async function refresh() {
  const [status, lag] = await Promise.all([getJson("/api/status"), getJson("/api/lag")]);
  const s = status.body;
  $("#updated").textContent = s.at ? new Date(s.at * 1000).toLocaleTimeString() : "not sampled yet";
  $("#updated").setAttribute("data-at", s.at || "");
  $("#interval").textContent = s.interval;
  $("#targets").textContent = Object.entries(s.targets).map(([n, h]) => `${n} ${h === "ok" ? "✓" : "✗"}`).join(", ") || "none";
  renderGroups(s.groups);
  renderFreshness(s.freshness);
  renderApi(s.api);
  renderSources(s.capture, s.pollers);
  const history = lag.body.history;
  chart("chart-lag", seriesOf(history, "lag"));
  chart("chart-lag-seconds", seriesOf(history, "lag_seconds"));
  chart("chart-freshness", seriesOf(history, "freshness"));
  renderRejects((await getJson("/api/rejects")).body);
  return s.interval;
}

async function loop() {
  let interval = 5;
  try { interval = await refresh(); } catch (error) { $("#updated").textContent = `error: ${error}`; }
  setTimeout(loop, Math.max(1, interval) * 1000);
}

async function lookUp(event) {
  event.preventDefault();
  const id = $("#journey-id").value.trim();
  const target = $("#journey-result");
  if (!id) return;
  target.textContent = "looking up …";
  const { body } = await getJson(`/api/journey/${encodeURIComponent(id)}`);
  if (!body.found) { target.textContent = `no synced record with id ${id}${body.reason ? ` (${body.reason})` : ""}`; return; }
  const header = Object.assign(document.createElement("p"), {
    textContent: `mapping ${body.mapping}: CRM id ${body.crm_id} ⇄ Campaign key ${body.campaign_key}` });
  header.setAttribute("data-journey", "header");
  const trips = body.trips.map((trip, n) => {
    const table = document.createElement("table");
    table.setAttribute("data-trip", n);
    table.setAttribute("data-direction", trip.direction);
    const caption = table.createCaption();
    caption.textContent = `${trip.direction} · ${trip.action} ${trip.fields.join(", ")} · ${trip.seconds === null ? "in flight" : trip.seconds + " s end to end"}` +
      (trip.reject ? ` · REJECTED ${trip.reject.error_code}: ${trip.reject.reason}` : "");
    for (const stage of trip.stages) {
      const row = table.insertRow();
      row.append(cell(stage.stage), cell(stage.at || "—", { "data-stage": stage.stage }));
    }
    return table;
  });
  const quiet = Object.assign(document.createElement("p"), { className: "muted",
    textContent: `${body.no_command.length} change(s) needed no command (echoes of our writes, nothing new)` });
  target.replaceChildren(header, ...trips, quiet);
}

$("#journey-form").addEventListener("submit", lookUp);
loop();
