// The live feed (`/api/fleet/live`, a WebSocket): one connection, reconnected with backoff when
// it drops (the aggregator restarting, a network blip), topics subscribed by the pages on screen.
//
// The aggregator sends the hosts every two seconds, so a connection that has said nothing for
// SILENCE_MS is taken as dead (a half-open TCP connection after a restart behind a proxy, a
// suspended laptop) and replaced.

import { token } from "./api.js";

const listeners = new Map(); // type of message -> Set of handlers
const statusListeners = new Set();
let socket = null;
let topics = new Set(["hosts", "alerts"]);
let logFilters = null;
let backoff = 1000;
let timer = null;
let watchdog = null;
let lastMessageAt = 0;
let state = "closed";
let opens = 0;

const MAX_BACKOFF_MS = 5000;
const SILENCE_MS = 20000;

function setState(s) {
  if (s === state) return;
  state = s;
  statusListeners.forEach((fn) => fn(s));
}

export function liveState() {
  return state;
}

// How many times the feed has opened since the page loaded (a second one is a reconnection).
export function liveOpens() {
  return opens;
}

// Calls `fn(state)` now and on every change; returns the function that stops it.
export function onLiveState(fn) {
  statusListeners.add(fn);
  fn(state);
  return () => statusListeners.delete(fn);
}

// Calls `fn(message)` for every message of `type` ("snapshot", "hosts", "alert", "silence",
// "logs", "lagged"; "open" after each (re)connection, with `reconnected`; "*" for all);
// returns the function that stops it.
export function onLive(type, fn) {
  if (!listeners.has(type)) listeners.set(type, new Set());
  listeners.get(type).add(fn);
  return () => listeners.get(type).delete(fn);
}

function emit(type, msg) {
  for (const fn of [...(listeners.get(type) || [])]) {
    try {
      fn(msg);
    } catch (e) {
      console.error(`live ${type} handler failed`, e);
    }
  }
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

function scheduleReconnect() {
  clearTimeout(timer);
  // some jitter, so that many browsers do not all come back in the same instant
  const wait = backoff * (0.8 + Math.random() * 0.4);
  timer = setTimeout(connectLive, wait);
  backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
}

export function connectLive() {
  clearTimeout(timer);
  clearInterval(watchdog);
  if (socket) {
    const old = socket;
    socket = null;
    old.close();
  }
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const u = new URL(`${proto}//${location.host}/api/fleet/live`);
  u.searchParams.set("topics", [...topics].filter((t) => t !== "logs").join(","));
  u.searchParams.set("access_token", token() || "");
  setState(opens === 0 ? "connecting" : "reconnecting");
  let ws;
  try {
    ws = new WebSocket(u);
  } catch (e) {
    console.error("live feed", e);
    scheduleReconnect();
    return;
  }
  socket = ws;
  ws.onopen = () => {
    if (socket !== ws) return;
    backoff = 1000;
    lastMessageAt = Date.now();
    opens += 1;
    setState("live");
    if (logFilters) ws.send(subscribeMessage());
    emit("open", { type: "open", reconnected: opens > 1 });
    watchdog = setInterval(() => {
      if (socket === ws && topics.has("hosts") && Date.now() - lastMessageAt > SILENCE_MS) {
        console.warn("live feed silent; reconnecting");
        connectLive();
      }
    }, SILENCE_MS / 4);
  };
  ws.onmessage = (ev) => {
    if (socket !== ws) return;
    lastMessageAt = Date.now();
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      console.error("live feed sent something that is not JSON", String(ev.data).slice(0, 200));
      return;
    }
    emit(msg.type, msg);
    emit("*", msg);
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    socket = null;
    clearInterval(watchdog);
    setState("reconnecting");
    scheduleReconnect();
  };
}

export function disconnectLive() {
  clearTimeout(timer);
  clearInterval(watchdog);
  const ws = socket;
  socket = null;
  if (ws) ws.close();
  opens = 0;
  backoff = 1000;
  setState("closed");
}
