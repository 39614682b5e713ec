// Small DOM helpers shared by every page: element building, error boxes, number formatting,
// sortable tables and export of a panel's data.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// An error in words, where the data would have been.
export function errorBox(error, what) {
  const msg = error && error.message ? error.message : String(error);
  return h("div", { class: "error", role: "alert", "data-testid": "error" }, what ? `${what}: ${msg}` : msg);
}

export function fmtNumber(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toLocaleString();
}

export function fmtBytes(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let x = v;
  while (Math.abs(x) >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  if (i === 0 && x !== 0 && Math.abs(x) < 1) return `${+x.toPrecision(2)} B`;
  return `${x.toFixed(Math.abs(x) < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

export function fmtPercent(ratio) {
  if (ratio === null || ratio === undefined || Number.isNaN(ratio)) return "–";
  return `${(ratio * 100).toFixed(1)}%`;
}

export function fmtAgo(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function fmtTime(ms) {
  return new Date(ms).toLocaleString();
}

// A duration in seconds in words: "350 ms", "42 s", "3m 20s", "2h 5m", "3d 4h".
export function fmtDuration(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 1) return `${fmtNumber(s * 1000)} ms`;
  if (s < 60) return `${fmtNumber(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.round(s % 60)}s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 24) return `${hrs}h ${m % 60}m`;
  return `${Math.floor(hrs / 24)}d ${hrs % 24}h`;
}

// Unit-aware formatting by name: "bytes", "bytes/s", "percent" (a ratio 0..1), "percent100"
// (0..100), "seconds", "ops/s", "short" or plain.
export function fmtUnit(v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  switch (unit) {
    case "bytes":
      return fmtBytes(v);
    case "bytes/s":
      return `${fmtBytes(v)}/s`;
    case "percent":
      return fmtPercent(v);
    case "percent100":
      return v === null || v === undefined || Number.isNaN(v) ? "–" : `${v.toFixed(1)}%`;
    case "ops/s":
      return v === null || v === undefined || Number.isNaN(v) ? "–" : `${fmtNumber(v)}/s`;
    case "seconds":
      return v === null || v === undefined ? "–" : v < 1 ? `${fmtNumber(v * 1000)} ms` : `${fmtNumber(v)} s`;
    default:
      return fmtNumber(v);
  }
}

// Saves `text` as a file named `name` through a download link.
export function download(name, text, type) {
  const blob = new Blob([text], { type });
  const a = h("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  setTimeout(() => {
    URL.revokeObjectURL(a.href);
    a.remove();
  }, 0);
}

function csvCell(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

// Rows of objects to CSV with the given columns (their `key`s, headed by their `label`s).
export function toCsv(columns, rows) {
  const lines = [columns.map((c) => csvCell(c.label || c.key)).join(",")];
  for (const r of rows) lines.push(columns.map((c) => csvCell(r[c.key])).join(","));
  return `${lines.join("\n")}\n`;
}
