// The HTTP API client: the token from the login, JSON in and out, and errors in words.
//
// Every call resolves to the response's `data` (the Prometheus envelope and fleetwatch's own API
// both put the payload there) or throws an ApiError whose message is what the user sees.

const TOKEN_KEY = "fleetwatch.token";

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

// Listeners told when the API refuses the token (401), so the shell can show the login.
const unauthorizedListeners = new Set();
export function onUnauthorized(fn) {
  unauthorizedListeners.add(fn);
  return () => unauthorizedListeners.delete(fn);
}

function url(path, params) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => u.searchParams.append(k, x));
    else u.searchParams.set(k, String(v));
  }
  return u;
}

// Longest a request may take before it is given up (and shown as an error).
const TIMEOUT_MS = 30000;

async function request(method, path, { params, body, raw } = {}) {
  const headers = { Authorization: `Bearer ${token() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  let resp;
  let text;
  try {
    resp = await fetch(url(path, params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: abort.signal,
    });
    if (resp.status === 401) unauthorizedListeners.forEach((fn) => fn());
    if (raw && resp.ok) return resp;
    text = await resp.text();
  } catch (e) {
    const why = abort.signal.aborted ? `no answer within ${TIMEOUT_MS / 1000} s` : e.message;
    throw new ApiError(`cannot reach the aggregator (${why}); retrying on the next refresh`, 0);
  } finally {
    clearTimeout(timer);
  }
  if (resp.status === 502 || resp.status === 503 || resp.status === 504) {
    if (!text.trim().startsWith("{")) {
      throw new ApiError(`the aggregator is not available (${resp.status} ${resp.statusText}); retrying on the next refresh`, resp.status);
    }
  }
  let json;
  try {
    json = text ? JSON.parse(text) : {};
  } catch {
    throw new ApiError(`the aggregator answered ${resp.status} with something that is not JSON: ${text.slice(0, 200)}`, resp.status);
  }
  if (!resp.ok || json.status === "error") {
    let what = json.error || `${method} ${path} answered ${resp.status} ${resp.statusText}`;
    if (resp.status === 403 && !json.error) what = "this needs an admin token; you are signed in as a viewer";
    throw new ApiError(json.errorType ? `${json.errorType}: ${what}` : what, resp.status);
  }
  return json.data === undefined ? json : json.data;
}

export const api = {
  get: (path, params) => request("GET", path, { params }),
  post: (path, body, params) => request("POST", path, { body, params }),
  del: (path, params) => request("DELETE", path, { params }),
};
