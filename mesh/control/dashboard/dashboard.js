// micromesh dashboard: four views over the control plane's JSON API.
//
//   Traffic   GET /api/v1/graph        every second: the live graph (SVG)
//   Services  GET /v1/services, /api/v1/stat
//   Routes    GET /api/v1/routes       VirtualServices with their effective split
//   Traces    GET /api/v1/traces, /api/v1/traces/{id}/analysis
//
// No framework and no build step: a learner can read this file top to
// bottom. Every value from the API is inserted with textContent (never
// innerHTML), so a service name cannot inject markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 1000;

// === small helpers ===

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(path + ": " + message);
  }
  return response.json();
}

function setStatus(text, down) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("down", !!down);
}

const fmt = {
  rps: (v) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)),
  pct: (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(v > 0 && v < 0.1 ? 1 : 0) + "%"),
  ms: (v) => (v === null || v === undefined ? "-" : v >= 100 ? v.toFixed(0) + " ms" : v.toFixed(1) + " ms"),
  us: (v) => (v >= 1e6 ? (v / 1e6).toFixed(2) + " s" : v >= 1000 ? (v / 1000).toFixed(1) + " ms" : v + " µs"),
  time: (us) => new Date(us / 1000).toLocaleTimeString(),
};

// === views and navigation ===

const views = ["traffic", "services", "routes", "traces"];
let timer = null;

function route() {
  const hash = location.hash.replace(/^#/, "") || "traffic";
  const [view, arg] = hash.split("/");
  const current = views.includes(view) ? view : view === "trace" ? "traces" : "traffic";
  for (const v of views) {
    document.getElementById("view-" + v).hidden = v !== current;
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === current);
  }
  clearInterval(timer);
  const refresh = {
    traffic: refreshGraph,
    services: refreshServices,
    routes: refreshRoutes,
    traces: view === "trace" ? () => showTrace(arg) : refreshTraces,
  }[current];
  refresh();
  // A trace does not change once settled; everything else is live.
  if (view !== "trace") timer = setInterval(refresh, current === "traffic" ? REFRESH_MS : 2000);
  else timer = setInterval(() => showTrace(arg), 2000);
}

async function guarded(what, work) {
  try {
    await work();
    setStatus("live · " + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus("cannot reach the control plane (" + what + "): " + e.message, true);
  }
}

// === Traffic: the live graph ===

const NODE_W = 250, NODE_H = 84, COL_GAP = 250, ROW_GAP = 60, PAD = 30;

// Columns by call depth: whoever nobody calls (the gateway, outside callers)
// is on the left, their callees to the right. A stable order inside each
// column keeps nodes from jumping between refreshes.
function layout(nodes, edges) {
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let changed = false;
    for (const e of edges) {
      if (e.source === e.target) continue;
      const d = (depth.get(e.source) || 0) + 1;
      if (d > (depth.get(e.target) || 0) && d < nodes.length + 1) {
        depth.set(e.target, d);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const columns = [];
  for (const n of [...nodes].sort((a, b) => a.id.localeCompare(b.id))) {
    const d = depth.get(n.id) || 0;
    (columns[d] = columns[d] || []).push(n);
  }
  const place = new Map();
  const tallest = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP;
  columns.forEach((column, c) => {
    if (!column) return;
    const used = column.length * NODE_H + (column.length - 1) * ROW_GAP;
    const top = (height - used) / 2;
    column.forEach((n, r) => {
      place.set(n.id, { x: PAD + c * (NODE_W + COL_GAP), y: top + r * (NODE_H + ROW_GAP) });
    });
  });
  const width = PAD * 2 + columns.length * NODE_W + Math.max(0, columns.length - 1) * COL_GAP;
  return { place, width, height };
}

function edgeClass(e) {
  if (!(e.rps > 0)) return "idle";
  if (e.errorRate >= 0.05) return "bad";
  if (e.errorRate > 0) return "warn";
  return "ok";
}

// A padlock beside an edge whose requests arrived over mutual TLS, as Kiali
// draws one: graph.rs's `security`, read from the destination sidecar's
// `connection_security_policy`. Closed: every request in the window; open:
// some came in plain text (`mixed`). No lock: plain text, or no report.
const LOCK_SHACKLE = {
  mutual_tls: "M-6,-1 V-7 A6,6 0 0 1 6,-7 V-1",
  mixed: "M-6,-1 V-7 A6,6 0 0 1 6,-7 V-10",
};

function lock(x, y, e) {
  const g = svg("g", { class: "lock " + e.security, "data-lock": e.security, transform: `translate(${x},${y}) scale(1.4)` });
  g.append(svg("circle", { class: "lock-bg", r: 13, cy: -1 }));
  g.append(svg("path", { class: "shackle", d: LOCK_SHACKLE[e.security] }));
  g.append(svg("rect", { x: -9, y: -1, width: 18, height: 13, rx: 2 }));
  g.append(svg("title", {}, `mutual TLS: ${e.mtlsPercent.toFixed(0)}% of the requests in the window`));
  return g;
}

function drawGraph(view) {
  const graph = document.getElementById("graph");
  graph.replaceChildren();
  document.getElementById("window").textContent = view.windowSeconds;
  document.getElementById("graph-empty").hidden = view.nodes.length > 0;
  const { place, width, height } = layout(view.nodes, view.edges);
  graph.setAttribute("viewBox", `0 0 ${Math.max(width, 400)} ${Math.max(height, 200)}`);
  graph.style.height = Math.max(height, 200) + "px";

  const defs = svg("defs");
  // A fixed-size arrow head, whatever the edge's thickness.
  const marker = svg("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
    markerUnits: "userSpaceOnUse", markerWidth: "18", markerHeight: "18", orient: "auto",
  });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z" }));
  defs.append(marker);
  graph.append(defs);

  const maxRps = Math.max(1, ...view.edges.map((e) => e.rps));
  const labels = [];
  for (const e of view.edges) {
    const a = place.get(e.source), b = place.get(e.target);
    if (!a || !b) continue;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    const mid = (x1 + x2) / 2;
    const group = svg("g", {
      class: "edge " + edgeClass(e),
      "data-edge": e.source + "->" + e.target,
      "data-source": e.source,
      "data-target": e.target,
      "data-rps": e.rps.toFixed(3),
      "data-requests": e.requests.toFixed(0),
      "data-error-rate": e.errorRate === null ? "" : e.errorRate.toFixed(4),
      "data-security": e.security || "unknown",
    });
    // Thickness grows with the square root of the rate: 1 rps is visible,
    // 100 rps does not swallow the picture.
    const thickness = e.rps > 0 ? 3 + 14 * Math.sqrt(e.rps / maxRps) : 2;
    group.append(svg("path", {
      d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 4},${y2}`,
      "stroke-width": thickness.toFixed(1),
      "marker-end": "url(#arrow)",
    }));
    group.append(svg("title", {}, `${e.source} → ${e.target} (reported by the ${e.reporter})\n` +
      Object.entries(e.codes).map(([code, r]) => `${code}: ${fmt.rps(r)} rps`).join("\n")));
    graph.append(group);
    labels.push({ group, x: mid, y: (y1 + y2) / 2, e });
  }
  // Labels last, so no edge is drawn over one.
  for (const { x, y, e } of labels) {
    // Two short lines fit between the columns: the rate, then health.
    const lines = e.rps > 0
      ? [`${fmt.rps(e.rps)} rps`, `${fmt.pct(e.errorRate)} err · p99 ${fmt.ms(e.p99Ms)}`]
      : ["idle"];
    const w = Math.max(...lines.map((l) => l.length)) * 9 + 16;
    const h = lines.length * 20 + 6;
    const g = svg("g", { class: "edge " + edgeClass(e) });
    g.append(svg("rect", { class: "label-bg", x: x - w / 2, y: y - h / 2, width: w, height: h, rx: 5 }));
    lines.forEach((line, i) => {
      g.append(svg("text", { x, y: y - h / 2 + 19 + i * 20, "text-anchor": "middle", class: "edge-label" }, line));
    });
    if (e.security in LOCK_SHACKLE) g.append(lock(x, y - h / 2 - 20, e));
    graph.append(g);
  }
  for (const n of view.nodes) {
    const p = place.get(n.id);
    const g = svg("g", { class: "node " + n.kind, "data-node": n.id, transform: `translate(${p.x},${p.y})` });
    g.append(svg("rect", { width: NODE_W, height: NODE_H, rx: 10 }));
    g.append(svg("text", { x: 14, y: 28, class: "name" }, n.workload));
    // The second line says what the node is: a version of a workload, the
    // gateway (its version says nothing to a learner), or a service whose
    // requests reached none of its endpoints (graph.rs, NodeKind::Service).
    const second = { gateway: "gateway", service: "service" }[n.kind] || n.version;
    g.append(svg("text", { x: 14, y: 52, class: "version" }, second));
    const instances = `${n.instances} instance${n.instances === 1 ? "" : "s"}`;
    const meta = { external: "outside the mesh", service: "no endpoint reached" }[n.kind] || instances;
    g.append(svg("text", { x: 14, y: 74, class: "meta" }, meta));
    graph.append(g);
  }
  const problems = document.getElementById("scrape-problems");
  problems.replaceChildren(...view.scrapes.failing.map((f) =>
    el("p", {}, `metrics of ${f.instance} unavailable: ${f.error}`)));
  problems.hidden = view.scrapes.failing.length === 0;
}

function refreshGraph() {
  return guarded("graph", async () => drawGraph(await getJson("/api/v1/graph")));
}

// === Services ===

async function refreshServices() {
  await guarded("services", async () => {
    const [services, stat] = await Promise.all([getJson("/v1/services"), getJson("/api/v1/stat")]);
    const byVersion = new Map(stat.map((r) => [r.workload + "@" + r.version, r]));
    const rows = [];
    const instances = [];
    for (const s of services) {
      const versions = s.versions.length ? s.versions : [""];
      const statRow = (version, label, instancesText, first) => {
        const r = byVersion.get(s.name + "@" + version) || {};
        return el("tr", { "data-service": s.name, "data-version": version },
          el("td", {}, first ? s.name : ""),
          el("td", {}, label),
          el("td", { class: "num" }, instancesText),
          el("td", { class: "num" }, fmt.pct(r.successRate)),
          el("td", { class: "num" }, r.rps === undefined ? "-" : fmt.rps(r.rps)),
          el("td", { class: "num" }, fmt.ms(r.p50Ms)),
          el("td", { class: "num" }, fmt.ms(r.p99Ms)));
      };
      versions.forEach((v, i) => {
        const count = s.endpoints.filter((e) => e.version === v).length;
        const healthy = s.endpoints.filter((e) => e.version === v && e.healthy).length;
        rows.push(statRow(v, v, healthy === count ? String(count) : `${healthy}/${count} ready`, i === 0));
      });
      // Requests to a service with several versions that reached none of
      // its endpoints (a fault abort, no healthy endpoint) belong to the
      // service, not to a version: graph.rs gives them a row of their own.
      if (!versions.includes("") && byVersion.has(s.name + "@")) {
        rows.push(statRow("", "no endpoint reached", "-", false));
      }
      for (const e of s.endpoints) {
        instances.push(el("tr", {},
          el("td", {}, e.instance), el("td", {}, s.name), el("td", {}, e.version),
          el("td", {}, e.address),
          el("td", {}, el("span", { class: "badge " + (e.healthy ? "ok" : "bad") }, e.healthy ? "receiving" : "not ready"))));
      }
    }
    document.querySelector("#services-table tbody").replaceChildren(...rows);
    document.querySelector("#instances-table tbody").replaceChildren(...instances);
  });
}

// === Routes ===

function diagnostics(list) {
  return list.map((d) => el("p", { class: "diag " + d.level },
    el("span", { class: "badge " + (d.level === "Error" ? "bad" : d.level === "Warning" ? "warn" : "info") }, d.level),
    `${d.code}: ${d.field ? d.field + ": " : ""}${d.message}`));
}

// The bar shows the proportions; a legend under it names each part in
// full. A name written inside a 20% part would be cut off.
function splitBar(destinations) {
  const bar = el("div", { class: "split" });
  const legend = el("ul", { class: "split-legend" });
  destinations.filter((d) => d.percent > 0).forEach((d, i) => {
    const name = d.host + (d.subset ? " " + d.subset : "");
    const percent = `${Math.round(d.percent * 10) / 10}%`;
    const colour = "part-" + (i % 4);
    const part = el("div", { class: colour, "data-percent": d.percent.toFixed(1), title: `${name} ${percent}` });
    part.style.width = d.percent + "%";
    // Inside the part, only the percentage, and only if it fits (checked
    // once the part is laid out).
    part.append(el("span", {}, percent));
    bar.append(part);
    legend.append(el("li", { "data-percent": d.percent.toFixed(1) },
      el("span", { class: "swatch " + colour }), `${name}: ${percent}`));
  });
  requestAnimationFrame(() => {
    for (const part of bar.children) {
      const label = part.firstElementChild;
      if (label && label.offsetWidth > part.clientWidth) label.hidden = true;
    }
  });
  return el("div", {}, bar, legend);
}

async function refreshRoutes() {
  await guarded("routes", async () => {
    const view = await getJson("/api/v1/routes");
    const out = [];
    if (!view.virtualServices.length && !view.destinationRules.length) {
      out.push(el("p", { class: "empty" }, "No VirtualService or DestinationRule applied: every service is balanced round-robin over all its instances. Try a lab: meshctl apply -f labs/..."));
    }
    for (const vs of view.virtualServices) {
      const card = el("div", { class: "card", "data-virtual-service": vs.name },
        el("h3", {}, `VirtualService ${vs.namespace}/${vs.name}`),
        el("p", {}, `hosts: ${vs.hosts.join(", ")}` + (vs.gateways.length ? ` · gateways: ${vs.gateways.join(", ")}` : "")));
      // Several VirtualServices for one host: merged at a gateway, only the
      // oldest used by the sidecars (as Istio does).
      if (vs.merged.length) card.append(el("p", { class: "merged" }, "merged: " + vs.merged.join("; ")));
      vs.rules.forEach((rule, i) => {
        const r = el("div", { class: "rule" },
          el("p", {}, el("strong", {}, rule.name ? `rule ${i + 1} (${rule.name})` : `rule ${i + 1}`),
            " · when " + (rule.matches.length ? rule.matches.join(" or ") : "every request")),
          splitBar(rule.destinations));
        const extras = [];
        if (rule.fault) extras.push("fault: " + rule.fault);
        if (rule.timeoutMs) extras.push("timeout: " + rule.timeoutMs + " ms");
        if (rule.retries) extras.push("retries: " + rule.retries);
        if (rule.mirror) extras.push("mirror to " + rule.mirror);
        if (extras.length) r.append(el("p", {}, extras.join(" · ")));
        card.append(r);
      });
      card.append(...diagnostics(vs.diagnostics));
      out.push(card);
    }
    for (const dr of view.destinationRules) {
      out.push(el("div", { class: "card", "data-destination-rule": dr.name },
        el("h3", {}, `DestinationRule ${dr.namespace}/${dr.name}`),
        el("p", {}, `host: ${dr.host} · subsets: ${dr.subsets.join(", ") || "none"}`),
        ...(dr.merged.length ? [el("p", { class: "merged" }, "merged: " + dr.merged.join("; "))] : []),
        ...diagnostics(dr.diagnostics)));
    }
    const others = view.diagnostics.filter((d) =>
      !view.virtualServices.some((v) => d.resource === `VirtualService ${v.namespace}/${v.name}`) &&
      !view.destinationRules.some((r) => d.resource === `DestinationRule ${r.namespace}/${r.name}`));
    if (others.length) {
      out.push(el("div", { class: "card" }, el("h3", {}, "Other findings"),
        ...others.map((d) => el("p", { class: "diag " + d.level }, `${d.level} ${d.code} ${d.resource}: ${d.message}`))));
    }
    document.getElementById("routes").replaceChildren(...out);
  });
}

// === Traces ===

function statusBadges(t) {
  const badges = [];
  if (t.broken) badges.push(el("span", { class: "badge bad" }, "broken chain"));
  if (t.error) badges.push(el("span", { class: "badge bad" }, "error"));
  if (!t.broken && !t.error) badges.push(el("span", { class: "badge ok" }, "ok"));
  if (!t.settled) badges.push(el("span", { class: "badge info" }, "in progress"));
  return badges;
}

async function refreshTraces() {
  document.getElementById("trace-list-wrap").hidden = false;
  document.getElementById("trace-detail").hidden = true;
  await guarded("traces", async () => {
    const broken = document.getElementById("broken-only").checked;
    const traces = await getJson("/api/v1/traces?limit=30" + (broken ? "&broken=true" : ""));
    const rows = traces.map((t) => {
      const row = el("tr", { "data-trace": t.traceId, class: t.broken ? "broken" : "" },
        el("td", {}, fmt.time(t.start)),
        el("td", {}, `${t.rootService} ${t.rootName}`),
        // The services the trace crossed, as a set: the order is only
        // first appearance, not who called whom (the waterfall shows that).
        el("td", { class: "services" }, ...t.services.map((s) => el("span", { class: "chip" }, s))),
        el("td", { class: "num" }, t.spanCount),
        el("td", { class: "num" }, fmt.us(t.duration)),
        el("td", {}, ...statusBadges(t)));
      row.addEventListener("click", () => { location.hash = "trace/" + t.traceId; });
      return row;
    });
    document.querySelector("#trace-list tbody").replaceChildren(...rows);
    document.getElementById("traces-empty").hidden = traces.length > 0;
  });
}

async function showTrace(id) {
  document.getElementById("trace-list-wrap").hidden = true;
  document.getElementById("trace-detail").hidden = false;
  await guarded("trace", async () => {
    const t = await getJson("/api/v1/traces/" + encodeURIComponent(id) + "/analysis");
    document.getElementById("trace-title").replaceChildren(
      `Trace ${t.traceId} · ${fmt.us(t.duration)} · ${t.spanCount} spans · `, ...statusBadges(t));
    const problems = document.getElementById("trace-problems");
    problems.replaceChildren(...t.problems.map((p) => {
      const line = el("p", {}, (p.pending ? "(waiting for spans) " : "") + p.message + " ");
      if (p.relatedTraceId) line.append(el("a", { href: "#trace/" + p.relatedTraceId }, "open trace " + p.relatedTraceId));
      return line;
    }));
    problems.hidden = t.problems.length === 0;

    const total = Math.max(t.duration, 1);
    const rows = t.spans.map((s) => {
      const service = (s.localEndpoint && s.localEndpoint.serviceName) || "?";
      const kind = (s.kind || "").toLowerCase();
      const left = (100 * s.offset) / total;
      const width = Math.max((100 * (s.duration || 0)) / total, 0.3);
      const error = s.tags && (s.tags.error || /^(5\d\d|0)$/.test(s.tags["http.status_code"] || ""));
      const bar = el("div", { class: `bar ${kind}${error ? " error" : ""}` });
      bar.style.left = left + "%";
      bar.style.width = width + "%";
      const took = el("span", { class: "took" },
        `${fmt.us(s.duration || 0)} ${(s.tags && s.tags["http.status_code"]) || ""}`);
      if (left + width > 80) {
        // No room after the bar: write inside its end, in white.
        took.classList.add("inside");
        took.style.right = (100 - left - width) + "%";
      } else {
        took.style.left = (left + width) + "%";
      }
      const who = el("div", { class: "who" },
        "\u00a0\u00a0".repeat(s.depth),
        el("span", { class: "service" }, service),
        el("span", { class: "kind" }, `${kind} ${s.name || ""}`));
      const tags = el("div", { class: "tags" },
        Object.entries(s.tags || {}).map(([k, v]) => `${k}=${v}`).join("  ·  "));
      const row = el("div", { class: "span-row" + (s.problems && s.problems.length ? " broken" : ""), "data-span": s.id, "data-service": service },
        who, el("div", { class: "lane" }, bar, took), tags);
      row.addEventListener("click", () => row.classList.toggle("open"));
      return row;
    });
    document.getElementById("waterfall").replaceChildren(...rows);
    // A settled trace no longer changes: stop refreshing, so a span opened
    // to read its tags stays open.
    if (t.settled) clearInterval(timer);
  });
}

document.getElementById("broken-only").addEventListener("change", refreshTraces);
window.addEventListener("hashchange", route);
route();
