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
// `start` to `end` by `step`, gaps as null.
export function matrixToColumns(matrix, { start, end, step }, legend) {
  const n = Math.floor((end - start) / step) + 1;
  const xs = Array.from({ length: n }, (_, i) => start + i * step);
  const cols = [xs];
  const names = [];
  for (const s of matrix) {
    const col = new Array(n).fill(null);
    for (const [t, v] of s.values) {
      const i = Math.round((t - start) / step);
      if (i >= 0 && i < n) col[i] = parseFloat(v);
    }
    cols.push(col);
    names.push(seriesName(s.metric, legend));
  }
  return { columns: cols, names };
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// Draws the columns into `el` ("line", "area" or "bar"); returns the uPlot instance with a
// `dispose()`. The chart follows the container's width.
export function timeChart(el, { columns, names }, { kind = "line", unit, height = 220 } = {}) {
  el.replaceChildren();
  if (names.length === 0) {
    el.append(h("div", { class: "empty" }, "no data in this range"));
    return { dispose() {} };
  }
  const axisColor = cssVar("--fg-muted") || "#888";
  const gridColor = cssVar("--grid") || "rgba(128,128,128,0.15)";
  const bars = kind === "bar" ? uPlot.paths.bars({ size: [0.8, 20] }) : undefined;
  const opts = {
    width: Math.max(200, el.clientWidth || 600),
    height,
    legend: { show: names.length <= 12 },
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: true } },
    axes: [
      { stroke: axisColor, grid: { stroke: gridColor } },
      {
        stroke: axisColor,
        grid: { stroke: gridColor },
        size: 70,
        values: (u, ticks) => ticks.map((v) => fmtUnit(v, unit)),
      },
    ],
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
        points: { show: false },
      })),
    ],
  };
  const plot = new uPlot(opts, columns, el);
  const resize = new ResizeObserver(() => {
    const w = el.clientWidth;
    if (w > 0 && Math.abs(w - plot.width) > 2) plot.setSize({ width: w, height });
  });
  resize.observe(el);
  plot.dispose = () => {
    resize.disconnect();
    plot.destroy();
  };
  return plot;
}
