// The Dashboards page: the dashboards defined in configuration files (`/api/dashboards`, with
// the files that could not be loaded and why) and, at `#/dashboards/ID`, one dashboard's panels
// on a 12-column grid, refreshed on the shell's tick and when the time range changes.

import "../pages.css";
import { api } from "../api.js";
import { buildHash, parseHash } from "../route.js";
import { h, errorBox } from "../ui.js";
import { createPanel } from "../panels.js";

function keepParams() {
  const p = parseHash().params;
  return { range: p.range, refresh: p.refresh };
}

function renderList(root) {
  const errorsBox = h("div", {});
  const list = h("div", { class: "dash-list", "data-testid": "dashboard-list" });
  const status = h("div", {});
  root.append(
    h("div", { class: "dash-head" }, h("h1", {}, "Dashboards"), h("p", {}, "application views from the aggregator's dashboard files (the [dashboards] dir of aggregator.toml)")),
    status,
    errorsBox,
    list,
  );

  async function load() {
    let data;
    try {
      data = await api.get("/api/dashboards");
    } catch (e) {
      status.replaceChildren(errorBox(e, "cannot load the dashboards"));
      return;
    }
    status.replaceChildren();
    const errors = data.errors || [];
    errorsBox.replaceChildren(
      ...(errors.length
        ? [
            h(
              "div",
              { class: "panel" },
              h("h3", {}, `${errors.length} dashboard file${errors.length === 1 ? " was" : "s were"} not loaded`),
              errors.map((e) => errorBox(e.error, e.file)),
            ),
          ]
        : []),
    );
    const dashboards = data.dashboards || [];
    if (dashboards.length === 0) {
      list.replaceChildren(h("div", { class: "empty" }, "no dashboard is configured: add files under the aggregator's dashboards directory"));
      return;
    }
    list.replaceChildren(
      ...dashboards.map((d) =>
        h(
          "a",
          { class: "dash-card", href: buildHash("dashboards", d.id, keepParams()), "data-testid": "dashboard-link", "data-id": d.id },
          h("h3", {}, d.title || d.id),
          d.description ? h("p", {}, d.description) : null,
          h(
            "div",
            { class: "muted-text" },
            `${(d.panels || []).length} panel${(d.panels || []).length === 1 ? "" : "s"}`,
            (d.panels || []).length ? ` · ${[...new Set(d.panels.map((p) => p.type))].join(", ")}` : "",
          ),
        ),
      ),
    );
  }

  load();
  return { refresh: load, dispose() {} };
}

function renderDashboard(root, ctx) {
  const id = ctx.arg;
  const head = h(
    "div",
    { class: "dash-head" },
    h("a", { href: buildHash("dashboards", null, keepParams()), "data-testid": "dashboards-back" }, "← all dashboards"),
  );
  const status = h("div", {});
  const grid = h("div", { class: "dash-grid", "data-testid": "dashboard", "data-id": id });
  root.append(head, status, grid);
  let panels = [];
  let loaded = false;
  let disposed = false;

  async function load() {
    let d;
    try {
      d = await api.get(`/api/dashboards/${encodeURIComponent(id)}`);
    } catch (e) {
      if (disposed) return;
      status.replaceChildren(errorBox(e, e.status === 404 ? `there is no dashboard "${id}"` : `cannot load dashboard "${id}"`));
      // keep retrying on the refresh tick (the aggregator may be restarting)
      return;
    }
    if (disposed) return;
    loaded = true;
    status.replaceChildren();
    document.title = `${d.title || id} · fleetwatch`;
    head.append(h("h1", {}, d.title || id));
    if (d.description) head.append(h("p", {}, d.description));
    if (!(d.panels || []).length) {
      grid.replaceChildren(h("div", { class: "empty" }, "this dashboard has no panels"));
      return;
    }
    panels = d.panels.map(createPanel);
    grid.replaceChildren(...panels.map((p) => p.el));
    const range = ctx.resolved();
    panels.forEach((p) => p.refresh(range));
  }

  load();
  return {
    refresh({ ctx: next }) {
      ctx = next;
      if (!loaded) {
        load();
        return;
      }
      const range = ctx.resolved();
      panels.forEach((p) => p.refresh(range));
    },
    dispose() {
      disposed = true;
      panels.forEach((p) => p.dispose());
    },
  };
}

export default {
  title: "Dashboards",
  nav: true,
  render(root, ctx) {
    return ctx.arg ? renderDashboard(root, ctx) : renderList(root);
  },
};
