// Small DOM helpers shared by the panels.

export const $ = (id) => document.getElementById(id);

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// An error next to what caused it; `null` hides it.
export function showError(id, error) {
  const node = $(id);
  if (!error) {
    node.hidden = true;
    node.textContent = "";
    return;
  }
  node.textContent = error.message || String(error);
  node.hidden = false;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "…";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds} s`;
  return `${Math.floor(seconds / 60)} min ${String(seconds % 60).padStart(2, "0")} s`;
}

export const pct = (value) => (value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)} %`);

// The palette offered when creating a detector (the server's default colours).
export const DEFAULT_COLORS = ["#22c55e", "#ef4444", "#3b82f6", "#f59e0b", "#a855f7", "#06b6d4", "#ec4899"];

// Class name -> colour, as the API stores them (chosen at creation, carried by each version).
export function classColors(detector) {
  if (!detector) return {};
  const colors = {};
  detector.classes.forEach((name, i) => {
    colors[name] = (detector.colors && detector.colors[i]) || DEFAULT_COLORS[i % DEFAULT_COLORS.length];
  });
  return colors;
}

// A tiny event bus so the panels stay independent of each other.
const listeners = {};
export function on(name, callback) {
  (listeners[name] ||= []).push(callback);
}
export function emit(name, value) {
  for (const callback of listeners[name] || []) callback(value);
}
