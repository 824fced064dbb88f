// What both pages share: the API client, status badges, times and a small DOM helper.
// Everything shown is set as text (textContent), never as HTML: a job name or a log line
// cannot inject markup.

export const API = "/apis/jobs/v2";

export class ApiError extends Error {
  constructor(status, detail) {
    super(formatDetail(status, detail));
    this.status = status;
  }
}

// The API's error body is {"detail": string} or, for a 422, {"detail": [{loc, msg}, ...]}.
export function formatDetail(status, detail) {
  if (Array.isArray(detail)) {
    const parts = detail.map((item) => {
      const loc = (item.loc || []).filter((p) => p !== "body" && p !== "query").join(".");
      return loc ? `${loc}: ${item.msg}` : item.msg;
    });
    return `${status}: ${parts.join("; ")}`;
  }
  return `${status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
}

// The page's own requests: same origin, the session cookie (HttpOnly) sent by the browser.
export async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    // The session ended (logged out elsewhere, a new token): the page itself shows the login form.
    location.reload();
    throw new ApiError(401, "not signed in");
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { detail: text.slice(0, 200) };
  }
  if (!response.ok) throw new ApiError(response.status, body && body.detail !== undefined ? body.detail : body);
  return body;
}

export function workspacePath(workspace) {
  return `${API}/workspaces/${encodeURIComponent(workspace)}`;
}

export function jobPagePath(workspace, name) {
  return `/workspaces/${encodeURIComponent(workspace)}/jobs/${encodeURIComponent(name)}`;
}

export const TERMINAL = new Set(["completed", "error", "cancelled"]);
export const IN_FLIGHT = ["created", "pending", "active", "pausing", "paused", "resuming", "cancelling"];

// A glyph and a word for each status: the colour is a third cue, never the only one.
const GLYPHS = {
  created: "○", pending: "◔", active: "▶", pausing: "❚❚", paused: "❚❚", resuming: "↻",
  cancelling: "⊘", cancelled: "⊘", error: "✕", completed: "✓",
};

export function statusBadge(status) {
  const badge = el("span", { class: `status s-${status}`, title: `status: ${status}` });
  badge.append(el("span", { class: "glyph", "aria-hidden": "true" }, GLYPHS[status] || "•"), status);
  return badge;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function progressBar(percentage) {
  const value = Math.max(0, Math.min(100, Number(percentage)));
  const bar = el("span", {
    class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": Math.round(value), title: `${value.toFixed(1)} %`,
  });
  const fill = el("span", { class: "fill" });
  fill.style.width = `${value}%`;
  bar.append(fill);
  const wrap = el("span", { class: "progress" }, bar, el("span", { class: "pct" }, `${Math.round(value)}%`));
  return wrap;
}

// `percentage_done` as workloads report it (a number 0..100, sometimes a numeric string).
export function percentageOf(details) {
  const raw = details && details.percentage_done;
  const value = typeof raw === "string" ? Number.parseFloat(raw) : raw;
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

export function parseTime(text) {
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? null : ms;
}

export function formatDuration(ms) {
  if (ms === null || ms < 0) return "—";
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function formatAge(ms) {
  if (ms === null) return "—";
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 5) return "just now";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400 * 2) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} days ago`;
}

export function localTime(text) {
  const ms = parseTime(text);
  return ms === null ? text : new Date(ms).toLocaleString();
}

// A job's running time: from its creation to its last update once finished, to now while in flight.
export function jobDuration(job, now) {
  const start = parseTime(job.created_at);
  const end = TERMINAL.has(job.status) ? parseTime(job.updated_at) : now;
  return start === null || end === null ? null : end - start;
}

// A poll that runs while the tab is visible, at once when it becomes visible again.
export function every(ms, task) {
  let timer = null;
  let running = false;
  let stopped = false;
  const run = async () => {
    timer = null;
    if (stopped || running) return;
    running = true;
    try {
      await task();
    } finally {
      running = false;
      if (!stopped && !document.hidden) timer = setTimeout(run, ms);
    }
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !stopped) run();
  });
  run();
  return {
    stop() { stopped = true; if (timer !== null) clearTimeout(timer); },
    now() { if (timer !== null) { clearTimeout(timer); timer = null; } run(); },
  };
}

export function setLive(on, text) {
  const live = document.getElementById("live");
  if (!live) return;
  live.classList.toggle("on", on);
  live.textContent = text;
}
