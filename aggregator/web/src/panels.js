// Dashboard panels from configuration: each panel runs its PromQL queries and draws them as a
// time chart (line, area, bar over `/api/v1/query_range`), a stat (the latest value, colored
// by the thresholds), a gauge (an SVG arc between min and max with the thresholds along it) or
// a table (an instant query's series: labels and value, sortable). Each panel shows its own
// errors in words and exports the data it shows as CSV or JSON.

import { api } from "./api.js";
import { h, errorBox, fmtUnit, download, toCsv } from "./ui.js";
import { matrixToColumns, mergeColumns, seriesName, updateChart } from "./chart.js";
import { sortableTable } from "./kit.js";

const TIME_KINDS = ["line", "area", "bar"];
const NAMED_COLORS = {
  green: "#2e9e4f",
  red: "#d64545",
  orange: "#e8892b",
  yellow: "#d9b51c",
  blue: "#3b7dd8",
  purple: "#9b59b6",
  grey: "#8a93a0",
  gray: "#8a93a0",
};

function cssColor(c) {
  return NAMED_COLORS[String(c).toLowerCase()] || c;
}

// The thresholds from the lowest; a threshold without a value is the base color.
function sortedThresholds(thresholds) {
  return [...(thresholds || [])]
    .map((t) => ({ value: t.value === null || t.value === undefined ? -Infinity : Number(t.value), color: cssColor(t.color) }))
    .sort((a, b) => a.value - b.value);
}

// The color of the highest threshold at or below `v`; null when none applies.
export function thresholdColor(thresholds, v) {
  if (v === null || v === undefined || Number.isNaN(v)) return null;
  let color = null;
  for (const t of sortedThresholds(thresholds)) if (v >= t.value) color = t.color;
  return color;
}

function fileName(title, ext) {
  const base = String(title || "panel").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
  return `${base || "panel"}.${ext}`;
}

// One instant query's answer as a list of {metric, value} (a scalar as one unlabeled series).
function instantSeries(data) {
  if (!data) return [];
  if (data.resultType === "scalar") return [{ metric: {}, value: parseFloat(data.result[1]) }];
  if (data.resultType === "vector") return data.result.map((s) => ({ metric: s.metric, value: parseFloat(s.value[1]) }));
  return [];
}

function valueText(v, unit) {
  return Number.isFinite(v) ? fmtUnit(v, unit) : String(v);
}

// --- gauge -----------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const G_START = 150; // degrees, clockwise from the x axis (the bottom left)
const G_SWEEP = 240;

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function polar(cx, cy, r, deg) {
  const a = (deg * Math.PI) / 180;
  return [cx + r * Math.cos(a), cy + r * Math.sin(a)];
}

function arcPath(cx, cy, r, from, to) {
  const [x1, y1] = polar(cx, cy, r, from);
  const [x2, y2] = polar(cx, cy, r, to);
  const large = to - from > 180 ? 1 : 0;
  return `M ${x1.toFixed(2)} ${y1.toFixed(2)} A ${r} ${r} 0 ${large} 1 ${x2.toFixed(2)} ${y2.toFixed(2)}`;
}

export function gaugeSvg(value, { min, max, thresholds, unit }) {
  const cx = 100;
  const cy = 95;
  const frac = (v) => Math.min(1, Math.max(0, (v - min) / (max - min || 1)));
  const deg = (v) => G_START + frac(v) * G_SWEEP;
  const el = svg("svg", { viewBox: "0 0 200 165", role: "img", "aria-label": `gauge ${valueText(value, unit)} between ${min} and ${max}` });
  el.append(
    svg("path", { d: arcPath(cx, cy, 75, G_START, G_START + G_SWEEP), fill: "none", stroke: "var(--border)", "stroke-width": 16, "stroke-linecap": "butt" }),
  );
  // the thresholds as bands outside the track
  const ts = sortedThresholds(thresholds);
  ts.forEach((t, i) => {
    const lo = Math.max(min, t.value);
    const hi = i + 1 < ts.length ? Math.min(max, ts[i + 1].value) : max;
    if (hi <= lo) return;
    el.append(svg("path", { d: arcPath(cx, cy, 88, deg(lo), deg(hi)), fill: "none", stroke: t.color, "stroke-width": 5 }));
  });
  if (Number.isFinite(value)) {
    const to = deg(value);
    if (to > G_START + 0.5) {
      el.append(
        svg("path", {
          d: arcPath(cx, cy, 75, G_START, to),
          fill: "none",
          stroke: thresholdColor(thresholds, value) || "var(--accent)",
          "stroke-width": 16,
        }),
      );
    }
  }
  const text = svg("text", { x: cx, y: cy + 8, "text-anchor": "middle", "font-size": 24 });
  text.textContent = valueText(value, unit);
  const [lx, ly] = polar(cx, cy, 75, G_START);
  const [rx, ry] = polar(cx, cy, 75, G_START + G_SWEEP);
  const lo = svg("text", { x: lx, y: ly + 24, "text-anchor": "middle", "font-size": 11, class: "minmax" });
  lo.textContent = fmtUnit(min, unit);
  const hi = svg("text", { x: rx, y: ry + 24, "text-anchor": "middle", "font-size": 11, class: "minmax" });
  hi.textContent = fmtUnit(max, unit);
  el.append(text, lo, hi);
  return el;
}

function gaugeRange(panel, values) {
  const min = Number.isFinite(panel.min) ? panel.min : 0;
  let max = panel.max;
  if (!Number.isFinite(max)) {
    if (panel.unit === "percent") max = 1;
    else if (panel.unit === "percent100") max = 100;
    else {
      const finite = values.filter(Number.isFinite);
      const tops = sortedThresholds(panel.thresholds).map((t) => t.value).filter(Number.isFinite);
      max = Math.max(min + 1, ...finite.map((v) => v * 1.25), ...tops.map((t) => t * 1.25));
    }
  }
  return { min, max };
}

// --- a panel ---------------------------------------------------------------------------

// The panel's element and its `refresh(range)` and `dispose()`.
export function createPanel(panel) {
  const kind = panel.type;
  const queries = panel.queries || [];
  const width = Math.min(12, Math.max(1, Math.round(panel.width || 6)));
  const body = h("div", { class: `body body-${kind}` });
  const errors = h("div", {});
  const holder = { plot: null }; // the time chart, kept across refreshes
  let exportData = null; // {csv: {columns, rows}, json}
  let seq = 0;

  const csvButton = h("button", { class: "plain", title: "Export this panel's data as CSV", "data-testid": "panel-export-csv", disabled: true }, "CSV");
  const jsonButton = h("button", { class: "plain", title: "Export this panel's data as JSON", "data-testid": "panel-export-json", disabled: true }, "JSON");
  csvButton.addEventListener("click", () => {
    if (exportData) download(fileName(panel.title, "csv"), toCsv(exportData.csv.columns, exportData.csv.rows), "text/csv");
  });
  jsonButton.addEventListener("click", () => {
    if (exportData) download(fileName(panel.title, "json"), `${JSON.stringify(exportData.json, null, 2)}\n`, "application/json");
  });

  const el = h(
    "section",
    { class: `panel dash-panel kind-${kind}`, "data-testid": "panel", "data-title": panel.title || "", "data-type": kind },
    h(
      "header",
      {},
      h("h3", { title: queries.map((q) => q.expr).join("\n") }, panel.title || "(untitled)"),
      csvButton,
      jsonButton,
    ),
    errors,
    body,
  );
  el.style.gridColumn = `span ${width}`;

  function setExport(data) {
    exportData = data;
    csvButton.disabled = !data;
    jsonButton.disabled = !data;
  }

  // Runs every query; the answers that came, and each failure in words.
  async function runAll(path, paramsOf) {
    const settled = await Promise.allSettled(queries.map((q) => api.get(path, paramsOf(q))));
    const ok = [];
    const failed = [];
    settled.forEach((s, i) => {
      if (s.status === "fulfilled") ok.push({ query: queries[i], data: s.value });
      else failed.push(errorBox(s.reason, `query ${JSON.stringify(queries[i].expr)}`));
    });
    return { ok, failed };
  }

  async function drawTime(range) {
    const { ok, failed } = await runAll("/api/v1/query_range", (q) => ({ query: q.expr, start: range.start, end: range.end, step: range.step }));
    const parts = [];
    const jsonOut = [];
    for (const { query, data } of ok) {
      const matrix = data.resultType === "matrix" ? data.result : [];
      parts.push(matrixToColumns(matrix, range, query.legend));
      jsonOut.push({ expr: query.expr, legend: query.legend || null, resultType: data.resultType, result: data.result });
    }
    const merged = mergeColumns(parts);
    return {
      failed,
      draw: () => {
        if (ok.length === 0 || merged.names.length === 0) {
          if (holder.plot) holder.plot.dispose();
          holder.plot = null;
          if (ok.length === 0) body.replaceChildren();
          else body.replaceChildren(h("div", { class: "empty" }, "no data in this range"));
          return;
        }
        updateChart(holder, body, merged, {
          kind,
          unit: panel.unit,
          height: 200,
          min: Number.isFinite(panel.min) ? panel.min : undefined,
          max: Number.isFinite(panel.max) ? panel.max : undefined,
        });
      },
      export: ok.length
        ? {
            csv: {
              columns: [{ key: "time", label: "time" }, ...merged.names.map((n, i) => ({ key: `s${i}`, label: n }))],
              // the times at which some series has a value
              rows: merged.columns[0].flatMap((t, r) => {
                if (merged.names.every((_, i) => merged.columns[i + 1][r] === null)) return [];
                const row = { time: new Date(t * 1000).toISOString() };
                merged.names.forEach((_, i) => (row[`s${i}`] = merged.columns[i + 1][r]));
                return [row];
              }),
            },
            json: { panel: panel.title, type: kind, unit: panel.unit, start: range.start, end: range.end, step: range.step, queries: jsonOut },
          }
        : null,
    };
  }

  async function drawInstant(range) {
    const { ok, failed } = await runAll("/api/v1/query", (q) => ({ query: q.expr, time: range.end }));
    const rows = [];
    const jsonOut = [];
    for (const { query, data } of ok) {
      for (const s of instantSeries(data)) {
        rows.push({ query, metric: s.metric, value: s.value, name: seriesName(s.metric, query.legend) });
      }
      jsonOut.push({ expr: query.expr, legend: query.legend || null, resultType: data.resultType, result: data.result });
    }
    const labelKeys = [...new Set(rows.flatMap((r) => Object.keys(r.metric)))].sort((a, b) =>
      a === "__name__" ? -1 : b === "__name__" ? 1 : a.localeCompare(b),
    );
    const flat = rows.map((r) => {
      const o = { series: r.name, value: r.value };
      if (queries.length > 1) o.query = r.query.legend || r.query.expr;
      for (const k of labelKeys) o[k] = r.metric[k] ?? "";
      return o;
    });
    const csvColumns = [
      ...(queries.length > 1 ? [{ key: "query", label: "query" }] : []),
      { key: "series", label: "series" },
      ...labelKeys.map((k) => ({ key: k, label: k })),
      { key: "value", label: "value" },
    ];
    return {
      failed,
      draw: () => {
        if (ok.length === 0) {
          body.replaceChildren();
          return;
        }
        if (rows.length === 0) {
          body.replaceChildren(h("div", { class: "empty" }, "no data"));
          return;
        }
        if (kind === "stat") body.replaceChildren(drawStat(rows));
        else if (kind === "gauge") body.replaceChildren(drawGauge(rows));
        else body.replaceChildren(drawTable(flat, labelKeys));
      },
      export: ok.length
        ? {
            csv: { columns: csvColumns, rows: flat },
            json: { panel: panel.title, type: kind, unit: panel.unit, time: range.end, queries: jsonOut },
          }
        : null,
    };
  }

  function showName(rows, r) {
    return rows.length > 1 || r.query.legend ? r.name : null;
  }

  function drawStat(rows) {
    return h(
      "div",
      { class: "stat" },
      rows.map((r) => {
        const v = h("div", { class: "value", "data-testid": "stat-value" }, valueText(r.value, panel.unit));
        const c = thresholdColor(panel.thresholds, r.value);
        if (c) v.style.color = c;
        return h("div", { class: "one", title: seriesName(r.metric) }, v, showName(rows, r) ? h("div", { class: "name" }, r.name) : null);
      }),
    );
  }

  function drawGauge(rows) {
    const { min, max } = gaugeRange(panel, rows.map((r) => r.value));
    return h(
      "div",
      { class: "gauge" },
      rows.map((r) =>
        h(
          "div",
          { class: "one", title: seriesName(r.metric), "data-testid": "gauge-value", "data-value": String(r.value) },
          gaugeSvg(r.value, { min, max, thresholds: panel.thresholds, unit: panel.unit }),
          showName(rows, r) ? h("div", { class: "name" }, r.name) : null,
        ),
      ),
    );
  }

  function drawTable(flat, labelKeys) {
    const columns = [
      ...(queries.length > 1 ? [{ key: "query", label: "query" }] : []),
      ...labelKeys.map((k) => ({ key: k, label: k === "__name__" ? "metric" : k })),
      {
        key: "value",
        label: "value",
        num: true,
        render: (r) => {
          const span = h("span", {}, valueText(r.value, panel.unit));
          const c = thresholdColor(panel.thresholds, r.value);
          if (c) span.style.color = c;
          return span;
        },
      },
    ];
    if (labelKeys.length === 0 && queries.length <= 1) columns.unshift({ key: "series", label: "series" });
    return h("div", { class: "table-wrap" }, sortableTable(columns, flat, { testid: "panel-table", sort: { key: "value", desc: true } }));
  }

  async function refresh(range) {
    const mine = ++seq;
    body.classList.add("loading");
    let result;
    try {
      if (queries.length === 0) {
        result = { failed: [errorBox("this panel has no queries")], draw: () => body.replaceChildren(), export: null };
      } else if (TIME_KINDS.includes(kind)) {
        result = await drawTime(range);
      } else if (["stat", "gauge", "table"].includes(kind)) {
        result = await drawInstant(range);
      } else {
        result = { failed: [errorBox(`unknown panel type ${JSON.stringify(kind)} (line, area, bar, stat, gauge or table)`)], draw: () => body.replaceChildren(), export: null };
      }
    } catch (e) {
      result = { failed: [errorBox(e, "this panel failed")], draw: () => body.replaceChildren(), export: null };
    }
    if (mine !== seq) return;
    body.classList.remove("loading");
    errors.replaceChildren(...result.failed);
    try {
      result.draw();
    } catch (e) {
      errors.append(errorBox(e, "this panel cannot be drawn"));
    }
    setExport(result.export);
  }

  return {
    el,
    refresh,
    dispose() {
      seq++;
      if (holder.plot) holder.plot.dispose();
      holder.plot = null;
    },
  };
}
