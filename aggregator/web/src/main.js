// The dashboard's shell: sign-in, the navigation bar (pages, time range, auto refresh, dark mode,
// the live feed's state, the role, sign out), and the page on screen, chosen by the URL's hash.
//
// A page is a module under pages/ exporting `{ title, nav, render(root, ctx) }`. `render` fills
// `root` and may return `{ refresh({rangeChanged, ctx}), dispose() }`: `refresh` is called on the
// auto-refresh tick, when the time range changes and when the live feed comes back after a
// break (a page without it is rendered again), `dispose` when the page goes. `ctx` holds `arg`
// (the path after the page: a host name, a dashboard id), `params` (the hash's query),
// `setParams(obj)` (changes them in the URL without rendering again), `go(page, arg, params)`,
// `range` (the range's name), `resolved()` ({start, end, step}), and `role`.
//
// The shell survives the aggregator going away: fetches fail into error boxes in place of the
// panels and are retried on the next refresh, the live feed reconnects by itself, and when it
// is back the page is refreshed at once.

import "./styles.css";
import { api, token, setToken, onUnauthorized } from "./api.js";
import { parseHash, buildHash, replaceParams } from "./route.js";
import { connectLive, disconnectLive, onLiveState, onLive } from "./live.js";
import { RANGES, DEFAULT_RANGE, resolveRange } from "./timerange.js";
import { h, errorBox } from "./ui.js";
import { redrawCharts } from "./chart.js";
import { PAGES } from "./pages/index.js";

const REFRESH_CHOICES = [["off", 0], ["5s", 5], ["10s", 10], ["30s", 30], ["1m", 60], ["5m", 300]];
const DEFAULT_REFRESH = "30s";

window.fleetwatchTimings = window.fleetwatchTimings || {};

// The theme first, before anything is drawn.
document.documentElement.dataset.theme =
  localStorage.getItem("fleetwatch.theme") ||
  (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");

const app = document.getElementById("app");
let current = null; // {handle, root, route}
let role = null;
let refreshTimer = null;
let shell = null; // {header, main, update()} while signed in
let stopShell = []; // unsubscribe functions of the signed-in shell

// The range and refresh are part of the URL (`range=`, `refresh=`) so links keep them.
function rangeName() {
  const r = parseHash().params.range;
  return RANGES.some(([n]) => n === r) ? r : DEFAULT_RANGE;
}

function refreshName() {
  const r = parseHash().params.refresh;
  return REFRESH_CHOICES.some(([n]) => n === r) ? r : DEFAULT_REFRESH;
}

function refreshSeconds() {
  return REFRESH_CHOICES.find(([n]) => n === refreshName())[1];
}

// The parameters every link keeps: the range and the refresh, when they are not the defaults.
function keptParams() {
  const p = parseHash().params;
  return { range: p.range, refresh: p.refresh };
}

function setTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem("fleetwatch.theme", theme);
  redrawCharts();
  if (shell) shell.update();
}

function go(page, arg, params) {
  location.hash = buildHash(page, arg, { ...keptParams(), ...params });
}

function loginView(message) {
  signedOut();
  const input = h("input", {
    type: "password",
    id: "token",
    "data-testid": "login-token",
    placeholder: "API token",
    autocomplete: "current-password",
    required: true,
  });
  const status = h("div", { class: "login-status" }, message ? errorBox(message) : null);
  const form = h(
    "form",
    {
      class: "login",
      "data-testid": "login-form",
      onsubmit: (ev) => {
        ev.preventDefault();
        const t = input.value.trim();
        if (!t) {
          status.replaceChildren(errorBox("enter the API token (admin or viewer) from the aggregator's configuration"));
          return;
        }
        setToken(t);
        status.replaceChildren(h("span", { class: "muted" }, "signing in…"));
        start(status);
      },
    },
    h("h1", {}, "fleetwatch"),
    h("label", { for: "token" }, "Sign in with an API token (admin or viewer)"),
    input,
    h("button", { type: "submit", class: "primary", "data-testid": "login-submit" }, "Sign in"),
    status,
  );
  document.title = "Sign in · fleetwatch";
  app.replaceChildren(form);
  input.focus();
}

function signedOut() {
  disposePage();
  clearInterval(refreshTimer);
  disconnectLive();
  stopShell.forEach((f) => f());
  stopShell = [];
  shell = null;
  role = null;
}

// The header, built once per sign-in; `update()` follows the URL (active page, range, links).
function buildShell() {
  const links = Object.entries(PAGES)
    .filter(([, p]) => p.nav)
    .map(([name, p]) => h("a", { "data-testid": `nav-${name}`, dataset: { page: name } }, p.title));
  const range = h(
    "select",
    {
      "data-testid": "range",
      title: "Time range",
      onchange: (ev) => {
        replaceParams({ range: ev.target.value });
        update();
        refreshPage(true);
      },
    },
    RANGES.map(([n]) => h("option", { value: n }, `last ${n}`)),
  );
  const refresh = h(
    "select",
    {
      "data-testid": "refresh",
      title: "Auto refresh",
      onchange: (ev) => {
        replaceParams({ refresh: ev.target.value });
        update();
        scheduleRefresh();
      },
    },
    REFRESH_CHOICES.map(([n]) => h("option", { value: n }, n === "off" ? "refresh off" : `every ${n}`)),
  );
  const refreshNow = h(
    "button",
    { class: "plain", title: "Refresh now", "aria-label": "Refresh now", onclick: () => refreshPage(false) },
    "↻",
  );
  const liveDot = h("span", { class: "live", "data-testid": "live-state", title: "The live feed's connection" });
  const theme = h("button", {
    class: "plain",
    "data-testid": "theme",
    onclick: () => setTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"),
  });
  const logout = h(
    "button",
    {
      class: "plain",
      "data-testid": "logout",
      onclick: () => {
        setToken(null);
        loginView();
      },
    },
    "Sign out",
  );
  const roleBadge = h(
    "span",
    {
      class: `role role-${role}`,
      "data-testid": "role",
      title: role === "admin" ? "Signed in as admin: may acknowledge and silence alerts" : "Signed in as viewer: read-only",
    },
    role,
  );
  const header = h(
    "header",
    { class: "top" },
    h("a", { class: "brand", href: "#/overview" }, "fleetwatch"),
    h("nav", {}, links),
    h("div", { class: "controls" }, range, refresh, refreshNow, liveDot, roleBadge, theme, logout),
  );
  function update() {
    const here = parseHash();
    for (const a of links) {
      const page = a.dataset.page;
      a.href = buildHash(page, null, keptParams());
      a.classList.toggle("active", here.page === page || (here.page === "host" && page === "overview"));
    }
    range.value = rangeName();
    refresh.value = refreshName();
    const dark = document.documentElement.dataset.theme === "dark";
    theme.textContent = dark ? "☀" : "☾";
    theme.title = dark ? "Light mode" : "Dark mode";
    theme.setAttribute("aria-label", theme.title);
  }
  // A banner when the feed has been down for a moment: what is on screen is not current.
  const banner = h("div", { class: "conn-banner", role: "status", "data-testid": "live-banner", hidden: true });
  let lostAt = 0;
  let bannerTimer = null;
  stopShell.push(
    onLiveState((s) => {
      liveDot.textContent = s === "live" ? "● live" : s === "closed" ? "○ offline" : `○ ${s}…`;
      liveDot.dataset.state = s;
      if (s === "live") {
        clearTimeout(bannerTimer);
        bannerTimer = null;
        lostAt = 0;
        banner.hidden = true;
      } else if (s === "reconnecting" && !lostAt) {
        lostAt = Date.now();
        bannerTimer = setTimeout(() => {
          banner.textContent = `The connection to the aggregator was lost at ${new Date(lostAt).toLocaleTimeString()}; reconnecting. What you see is from before then.`;
          banner.hidden = false;
        }, 3000);
      }
    }),
    () => clearTimeout(bannerTimer),
  );
  // Back after a break (the aggregator restarted): fetch everything again at once.
  stopShell.push(
    onLive("open", (m) => {
      if (m.reconnected) refreshPage(false);
    }),
  );
  const main = h("div", { class: "page-slot" });
  app.replaceChildren(header, banner, main);
  shell = { header, main, update };
  update();
}

function ctxFor(route) {
  return {
    arg: route.arg,
    params: route.params,
    setParams: replaceParams,
    go,
    get range() {
      return rangeName();
    },
    resolved: () => resolveRange(rangeName()),
    role,
  };
}

function disposePage() {
  const c = current;
  current = null;
  if (c && c.handle && c.handle.dispose) {
    try {
      c.handle.dispose();
    } catch (e) {
      console.error("page dispose failed", e);
    }
  }
}

function renderPage() {
  disposePage();
  if (!shell) buildShell();
  shell.update();
  const route = parseHash();
  const page = PAGES[route.page];
  const root = h("main", { "data-testid": `page-${route.page}` });
  shell.main.replaceChildren(root);
  window.scrollTo(0, 0);
  if (!page) {
    document.title = "fleetwatch";
    root.append(errorBox(`there is no page called "${route.page}"; choose one above`));
    return;
  }
  document.title = `${page.title}${route.arg ? ` ${route.arg}` : ""} · fleetwatch`;
  let handle;
  try {
    handle = page.render(root, ctxFor(route));
  } catch (e) {
    console.error(e);
    root.append(errorBox(e, "this page failed to render"));
  }
  current = { handle, root, route };
  scheduleRefresh();
}

// The auto-refresh tick, a new range, or the live feed back: the page refreshes itself, or is
// rendered again.
function refreshPage(rangeChanged) {
  if (!current) return;
  if (current.handle && current.handle.refresh) {
    try {
      current.handle.refresh({ rangeChanged, ctx: ctxFor(parseHash()) });
    } catch (e) {
      console.error(e);
      current.root.prepend(errorBox(e, "this page failed to refresh"));
    }
  } else {
    renderPage();
  }
}

function scheduleRefresh() {
  clearInterval(refreshTimer);
  const s = refreshSeconds();
  if (s > 0) {
    refreshTimer = setInterval(() => {
      // a hidden tab does not poll; it refreshes when it is shown again
      if (!document.hidden) refreshPage(false);
    }, s * 1000);
  }
}

let startRetry = null;

// Signs in with the stored token: asks the aggregator who it is, then shows the page.
// `status` is where the login form shows progress (none at page load).
async function start(status) {
  clearTimeout(startRetry);
  if (!token()) {
    loginView();
    return;
  }
  try {
    const me = await api.get("/api/whoami");
    role = me.role;
  } catch (e) {
    if (e.status === 401) {
      setToken(null);
      loginView("that token was refused: check it against the aggregator's configuration");
    } else {
      // the aggregator is not there (yet): say so and try again
      const box = h(
        "div",
        { class: "login" },
        h("h1", {}, "fleetwatch"),
        errorBox(e, "cannot sign in"),
        h("p", { class: "muted" }, "Trying again in a few seconds…"),
      );
      if (status) status.replaceChildren(errorBox(e, "cannot sign in"));
      else app.replaceChildren(box);
      startRetry = setTimeout(() => start(status && status.isConnected ? status : null), 3000);
    }
    return;
  }
  document.documentElement.dataset.role = role;
  shell = null;
  stopShell.forEach((f) => f());
  stopShell = [];
  connectLive();
  renderPage();
}

// `#/login?token=...` (the link `demo` prints) signs in and leaves the token out of the URL.
function takeTokenFromUrl() {
  const route = parseHash();
  if (route.page === "login") {
    if (route.params.token) setToken(route.params.token);
    const { token: _drop, ...rest } = route.params;
    history.replaceState(null, "", buildHash("overview", null, rest));
  }
}

onUnauthorized(() => {
  if (!role) return;
  setToken(null);
  loginView("the aggregator no longer accepts this token; sign in again");
});
window.addEventListener("hashchange", () => {
  if (parseHash().page === "login") {
    takeTokenFromUrl();
    start();
    return;
  }
  if (role) renderPage();
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && role) refreshPage(false);
});
takeTokenFromUrl();
start();
