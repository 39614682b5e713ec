// Helpers of the alerts, logs and dashboards pages: sortable tables, label sets in words,
// errors of actions (a viewer's 403 in words), times from the API and small timing tools.

import { h, errorBox } from "./ui.js";

// A label set as `name="value"` pairs, `skip` left out.
export function labelText(labels, skip = []) {
  return Object.entries(labels || {})
    .filter(([k]) => !skip.includes(k))
    .map(([k, v]) => `${k}="${v}"`)
    .join(", ");
}

// Small chips for the labels that a table does not show in their own columns.
export function labelChips(labels, skip = []) {
  return h(
    "span",
    { class: "chips" },
    Object.entries(labels || {})
      .filter(([k]) => !skip.includes(k))
      .map(([k, v]) => h("span", { class: "chip", title: `${k}="${v}"` }, `${k}=${v}`)),
  );
}

// Milliseconds since the epoch of an RFC 3339 time from the API (null for none).
export function ms(rfc) {
  if (!rfc) return null;
  const t = Date.parse(rfc);
  return Number.isNaN(t) ? null : t;
}

// An error of an action the user asked for, in words; a 403 says that the token is a viewer's.
export function actionError(e, what) {
  if (e && e.status === 403) {
    return errorBox(`${what}: refused: this needs the admin token, and the token you signed in with is a viewer's (${e.message})`);
  }
  return errorBox(e, what);
}

// Calls `fn` once, `wait` ms after the last of a burst of calls.
export function debounce(fn, wait) {
  let t = null;
  const d = (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), wait);
  };
  d.cancel = () => clearTimeout(t);
  return d;
}

function compare(a, b) {
  const na = typeof a === "number" && !Number.isNaN(a);
  const nb = typeof b === "number" && !Number.isNaN(b);
  if (na && nb) return a - b;
  if (na) return -1;
  if (nb) return 1;
  if (a === null || a === undefined || a === "") return b === null || b === undefined || b === "" ? 0 : 1;
  if (b === null || b === undefined || b === "") return -1;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

// A table sorted by a click on a header (again: the other way). `columns`: [{key, label, num,
// render(row) → node or text, value(row) → the sort key}]; `rows`: objects. `opts.sort`:
// {key, desc}; `opts.onSort(sort)` is told of changes (to keep them in the URL);
// `opts.rowAttrs(row)` gives each row's attributes; `opts.testid` names the table.
export function sortableTable(columns, rows, opts = {}) {
  let sort = opts.sort || null;
  const table = h("table", { class: "grid-table", "data-testid": opts.testid });
  const thead = h("thead");
  const tbody = h("tbody");
  table.append(thead, tbody);
  const valueOf = (c, r) => (c.value ? c.value(r) : r[c.key]);
  function draw() {
    thead.replaceChildren(
      h(
        "tr",
        {},
        columns.map((c) =>
          h(
            "th",
            {
              class: `sortable${c.num ? " num" : ""}`,
              "data-testid": opts.testid ? `${opts.testid}-sort-${c.key}` : null,
              "aria-sort": sort && sort.key === c.key ? (sort.desc ? "descending" : "ascending") : null,
              onclick: () => {
                sort = sort && sort.key === c.key ? { key: c.key, desc: !sort.desc } : { key: c.key, desc: !!c.num };
                if (opts.onSort) opts.onSort(sort);
                draw();
              },
            },
            c.label,
            sort && sort.key === c.key ? (sort.desc ? " ▾" : " ▴") : "",
          ),
        ),
      ),
    );
    let list = rows;
    if (sort) {
      const col = columns.find((c) => c.key === sort.key);
      if (col) {
        list = [...rows].sort((a, b) => compare(valueOf(col, a), valueOf(col, b)) * (sort.desc ? -1 : 1));
      }
    }
    if (list.length === 0) {
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, opts.empty || "nothing to show")));
      return;
    }
    tbody.replaceChildren(
      ...list.map((r) =>
        h(
          "tr",
          opts.rowAttrs ? opts.rowAttrs(r) : {},
          columns.map((c) => {
            const v = c.render ? c.render(r) : valueOf(c, r);
            return h("td", { class: c.num ? "num" : c.class || null }, v === null || v === undefined ? "" : v);
          }),
        ),
      ),
    );
  }
  draw();
  return table;
}
