// The query explorer: a PromQL expression run as a range query (charted) and as an instant query
// at the range's end (a table), the expression in the URL (`expr=`), the result exportable as
// CSV or JSON, and the query engine's own error message when the expression is wrong.

import { api } from "../api.js";
import { matrixToColumns, updateChart, seriesName } from "../chart.js";
import { h, errorBox, fmtNumber, download, toCsv } from "../ui.js";

// Most series drawn in the chart (the table and the exports hold them all).
const MAX_CHARTED = 100;

function labelsText(metric) {
  return Object.entries(metric || {})
    .filter(([k]) => k !== "__name__")
    .map(([k, v]) => `${k}="${v}"`)
    .join(", ");
}

function rfc3339(secs) {
  return new Date(secs * 1000).toISOString();
}

// The instant result as table rows: {name, labels, value, time}.
function instantRows(data) {
  switch (data.resultType) {
    case "vector":
      return data.result.map((s) => ({
        metric: s.metric,
        name: s.metric.__name__ || "",
        labels: labelsText(s.metric),
        time: s.value[0],
        value: s.value[1],
      }));
    case "scalar":
    case "string":
      return [{ metric: {}, name: `(${data.resultType})`, labels: "", time: data.result[0], value: data.result[1] }];
    case "matrix":
      return data.result.map((s) => {
        const last = s.values[s.values.length - 1] || [null, null];
        return { metric: s.metric, name: s.metric.__name__ || "", labels: labelsText(s.metric), time: last[0], value: last[1] };
      });
    default:
      return [];
  }
}

// The range result in long form for CSV: one row per point, a column per label.
function rangeCsv(matrix) {
  const keys = new Set();
  for (const s of matrix) for (const k of Object.keys(s.metric)) if (k !== "__name__") keys.add(k);
  const labelKeys = [...keys].sort();
  const columns = [
    { key: "__name__", label: "__name__" },
    ...labelKeys.map((k) => ({ key: `l:${k}`, label: k })),
    { key: "time", label: "time" },
    { key: "timestamp", label: "timestamp" },
    { key: "value", label: "value" },
  ];
  const rows = [];
  for (const s of matrix) {
    const base = { __name__: s.metric.__name__ || "" };
    for (const k of labelKeys) base[`l:${k}`] = s.metric[k] ?? "";
    for (const [t, v] of s.values) rows.push({ ...base, time: rfc3339(t), timestamp: t, value: v });
  }
  return toCsv(columns, rows);
}

function render(root, ctx) {
  let alive = true;
  let result = null; // {expr, range, instant, matrix}
  let running = 0; // the run whose answers are still wanted
  let lastTried = null; // the last expression run, even one that failed
  let sortDir = 0; // table order: 0 as returned, 1 ascending, -1 descending by value
  const holder = { plot: null };

  const input = h("textarea", {
    "data-testid": "query-input",
    rows: "2",
    spellcheck: "false",
    autocomplete: "off",
    placeholder: 'PromQL, e.g. rate(node_network_receive_bytes_total{device!="lo"}[5m])   (Enter runs, Shift+Enter adds a line)',
    "aria-label": "PromQL expression",
    onkeydown: (ev) => {
      if (ev.key === "Enter" && !ev.isComposing && (ev.ctrlKey || ev.metaKey || !ev.shiftKey)) {
        ev.preventDefault();
        run();
      }
    },
  });
  input.value = ctx.params.expr || "";
  const runBtn = h("button", { class: "primary", "data-testid": "query-run", onclick: () => run() }, "Run");

  // metric names to insert at the cursor, loaded when first wanted
  const metrics = h(
    "select",
    {
      "aria-label": "Insert a metric name",
      title: "Insert a metric name",
      onfocus: loadMetricNames,
      onmousedown: loadMetricNames,
      onchange: (ev) => {
        const v = ev.target.value;
        ev.target.value = "";
        if (!v) return;
        const at = input.selectionStart ?? input.value.length;
        input.value = input.value.slice(0, at) + v + input.value.slice(input.selectionEnd ?? at);
        input.focus();
        input.selectionStart = input.selectionEnd = at + v.length;
      },
    },
    h("option", { value: "" }, "metrics…"),
  );
  let metricsLoaded = false;
  async function loadMetricNames() {
    if (metricsLoaded) return;
    metricsLoaded = true;
    try {
      const names = await api.get("/api/v1/label/__name__/values");
      metrics.append(...names.map((n) => h("option", { value: n }, n)));
    } catch (e) {
      metricsLoaded = false;
      metrics.title = `cannot list the metric names: ${e.message}`;
    }
  }

  const exportCsv = h("button", { "data-testid": "export-csv", disabled: true, onclick: () => exportAs("csv") }, "Export CSV");
  const exportJson = h("button", { "data-testid": "export-json", disabled: true, onclick: () => exportAs("json") }, "Export JSON");
  const meta = h("span", { class: "query-stats" });
  const status = h("div");
  const chartEl = h("div", { class: "chart", "data-testid": "query-chart" }, h("div", { class: "empty" }, "Run a query to see its chart."));
  const chartNote = h("span", { class: "muted" });
  const tableWrap = h("div", { class: "scroll-x" }, h("div", { class: "empty" }, "Run a query to see its result."));
  const tableNote = h("span", { class: "muted" });

  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Query")),
    h("div", { class: "query-box" }, input, h("div", { class: "stack" }, runBtn, metrics)),
    h("div", { class: "query-meta" }, meta, h("span", { class: "spacer" }), exportCsv, exportJson),
    status,
    h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", {}, "Graph"), chartNote), chartEl),
    h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", {}, "Table"), tableNote), tableWrap),
  );

  function paintTable() {
    if (!result || !result.instant) return;
    const rows = instantRows(result.instant);
    if (sortDir !== 0) rows.sort((a, b) => sortDir * (parseFloat(a.value) - parseFloat(b.value)));
    tableNote.textContent = `${rows.length} ${rows.length === 1 ? "result" : "results"} at ${new Date(result.range.end * 1000).toLocaleTimeString()}`;
    const valueHead = h(
      "th",
      {
        class: "num sortable",
        title: "Sort by value",
        onclick: () => {
          sortDir = sortDir === -1 ? 1 : -1;
          paintTable();
        },
      },
      `Value${sortDir === -1 ? " ▼" : sortDir === 1 ? " ▲" : ""}`,
    );
    const table = h(
      "table",
      { class: "result", "data-testid": "query-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Series"), h("th", {}, "Labels"), valueHead)),
      h(
        "tbody",
        {},
        rows.map((r) =>
          h(
            "tr",
            { "data-testid": "query-row" },
            h("td", {}, r.name || "{}"),
            h("td", { class: "labels" }, r.labels),
            h("td", { class: "num", title: r.value }, fmtValue(r.value)),
          ),
        ),
      ),
    );
    tableWrap.replaceChildren(table);
    if (rows.length === 0) tableWrap.append(h("div", { class: "empty" }, "The expression returned no series at this time."));
  }

  function fmtValue(v) {
    const x = parseFloat(v);
    return Number.isNaN(x) ? String(v) : Math.abs(x) >= 1e15 || (x !== 0 && Math.abs(x) < 1e-6) ? x.toExponential(4) : String(+x.toPrecision(12));
  }

  function paintChart() {
    const matrix = result.matrix || [];
    const shown = matrix.slice(0, MAX_CHARTED);
    chartNote.textContent =
      matrix.length > MAX_CHARTED
        ? `the first ${MAX_CHARTED} of ${fmtNumber(matrix.length, 9)} series (all are in the exports)`
        : `${matrix.length} series`;
    const data = matrixToColumns(shown, result.range);
    updateChart(holder, chartEl, data, { kind: "line", unit: "short", height: 300 });
  }

  // Runs `given` (a refresh runs the last expression again) or what the box holds.
  async function run(given) {
    const expr = (given ?? input.value).trim();
    ctx.setParams({ expr: expr || null });
    if (!expr) {
      status.replaceChildren(errorBox("type a PromQL expression first, for example up or rate(node_cpu_seconds_total[5m])"));
      return;
    }
    lastTried = expr;
    const id = ++running;
    const range = ctx.resolved();
    runBtn.disabled = true;
    meta.textContent = "running…";
    const t0 = performance.now();
    const [r, i] = await Promise.allSettled([
      api.get("/api/v1/query_range", { query: expr, start: range.start, end: range.end, step: range.step }),
      api.get("/api/v1/query", { query: expr, time: range.end }),
    ]);
    if (!alive || id !== running) return;
    runBtn.disabled = false;
    const took = performance.now() - t0;
    const errors = [];
    if (r.status === "rejected") errors.push(r.reason);
    if (i.status === "rejected" && !(r.status === "rejected" && r.reason.message === i.reason.message)) errors.push(i.reason);
    status.replaceChildren(...errors.map((e) => errorBox(e, "the query failed")));
    if (r.status === "rejected" && i.status === "rejected") {
      meta.textContent = "";
      result = null;
      exportCsv.disabled = exportJson.disabled = true;
      if (holder.plot) holder.plot.dispose();
      holder.plot = null;
      chartEl.replaceChildren(h("div", { class: "empty" }, "No result: the query failed (see above)."));
      tableWrap.replaceChildren(h("div", { class: "empty" }, "No result: the query failed (see above)."));
      chartNote.textContent = tableNote.textContent = "";
      return;
    }
    result = {
      expr,
      range,
      matrix: r.status === "fulfilled" && r.value.resultType === "matrix" ? r.value.result : null,
      instant: i.status === "fulfilled" ? i.value : null,
    };
    exportCsv.disabled = exportJson.disabled = false;
    meta.textContent = `last ${ctx.range}, step ${range.step}s · answered in ${fmtNumber(took)} ms`;
    if (result.matrix) paintChart();
    else {
      if (holder.plot) holder.plot.dispose();
      holder.plot = null;
      chartEl.replaceChildren(h("div", { class: "empty" }, "No graph for this result."));
    }
    if (result.instant) paintTable();
    else tableWrap.replaceChildren();
  }

  function exportAs(kind) {
    if (!result) return;
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    if (kind === "json") {
      const doc = {
        expr: result.expr,
        start: rfc3339(result.range.start),
        end: rfc3339(result.range.end),
        step_seconds: result.range.step,
        range: result.matrix,
        instant: result.instant,
      };
      download(`query-${stamp}.json`, JSON.stringify(doc, null, 2), "application/json");
    } else if (result.matrix) {
      download(`query-${stamp}.csv`, rangeCsv(result.matrix), "text/csv");
    } else {
      const rows = instantRows(result.instant).map((r) => ({ series: seriesName(r.metric), time: r.time ? rfc3339(r.time) : "", value: r.value }));
      download(`query-${stamp}.csv`, toCsv([{ key: "series" }, { key: "time" }, { key: "value" }], rows), "text/csv");
    }
  }

  if (input.value.trim()) run();
  else input.focus();

  return {
    refresh() {
      // the last expression run, not what is being typed
      const last = result ? result.expr : lastTried;
      if (last) run(last);
    },
    dispose() {
      alive = false;
      if (holder.plot) holder.plot.dispose();
    },
  };
}

export default {
  title: "Query",
  nav: true,
  render,
};
