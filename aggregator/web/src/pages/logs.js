// The Logs page: a search over the time range with a label selector, a line filter (contains,
// does not contain, regex), field filters and a minimum level (`/api/logs/query`, page after
// page by its cursor); the records per level over the range as a small stacked bar chart
// (`/api/logs/counts`); and a live tail of new records matching the same filters (the live
// feed's `logs` topic), newest at the top. The filters live in the URL.

import "../pages.css";
import { api } from "../api.js";
import { onLive, setLogTail } from "../live.js";
import { h, errorBox, fmtNumber } from "../ui.js";
import { ms } from "../kit.js";

const LEVELS = ["trace", "debug", "info", "warn", "error", "critical"];
const LEVEL_COLORS = {
  critical: "#9b1c1c",
  error: "#e15759",
  warn: "#f28e2b",
  info: "#4e79a7",
  debug: "#9aa3b1",
  trace: "#c8ccd3",
  unknown: "#bab0ac",
};
const MATCH_MODES = [
  ["contains", "contains"],
  ["not_contains", "does not contain"],
  ["regex", "matches regex"],
  ["not_regex", "does not match regex"],
];
const PAGE_SIZE = 100;
const MAX_ROWS = 5000;
const COUNT_BUCKETS = 90;

// `NAME=VALUE` pairs separated by spaces (`NAME="a value with spaces"` quoted); the ones that
// are not pairs come back in `bad`.
export function parseFields(text) {
  const fields = [];
  const bad = [];
  const re = /\s*([^\s=]+=(?:"(?:[^"\\]|\\.)*"|\S*))|\s*(\S+)/g;
  let m;
  while ((m = re.exec(text)) !== null) {
    if (m[1]) {
      const eq = m[1].indexOf("=");
      let value = m[1].slice(eq + 1);
      if (value.startsWith('"')) value = value.slice(1, -1).replace(/\\(.)/g, "$1");
      fields.push(`${m[1].slice(0, eq)}=${value}`);
    } else if (m[2]) bad.push(m[2]);
    if (re.lastIndex === m.index) re.lastIndex++;
  }
  return { fields, bad };
}

function fieldToken(name, value) {
  return /[\s"]/.test(value) || value === "" ? `${name}="${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"` : `${name}=${value}`;
}

// The log API's filter parameters of the form's values.
function filterParams(f) {
  const p = {};
  if (f.selector.trim()) p.selector = f.selector.trim();
  if (f.text) p[f.match] = [f.text];
  const { fields } = parseFields(f.fields);
  if (fields.length) p.field = fields;
  if (f.level) p.min_level = f.level;
  return p;
}

function timeText(rec) {
  const t = ms(rec.time);
  if (t === null) return rec.time;
  const d = new Date(t);
  const sameDay = d.toDateString() === new Date().toDateString();
  const time = d.toLocaleTimeString([], { hour12: false }) + `.${String(d.getMilliseconds()).padStart(3, "0")}`;
  return sameDay ? time : `${d.toLocaleDateString()} ${time}`;
}

export default {
  title: "Logs",
  nav: true,
  render(root, ctx) {
    const p = ctx.params;
    const form = {
      selector: p.selector || "",
      text: p.text || "",
      match: MATCH_MODES.some(([m]) => m === p.match) ? p.match : "contains",
      fields: p.fields || "",
      level: LEVELS.includes(p.level) ? p.level : "",
    };
    let tail = p.tail === "1";
    let applied = { ...form }; // the filters of the records on screen
    let window_ = null; // {start, end} of the search on screen, kept for its next pages
    let cursor = null;
    let pages = 0;
    let searchSeq = 0;
    let countsSeq = 0;
    let tailCount = 0;
    const expanded = new Set();

    // --- the form -----------------------------------------------------------------------
    const selector = h("input", {
      type: "text",
      value: form.selector,
      spellcheck: "false",
      placeholder: '{host="web-1",service="nginx"}',
      "data-testid": "logs-selector",
      list: "logs-selector-suggestions",
    });
    const suggestions = h("datalist", { id: "logs-selector-suggestions" });
    const match = h(
      "select",
      { "data-testid": "logs-match", title: "How the text filters the lines" },
      MATCH_MODES.map(([m, label]) => h("option", { value: m, selected: m === form.match }, label)),
    );
    const text = h("input", { type: "text", value: form.text, placeholder: "text in the line", "data-testid": "logs-contains" });
    const fields = h("input", {
      type: "text",
      value: form.fields,
      spellcheck: "false",
      placeholder: "trace_id=4bf92f35 user=ana",
      "data-testid": "logs-field",
    });
    const level = h(
      "select",
      { "data-testid": "logs-level" },
      h("option", { value: "" }, "any level"),
      LEVELS.map((l) => h("option", { value: l, selected: l === form.level }, `${l} and above`)),
    );
    const submit = h("button", { type: "submit", class: "primary", "data-testid": "logs-submit" }, "Search");
    const tailButton = h("button", {
      type: "button",
      "data-testid": "logs-tail",
      "aria-pressed": String(tail),
      title: "Show new records matching these filters as they arrive",
      onclick: () => setTail(!tail),
    });
    const formEl = h(
      "form",
      {
        class: "logs-form",
        onsubmit: (ev) => {
          ev.preventDefault();
          apply();
        },
      },
      h("label", {}, "labels", selector, suggestions),
      h("label", {}, "line", match),
      h("label", {}, "text", text),
      h("label", {}, "fields", fields),
      h("label", {}, "level", level),
      submit,
      tailButton,
    );
    const formError = h("div", {});
    const countsBox = h("div", { class: "counts", "data-testid": "logs-counts" });
    const status = h("div", { class: "muted-text", "data-testid": "logs-status" });
    const tailStatus = h("div", {});
    const tbody = h("tbody", {});
    const table = h(
      "table",
      { class: "grid-table log-table", "data-testid": "logs-results" },
      h("thead", {}, h("tr", {}, ["Level", "Time", "Host", "Service", "Message"].map((t) => h("th", {}, t)))),
      tbody,
    );
    const resultError = h("div", {});
    const moreBox = h("div", {});

    root.append(
      h("section", { class: "panel" }, h("div", { class: "toolbar" }, h("h2", {}, "Logs")), formEl, formError),
      h("section", { class: "panel" }, h("div", { class: "toolbar" }, h("h3", {}, "Records per level")), countsBox),
      h("section", { class: "panel" }, h("div", { class: "toolbar" }, status, h("span", { class: "spacer" })), tailStatus, resultError, h("div", { class: "table-wrap" }, table), moreBox),
    );

    function readForm() {
      return { selector: selector.value, text: text.value, match: match.value, fields: fields.value, level: level.value };
    }

    // --- results ------------------------------------------------------------------------
    function fieldsRow(rec) {
      const items = [
        ["time", rec.time],
        ["source", rec.source],
        ...Object.entries(rec.fields || {}),
      ];
      return h(
        "tr",
        { class: "fields-row" },
        h(
          "td",
          { colspan: 5 },
          h(
            "dl",
            { class: "fields", "data-testid": "log-fields" },
            items.flatMap(([k, v], i) => [
              h("dt", {}, k),
              h(
                "dd",
                {},
                String(v),
                i >= 2
                  ? h(
                      "button",
                      {
                        class: "small",
                        title: "Search for records with this field value",
                        onclick: (ev) => {
                          ev.stopPropagation();
                          const token = fieldToken(k, String(v));
                          fields.value = fields.value.trim() ? `${fields.value.trim()} ${token}` : token;
                          apply();
                        },
                      },
                      "filter",
                    )
                  : null,
              ),
            ]),
            Object.keys(rec.fields || {}).length === 0 ? [h("dt", {}, "fields"), h("dd", {}, "none")] : [],
          ),
        ),
      );
    }

    function recordRow(rec, fresh) {
      const key = `${rec.timestamp_ns}|${rec.host}|${rec.source}|${rec.message.length}`;
      const tr = h(
        "tr",
        { class: `log-row${fresh ? " new" : ""}`, "data-testid": "log-row", "data-level": rec.level, title: "click for the fields" },
        h("td", {}, h("span", { class: `lvl lvl-${rec.level}` }, rec.level)),
        h("td", { title: rec.time }, timeText(rec)),
        h("td", {}, rec.host ? h("a", { href: `#/host/${encodeURIComponent(rec.host)}`, onclick: (ev) => ev.stopPropagation() }, rec.host) : ""),
        h("td", {}, rec.service || ""),
        h("td", { class: "msg" }, rec.message),
      );
      tr.addEventListener("click", () => {
        const next = tr.nextSibling;
        if (next && next.classList.contains("fields-row")) {
          next.remove();
          expanded.delete(key);
        } else {
          tr.after(fieldsRow(rec));
          expanded.add(key);
        }
      });
      return tr;
    }

    function rowCount() {
      return tbody.querySelectorAll("tr.log-row").length;
    }

    function drawStatus() {
      const n = rowCount();
      const parts = [];
      if (n === 0) parts.push("no record matches in this range");
      else parts.push(`${fmtNumber(n)} record${n === 1 ? "" : "s"} shown, newest first`);
      if (tailCount) parts.push(`${fmtNumber(tailCount)} from the live tail`);
      status.textContent = parts.join(" · ");
    }

    function drawMore() {
      if (!cursor) {
        moreBox.replaceChildren(rowCount() > 0 ? h("div", { class: "muted-text" }, "end of the records in this range") : "");
        return;
      }
      const b = h("button", { class: "more", "data-testid": "logs-more" }, `more (next ${PAGE_SIZE})`);
      b.addEventListener("click", () => loadPage(false, b));
      moreBox.replaceChildren(b);
    }

    async function loadPage(first, button) {
      const seq = ++searchSeq;
      const params = { ...filterParams(applied), start: window_.start, end: window_.end, limit: PAGE_SIZE, direction: "newest" };
      if (!first) params.cursor = cursor;
      if (button) {
        button.disabled = true;
        button.textContent = "loading…";
      }
      if (first) status.textContent = "searching…";
      try {
        const data = await api.get("/api/logs/query", params);
        if (seq !== searchSeq) return;
        resultError.replaceChildren();
        if (first) {
          tbody.replaceChildren();
          expanded.clear();
          tailCount = 0;
          pages = 0;
        }
        pages++;
        const frag = document.createDocumentFragment();
        for (const rec of data.records) frag.append(recordRow(rec, false));
        tbody.append(frag);
        cursor = data.cursor || null;
      } catch (e) {
        if (seq !== searchSeq) return;
        resultError.replaceChildren(errorBox(e, first ? "the search failed" : "cannot load the next page"));
        if (first) {
          tbody.replaceChildren();
          cursor = null;
        }
      }
      drawStatus();
      drawMore();
    }

    // --- counts -------------------------------------------------------------------------
    function drawCounts(data, start, end) {
      const series = (data.series || []).filter((s) => s.total > 0);
      if (series.length === 0) {
        countsBox.replaceChildren(h("div", { class: "empty" }, "no record matches in this range"));
        return;
      }
      const order = [...LEVELS, "unknown"];
      series.sort((a, b) => order.indexOf(b.level) - order.indexOf(a.level)); // critical at the top
      const n = Math.max(...series.map((s) => s.values.length));
      const totals = new Array(n).fill(0);
      for (const s of series) s.values.forEach(([, c], i) => (totals[i] += c));
      const max = Math.max(1, ...totals);
      const W = 1000;
      const H = 100;
      const bw = W / n;
      const svgNS = "http://www.w3.org/2000/svg";
      const svg = document.createElementNS(svgNS, "svg");
      svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
      svg.setAttribute("preserveAspectRatio", "none");
      svg.setAttribute("height", "90");
      svg.setAttribute("width", "100%");
      svg.style.display = "block";
      svg.setAttribute("role", "img");
      svg.setAttribute("aria-label", "records per level over the range");
      const base = new Array(n).fill(0);
      for (const s of [...series].reverse()) {
        // the least severe at the bottom
        s.values.forEach(([t, c], i) => {
          if (!c) return;
          const hgt = (c / max) * H;
          const r = document.createElementNS(svgNS, "rect");
          r.setAttribute("x", String(i * bw + bw * 0.1));
          r.setAttribute("width", String(bw * 0.8));
          r.setAttribute("y", String(H - base[i] - hgt));
          r.setAttribute("height", String(hgt));
          r.setAttribute("fill", LEVEL_COLORS[s.level] || LEVEL_COLORS.unknown);
          const title = document.createElementNS(svgNS, "title");
          title.textContent = `${new Date(t * 1000).toLocaleString()}: ${c} ${s.level}`;
          r.append(title);
          svg.append(r);
          base[i] += hgt;
        });
      }
      const legend = h(
        "div",
        { class: "legend" },
        series.map((s) =>
          h(
            "a",
            {
              href: "#",
              "data-level": s.level,
              title: `show ${s.level} and above`,
              onclick: (ev) => {
                ev.preventDefault();
                if (LEVELS.includes(s.level)) {
                  level.value = s.level;
                  apply();
                }
              },
            },
            h("span", { class: "sw", style: `background:${LEVEL_COLORS[s.level] || LEVEL_COLORS.unknown}` }),
            `${s.level} ${fmtNumber(s.total)}`,
          ),
        ),
        h("span", { class: "muted-text" }, `peak ${fmtNumber(max)} per ${fmtNumber(data.step)} s`),
      );
      const axis = h(
        "div",
        { class: "row muted-text", style: "justify-content:space-between" },
        h("span", {}, new Date(start * 1000).toLocaleString()),
        h("span", {}, new Date(end * 1000).toLocaleString()),
      );
      countsBox.replaceChildren(h("div", { class: "bars" }, svg, axis), legend);
    }

    async function loadCounts(win) {
      const seq = ++countsSeq;
      const { start, end } = win;
      const step = Math.max(1, Math.ceil((end - start) / COUNT_BUCKETS));
      try {
        const data = await api.get("/api/logs/counts", { ...filterParams(applied), start, end, step });
        if (seq !== countsSeq) return;
        drawCounts(data, start, end);
      } catch (e) {
        if (seq !== countsSeq) return;
        countsBox.replaceChildren(errorBox(e, "cannot count the records"));
      }
    }

    // --- live tail ----------------------------------------------------------------------
    function drawTailButton() {
      tailButton.textContent = tail ? "■ Stop tail" : "▶ Live tail";
      tailButton.className = tail ? "tail-on" : "";
      tailButton.setAttribute("aria-pressed", String(tail));
    }

    function setTail(on) {
      tail = on;
      ctx.setParams({ tail: on ? "1" : "" });
      drawTailButton();
      tailStatus.replaceChildren();
      if (on) {
        setLogTail(filterParams(applied));
        tailStatus.replaceChildren(h("div", { class: "notice" }, "live tail: new records matching these filters appear at the top"));
      } else {
        setLogTail(null);
      }
    }

    function onLogs(msg) {
      if (!tail || !Array.isArray(msg.records) || msg.records.length === 0) return;
      const frag = document.createDocumentFragment();
      // newest at the top: the batch's last record first
      for (let i = msg.records.length - 1; i >= 0; i--) frag.append(recordRow(msg.records[i], true));
      tbody.prepend(frag);
      tailCount += msg.records.length;
      const rows = tbody.querySelectorAll("tr.log-row");
      if (rows.length > MAX_ROWS) {
        for (let i = MAX_ROWS; i < rows.length; i++) {
          const next = rows[i].nextSibling;
          if (next && next.classList.contains("fields-row")) next.remove();
          rows[i].remove();
        }
        // the oldest rows are gone: the next page would leave a gap
        cursor = null;
        drawMore();
      }
      drawStatus();
    }

    function onTailError(msg) {
      if (tail) tailStatus.replaceChildren(errorBox(msg.error || "refused", "the live tail was refused"));
    }

    // --- search -------------------------------------------------------------------------
    function apply() {
      const f = readForm();
      const { bad } = parseFields(f.fields);
      if (bad.length) {
        formError.replaceChildren(errorBox(`fields must be NAME=VALUE (for example trace_id=4bf92f35); not: ${bad.join(", ")}`));
        return;
      }
      formError.replaceChildren();
      applied = f;
      ctx.setParams({ selector: f.selector.trim(), text: f.text, match: f.match === "contains" ? "" : f.match, fields: f.fields.trim(), level: f.level });
      run();
    }

    function run() {
      window_ = ctx.resolved();
      cursor = null;
      moreBox.replaceChildren(); // the last search's next page is no longer wanted
      loadPage(true);
      loadCounts(window_);
      if (tail) setLogTail(filterParams(applied));
    }

    async function loadSuggestions() {
      try {
        const [hosts, services] = await Promise.all([
          api.get("/api/logs/label/host/values"),
          api.get("/api/logs/label/service/values"),
        ]);
        suggestions.replaceChildren(
          ...hosts.map((v) => h("option", { value: `{host="${v}"}` })),
          ...services.map((v) => h("option", { value: `{service="${v}"}` })),
        );
      } catch {
        // suggestions only help typing; the search shows any error in words
      }
    }

    const offs = [onLive("logs", onLogs), onLive("error", onTailError)];
    drawTailButton();
    loadSuggestions();
    run();
    if (tail) setTail(true);

    return {
      refresh({ rangeChanged, ctx: next }) {
        ctx = next;
        // a range change searches again; the refresh tick keeps the pages loaded, the rows
        // opened and the tail, and only renews a first page nobody has looked into
        if (rangeChanged || (!tail && pages <= 1 && expanded.size === 0)) run();
        else loadCounts(ctx.resolved());
      },
      dispose() {
        offs.forEach((off) => off());
        if (tail) setLogTail(null);
      },
    };
  },
};
