// The dashboard's shell: sign-in, the navigation bar (pages, time range, auto refresh, dark mode,
// the live feed's state), and the page on screen, chosen by the URL's hash.
//
// A page is a module under pages/ exporting `{ title, nav, render(root, ctx) }`. `render` fills
// `root` and may return `{ refresh(), dispose() }`: `refresh` is called on the auto-refresh tick
// and when the time range changes (a page without it is rendered again), `dispose` when the page
// goes. `ctx` holds `arg` (the path after the page: a host name, a dashboard id), `params` (the
// hash's query), `setParams(obj)` (changes them in the URL without rendering again), `go(page,
// arg, params)`, `range` (the range's name), `resolved()` ({start, end, step}), and `role`.

import "./styles.css";
import { api, token, setToken, onUnauthorized } from "./api.js";
import { parseHash, buildHash, replaceParams } from "./route.js";
import { connectLive, disconnectLive, onLiveState } from "./live.js";
import { RANGES, DEFAULT_RANGE, resolveRange } from "./timerange.js";
import { h, errorBox } from "./ui.js";
import { PAGES } from "./pages/index.js";

const REFRESH_CHOICES = [["off", 0], ["5s", 5], ["10s", 10], ["30s", 30], ["1m", 60], ["5m", 300]];

// The theme first, before anything is drawn.
document.documentElement.dataset.theme =
  localStorage.getItem("fleetwatch.theme") ||
  (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");

const app = document.getElementById("app");
let current = null; // {handle, root}
let role = null;
let refreshTimer = null;

// The range and refresh are part of the URL (`range=`, `refresh=`) so links keep them.
function rangeName() {
  const r = parseHash().params.range;
  return RANGES.some(([n]) => n === r) ? r : DEFAULT_RANGE;
}

function refreshSeconds() {
  const r = parseHash().params.refresh;
  const hit = REFRESH_CHOICES.find(([n]) => n === r);
  return hit ? hit[1] : 30;
}

function setTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem("fleetwatch.theme", theme);
}

function go(page, arg, params) {
  const keep = { range: parseHash().params.range, refresh: parseHash().params.refresh };
  location.hash = buildHash(page, arg, { ...keep, ...params });
}

function loginView(message) {
  disconnectLive();
  const input = h("input", {
    type: "password",
    id: "token",
    "data-testid": "login-token",
    placeholder: "API token",
    autocomplete: "current-password",
  });
  const status = h("div", { class: "login-status" }, message ? errorBox(message) : null);
  const form = h(
    "form",
    {
      class: "login",
      "data-testid": "login-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        setToken(input.value.trim());
        status.replaceChildren(h("span", {}, "signing in…"));
        start();
      },
    },
    h("h1", {}, "fleetwatch"),
    h("label", { for: "token" }, "Sign in with an API token (admin or viewer)"),
    input,
    h("button", { type: "submit", "data-testid": "login-submit" }, "Sign in"),
    status,
  );
  app.replaceChildren(form);
  input.focus();
}

function navBar() {
  const here = parseHash();
  const links = Object.entries(PAGES)
    .filter(([, p]) => p.nav)
    .map(([name, p]) =>
      h(
        "a",
        {
          href: buildHash(name, null, { range: here.params.range, refresh: here.params.refresh }),
          class: here.page === name ? "active" : "",
          "data-testid": `nav-${name}`,
        },
        p.title,
      ),
    );
  const range = h(
    "select",
    {
      "data-testid": "range",
      title: "Time range",
      onchange: (ev) => {
        replaceParams({ range: ev.target.value });
        refreshPage(true);
      },
    },
    RANGES.map(([n]) => h("option", { value: n, selected: n === rangeName() }, `last ${n}`)),
  );
  const refresh = h(
    "select",
    {
      "data-testid": "refresh",
      title: "Auto refresh",
      onchange: (ev) => {
        replaceParams({ refresh: ev.target.value });
        scheduleRefresh();
      },
    },
    REFRESH_CHOICES.map(([n, s]) =>
      h("option", { value: n, selected: s === refreshSeconds() }, n === "off" ? "refresh off" : `every ${n}`),
    ),
  );
  const liveDot = h("span", { class: "live", "data-testid": "live-state" });
  onLiveState((s) => {
    liveDot.textContent = s === "live" ? "● live" : `○ ${s}`;
    liveDot.dataset.state = s;
  });
  const theme = h(
    "button",
    {
      class: "plain",
      title: "Dark mode",
      "data-testid": "theme",
      onclick: () => setTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"),
    },
    "◐",
  );
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
  return h(
    "header",
    { class: "top" },
    h("a", { class: "brand", href: "#/overview" }, "fleetwatch"),
    h("nav", {}, links),
    h("div", { class: "controls" }, range, refresh, liveDot, h("span", { class: "role", "data-testid": "role" }, role), theme, logout),
  );
}

function ctxFor(route) {
  return {
    arg: route.arg,
    params: route.params,
    setParams: replaceParams,
    go,
    range: rangeName(),
    resolved: () => resolveRange(rangeName()),
    role,
  };
}

function disposePage() {
  if (current && current.handle && current.handle.dispose) current.handle.dispose();
  current = null;
}

function renderPage() {
  disposePage();
  const route = parseHash();
  const page = PAGES[route.page];
  const root = h("main", { "data-testid": `page-${route.page}` });
  app.replaceChildren(navBar(), root);
  if (!page) {
    root.append(errorBox(`there is no page called "${route.page}"`));
    return;
  }
  document.title = `${page.title} · fleetwatch`;
  let handle;
  try {
    handle = page.render(root, ctxFor(route));
  } catch (e) {
    root.append(errorBox(e, "this page failed to render"));
  }
  current = { handle, root, route };
  scheduleRefresh();
}

// The auto-refresh tick or a new range: the page refreshes itself, or is rendered again.
function refreshPage(rangeChanged) {
  if (!current) return;
  if (current.handle && current.handle.refresh) {
    current.handle.refresh({ rangeChanged, ctx: ctxFor(parseHash()) });
  } else {
    renderPage();
  }
}

function scheduleRefresh() {
  clearInterval(refreshTimer);
  const s = refreshSeconds();
  if (s > 0) refreshTimer = setInterval(() => refreshPage(false), s * 1000);
}

// Signs in with the stored token: asks the aggregator who it is, then shows the page.
async function start() {
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
      loginView("that token was refused");
    } else {
      app.replaceChildren(errorBox(e, "cannot sign in"));
      setTimeout(start, 3000);
    }
    return;
  }
  connectLive();
  renderPage();
}

// `#/login?token=...` (the link `demo` prints) signs in and leaves the token out of the URL.
function takeTokenFromUrl() {
  const route = parseHash();
  if (route.page === "login" && route.params.token) {
    setToken(route.params.token);
    history.replaceState(null, "", buildHash("overview", null, {}));
  }
}

onUnauthorized(() => {
  setToken(null);
  loginView("the aggregator no longer accepts this token");
});
window.addEventListener("hashchange", () => {
  if (role) renderPage();
});
takeTokenFromUrl();
start();
