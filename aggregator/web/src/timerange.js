// Time ranges: "5m" … "30d" relative to now, with a query step that keeps charts near 250 points.

export const RANGES = [
  ["5m", 5 * 60],
  ["15m", 15 * 60],
  ["1h", 3600],
  ["3h", 3 * 3600],
  ["6h", 6 * 3600],
  ["12h", 12 * 3600],
  ["24h", 86400],
  ["2d", 2 * 86400],
  ["7d", 7 * 86400],
  ["30d", 30 * 86400],
];

export const DEFAULT_RANGE = "1h";

export function rangeSeconds(name) {
  const hit = RANGES.find(([n]) => n === name);
  return hit ? hit[1] : 3600;
}

// {start, end, step} in seconds since the epoch for a named range ending now.
export function resolveRange(name, points = 250) {
  const end = Math.floor(Date.now() / 1000);
  const secs = rangeSeconds(name);
  const step = Math.max(5, Math.ceil(secs / points));
  return { start: end - secs, end, step };
}
