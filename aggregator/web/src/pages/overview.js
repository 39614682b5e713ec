// The fleet overview: every host with its status, health, resource use, firing alerts, agent
// version and last contact; sortable, filterable and paginated, kept current by the live feed.
//
// Built for thousands of hosts: each update (a `hosts` message every two seconds) filters and
// sorts once (O(n log n) on precomputed keys), and only the rows of the page on screen touch
// the DOM, through a pool of rows whose cells change only when their text does.

import { api } from "../api.js";
import { onLive, liveState } from "../live.js";
import { buildHash, parseHash } from "../route.js";
import { h, errorBox, fmtPercent, fmtBytes, fmtAgo, fmtTime, fmtNumber, fmtDuration } from "../ui.js";

const STATUS_RANK = { up: 0, stale: 1, down: 2 };
const HEALTH_RANK = { unknown: 0, healthy: 1, degraded: 2, unhealthy: 3 };
const PAGE_SIZES = [25, 50, 100, 200];
const DEFAULT_SIZE = 50;
const versionOrder = new Intl.Collator(undefined, { numeric: true }).compare;

// A summary number of a host, or null when the aggregator sends none (yet).
function sum(host, key) {
  const s = host.summary;
  const v = s ? s[key] : null;
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

function netTotal(host) {
  const rx = sum(host, "net_rx_bytes_per_second");
  const tx = sum(host, "net_tx_bytes_per_second");
  return rx === null && tx === null ? null : (rx || 0) + (tx || 0);
}

// The columns: `key` is the cell's data-col, `sortKey` a number or string (null sorts last).
const COLUMNS = [
  { key: "host", label: "Host", sortKey: (x) => x.host },
  { key: "status", label: "Status", sortKey: (x) => STATUS_RANK[x.status] ?? -1, firstDir: "desc" },
  { key: "health", label: "Health", sortKey: (x) => HEALTH_RANK[x.health] ?? 0, firstDir: "desc" },
  { key: "cpu", label: "CPU", num: true, sortKey: (x) => sum(x, "cpu_ratio"), firstDir: "desc" },
  { key: "memory", label: "Memory", num: true, sortKey: (x) => sum(x, "memory_ratio"), firstDir: "desc" },
  { key: "disk", label: "Disk", num: true, sortKey: (x) => sum(x, "disk_ratio"), firstDir: "desc", title: "The fullest filesystem" },
  { key: "net", label: "Network", num: true, sortKey: netTotal, firstDir: "desc", title: "Received ↓ and sent ↑ per second" },
  { key: "alerts", label: "Alerts", num: true, sortKey: (x) => sum(x, "alerts_firing"), firstDir: "desc", title: "Firing alerts" },
  { key: "version", label: "Agent", sortKey: (x) => x.agent_version || null, compare: versionOrder },
  { key: "last_seen", label: "Last seen", num: true, sortKey: (x) => x.last_seen_ms || null, firstDir: "desc" },
];
const BY_KEY = Object.fromEntries(COLUMNS.map((c) => [c.key, c]));

function level(ratio) {
  if (ratio === null) return "";
  return ratio >= 0.9 ? "bad" : ratio >= 0.8 ? "warn" : "";
}

// Filters and sorts `hosts` (once per update or change of view): the hosts to page through.
function arrange(hosts, view) {
  const q = view.q.trim().toLowerCase();
  const words = q ? q.split(/\s+/) : [];
  const chosen = [];
  for (const x of hosts) {
    if (view.status && x.status !== view.status) continue;
    if (view.health && x.health !== view.health) continue;
    if (view.alerting && !(sum(x, "alerts_firing") > 0)) continue;
    if (words.length) {
      const f = x.facts || {};
      const hay = `${x.host} ${x.agent_version || ""} ${f.os || ""} ${f.arch || ""} ${x.status} ${x.health}`.toLowerCase();
      if (!words.every((w) => hay.includes(w))) continue;
    }
    chosen.push(x);
  }
  const col = BY_KEY[view.sort] || BY_KEY.status;
  const sign = view.dir === "asc" ? 1 : -1;
  const cmp = col.compare || ((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const keyed = chosen.map((x) => ({ x, k: col.sortKey(x) }));
  keyed.sort((a, b) => {
    if (a.k === null || b.k === null) {
      if (a.k !== b.k) return a.k === null ? 1 : -1; // no data sorts last either way
    } else {
      const c = cmp(a.k, b.k);
      if (c !== 0) return sign * c;
    }
    return a.x.host < b.x.host ? -1 : a.x.host > b.x.host ? 1 : 0;
  });
  return keyed.map((e) => e.x);
}

// Sets a node's text only when it changes (most cells do not, from one update to the next).
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function setClass(el, cls) {
  if (el.className !== cls) el.className = cls;
}

// One row of the pool: its cells, filled by `fill(row, host)`.
function makeRow() {
  const cells = {};
  const tr = h("tr", { "data-testid": "host-row" });
  for (const c of COLUMNS) {
    const td = h("td", { "data-col": c.key, class: c.num ? "num" : "" });
    cells[c.key] = td;
    tr.append(td);
  }
  cells.link = h("a", {});
  cells.host.append(cells.link);
  for (const k of ["cpu", "memory", "disk"]) {
    const fill = h("span", { class: "fill" });
    const text = h("span", { class: "pct" });
    cells[k].append(h("span", { class: "bar" }, fill), text);
    cells[`${k}Fill`] = fill;
    cells[`${k}Text`] = text;
  }
  return { tr, cells, host: null };
}

function fillRatio(cells, key, ratio) {
  const pct = ratio === null ? 0 : Math.max(0, Math.min(1, ratio)) * 100;
  const w = `${pct.toFixed(1)}%`;
  if (cells[`${key}Fill`].style.width !== w) cells[`${key}Fill`].style.width = w;
  setClass(cells[`${key}Fill`], `fill ${level(ratio)}`);
  setText(cells[`${key}Text`], fmtPercent(ratio));
}

function fill(row, x, hostHref) {
  const c = row.cells;
  if (row.host !== x.host) {
    row.host = x.host;
    row.tr.dataset.host = x.host;
    c.link.textContent = x.host;
  }
  const href = hostHref(x.host);
  if (c.link.getAttribute("href") !== href) c.link.setAttribute("href", href);
  setText(c.status, x.status);
  setClass(c.status, `status-${x.status}`);
  setText(c.health, x.health);
  setClass(c.health, `health-${x.health}`);
  fillRatio(c, "cpu", sum(x, "cpu_ratio"));
  fillRatio(c, "memory", sum(x, "memory_ratio"));
  fillRatio(c, "disk", sum(x, "disk_ratio"));
  const load = sum(x, "load1");
  const cpuTitle = load === null ? "" : `load average (1 min): ${fmtNumber(load)}`;
  if (c.cpu.title !== cpuTitle) c.cpu.title = cpuTitle;
  const swap = sum(x, "swap_ratio");
  const memTitle = swap === null ? "" : `swap used: ${fmtPercent(swap)}`;
  if (c.memory.title !== memTitle) c.memory.title = memTitle;
  const rx = sum(x, "net_rx_bytes_per_second");
  const tx = sum(x, "net_tx_bytes_per_second");
  setText(c.net, rx === null && tx === null ? "–" : `↓ ${fmtBytes(rx)}/s ↑ ${fmtBytes(tx)}/s`);
  const alerts = sum(x, "alerts_firing");
  setText(c.alerts, alerts === null ? "–" : fmtNumber(alerts));
  setClass(c.alerts, alerts > 0 ? "num bad" : "num");
  setText(c.version, x.agent_version || "–");
  setText(c.last_seen, fmtAgo(x.last_seen_ms));
  const seen = x.last_seen_ms ? fmtTime(x.last_seen_ms) : "";
  if (c.last_seen.title !== seen) c.last_seen.title = seen;
}

function readView(params) {
  const size = Number(params.size);
  return {
    q: params.q || "",
    status: STATUS_RANK[params.status] !== undefined ? params.status : "",
    health: HEALTH_RANK[params.health] !== undefined ? params.health : "",
    alerting: params.alerting === "1",
    sort: BY_KEY[params.sort] ? params.sort : "status",
    dir: params.dir === "asc" ? "asc" : "desc",
    page: Math.max(0, (Number(params.page) || 1) - 1),
    size: PAGE_SIZES.includes(size) ? size : DEFAULT_SIZE,
  };
}

function render(root, ctx) {
  const started = performance.now();
  const view = readView(ctx.params);
  let hosts = null; // latest host list
  let arranged = [];
  let updatedAt = 0;
  let scheduled = 0;
  let firstPainted = false;
  const pool = [];
  const stops = [];

  // The view in the URL (only what differs from the defaults).
  function saveView() {
    ctx.setParams({
      q: view.q || null,
      status: view.status || null,
      health: view.health || null,
      alerting: view.alerting ? "1" : null,
      sort: view.sort === "status" ? null : view.sort,
      dir: view.dir === "desc" ? null : view.dir,
      page: view.page > 0 ? String(view.page + 1) : null,
      size: view.size === DEFAULT_SIZE ? null : String(view.size),
    });
  }

  // links keep the range and refresh in the URL now (the range may change while on this page)
  let kept = {};
  const hostHref = (name) => buildHash("host", name, kept);

  // --- the controls
  const filter = h("input", {
    type: "search",
    "data-testid": "overview-filter",
    placeholder: "Filter hosts: name, version, OS…",
    value: view.q,
    "aria-label": "Filter hosts",
    oninput: () => {
      view.q = filter.value;
      view.page = 0;
      rearrange();
    },
  });
  const select = (testid, label, value, options, onchange) =>
    h(
      "select",
      { "data-testid": testid, "aria-label": label, title: label, onchange: (ev) => onchange(ev.target.value) },
      options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)),
    );
  const statusSel = select(
    "overview-status",
    "Status",
    view.status,
    [["", "any status"], ["up", "up"], ["stale", "stale"], ["down", "down"]],
    (v) => {
      view.status = v;
      view.page = 0;
      rearrange();
    },
  );
  const healthSel = select(
    "overview-health",
    "Health",
    view.health,
    [["", "any health"], ["healthy", "healthy"], ["degraded", "degraded"], ["unhealthy", "unhealthy"], ["unknown", "unknown"]],
    (v) => {
      view.health = v;
      view.page = 0;
      rearrange();
    },
  );
  const alertingBox = h("input", {
    type: "checkbox",
    "data-testid": "overview-alerting",
    checked: view.alerting,
    onchange: (ev) => {
      view.alerting = ev.target.checked;
      view.page = 0;
      rearrange();
    },
  });
  const sizeSel = select(
    "overview-size",
    "Hosts per page",
    String(view.size),
    PAGE_SIZES.map((n) => [String(n), `${n} per page`]),
    (v) => {
      view.size = Number(v);
      view.page = 0;
      paint();
    },
  );

  // --- the counts (click one to filter by it)
  const counts = h("div", { class: "counts", "data-testid": "overview-counts" });

  // --- the table
  const headCells = COLUMNS.map((c) =>
    h(
      "th",
      {
        class: `sortable${c.num ? " num" : ""}`,
        "data-testid": `sort-${c.key}`,
        "data-col": c.key,
        title: c.title ? `${c.title} (click to sort)` : "Click to sort",
        tabindex: "0",
        onclick: () => sortBy(c.key),
        onkeydown: (ev) => {
          if (ev.key === "Enter" || ev.key === " ") {
            ev.preventDefault();
            sortBy(c.key);
          }
        },
      },
      c.label,
    ),
  );
  const tbody = h("tbody", {
    onclick: (ev) => {
      if (ev.target.closest("a")) return; // the link itself navigates
      const tr = ev.target.closest("tr[data-host]");
      if (tr) ctx.go("host", tr.dataset.host);
    },
  });
  const table = h("table", { class: "hosts", "data-testid": "overview-table" }, h("thead", {}, h("tr", {}, headCells)), tbody);
  const empty = h("div", { class: "empty", hidden: true });
  const status = h("div", { class: "panel-status" }); // errors and "loading…"
  const prev = h("button", { "data-testid": "page-prev", onclick: () => turn(-1) }, "‹ Previous");
  const next = h("button", { "data-testid": "page-next", onclick: () => turn(1) }, "Next ›");
  const info = h("span", { class: "page-info", "data-testid": "page-info" });
  const updated = h("span", { class: "muted updated" });

  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Fleet"), counts),
    h(
      "div",
      { class: "toolbar" },
      filter,
      statusSel,
      healthSel,
      h("label", { class: "check" }, alertingBox, " with firing alerts"),
      h("span", { class: "spacer" }),
      updated,
    ),
    status,
    h("div", { class: "panel table-panel" }, h("div", { class: "scroll-x" }, table), empty),
    h("div", { class: "pager" }, prev, info, next, sizeSel),
  );
  status.append(h("div", { class: "muted" }, "loading hosts…"));

  function sortBy(key) {
    if (view.sort === key) view.dir = view.dir === "asc" ? "desc" : "asc";
    else {
      view.sort = key;
      view.dir = BY_KEY[key].firstDir || "asc";
    }
    view.page = 0;
    rearrange();
  }

  function turn(delta) {
    const pages = Math.max(1, Math.ceil(arranged.length / view.size));
    view.page = Math.max(0, Math.min(pages - 1, view.page + delta));
    paint();
  }

  // Filter and sort again (coalesced to one per frame), then paint.
  function rearrange() {
    if (scheduled) return;
    scheduled = requestAnimationFrame(() => {
      scheduled = 0;
      if (!hosts) return;
      arranged = arrange(hosts, view);
      paint();
    });
  }

  function paintCounts() {
    const n = { up: 0, stale: 0, down: 0 };
    let alerting = 0;
    for (const x of hosts) {
      if (n[x.status] !== undefined) n[x.status]++;
      if (sum(x, "alerts_firing") > 0) alerting++;
    }
    const chip = (label, value, cls, onclick) =>
      h("button", { class: `count ${cls}`, onclick }, h("b", {}, fmtNumber(value, 9)), ` ${label}`);
    const setStatus = (s) => () => {
      view.status = view.status === s ? "" : s;
      statusSel.value = view.status;
      view.page = 0;
      rearrange();
    };
    counts.replaceChildren(
      chip(hosts.length === 1 ? "host" : "hosts", hosts.length, "", setStatus("")),
      chip("up", n.up, "status-up", setStatus("up")),
      chip("stale", n.stale, "status-stale", setStatus("stale")),
      chip("down", n.down, "status-down", setStatus("down")),
      chip("with firing alerts", alerting, alerting ? "bad" : "", () => {
        view.alerting = !view.alerting;
        alertingBox.checked = view.alerting;
        view.page = 0;
        rearrange();
      }),
    );
  }

  // The page on screen: only its rows are touched.
  function paint() {
    saveView();
    const p = parseHash().params;
    kept = { range: p.range, refresh: p.refresh };
    for (const th of headCells) {
      const on = th.dataset.col === view.sort;
      th.classList.toggle("sorted", on);
      th.dataset.dir = on ? view.dir : "";
      th.setAttribute("aria-sort", on ? (view.dir === "asc" ? "ascending" : "descending") : "none");
    }
    const total = arranged.length;
    const pages = Math.max(1, Math.ceil(total / view.size));
    if (view.page >= pages) view.page = pages - 1;
    const from = view.page * view.size;
    const shown = arranged.slice(from, from + view.size);
    for (let i = 0; i < shown.length; i++) {
      if (!pool[i]) pool[i] = makeRow();
      fill(pool[i], shown[i], hostHref);
      if (pool[i].tr.parentNode !== tbody || tbody.children[i] !== pool[i].tr) {
        tbody.insertBefore(pool[i].tr, tbody.children[i] || null);
      }
    }
    while (tbody.children.length > shown.length) tbody.lastChild.remove();
    info.textContent = total
      ? `${fmtNumber(from + 1, 9)}–${fmtNumber(from + shown.length, 9)} of ${fmtNumber(total, 9)}${total === hosts.length ? "" : ` (of ${fmtNumber(hosts.length, 9)})`} · page ${view.page + 1} of ${pages}`
      : "no hosts";
    prev.disabled = view.page === 0;
    next.disabled = view.page >= pages - 1;
    empty.hidden = total > 0;
    empty.textContent = hosts.length
      ? "No host matches this filter."
      : "No host has connected yet. Start an agent with this aggregator's address and a client certificate.";
    if (!firstPainted && hosts.length > 0) {
      firstPainted = true;
      // after the frame that shows the table
      requestAnimationFrame(() =>
        setTimeout(() => {
          window.fleetwatchTimings = window.fleetwatchTimings || {};
          if (window.fleetwatchTimings.overviewFirstRenderMs === undefined) {
            window.fleetwatchTimings.overviewFirstRenderMs = performance.now();
            window.fleetwatchTimings.overviewRenderSincePageMs = performance.now() - started;
          }
        }, 0),
      );
    }
  }

  function setHosts(list, how) {
    if (!Array.isArray(list)) return;
    const t0 = performance.now();
    hosts = list;
    updatedAt = Date.now();
    status.replaceChildren();
    updated.textContent = `updated ${new Date(updatedAt).toLocaleTimeString()}${how === "live" ? " (live)" : ""}`;
    paintCounts();
    arranged = arrange(hosts, view);
    paint();
    // what one update costs (counts, filter, sort, the page's rows), for the benches
    window.fleetwatchTimings.overviewLastUpdateMs = performance.now() - t0;
  }

  async function load() {
    try {
      const list = await api.get("/api/fleet/hosts");
      if (!root.isConnected) return;
      setHosts(list, "fetch");
    } catch (e) {
      if (!root.isConnected) return;
      const age = hosts ? ` (showing the hosts as of ${fmtDuration((Date.now() - updatedAt) / 1000)} ago)` : "";
      status.replaceChildren(errorBox(e, `cannot load the hosts${age}`));
    }
  }

  stops.push(onLive("hosts", (m) => setHosts(m.hosts, "live")));
  stops.push(onLive("snapshot", (m) => m.hosts && setHosts(m.hosts, "live")));
  load();

  // "Last seen" ages as time passes even without new data.
  const ticker = setInterval(() => {
    if (hosts && Date.now() - updatedAt > 5000) paint();
  }, 5000);

  return {
    refresh() {
      // the live feed sends the hosts every two seconds; fetch only when it is not doing so
      if (liveState() !== "live" || Date.now() - updatedAt > 10000) load();
    },
    dispose() {
      stops.forEach((f) => f());
      clearInterval(ticker);
      cancelAnimationFrame(scheduled);
    },
  };
}

export default {
  title: "Overview",
  nav: true,
  render,
};
