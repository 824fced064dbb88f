// The jobs list: one page of List Jobs (never the whole history), newest first, polled while the
// tab is visible. Filters live in the page's URL, so a filtered list can be bookmarked.
import {
  IN_FLIGHT, TERMINAL, api, el, every, formatAge, formatDuration, jobDuration, jobPagePath,
  localTime, parseTime, percentageOf, progressBar, setLive, statusBadge, workspacePath,
} from "./common.js";

const POLL_MS = 2000;
const CAPACITY = "/apis/localjobs/v1/capacity";
const PAGE_SIZES = [10, 25, 50, 100];
const KNOWN_WORKSPACES = "localjobs.workspaces";

const form = document.getElementById("filters");
const rows = document.getElementById("rows");
const problem = document.getElementById("problem");
const pageInfo = document.getElementById("pageinfo");
const prev = document.getElementById("prev");
const next = document.getElementById("next");

const state = readState();
let latestRequest = 0;
let lastPage = 1;
// The step a finished job failed in, per job id: it never changes once the job is finished.
const failedStepOf = new Map();
const rowOf = new Map();
let lastSteps = new Map();
// From the capacity route while jobs are in flight: GPUs each job's running step holds, and why a
// waiting step waits (for GPUs, CPUs or memory). Job name -> text, for this workspace.
let holding = { gpus: new Map(), waiting: new Map() };

function readState() {
  const query = new URLSearchParams(location.search);
  const size = Number(query.get("page_size"));
  return {
    workspace: query.get("workspace") || "default",
    status: query.get("status") || "",
    q: query.get("q") || "",
    page: Math.max(1, Number.parseInt(query.get("page") || "1", 10) || 1),
    pageSize: PAGE_SIZES.includes(size) ? size : 25,
  };
}

function writeState() {
  const query = new URLSearchParams();
  if (state.workspace !== "default") query.set("workspace", state.workspace);
  if (state.status) query.set("status", state.status);
  if (state.q) query.set("q", state.q);
  if (state.page > 1) query.set("page", String(state.page));
  if (state.pageSize !== 25) query.set("page_size", String(state.pageSize));
  const search = query.toString();
  history.replaceState(null, "", search ? `/?${search}` : "/");
}

function listUrl() {
  const query = new URLSearchParams({
    page: String(state.page), page_size: String(state.pageSize), sort: "-created_at",
  });
  if (state.status === "in-flight") query.set("filter[status]", IN_FLIGHT.join(","));
  else if (state.status) query.set("filter[status]", state.status);
  if (state.q.trim()) query.set("filter[name][$like]", state.q.trim());
  return `${workspacePath(state.workspace)}/jobs?${query}`;
}

// The steps running now in this workspace (one request, bounded): each in-flight job's current step.
async function currentSteps(jobs) {
  const current = new Map();
  if (!jobs.some((job) => !TERMINAL.has(job.status))) return current;
  const query = new URLSearchParams({
    "filter[status]": IN_FLIGHT.join(","), page_size: "100", sort: "-created_at",
  });
  const page = await api(`${workspacePath(state.workspace)}/jobs/-/steps?${query}`);
  for (const step of page.data) {
    if (!current.has(step.job)) current.set(step.job, step.name);
  }
  return current;
}

async function findHolding(jobs) {
  const found = { gpus: new Map(), waiting: new Map() };
  if (!jobs.some((job) => !TERMINAL.has(job.status))) return found;
  let usage;
  try {
    usage = await api(CAPACITY);
  } catch {
    return found; // a daemon without the route: the list without these lines
  }
  for (const hold of usage.held) {
    if (hold.workspace === state.workspace && hold.gpus.length) {
      found.gpus.set(hold.job, `GPU${hold.gpus.length === 1 ? "" : "s"} ${hold.gpus.map((g) => g.index).join(",")}`);
    }
  }
  for (const wait of usage.waiting) if (wait.workspace === state.workspace) found.waiting.set(wait.job, wait.reason);
  return found;
}

async function findFailedSteps(jobs) {
  for (const job of jobs) {
    if ((job.status !== "error" && job.status !== "cancelled") || failedStepOf.has(job.id)) continue;
    const query = new URLSearchParams({ "filter[status]": "error,cancelled", page_size: "1" });
    try {
      const page = await api(`${workspacePath(job.workspace)}/jobs/${encodeURIComponent(job.name)}/steps?${query}`);
      failedStepOf.set(job.id, page.data.length ? page.data[0].name : null);
    } catch {
      failedStepOf.set(job.id, null);
    }
    const row = rowOf.get(job.id);
    if (row) fillStep(row.cells[2], job, null);
  }
}

function stepNames(job) {
  return ((job.platform_spec && job.platform_spec.steps) || []).map((s) => s.name);
}

function fillStep(cell, job, current) {
  const names = stepNames(job);
  let text = "—";
  let name = current;
  if (!name && TERMINAL.has(job.status) && job.status !== "completed") name = failedStepOf.get(job.id) || null;
  if (name) {
    const index = names.indexOf(name);
    text = index >= 0 && names.length > 1 ? `${name} · ${index + 1}/${names.length}` : name;
  } else if (job.status === "completed") {
    text = names.length === 1 ? "1 step" : `${names.length} steps`;
  }
  cell.replaceChildren(text);
  const message = job.status_details && job.status_details.message;
  const waitingFor = TERMINAL.has(job.status) ? null : holding.waiting.get(job.name);
  if (waitingFor) cell.append(el("span", { class: "sub waiting" }, waitingFor));
  else if (message && job.status !== "completed") cell.append(el("span", { class: "sub" }, String(message)));
  const gpus = TERMINAL.has(job.status) ? null : holding.gpus.get(job.name);
  if (gpus) cell.append(el("span", { class: "sub gpus" }, gpus));
}

function fillRow(row, job, current, now) {
  const [statusCell, nameCell, stepCell, progressCell, ageCell, durationCell] = row.cells;
  if (row.dataset.status !== job.status) {
    statusCell.replaceChildren(statusBadge(job.status));
    row.dataset.status = job.status;
  }
  if (!nameCell.firstChild) {
    const link = el("a", { href: jobPagePath(job.workspace, job.name) }, job.name);
    nameCell.append(link);
    if (job.description) nameCell.append(el("span", { class: "sub" }, job.description));
  }
  fillStep(stepCell, job, current);
  const pct = percentageOf(job.status_details);
  if (pct !== null) progressCell.replaceChildren(progressBar(pct));
  else if (job.status === "completed") progressCell.replaceChildren(progressBar(100));
  else progressCell.replaceChildren(el("span", { class: "muted" }, "—"));
  ageCell.replaceChildren(formatAge(now - parseTime(job.created_at)));
  ageCell.title = localTime(job.created_at);
  durationCell.replaceChildren(formatDuration(jobDuration(job, now)));
}

function newRow(job) {
  const labels = ["Status", "Name", "Current step", "Progress", "Age", "Duration"];
  const row = el("tr", { "data-job": job.name });
  for (const label of labels) row.append(el("td", { "data-label": label }));
  return row;
}

function render(page, current) {
  const now = Date.now();
  const seen = new Set();
  const ordered = [];
  for (const job of page.data) {
    seen.add(job.id);
    let row = rowOf.get(job.id);
    if (!row) {
      row = newRow(job);
      rowOf.set(job.id, row);
    }
    fillRow(row, job, current.get(job.name) || null, now);
    ordered.push(row);
  }
  for (const id of [...rowOf.keys()]) if (!seen.has(id)) rowOf.delete(id);
  if (!ordered.length) {
    let empty = state.q || state.status ? "No job matches these filters." : "No jobs in this workspace yet.";
    if (page.pagination.total_results > 0) empty = `Page ${state.page} is past the last page.`;
    rows.replaceChildren(el("tr", { class: "placeholder" }, el("td", { colspan: 6 }, empty)));
  } else if (ordered.length !== rows.children.length || ordered.some((row, i) => rows.children[i] !== row)) {
    rows.replaceChildren(...ordered); // only when the rows changed: a focused link keeps its focus
  }
  const { total_results: total, total_pages: pages } = page.pagination;
  lastPage = Math.max(1, pages);
  pageInfo.textContent = `Page ${state.page} of ${lastPage.toLocaleString()} · ${total.toLocaleString()} job${total === 1 ? "" : "s"}`;
  prev.disabled = state.page <= 1;
  next.disabled = state.page >= lastPage;
}

async function refresh() {
  const request = ++latestRequest;
  try {
    const page = await api(listUrl());
    if (request !== latestRequest) return; // the filters changed meanwhile: a newer answer is coming
    // The rows at once (with the steps known from the last poll), then their current steps.
    render(page, lastSteps);
    if (!performance.getEntriesByName("jobs-rendered").length) performance.mark("jobs-rendered");
    const [current, held] = await Promise.all([currentSteps(page.data), findHolding(page.data)]);
    if (request !== latestRequest) return;
    lastSteps = current;
    holding = held;
    render(page, current);
    problem.textContent = "";
    setLive(true, `live · ${new Date().toLocaleTimeString()}`);
    findFailedSteps(page.data);
    remember(state.workspace);
  } catch (error) {
    if (request !== latestRequest) return;
    problem.textContent = error.message;
    setLive(false, "not updating");
    if (error.status === 404 || error.status === 422) rows.replaceChildren();
  }
}

function remember(workspace) {
  let known = [];
  try {
    known = JSON.parse(localStorage.getItem(KNOWN_WORKSPACES) || "[]");
  } catch {
    known = [];
  }
  if (!Array.isArray(known)) known = [];
  known = [workspace, ...known.filter((w) => w !== workspace)].slice(0, 12);
  localStorage.setItem(KNOWN_WORKSPACES, JSON.stringify(known));
  const list = document.getElementById("workspaces");
  list.replaceChildren(...known.map((w) => el("option", { value: w })));
}

function filtersChanged() {
  state.workspace = form.workspace.value.trim() || "default";
  state.status = form.status.value;
  state.q = form.q.value;
  state.page = 1;
  rowOf.clear();
  writeState();
  poller.now();
}

form.workspace.value = state.workspace;
form.status.value = state.status;
form.q.value = state.q;
let typing = null;
form.addEventListener("input", (event) => {
  clearTimeout(typing);
  typing = setTimeout(filtersChanged, event.target === form.status ? 0 : 250);
});
form.addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(typing);
  filtersChanged();
});
prev.addEventListener("click", () => {
  state.page = Math.max(1, state.page - 1);
  writeState();
  poller.now();
});
next.addEventListener("click", () => {
  state.page = Math.min(lastPage, state.page + 1);
  writeState();
  poller.now();
});

const poller = every(POLL_MS, refresh);
