// A host's page (`#/host/NAME`): its status and facts, charts of its node_exporter-style metrics
// (PromQL over /api/v1/query_range), its health checks with their recent status changes, its
// recent logs and its alerts. Every panel loads, fails and shows its error on its own.

import { api } from "../api.js";
import { onLive } from "../live.js";
import { buildHash, parseHash } from "../route.js";
import { matrixToColumns, mergeColumns, updateChart } from "../chart.js";
import { h, errorBox, fmtBytes, fmtAgo, fmtTime, fmtNumber, fmtDuration } from "../ui.js";

// A PromQL string literal.
function quote(s) {
  return `"${s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`;
}

const FS = 'fstype!~"tmpfs|devtmpfs|ramfs|squashfs|nsfs|autofs"';
const DISKS = 'device!~"loop.*|ram.*|zram.*"';

// The charts: `queries(sel, w)` gets the host's label matcher (`host="NAME"`) and the rate
// window; each query's series are named by its legend template.
export const HOST_CHARTS = [
  {
    key: "cpu",
    title: "CPU",
    unit: "percent",
    kind: "area",
    min: 0,
    queries: (sel, w) => [
      {
        expr: `sum by (mode) (rate(node_cpu_seconds_total{${sel},mode!="idle"}[${w}])) / scalar(count(node_cpu_seconds_total{${sel},mode="idle"}))`,
        legend: "{{mode}}",
      },
    ],
  },
  {
    key: "memory",
    title: "Memory",
    unit: "bytes",
    min: 0,
    queries: (sel) => [
      { expr: `node_memory_MemTotal_bytes{${sel}} - node_memory_MemAvailable_bytes{${sel}}`, legend: "used" },
      { expr: `node_memory_Buffers_bytes{${sel}} + node_memory_Cached_bytes{${sel}}`, legend: "buffers + cache" },
      { expr: `node_memory_MemFree_bytes{${sel}}`, legend: "free" },
      { expr: `node_memory_MemTotal_bytes{${sel}}`, legend: "total" },
    ],
  },
  {
    key: "swap",
    title: "Swap",
    unit: "bytes",
    min: 0,
    queries: (sel) => [
      { expr: `node_memory_SwapTotal_bytes{${sel}} - node_memory_SwapFree_bytes{${sel}}`, legend: "used" },
      { expr: `node_memory_SwapTotal_bytes{${sel}}`, legend: "total" },
    ],
  },
  {
    key: "filesystems",
    title: "Filesystems used",
    unit: "percent",
    min: 0,
    max: 1,
    queries: (sel) => [
      {
        // as df counts it: of the space available to users
        expr: `(node_filesystem_size_bytes{${sel},${FS}} - node_filesystem_free_bytes{${sel},${FS}}) / (node_filesystem_size_bytes{${sel},${FS}} - node_filesystem_free_bytes{${sel},${FS}} + node_filesystem_avail_bytes{${sel},${FS}})`,
        legend: "{{mountpoint}}",
      },
    ],
  },
  {
    key: "disk-io",
    title: "Disk I/O",
    unit: "bytes/s",
    min: 0,
    queries: (sel, w) => [
      { expr: `sum by (device) (rate(node_disk_read_bytes_total{${sel},${DISKS}}[${w}]))`, legend: "{{device}} read" },
      { expr: `sum by (device) (rate(node_disk_written_bytes_total{${sel},${DISKS}}[${w}]))`, legend: "{{device}} written" },
    ],
  },
  {
    key: "network",
    title: "Network",
    unit: "bytes/s",
    min: 0,
    queries: (sel, w) => [
      { expr: `sum by (device) (rate(node_network_receive_bytes_total{${sel},device!="lo"}[${w}]))`, legend: "{{device}} received" },
      { expr: `sum by (device) (rate(node_network_transmit_bytes_total{${sel},device!="lo"}[${w}]))`, legend: "{{device}} sent" },
    ],
  },
  {
    key: "load",
    title: "Load",
    unit: "short",
    min: 0,
    queries: (sel) => [
      { expr: `node_load1{${sel}}`, legend: "1m" },
      { expr: `node_load5{${sel}}`, legend: "5m" },
      { expr: `node_load15{${sel}}`, legend: "15m" },
      { expr: `count(node_cpu_seconds_total{${sel},mode="idle"})`, legend: "CPUs" },
    ],
  },
];

// The rate window for a step: wide enough for several samples at any scrape interval we ship.
function rateWindow(step) {
  return `${Math.max(60, step * 2)}s`;
}

function panel(title, testid, extra) {
  const body = h("div", { class: "panel-body" });
  const note = h("span", { class: "muted" });
  const el = h(
    "section",
    { class: "panel" },
    h("div", { class: "panel-head" }, h("h2", {}, title), note, h("span", { class: "spacer" }), extra || null),
    body,
  );
  if (testid) el.dataset.panel = testid;
  return { el, body, note };
}

function pill(text, cls) {
  return h("span", { class: `pill ${cls}` }, text);
}

function fact(label, value, title) {
  return h("div", { title: title || null }, h("dt", {}, label), h("dd", {}, value));
}

function render(root, ctx) {
  const name = ctx.arg;
  if (!name) {
    root.append(errorBox("no host given: open a host from the overview (the URL is #/host/NAME)"));
    return undefined;
  }
  const sel = `host=${quote(name)}`;
  const stops = [];
  let alive = true;
  const kept = () => {
    const p = parseHash().params;
    return { range: p.range, refresh: p.refresh };
  };

  // --- header: name, status, health, facts
  const title = h("h1", { "data-testid": "host-title" }, name);
  const pills = h("span", { class: "pills" });
  const facts = h("dl", { class: "facts", "data-testid": "host-facts" });
  const headStatus = h("div");
  const back = h("a", { href: buildHash("overview", null, kept()) }, "‹ Fleet");
  root.append(
    h("div", { class: "page-head" }, back, title, pills),
    h("section", { class: "panel" }, facts, headStatus),
  );
  let hostView = null;
  let seriesCount = null;

  function paintHeader() {
    const x = hostView;
    if (!x) return;
    const f = x.facts || {};
    pills.replaceChildren(
      pill(x.status, `status-${x.status}`),
      " ",
      pill(x.health, `health-${x.health}`),
      ...(x.connected ? [] : [" ", pill("not connected", "muted")]),
    );
    const uptime = f.boot_time_seconds ? fmtDuration(Date.now() / 1000 - f.boot_time_seconds) : "–";
    facts.replaceChildren(
      fact("Last seen", fmtAgo(x.last_seen_ms), x.last_seen_ms ? fmtTime(x.last_seen_ms) : ""),
      fact("First seen", x.first_seen_ms ? fmtTime(x.first_seen_ms) : "–"),
      fact("Agent", x.agent_version || "–"),
      fact("OS", f.os || "–"),
      fact("Kernel", f.kernel || "–"),
      fact("Arch", f.arch || "–"),
      fact("CPUs", f.cpu_count ? String(f.cpu_count) : "–"),
      fact("Memory", f.memory_bytes ? fmtBytes(f.memory_bytes) : "–"),
      fact("Uptime", uptime, f.boot_time_seconds ? `booted ${fmtTime(f.boot_time_seconds * 1000)}` : ""),
      fact("Hostname", f.hostname || "–", "as the host itself reports it; the name above comes from its certificate"),
      fact("Clock skew", `${fmtNumber(x.clock_skew_ms)} ms`, "agent clock minus aggregator clock at its last hello"),
      fact("Backlog", `${fmtNumber(x.backlog_batches)} batches`, "buffered on the agent at its last hello"),
      seriesCount === null ? null : fact("Series", fmtNumber(seriesCount, 9)),
    );
  }

  async function loadHost() {
    try {
      const d = await api.get(`/api/fleet/hosts/${encodeURIComponent(name)}`);
      if (!alive) return;
      hostView = d.host;
      seriesCount = Array.isArray(d.series) ? d.series.length : typeof d.series === "number" ? d.series : null;
      headStatus.replaceChildren();
      paintHeader();
    } catch (e) {
      if (!alive) return;
      headStatus.replaceChildren(errorBox(e, `cannot load host ${name}`));
    }
  }

  // the live feed keeps the header current
  const fromLive = (m) => {
    const list = m.hosts;
    if (!Array.isArray(list)) return;
    const x = list.find((y) => y.host === name);
    if (x) {
      hostView = x;
      headStatus.replaceChildren();
      paintHeader();
    }
  };
  stops.push(onLive("hosts", fromLive), onLive("snapshot", fromLive));

  // --- charts
  const charts = HOST_CHARTS.map((c) => {
    const p = panel(c.title);
    const el = h("div", { class: "chart", "data-testid": `chart-${c.key}` }, h("div", { class: "empty" }, "loading…"));
    const status = h("div");
    p.body.append(status, el);
    return { def: c, el, status, section: p.el, holder: { plot: null } };
  });
  root.append(h("div", { class: "charts" }, charts.map((c) => c.section)));

  async function loadChart(c) {
    const range = ctx.resolved();
    const w = rateWindow(range.step);
    const queries = c.def.queries(sel, w);
    try {
      const results = await Promise.all(
        queries.map((q) =>
          api.get("/api/v1/query_range", { query: q.expr, start: range.start, end: range.end, step: range.step }),
        ),
      );
      if (!alive) return;
      const parts = results.map((r, i) => matrixToColumns(r.result || [], range, queries[i].legend));
      c.status.replaceChildren();
      updateChart(c.holder, c.el, mergeColumns(parts), { kind: c.def.kind || "line", unit: c.def.unit, min: c.def.min, max: c.def.max });
    } catch (e) {
      if (!alive) return;
      if (c.holder.plot) c.holder.plot.dispose();
      c.holder.plot = null;
      c.el.replaceChildren();
      c.status.replaceChildren(errorBox(e, `cannot load the ${c.def.title.toLowerCase()} chart`));
    }
  }

  // --- alerts
  const alertsLink = h("a", { href: buildHash("alerts", null, kept()) }, "all alerts ›");
  const alertsPanel = panel("Alerts", "alerts", alertsLink);
  const alertsBody = h("div", { "data-testid": "host-alerts" }, h("div", { class: "empty" }, "loading…"));
  alertsPanel.body.append(alertsBody);

  async function loadAlerts() {
    try {
      const d = await api.get("/api/fleet/alerts", { host: name });
      if (!alive) return;
      const list = (d.alerts || []).slice().sort((a, b) => stateRank(a) - stateRank(b));
      alertsPanel.note.textContent = `${list.filter((a) => a.state === "firing").length} firing`;
      if (list.length === 0) {
        alertsBody.replaceChildren(h("div", { class: "empty" }, "No alerts for this host."));
        return;
      }
      alertsBody.replaceChildren(
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, ["Alert", "State", "Severity", "Since", "Value", "Summary"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            list.map((a) => {
              const labels = a.labels || {};
              const state = a.acknowledged && a.state === "firing" ? "acknowledged" : a.muted && a.state === "firing" ? "silenced" : a.state;
              const since = a.state === "resolved" ? a.resolvedAt : a.firedAt || a.activeAt;
              return h(
                "tr",
                { "data-testid": "host-alert-row", "data-fingerprint": a.fingerprint, "data-state": state },
                h("td", {}, labels.alertname || "–"),
                h("td", { class: `state-${state}` }, state, a.acknowledged ? h("span", { class: "muted" }, ` by ${a.acknowledged.by}`) : null),
                h("td", {}, labels.severity || "–"),
                h("td", { title: since || "" }, since ? fmtAgo(Date.parse(since)) : "–"),
                h("td", { class: "num", title: a.value ?? "" }, a.value === undefined ? "–" : fmtNumber(parseFloat(a.value))),
                h("td", { class: "wrap" }, (a.annotations || {}).summary || (a.annotations || {}).description || ""),
              );
            }),
          ),
        ),
      );
    } catch (e) {
      if (!alive) return;
      alertsBody.replaceChildren(errorBox(e, "cannot load this host's alerts"));
    }
  }
  // an alert event about this host: load its alerts again
  stops.push(
    onLive("alert", (m) => {
      if (m.labels && m.labels.host === name) loadAlerts();
    }),
  );

  // --- checks
  const checksPanel = panel("Checks", "checks");
  const checksBody = h("div", {}, h("div", { class: "empty" }, "loading…"));
  checksPanel.body.append(checksBody);

  async function loadChecks() {
    try {
      const d = await api.get(`/api/fleet/hosts/${encodeURIComponent(name)}/checks`);
      if (!alive) return;
      const list = (d.checks || []).slice().sort((a, b) => a.name.localeCompare(b.name));
      checksPanel.note.textContent = d.health ? `health: ${d.health}` : "";
      const table = h(
        "table",
        { "data-testid": "host-checks" },
        h(
          "thead",
          {},
          h("tr", {}, ["Check", "Status", "Detail", "Took", "Since", "Last result", "Recent changes"].map((t) => h("th", {}, t))),
        ),
        h(
          "tbody",
          {},
          list.map((c) =>
            h(
              "tr",
              { "data-testid": "check-row", "data-check": c.name, "data-status": c.status, class: c.stale ? "dim" : "" },
              h("td", {}, c.name),
              h("td", { class: `health-${c.status}` }, c.status, c.stale ? h("span", { class: "muted" }, " (stale)") : null),
              h("td", { class: "wrap" }, c.detail || ""),
              h("td", { class: "num" }, fmtDuration(c.duration_seconds)),
              h("td", { title: fmtTime(c.since_ms) }, fmtAgo(c.since_ms)),
              h("td", { title: fmtTime(c.timestamp_ms) }, fmtAgo(c.timestamp_ms)),
              h(
                "td",
                { class: "wrap" },
                h(
                  "span",
                  { class: "transitions" },
                  (c.transitions || [])
                    .slice(-8)
                    .reverse()
                    .map((t) =>
                      h(
                        "span",
                        { class: `transition health-${t.to}`, title: `${fmtTime(t.timestamp_ms)}: ${t.from} → ${t.to}${t.detail ? ` (${t.detail})` : ""}` },
                        `${t.to} ${fmtAgo(t.timestamp_ms)}`,
                      ),
                    ),
                ),
              ),
            ),
          ),
        ),
      );
      checksBody.replaceChildren(table);
      if (list.length === 0) checksBody.append(h("div", { class: "empty" }, "This host runs no health checks."));
    } catch (e) {
      if (!alive) return;
      checksBody.replaceChildren(errorBox(e, "cannot load this host's checks"));
    }
  }

  // --- logs
  const selector = `{${sel}}`;
  const logsLink = h("a", {}, "search these logs ›");
  const logsPanel = panel("Recent logs", "logs", logsLink);
  const logsBody = h("div", { "data-testid": "host-logs" }, h("div", { class: "empty" }, "loading…"));
  logsPanel.body.append(logsBody);
  const LOG_LIMIT = 50;

  async function loadLogs() {
    const range = ctx.resolved();
    logsLink.href = buildHash("logs", null, { ...kept(), selector });
    try {
      const d = await api.get("/api/logs/query", { selector, start: range.start, end: range.end, limit: LOG_LIMIT });
      if (!alive) return;
      const records = d.records || [];
      logsPanel.note.textContent = records.length === LOG_LIMIT ? `newest ${LOG_LIMIT}` : `${records.length} in the last ${ctx.range}`;
      if (records.length === 0) {
        logsBody.replaceChildren(h("div", { class: "empty" }, `No logs from this host in the last ${ctx.range}.`));
        return;
      }
      logsBody.replaceChildren(
        h(
          "div",
          { class: "scroll-x" },
          h(
            "table",
            { class: "loglines" },
            h(
              "tbody",
              {},
              records.map((r) =>
                h(
                  "tr",
                  { "data-testid": "host-log-row" },
                  h("td", { title: r.time }, new Date(r.time).toLocaleTimeString()),
                  h("td", { class: `lvl lvl-${r.level}` }, r.level),
                  h("td", { class: "muted" }, r.service || r.source || ""),
                  h("td", { class: "message" }, r.message),
                ),
              ),
            ),
          ),
        ),
      );
    } catch (e) {
      if (!alive) return;
      logsBody.replaceChildren(errorBox(e, "cannot load this host's logs"));
    }
  }

  root.append(alertsPanel.el, checksPanel.el, logsPanel.el);

  function loadAll() {
    loadHost();
    charts.forEach(loadChart);
    loadAlerts();
    loadChecks();
    loadLogs();
  }
  loadAll();

  return {
    refresh() {
      loadAll();
    },
    dispose() {
      alive = false;
      stops.forEach((f) => f());
      for (const c of charts) if (c.holder.plot) c.holder.plot.dispose();
    },
  };
}

function stateRank(a) {
  return { firing: 0, pending: 1, resolved: 2 }[a.state] ?? 3;
}

export default {
  title: "Host",
  nav: false,
  render,
};
