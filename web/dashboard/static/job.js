// One job's page: status, details, the steps -> tasks tree, results, actions and the live log.
// The job is named by the page's own URL (/workspaces/{workspace}/jobs/{name}).
import {
  TERMINAL, api, el, every, formatDuration, jobDuration, localTime, parseTime, percentageOf,
  progressBar, setLive, statusBadge, workspacePath,
} from "./common.js";
import { LogView } from "./logview.js";

const POLL_MS = 2000;

const [, , rawWorkspace, , rawName] = location.pathname.split("/");
const workspace = decodeURIComponent(rawWorkspace || "");
const name = decodeURIComponent(rawName || "");
const jobPath = `${workspacePath(workspace)}/jobs/${encodeURIComponent(name)}`;

const problem = document.getElementById("problem");
const outcome = document.getElementById("outcome");
const buttons = [...document.querySelectorAll("[data-action]")];
const openDetails = new Set();
let lastTree = "";
let lastResults = "";
let gone = false;

document.title = `${name} · localjobs`;
document.getElementById("job-name").textContent = name;
document.getElementById("crumb-ws").textContent = workspace;
document.getElementById("back").href = workspace === "default" ? "/" : `/?${new URLSearchParams({ workspace })}`;

function term(list, label, value) {
  if (value === undefined || value === null || value === "") return;
  list.append(el("div", {}, el("dt", {}, label), el("dd", {}, value)));
}

function show(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function renderHead(job) {
  const status = document.getElementById("job-status");
  status.replaceChildren(statusBadge(job.status));
  const meta = document.getElementById("job-meta");
  meta.replaceChildren();
  term(meta, "Workspace", job.workspace);
  term(meta, "Project", job.project);
  term(meta, "Source", job.source);
  term(meta, "Created", localTime(job.created_at));
  term(meta, TERMINAL.has(job.status) ? "Ran for" : "Running for", formatDuration(jobDuration(job, Date.now())));
  term(meta, "Updated", localTime(job.updated_at));
  term(meta, "Attempt", job.attempt_id);
  if (job.description) term(meta, "Description", job.description);
  const pct = percentageOf(job.status_details);
  const progress = document.getElementById("job-progress");
  progress.replaceChildren(pct === null ? "" : progressBar(pct));
  for (const button of buttons) {
    const action = button.dataset.action;
    const fits = {
      cancel: !TERMINAL.has(job.status) && job.status !== "cancelling",
      pause: job.status === "active",
      resume: job.status === "paused",
      delete: true,
    }[action];
    // Every button stays usable (the API is the judge, and says why not); the ones that fit stand out.
    button.classList.toggle("fits", fits);
  }
}

// `error_details`: exit code, reason and the last lines the task printed.
function errorBox(details) {
  if (!details || !Object.keys(details).length) return null;
  const box = el("div", { class: "error-box" });
  const title = el("p", { class: "error-title" }, el("span", { class: "glyph", "aria-hidden": "true" }, "✕ "));
  title.append(details.message ? String(details.message) : "Error");
  box.append(title);
  const facts = el("dl", { class: "kv" });
  if (details.exit_code !== undefined) term(facts, "Exit code", String(details.exit_code));
  for (const key of ["reason", "error", "type"]) if (details[key] !== undefined) term(facts, key, show(details[key]));
  if (facts.childElementCount) box.append(facts);
  if (Array.isArray(details.last_lines) && details.last_lines.length) {
    box.append(el("p", { class: "muted small" }, "Last lines"), el("pre", { class: "last-lines" }, details.last_lines.join("\n")));
  }
  const shown = new Set(["message", "exit_code", "reason", "error", "type", "last_lines"]);
  const rest = Object.entries(details).filter(([key]) => !shown.has(key));
  if (rest.length) box.append(keyValues(rest));
  return box;
}

function keyValues(entries) {
  const list = el("dl", { class: "kv" });
  for (const [key, value] of entries) term(list, key, show(value));
  return list;
}

// `status_details`: the message first, progress as a bar, the rest as keys and values.
function statusBox(details, id) {
  const box = el("div", { class: "status-box" });
  if (!details) return box;
  if (details.message) box.append(el("p", { class: "message" }, String(details.message)));
  const rest = Object.entries(details).filter(([key]) => key !== "message" && key !== "percentage_done");
  if (rest.length) {
    const more = el("details", { "data-key": id });
    if (openDetails.has(id)) more.open = true;
    more.addEventListener("toggle", () => (more.open ? openDetails.add(id) : openDetails.delete(id)));
    more.append(el("summary", {}, `status details (${rest.length})`), keyValues(rest));
    box.append(more);
  }
  return box;
}

function renderDetails(job) {
  const holder = document.getElementById("job-details");
  holder.replaceChildren(statusBox(job.status_details, "job"));
  const error = errorBox(job.error_details);
  if (error) holder.append(error);
}

function span(created, updated, status) {
  const start = parseTime(created);
  const end = TERMINAL.has(status) ? parseTime(updated) : Date.now();
  return formatDuration(start === null || end === null ? null : end - start);
}

function renderTree(tree) {
  const text = JSON.stringify(tree.steps);
  if (text === lastTree) return;
  lastTree = text;
  const list = document.getElementById("steps");
  if (!tree.steps.length) {
    list.replaceChildren(el("li", { class: "muted" }, "no step has started yet"));
    return;
  }
  list.replaceChildren(
    ...tree.steps.map((step) => {
      const item = el("li", { class: "step", "data-step": step.name });
      const head = el("div", { class: "node-head" }, statusBadge(step.status), el("strong", {}, step.name));
      head.append(el("span", { class: "muted" }, span(step.created_at, step.updated_at, step.status)));
      item.append(head, statusBox(step.status_details, `step:${step.id}`));
      const error = errorBox(step.error_details);
      if (error) item.append(error);
      if (step.tasks.length) {
        const tasks = el("ul", { class: "tasks" });
        for (const task of step.tasks) {
          const node = el("li", { class: "task", "data-task": task.name });
          node.append(
            el("div", { class: "node-head" }, statusBadge(task.status), el("code", {}, task.name),
              el("span", { class: "muted" }, span(task.created_at, task.updated_at, task.status))),
            statusBox(task.status_details, `task:${task.id}`),
          );
          // A task's error is most often its step's, word for word: shown once.
          const same = JSON.stringify(task.error_details) === JSON.stringify(step.error_details);
          const taskError = same ? null : errorBox(task.error_details);
          if (taskError) node.append(taskError);
          tasks.append(node);
        }
        item.append(tasks);
      }
      return item;
    }),
  );
}

function renderResults(results) {
  const text = JSON.stringify(results.data);
  if (text === lastResults) return;
  lastResults = text;
  const list = document.getElementById("results");
  if (!results.data.length) {
    list.replaceChildren(el("li", { class: "muted" }, "none yet"));
    return;
  }
  list.replaceChildren(
    ...results.data.map((result) => {
      const href = `${jobPath}/results/${encodeURIComponent(result.name)}/download`;
      return el("li", {},
        el("a", { href, download: result.name, class: "download" }, `⤓ ${result.name}`),
        el("span", { class: "muted" }, ` ${result.artifact_url} · ${localTime(result.created_at)}`));
    }),
  );
}

async function refresh() {
  if (gone) return;
  try {
    const [job, tree, results] = await Promise.all([
      api(jobPath), api(`${jobPath}/status`), api(`${jobPath}/results`),
    ]);
    renderHead(job);
    renderDetails(job);
    renderTree(tree);
    renderResults(results);
    problem.textContent = "";
    if (TERMINAL.has(job.status)) {
      setLive(false, "finished");
      poller.stop();
    } else {
      setLive(true, `live · ${new Date().toLocaleTimeString()}`);
    }
  } catch (error) {
    if (error.status === 404) {
      jobGone(`There is no job ${name} in workspace ${workspace} (${error.message}).`);
      return;
    }
    problem.textContent = error.message;
    setLive(false, "not updating");
  }
}

function jobGone(text) {
  gone = true;
  poller.stop();
  logs.stop();
  problem.textContent = text;
  setLive(false, "gone");
  for (const button of buttons) button.disabled = true;
}

// What each action moves a job to when it applies.
const MOVES_TO = {
  cancel: ["cancelling", "cancelled"],
  pause: ["pausing", "paused"],
  resume: ["resuming", "pending", "active", "created"],
};
const VERBS = { cancel: "Cancelling", pause: "Pausing", resume: "Resuming", delete: "Deleting" };

async function act(action) {
  for (const button of buttons) button.disabled = true;
  outcome.className = "outcome";
  outcome.textContent = `${VERBS[action]}…`;
  try {
    if (action === "delete") {
      await api(jobPath, { method: "DELETE" });
      outcome.textContent = "Deleted.";
      outcome.classList.add("good");
      jobGone("This job was deleted.");
      outcome.append(" ", el("a", { href: document.getElementById("back").href }, "Back to the jobs"));
      return;
    }
    const job = await api(`${jobPath}/${action}`, { method: "POST" });
    if (MOVES_TO[action].includes(job.status)) {
      outcome.textContent = `${action[0].toUpperCase()}${action.slice(1)} asked: the job is ${job.status}.`;
      outcome.classList.add("good");
    } else {
      // The API answers a cancel, pause or resume that does not apply with the job as it is.
      outcome.textContent = `Nothing to ${action}: the job is ${job.status}.`;
    }
  } catch (error) {
    outcome.textContent = `Not done: ${error.message}`;
    outcome.classList.add("bad");
  } finally {
    if (!gone) for (const button of buttons) button.disabled = false;
  }
  // The status moves on: follow it again (the poll stops once a job is finished).
  poller.stop();
  poller = every(POLL_MS, refresh);
}

const dialog = document.getElementById("confirm-delete");
document.getElementById("confirm-name").textContent = name;
dialog.addEventListener("close", () => {
  if (dialog.returnValue === "delete") act("delete");
});
for (const button of buttons) {
  button.addEventListener("click", () => {
    if (button.dataset.action === "delete") {
      dialog.returnValue = "";
      dialog.showModal();
    } else {
      act(button.dataset.action);
    }
  });
}

let poller = every(POLL_MS, refresh);
const logs = new LogView(
  document.getElementById("log"), document.getElementById("log-state"), document.getElementById("log-end"),
  `${jobPath}/logs`,
);
logs.start();
