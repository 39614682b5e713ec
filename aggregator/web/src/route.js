// The view lives in the URL's hash: `#/PAGE/ARG?key=value`, so a link keeps the page, the host,
// the range and the query. Nothing in the hash reaches the server.

export function parseHash(hash = location.hash) {
  const h = hash.replace(/^#\/?/, "");
  const q = h.indexOf("?");
  const path = (q < 0 ? h : h.slice(0, q)).split("/").filter(Boolean).map(decodeURIComponent);
  const params = Object.fromEntries(new URLSearchParams(q < 0 ? "" : h.slice(q + 1)));
  return { page: path[0] || "overview", arg: path.slice(1).join("/") || null, params };
}

export function buildHash(page, arg, params) {
  const path = arg ? `${page}/${encodeURIComponent(arg)}` : page;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const qs = q.toString();
  return `#/${path}${qs ? `?${qs}` : ""}`;
}

// Changes the URL's parameters without a new history entry and without re-rendering the page.
export function replaceParams(params) {
  const cur = parseHash();
  const next = buildHash(cur.page, cur.arg, { ...cur.params, ...params });
  history.replaceState(null, "", next);
}
