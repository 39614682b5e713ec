// Time charts on uPlot: a Prometheus range result (a matrix) as lines, areas or bars, sized to
// their container and redrawn in the current theme.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h, fmtUnit } from "./ui.js";

const PALETTE = [
  "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

// A series' name: the legend template (`{{host}}`) filled from its labels, or its label set.
export function seriesName(metric, legend) {
  if (legend) return legend.replace(/\{\{\s*(\w+)\s*\}\}/g, (_, k) => metric[k] ?? "");
  const name = metric.__name__ || "";
  const labels = Object.entries(metric)
    .filter(([k]) => k !== "__name__")
    .map(([k, v]) => `${k}="${v}"`)
    .join(", ");
  return labels ? `${name}{${labels}}` : name || "{}";
}

// A matrix (`[{metric, values: [[t, "v"], ...]}]`) as uPlot's columns on one time axis from
// `start` to `end` by `step`, gaps (and values that are not finite numbers) as null.
export function matrixToColumns(matrix, { start, end, step }, legend) {
  const n = Math.floor((end - start) / step) + 1;
  const xs = Array.from({ length: n }, (_, i) => start + i * step);
  const cols = [xs];
  const names = [];
  for (const s of matrix) {
    const col = new Array(n).fill(null);
    for (const [t, v] of s.values) {
      const i = Math.round((t - start) / step);
      if (i < 0 || i >= n) continue;
      const x = parseFloat(v);
      // NaN and ±Inf ("NaN", "+Inf") cannot be drawn: a gap
      col[i] = Number.isFinite(x) ? x : null;
    }
    cols.push(col);
    names.push(seriesName(s.metric, legend));
  }
  return { columns: cols, names };
}

// The theme's colours, read again when the theme changes (charts draw on a canvas, so they do
// not follow CSS by themselves).
let themeCache = { theme: null };
function themeColors() {
  const theme = document.documentElement.dataset.theme;
  if (themeCache.theme !== theme) {
    const css = getComputedStyle(document.documentElement);
    themeCache = {
      theme,
      axis: css.getPropertyValue("--fg-muted").trim() || "#888",
      grid: css.getPropertyValue("--grid").trim() || "rgba(128,128,128,0.15)",
    };
  }
  return themeCache;
}

// Every chart on screen, so that a new theme redraws them.
const liveCharts = new Set();

// Redraws every chart on screen in the current theme.
export function redrawCharts() {
  themeCache = { theme: null };
  for (const c of liveCharts) c.redraw(false, true);
}

function fewPoints(u, si, i0, i1) {
  const col = u.data[si];
  let n = 0;
  for (let i = i0; i <= i1; i++) if (col[i] !== null && col[i] !== undefined && ++n >= 12) return false;
  return true;
}

// The legend at the last point that has a value in any series.
function showLatest(u) {
  const xs = u.data[0] || [];
  for (let i = xs.length - 1; i >= 0; i--) {
    for (let s = 1; s < u.data.length; s++) {
      if (u.data[s][i] !== null && u.data[s][i] !== undefined) {
        u.setLegend({ idx: i }, false);
        return;
      }
    }
  }
}

// Draws the columns into `el` ("line", "area" or "bar"); returns the uPlot instance with a
// `dispose()`. The chart follows the container's width and the theme.
// `min`/`max` pin the y axis (a ratio chart from 0 to 1, say); without them it follows the data.
export function timeChart(el, { columns, names }, { kind = "line", unit, height = 220, min, max } = {}) {
  el.replaceChildren();
  if (names.length === 0) {
    el.append(h("div", { class: "empty" }, "no data in this range"));
    return { dispose() {} };
  }
  const axisColor = () => themeColors().axis;
  const gridColor = () => themeColors().grid;
  const bars = kind === "bar" ? uPlot.paths.bars({ size: [0.8, 20] }) : undefined;
  const opts = {
    width: Math.max(200, el.clientWidth || 600),
    height,
    legend: { show: names.length <= 12 },
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: true } },
    axes: [
      { stroke: axisColor, grid: { stroke: gridColor }, ticks: { stroke: gridColor } },
      {
        stroke: axisColor,
        grid: { stroke: gridColor },
        ticks: { stroke: gridColor },
        size: 76,
        values: (u, ticks) => ticks.map((v) => fmtUnit(v, unit)),
      },
    ],
    hooks: {
      // without the cursor on the chart, the legend shows the latest values
      ready: [showLatest],
      setData: [showLatest],
      setCursor: [(u) => (u.cursor.idx === null || u.cursor.idx === undefined) && showLatest(u)],
    },
    series: [
      {},
      ...names.map((name, i) => ({
        label: name,
        stroke: color(i),
        width: 1.5,
        fill: kind === "area" || kind === "bar" ? `${color(i)}55` : undefined,
        paths: bars,
        value: (u, v) => fmtUnit(v, unit),
        spanGaps: false,
        // a line needs two neighbouring points: sparse data (a host that just started, a
        // series with gaps) is drawn as dots too
        points: { show: fewPoints, size: 5 },
      })),
    ],
  };
  if (min !== undefined || max !== undefined) {
    opts.scales.y = {
      range: (u, lo, hi) => {
        const bottom = min ?? Math.min(lo ?? 0, 0);
        const top = hi === null || hi === undefined || hi <= bottom ? bottom + 1 : hi + (hi - bottom) * 0.05;
        return [bottom, max ?? top];
      },
    };
  }
  const plot = new uPlot(opts, columns, el);
  liveCharts.add(plot);
  const resize = new ResizeObserver(() => {
    const w = el.clientWidth;
    if (w > 0 && Math.abs(w - plot.width) > 2) plot.setSize({ width: w, height });
  });
  resize.observe(el);
  plot.dispose = () => {
    resize.disconnect();
    liveCharts.delete(plot);
    plot.destroy();
  };
  return plot;
}

// Several matrices on the same range as one set of columns (the first column is time).
export function mergeColumns(parts) {
  if (parts.length === 0) return { columns: [[]], names: [] };
  const columns = [parts[0].columns[0]];
  const names = [];
  for (const p of parts) {
    columns.push(...p.columns.slice(1));
    names.push(...p.names);
  }
  return { columns, names };
}

// Draws into `el` and keeps the chart across refreshes: new data with the same series goes
// into the existing chart (no flicker), anything else builds it again. `holder.plot` is the
// chart; dispose it with `holder.plot.dispose()`.
export function updateChart(holder, el, data, opts) {
  const p = holder.plot;
  const same =
    p &&
    p.series &&
    p.series.length === data.names.length + 1 &&
    data.names.every((n, i) => p.series[i + 1].label === n) &&
    el.contains(p.root);
  if (same) {
    p.setData(data.columns);
    return p;
  }
  if (p) p.dispose();
  holder.plot = timeChart(el, data, opts);
  return holder.plot;
}
