// The Alerts page: firing, pending, acknowledged and silenced alerts (`/api/fleet/alerts`),
// kept current by the live feed's `alert` and `silence` messages; acknowledge and silence them
// (admin only: a viewer sees no buttons, and a refusal is shown in words anyway); the silences,
// expired from here; and the alert history within the time range.

import "../pages.css";
import { api } from "../api.js";
import { onLive } from "../live.js";
import { h, errorBox, fmtNumber, fmtAgo, fmtTime } from "../ui.js";
import { labelChips, labelText, ms, actionError, debounce } from "../kit.js";

const OPERATOR_KEY = "fleetwatch.operator";
const STATES = ["firing", "pending", "acknowledged", "silenced"];
const STATE_ORDER = { firing: 0, pending: 1, acknowledged: 2, silenced: 3, resolved: 4 };
const SEVERITY_ORDER = { critical: 0, warning: 1, info: 2 };
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
const HISTORY_PAGE = 200;
const ALERTS_PAGE = 300;

// What the page calls an alert's state: muted (by a silence or an inhibition) before
// acknowledged before the rule's own state.
export function displayState(a) {
  if (a.state === "resolved") return "resolved";
  if (a.muted) return "silenced";
  if (a.acknowledged) return "acknowledged";
  return a.state;
}

function operator() {
  return localStorage.getItem(OPERATOR_KEY) || "admin";
}

// `name op "value"` as the API's matchers are written; null when the line is not one.
const MATCHER_RE = /^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$/;

function parseMatcher(text) {
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

function quote(v) {
  return `"${String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

export default {
  title: "Alerts",
  nav: true,
  render(root, ctx) {
    const admin = ctx.role === "admin";
    let alerts = [];
    let silences = [];
    let history = [];
    let loadError = null;
    let silencesError = null;
    let historyError = null;
    let historyShown = HISTORY_PAGE;
    let alertsShown = ALERTS_PAGE;
    let drawPending = 0;
    let resolved = ctx.resolved();
    const changed = new Set(); // fingerprints changed by the live feed since the last draw
    let filterText = ctx.params.q || "";
    let stateFilter = new Set((ctx.params.states || "").split(",").filter((s) => STATES.includes(s)));
    let showExpired = ctx.params.expired === "1";

    // --- layout -------------------------------------------------------------------------
    const summary = h("div", { class: "alert-summary" });
    const notice = h("div", { class: "notice-area" });
    const filterInput = h("input", {
      type: "search",
      placeholder: "filter by label or text",
      value: filterText,
      "data-testid": "alerts-filter",
      oninput: (ev) => {
        filterText = ev.target.value;
        ctx.setParams({ q: filterText });
        drawAlerts();
      },
    });
    const stateToggles = h(
      "span",
      { class: "toggles" },
      STATES.map((s) =>
        h(
          "label",
          { class: `toggle state-${s}` },
          h("input", {
            type: "checkbox",
            checked: stateFilter.has(s),
            onchange: (ev) => {
              if (ev.target.checked) stateFilter.add(s);
              else stateFilter.delete(s);
              ctx.setParams({ states: [...stateFilter].join(",") });
              drawAlerts();
            },
          }),
          s,
        ),
      ),
    );
    const operatorInput = admin
      ? h(
          "label",
          { class: "operator", title: "Who acknowledges and silences, as the history records it" },
          "acting as ",
          h("input", {
            type: "text",
            value: operator(),
            size: 12,
            "data-testid": "alerts-operator",
            onchange: (ev) => {
              const v = ev.target.value.trim();
              if (v) localStorage.setItem(OPERATOR_KEY, v);
              else ev.target.value = operator();
            },
          }),
        )
      : h("span", { class: "muted-text" }, "read-only: sign in with the admin token to acknowledge or silence");
    const alertsBox = h("div", { class: "table-wrap" });
    const resolvedBox = h("div", {});
    const formArea = h("div", {});
    const silencesBox = h("div", { class: "table-wrap" });
    const historyBox = h("div", { class: "table-wrap" });

    root.append(
      h(
        "section",
        { class: "panel" },
        h(
          "div",
          { class: "toolbar" },
          h("h2", {}, "Alerts"),
          summary,
          h("span", { class: "spacer" }),
          filterInput,
          stateToggles,
          operatorInput,
        ),
        notice,
        alertsBox,
        resolvedBox,
      ),
      h(
        "section",
        { class: "panel" },
        h(
          "div",
          { class: "toolbar" },
          h("h2", {}, "Silences"),
          h("span", { class: "spacer" }),
          h(
            "label",
            { class: "toggle" },
            h("input", {
              type: "checkbox",
              checked: showExpired,
              onchange: (ev) => {
                showExpired = ev.target.checked;
                ctx.setParams({ expired: showExpired ? "1" : "" });
                drawSilences();
              },
            }),
            "show expired",
          ),
          admin ? h("button", { onclick: () => openSilenceForm([]), "data-testid": "silence-new" }, "New silence") : null,
        ),
        formArea,
        silencesBox,
      ),
      h(
        "section",
        { class: "panel" },
        h("div", { class: "toolbar" }, h("h2", {}, "History"), h("span", { class: "muted-text", "data-role": "history-range" })),
        historyBox,
      ),
    );

    function flash(node) {
      notice.replaceChildren(node);
    }

    // --- alerts -------------------------------------------------------------------------
    function visible(a) {
      const st = displayState(a);
      if (st === "resolved") return false;
      if (stateFilter.size > 0 && !stateFilter.has(st)) return false;
      if (filterText) {
        const hay = `${labelText(a.labels)} ${Object.values(a.annotations || {}).join(" ")}`.toLowerCase();
        if (!filterText.toLowerCase().split(/\s+/).every((w) => hay.includes(w))) return false;
      }
      return true;
    }

    function sortKey(a) {
      return [
        STATE_ORDER[displayState(a)] ?? 9,
        SEVERITY_ORDER[a.labels.severity] ?? 5,
        -(ms(a.firedAt) || ms(a.activeAt) || 0),
      ];
    }

    function byKey(x, y) {
      const a = sortKey(x);
      const b = sortKey(y);
      for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i];
      return 0;
    }

    function stateCell(a) {
      const st = displayState(a);
      let detail = "";
      if (st === "silenced") detail = a.muted === "inhibited" ? "inhibited by another alert" : `by ${a.muted}`;
      else if (st === "acknowledged" && a.acknowledged) {
        detail = `by ${a.acknowledged.by}${a.acknowledged.at ? `, ${fmtAgo(ms(a.acknowledged.at))}` : ""}`;
      }
      return h(
        "span",
        { class: `badge state-${st}`, title: detail || st },
        st === "silenced" && a.muted === "inhibited" ? "inhibited" : st,
        detail && st === "acknowledged" ? h("small", {}, ` ${detail}`) : null,
      );
    }

    async function acknowledge(a, button) {
      button.disabled = true;
      try {
        await api.post(`/api/fleet/alerts/${encodeURIComponent(a.fingerprint)}/ack`, { by: operator(), comment: "" });
        a.acknowledged = { by: operator(), at: new Date().toISOString(), comment: "" };
        flash(h("div", { class: "notice" }, `acknowledged ${a.labels.alertname || a.fingerprint}: no repeat notifications until it resolves`));
        drawAlerts();
        reloadSoon();
      } catch (e) {
        button.disabled = false;
        flash(actionError(e, `cannot acknowledge ${a.labels.alertname || a.fingerprint}`));
      }
    }

    function alertRow(a) {
      const st = displayState(a);
      const since = st === "pending" ? ms(a.activeAt) : ms(a.firedAt) || ms(a.activeAt);
      const summaryText = (a.annotations && (a.annotations.summary || a.annotations.description)) || "";
      const actions = [];
      if (admin) {
        if (a.state === "firing" && !a.acknowledged && !a.muted) {
          const b = h("button", { class: "small", "data-testid": "alert-ack", title: "Stop repeat notifications until it resolves" }, "Acknowledge");
          b.addEventListener("click", () => acknowledge(a, b));
          actions.push(b);
        }
        actions.push(
          h(
            "button",
            {
              class: "small",
              "data-testid": "alert-silence",
              title: "Silence alerts with these labels",
              onclick: () => openSilenceForm(Object.entries(a.labels).map(([k, v]) => `${k}=${quote(v)}`), a),
            },
            "Silence…",
          ),
        );
      }
      const hostLink = a.labels.host
        ? h("a", { href: `#/host/${encodeURIComponent(a.labels.host)}` }, a.labels.host)
        : "";
      return h(
        "tr",
        {
          "data-testid": "alert-row",
          "data-fingerprint": a.fingerprint,
          "data-state": st,
          class: changed.has(a.fingerprint) ? "changed" : null,
        },
        h("td", {}, stateCell(a)),
        h(
          "td",
          { class: "wrap" },
          h("strong", {}, a.labels.alertname || "(no alertname)"),
          " ",
          labelChips(a.labels, ["alertname", "severity", "host"]),
        ),
        h("td", {}, h("span", { class: `sev sev-${a.labels.severity || "none"}` }, a.labels.severity || "")),
        h("td", {}, hostLink),
        h("td", { class: "wrap", title: (a.annotations && a.annotations.description) || "" }, summaryText),
        h("td", { class: "num" }, fmtNumber(parseFloat(a.value))),
        h("td", { title: since ? fmtTime(since) : "" }, since ? fmtAgo(since) : "–"),
        admin ? h("td", {}, h("div", { class: "actions" }, actions)) : null,
      );
    }

    function drawAlerts() {
      if (loadError) {
        alertsBox.replaceChildren(errorBox(loadError, "cannot load the alerts"));
        return;
      }
      const counts = { firing: 0, pending: 0, acknowledged: 0, silenced: 0 };
      for (const a of alerts) {
        const st = displayState(a);
        if (st in counts) counts[st]++;
      }
      summary.replaceChildren(
        ...STATES.map((s) => h("span", { class: `count state-${s}`, "data-testid": `alerts-count-${s}` }, `${counts[s]} ${s}`)),
      );
      const rows = alerts.filter(visible).sort(byKey);
      const head = h(
        "tr",
        {},
        ["State", "Alert", "Severity", "Host", "Summary", "Value", "Since"].map((t) => h("th", { class: t === "Value" ? "num" : null }, t)),
        admin ? h("th", {}, "") : null,
      );
      const body = rows.length
        ? rows.slice(0, alertsShown).map(alertRow)
        : [
            h(
              "tr",
              {},
              h(
                "td",
                { colspan: admin ? 8 : 7, class: "empty" },
                alerts.some((a) => displayState(a) !== "resolved") ? "no alert matches the filter" : "no alert is pending or firing",
              ),
            ),
          ];
      alertsBox.replaceChildren(h("table", { "data-testid": "alerts-table", class: "grid-table" }, h("thead", {}, head), h("tbody", {}, body)));
      if (rows.length > alertsShown) {
        alertsBox.append(
          h(
            "button",
            {
              class: "more",
              onclick: () => {
                alertsShown += ALERTS_PAGE;
                drawAlerts();
              },
            },
            `show more (${rows.length - alertsShown} not shown)`,
          ),
        );
      }
      changed.clear();

      const gone = alerts.filter((a) => a.state === "resolved").sort((x, y) => (ms(y.resolvedAt) || 0) - (ms(x.resolvedAt) || 0));
      resolvedBox.replaceChildren();
      if (gone.length) {
        resolvedBox.append(
            h(
              "details",
              { class: "resolved" },
              h("summary", {}, `${gone.length} recently resolved`),
              h(
                "table",
                { class: "grid-table" },
                h("tbody", {}, gone.map((a) =>
                  h(
                    "tr",
                    { class: "resolved-row", "data-fingerprint": a.fingerprint },
                    h("td", {}, h("span", { class: "badge state-resolved" }, "resolved")),
                    h("td", {}, h("strong", {}, a.labels.alertname || ""), " ", labelChips(a.labels, ["alertname"])),
                    h("td", { title: a.resolvedAt ? fmtTime(ms(a.resolvedAt)) : "" }, a.resolvedAt ? fmtAgo(ms(a.resolvedAt)) : ""),
                  ),
                )),
              ),
            ),
        );
      }
    }

    async function loadAlerts() {
      try {
        const data = await api.get("/api/fleet/alerts");
        alerts = data.alerts || [];
        loadError = null;
      } catch (e) {
        loadError = e;
      }
      drawAlerts();
    }

    // --- silences -----------------------------------------------------------------------
    let formAlert = null;

    function openSilenceForm(matchers, alert) {
      formAlert = alert || null;
      const lines = h("textarea", {
        rows: Math.max(3, matchers.length + 1),
        cols: 50,
        spellcheck: "false",
        "data-testid": "silence-matchers",
        placeholder: 'one matcher a line: host="web-1", alertname=~"Host.*"',
      });
      lines.value = matchers.join("\n");
      const preview = h("div", { class: "muted-text" });
      const updatePreview = () => {
        const texts = lines.value.split("\n").map((s) => s.trim()).filter(Boolean);
        const parsed = texts.map(parseMatcher);
        const bad = texts.filter((_, i) => !parsed[i]);
        if (texts.length === 0) preview.textContent = "a silence needs at least one matcher";
        else if (bad.length) preview.textContent = `not a matcher like name="value": ${bad.join("; ")}`;
        else {
          const n = alerts.filter((a) => a.state !== "resolved" && parsed.every((m) => matcherMatches(m, a.labels))).length;
          preview.textContent = `matches ${n} current alert${n === 1 ? "" : "s"}`;
        }
      };
      lines.addEventListener("input", updatePreview);
      updatePreview();
      const duration = h(
        "select",
        { "data-testid": "silence-duration" },
        DURATIONS.map(([n, s]) => h("option", { value: s, selected: n === "2h" }, n)),
      );
      const by = h("input", { type: "text", value: operator(), size: 14, "data-testid": "silence-by" });
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
            const list = lines.value.split("\n").map((s) => s.trim()).filter(Boolean);
            if (!by.value.trim()) {
              status.replaceChildren(errorBox("say who silences (the \"created by\" field)"));
              return;
            }
            submit.disabled = true;
            status.replaceChildren(h("span", { class: "muted-text" }, "creating…"));
            try {
              const res = await api.post("/api/fleet/silences", {
                matchers: list,
                durationSeconds: Number(duration.value),
                createdBy: by.value.trim(),
                comment: comment.value,
              });
              formArea.replaceChildren();
              flash(h("div", { class: "notice" }, `silence ${res.silenceID} created for ${duration.selectedOptions[0].textContent}`));
              await Promise.all([loadSilences(), loadAlerts()]);
            } catch (e) {
              submit.disabled = false;
              status.replaceChildren(actionError(e, "cannot create the silence"));
            }
          },
        },
        h("h3", {}, formAlert ? `Silence ${formAlert.labels.alertname || "this alert"}` : "New silence"),
        h("label", { class: "stack" }, "Matchers", lines),
        preview,
        h(
          "div",
          { class: "row" },
          h("label", {}, "for ", duration),
          h("label", {}, "created by ", by),
          h("label", { class: "grow" }, "comment ", comment),
        ),
        h(
          "div",
          { class: "row" },
          submit,
          h("button", { type: "button", onclick: () => formArea.replaceChildren() }, "Cancel"),
        ),
        status,
      );
      formArea.replaceChildren(form);
      form.scrollIntoView({ block: "nearest" });
      comment.focus();
    }

    async function expire(s, button) {
      button.disabled = true;
      try {
        await api.del(`/api/fleet/silences/${encodeURIComponent(s.id)}`);
        flash(h("div", { class: "notice" }, `silence ${s.id} expired`));
        await Promise.all([loadSilences(), loadAlerts()]);
      } catch (e) {
        button.disabled = false;
        flash(actionError(e, `cannot expire silence ${s.id}`));
      }
    }

    function drawSilences() {
      if (silencesError) {
        silencesBox.replaceChildren(errorBox(silencesError, "cannot load the silences"));
        return;
      }
      const list = silences.filter((s) => showExpired || s.status !== "expired");
      const head = h(
        "tr",
        {},
        ["Status", "Matchers", "Starts", "Ends", "Created by", "Comment", "Silences"].map((t) => h("th", {}, t)),
        admin ? h("th", {}, "") : null,
      );
      const rows = list.map((s) => {
        const parsed = s.matchers.map(parseMatcher);
        const n = parsed.every(Boolean)
          ? alerts.filter((a) => a.state !== "resolved" && parsed.every((m) => matcherMatches(m, a.labels))).length
          : null;
        let action = null;
        if (admin && s.status !== "expired") {
          const b = h("button", { class: "small", "data-testid": "silence-expire" }, "Expire");
          b.addEventListener("click", () => expire(s, b));
          action = b;
        }
        return h(
          "tr",
          { "data-testid": "silence-row", "data-id": s.id, "data-status": s.status, class: s.status === "expired" ? "dim" : null },
          h("td", {}, h("span", { class: `badge silence-${s.status}` }, s.status)),
          h("td", { class: "wrap" }, h("code", {}, s.matchers.join(", "))),
          h("td", { title: fmtTime(ms(s.startsAt)) }, fmtTime(ms(s.startsAt))),
          h("td", { title: fmtTime(ms(s.endsAt)) }, s.status === "expired" ? fmtAgo(ms(s.endsAt)) : fmtTime(ms(s.endsAt))),
          h("td", {}, s.createdBy),
          h("td", { class: "wrap" }, s.comment),
          h("td", { class: "num" }, s.status === "active" && n !== null ? `${n} alert${n === 1 ? "" : "s"}` : ""),
          admin ? h("td", {}, action) : null,
        );
      });
      const hidden = silences.length - list.length;
      silencesBox.replaceChildren(
        h(
          "table",
          { "data-testid": "silences-table", class: "grid-table" },
          h("thead", {}, head),
          h(
            "tbody",
            {},
            rows.length
              ? rows
              : h("tr", {}, h("td", { colspan: admin ? 8 : 7, class: "empty" }, hidden ? `no active silence (${hidden} expired)` : "no silence")),
          ),
        ),
      );
    }

    async function loadSilences() {
      try {
        silences = await api.get("/api/fleet/silences");
        silencesError = null;
      } catch (e) {
        silencesError = e;
      }
      drawSilences();
    }

    // --- history ------------------------------------------------------------------------
    function drawHistory() {
      const rangeNote = historyBox.parentElement.querySelector("[data-role=history-range]");
      rangeNote.textContent = `${ctx.range ? `last ${ctx.range}` : ""}`;
      if (historyError) {
        historyBox.replaceChildren(errorBox(historyError, "cannot load the alert history"));
        return;
      }
      const from = resolved.start * 1000;
      const inRange = history.filter((e) => (ms(e.at) || 0) >= from);
      const shown = inRange.slice(0, historyShown);
      const rows = shown.map((e) =>
        h(
          "tr",
          { "data-testid": "history-row", "data-event": e.event },
          h("td", { title: e.at }, fmtTime(ms(e.at))),
          h("td", {}, h("span", { class: `badge event-${e.event.split(":")[0]}` }, e.event)),
          h("td", {}, e.labels.alertname || ""),
          h("td", {}, e.labels.host || ""),
          h("td", { class: "wrap" }, labelChips(e.labels, ["alertname", "host"])),
          h("td", { class: "wrap" }, e.detail),
        ),
      );
      historyBox.replaceChildren(
        h(
          "table",
          { "data-testid": "alerts-history", class: "grid-table" },
          h("thead", {}, h("tr", {}, ["Time", "Event", "Alert", "Host", "Labels", "Detail"].map((t) => h("th", {}, t)))),
          h(
            "tbody",
            {},
            rows.length ? rows : h("tr", {}, h("td", { colspan: 6, class: "empty" }, "nothing happened to an alert in this range")),
          ),
        ),
        inRange.length > shown.length
          ? h(
              "button",
              {
                class: "more",
                onclick: () => {
                  historyShown += HISTORY_PAGE;
                  drawHistory();
                },
              },
              `show more (${inRange.length - shown.length} older)`,
            )
          : "",
      );
    }

    async function loadHistory() {
      try {
        history = await api.get("/api/fleet/alerts/history");
        historyError = null;
      } catch (e) {
        historyError = e;
      }
      drawHistory();
    }

    function loadAll() {
      return Promise.all([loadAlerts(), loadSilences(), loadHistory()]);
    }

    // --- live ---------------------------------------------------------------------------
    // An event changes the row at once; the page then asks for the whole list (muting and
    // acknowledgement are only there) once the burst of events is over.
    const reloadSoon = debounce(() => Promise.all([loadAlerts(), loadHistory()]), 700);

    function onAlert(msg) {
      const i = alerts.findIndex((a) => a.fingerprint === msg.fingerprint);
      if (msg.event === "cleared") {
        if (i >= 0) alerts.splice(i, 1);
      } else if (msg.event === "acknowledged") {
        if (i >= 0) alerts[i].acknowledged = { by: msg.detail || "", at: msg.at, comment: "" };
      } else if (i >= 0) {
        const a = alerts[i];
        a.state = msg.state;
        a.value = msg.value;
        a.activeAt = msg.activeAt;
        if (msg.state === "firing" && !a.firedAt) a.firedAt = msg.at;
        if (msg.state === "resolved") a.resolvedAt = msg.at;
      } else if (msg.labels) {
        alerts.push({
          labels: msg.labels,
          annotations: msg.annotations || {},
          state: msg.state,
          activeAt: msg.activeAt,
          value: msg.value,
          fingerprint: msg.fingerprint,
          firedAt: msg.state === "firing" ? msg.at : null,
          resolvedAt: null,
          acknowledged: null,
          muted: null,
        });
      }
      changed.add(msg.fingerprint);
      if (!drawPending) {
        drawPending = requestAnimationFrame(() => {
          drawPending = 0;
          drawAlerts();
        });
      }
      reloadSoon();
    }

    const offs = [
      onLive("alert", onAlert),
      onLive("silence", () => {
        loadSilences();
        reloadSoon();
      }),
      // missed messages: the lists again (after a reconnection the shell refreshes the page)
      onLive("lagged", () => reloadSoon()),
    ];

    loadAll();

    return {
      refresh({ rangeChanged, ctx: next }) {
        resolved = next.resolved();
        ctx = next;
        if (rangeChanged) historyShown = HISTORY_PAGE;
        loadAll();
      },
      dispose() {
        offs.forEach((off) => off());
        reloadSoon.cancel();
        cancelAnimationFrame(drawPending);
      },
    };
  },
};
