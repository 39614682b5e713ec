// The live feed (`/api/fleet/live`, a WebSocket): one connection, reconnected with backoff when
// it drops (the aggregator restarting, a network blip), topics subscribed by the pages on screen.

import { token } from "./api.js";

const listeners = new Map(); // type of message -> Set of handlers
const statusListeners = new Set();
let socket = null;
let topics = new Set(["hosts", "alerts"]);
let logFilters = null;
let backoff = 1000;
let timer = null;
let state = "connecting";

function setState(s) {
  state = s;
  statusListeners.forEach((fn) => fn(s));
}

export function liveState() {
  return state;
}

export function onLiveState(fn) {
  statusListeners.add(fn);
  fn(state);
  return () => statusListeners.delete(fn);
}

// Calls `fn(message)` for every message of `type` ("snapshot", "hosts", "alert", "silence",
// "logs", "lagged"; "open" after each (re)connection; "*" for all).
export function onLive(type, fn) {
  if (!listeners.has(type)) listeners.set(type, new Set());
  listeners.get(type).add(fn);
  return () => listeners.get(type).delete(fn);
}

function subscribeMessage() {
  const msg = { subscribe: [...topics] };
  if (logFilters) msg.logs = logFilters;
  return JSON.stringify(msg);
}

// Asks for the `logs` topic with the log query's filters (or stops it with null).
export function setLogTail(filters) {
  logFilters = filters;
  if (filters) topics.add("logs");
  else topics.delete("logs");
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(subscribeMessage());
}

export function connectLive() {
  clearTimeout(timer);
  if (socket) socket.close();
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const u = new URL(`${proto}//${location.host}/api/fleet/live`);
  u.searchParams.set("topics", [...topics].join(","));
  u.searchParams.set("access_token", token() || "");
  setState("connecting");
  const ws = new WebSocket(u);
  socket = ws;
  ws.onopen = () => {
    backoff = 1000;
    setState("live");
    if (logFilters) ws.send(subscribeMessage());
    (listeners.get("open") || []).forEach((fn) => fn({ type: "open" }));
  };
  ws.onmessage = (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    (listeners.get(msg.type) || []).forEach((fn) => fn(msg));
    (listeners.get("*") || []).forEach((fn) => fn(msg));
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    setState("reconnecting");
    timer = setTimeout(connectLive, backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
}

export function disconnectLive() {
  clearTimeout(timer);
  const ws = socket;
  socket = null;
  if (ws) ws.close();
  setState("closed");
}
