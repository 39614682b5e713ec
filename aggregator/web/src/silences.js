// Silences on the Alerts page: label matchers as the API writes them (`host="web-1"`,
// `alertname=~"Host.*"`), the form that creates a silence (`POST /api/fleet/silences`) with a
// preview of the alerts it would mute, and the table of silences with their expiry button.

import { api } from "./api.js";
import { h, errorBox, fmtAgo, fmtTime } from "./ui.js";
import { ms, actionError } from "./kit.js";

const DURATIONS = [
  ["30m", 1800],
  ["1h", 3600],
  ["2h", 7200],
  ["4h", 4 * 3600],
  ["8h", 8 * 3600],
  ["1d", 86400],
  ["3d", 3 * 86400],
  ["7d", 7 * 86400],
];

// `name op "value"`; null when the text is not one matcher.
const MATCHER_RE = /^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$/;

export function parseMatcher(text) {
  const m = MATCHER_RE.exec(text);
  if (!m) return null;
  const value = m[3].replace(/\\(.)/g, "$1");
  let re = null;
  if (m[2] === "=~" || m[2] === "!~") {
    try {
      re = new RegExp(`^(?:${value})$`);
    } catch {
      return null;
    }
  }
  return { name: m[1], op: m[2], value, re };
}

function matcherMatches(m, labels) {
  const v = labels[m.name] ?? "";
  switch (m.op) {
    case "=":
      return v === m.value;
    case "!=":
      return v !== m.value;
    case "=~":
      return m.re.test(v);
    default:
      return !m.re.test(v);
  }
}

// How many of the current (not resolved) alerts all of `parsed` match.
function matchCount(parsed, alerts) {
  return alerts.filter((a) => a.state !== "resolved" && parsed.every((m) => matcherMatches(m, a.labels))).length;
}

// A label as an equality matcher (`name="value"`, quotes and backslashes escaped).
export function equalMatcher(name, value) {
  return `${name}="${String(value).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// The form of a new silence. `opts`: matchers (texts), title, alerts() (the current alerts, for
// the preview), operator (who, prefilled), onCreated(id, durationText), onCancel().
export function silenceForm({ matchers, title, alerts, operator, onCreated, onCancel }) {
  const lines = h("textarea", {
    rows: Math.max(3, matchers.length + 1),
    cols: 50,
    spellcheck: "false",
    "data-testid": "silence-matchers",
    placeholder: 'one matcher a line: host="web-1", alertname=~"Host.*"',
  });
  lines.value = matchers.join("\n");
  const texts = () => lines.value.split("\n").map((s) => s.trim()).filter(Boolean);
  const preview = h("div", { class: "muted-text" });
  const updatePreview = () => {
    const list = texts();
    const parsed = list.map(parseMatcher);
    const bad = list.filter((_, i) => !parsed[i]);
    if (list.length === 0) preview.textContent = "a silence needs at least one matcher";
    else if (bad.length) preview.textContent = `not a matcher like name="value": ${bad.join("; ")}`;
    else preview.textContent = `matches ${plural(matchCount(parsed, alerts()), "current alert")}`;
  };
  lines.addEventListener("input", updatePreview);
  updatePreview();
  const duration = h(
    "select",
    { "data-testid": "silence-duration" },
    DURATIONS.map(([n, s]) => h("option", { value: s, selected: n === "2h" }, n)),
  );
  const by = h("input", { type: "text", value: operator, size: 14, "data-testid": "silence-by" });
  const comment = h("input", { type: "text", size: 40, placeholder: "why (maintenance, known issue…)", "data-testid": "silence-comment" });
  const status = h("div", {});
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "silence-submit" }, "Create silence");
  const form = h(
    "form",
    {
      class: "silence-form",
      "data-testid": "silence-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        if (!by.value.trim()) {
          status.replaceChildren(errorBox('say who silences (the "created by" field)'));
          return;
        }
        submit.disabled = true;
        status.replaceChildren(h("span", { class: "muted-text" }, "creating…"));
        try {
          const res = await api.post("/api/fleet/silences", {
            matchers: texts(),
            durationSeconds: Number(duration.value),
            createdBy: by.value.trim(),
            comment: comment.value,
          });
          onCreated(res.silenceID, duration.selectedOptions[0].textContent);
        } catch (e) {
          submit.disabled = false;
          status.replaceChildren(actionError(e, "cannot create the silence"));
        }
      },
    },
    h("h3", {}, title),
    h("label", { class: "stack" }, "Matchers", lines),
    preview,
    h(
      "div",
      { class: "row" },
      h("label", {}, "for ", duration),
      h("label", {}, "created by ", by),
      h("label", { class: "grow" }, "comment ", comment),
    ),
    h("div", { class: "row" }, submit, h("button", { type: "button", onclick: onCancel }, "Cancel")),
    status,
  );
  return { form, focus: () => comment.focus() };
}

// The silences (expired ones only with `showExpired`); an admin gets an Expire button on the
// others, which calls `onExpire(silence, button)`.
export function silencesTable({ silences, alerts, admin, showExpired, onExpire }) {
  const list = silences.filter((s) => showExpired || s.status !== "expired");
  const head = h(
    "tr",
    {},
    ["Status", "Matchers", "Starts", "Ends", "Created by", "Comment", "Silences"].map((t) => h("th", {}, t)),
    admin ? h("th", {}, "") : null,
  );
  const rows = list.map((s) => {
    const parsed = s.matchers.map(parseMatcher);
    const n = parsed.every(Boolean) ? matchCount(parsed, alerts) : null;
    let action = null;
    if (admin && s.status !== "expired") {
      action = h("button", { class: "small", "data-testid": "silence-expire" }, "Expire");
      action.addEventListener("click", () => onExpire(s, action));
    }
    return h(
      "tr",
      { "data-testid": "silence-row", "data-id": s.id, "data-status": s.status, class: s.status === "expired" ? "dim" : null },
      h("td", {}, h("span", { class: `badge silence-${s.status}` }, s.status)),
      h("td", { class: "wrap" }, h("code", {}, s.matchers.join(", "))),
      h("td", {}, fmtTime(ms(s.startsAt))),
      h("td", { title: fmtTime(ms(s.endsAt)) }, s.status === "expired" ? fmtAgo(ms(s.endsAt)) : fmtTime(ms(s.endsAt))),
      h("td", {}, s.createdBy),
      h("td", { class: "wrap" }, s.comment),
      h("td", { class: "num" }, s.status === "active" && n !== null ? plural(n, "alert") : ""),
      admin ? h("td", {}, action) : null,
    );
  });
  const hidden = silences.length - list.length;
  const empty = h("tr", {}, h("td", { colspan: admin ? 8 : 7, class: "empty" }, hidden ? `no active silence (${hidden} expired)` : "no silence"));
  return h(
    "table",
    { "data-testid": "silences-table", class: "grid-table" },
    h("thead", {}, head),
    h("tbody", {}, rows.length ? rows : empty),
  );
}
