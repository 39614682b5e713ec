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

async function request(method, path, { params, body, raw } = {}) {
  const headers = { Authorization: `Bearer ${token() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(url(path, params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(`cannot reach the aggregator (${e.message}); retrying on the next refresh`, 0);
  }
  if (resp.status === 401) unauthorizedListeners.forEach((fn) => fn());
  if (raw && resp.ok) return resp;
  const text = await resp.text();
  let json;
  try {
    json = text ? JSON.parse(text) : {};
  } catch {
    throw new ApiError(`the aggregator answered ${resp.status} with something that is not JSON: ${text.slice(0, 200)}`, resp.status);
  }
  if (!resp.ok || json.status === "error") {
    const what = json.error || `${resp.status} ${resp.statusText}`;
    throw new ApiError(json.errorType ? `${json.errorType}: ${what}` : what, resp.status);
  }
  return json.data === undefined ? json : json.data;
}

export const api = {
  get: (path, params) => request("GET", path, { params }),
  post: (path, body, params) => request("POST", path, { body, params }),
  del: (path, params) => request("DELETE", path, { params }),
};
