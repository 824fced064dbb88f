// The live log of one job: opens on the tail, follows new lines as they arrive (the API's
// `follow=true` NDJSON stream, resumed from the last line's cursor after a broken connection),
// pages back with the API's cursors when scrolled to the top, and keeps at most MAX_LINES lines
// in the page, so a large log is never loaded whole.
//
// Cursors: the tail's `prev_page` (a cursor "before the tail's first line") is where the stream
// starts: the stream sends the tail's lines again, each with the cursor to resume after it, then
// every new one. `this.top` says how to reach the lines above the first one shown:
// {before: c} (a page cursor for them), {after: c} (the cursor of the line just above, one
// request turns it into a {before}), or null (the log's first line is shown).
import { ApiError, api, el } from "./common.js";

const TAIL = 200;
const PAGE = 200;
const MAX_LINES = 5000;
const FLUSH_MS = 40;
const RETRY_MS = 1000;
const STDERR_PREFIX = "[stderr] ";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class LogView {
  constructor(box, stateLine, endButton, logsPath) {
    this.box = box;
    this.stateLine = stateLine;
    this.endButton = endButton;
    this.path = logsPath;
    this.top = null;
    this.count = 0;
    this.pending = [];
    this.flushTimer = null;
    this.following = true;
    this.unseen = 0;
    this.waiters = [];
    this.resumeCursor = null;
    this.loadingOlder = false;
    this.stopped = false;
    this.dropped = 0;
    this.parked = false;
    this.visibleWaiters = [];
    box.addEventListener("scroll", () => this.onScroll());
    endButton.addEventListener("click", () => this.toEnd());
    // A hidden tab lets go of its stream: a browser opens at most 6 connections to one host, and
    // a few job pages left open in the background must not starve the others.
    document.addEventListener("visibilitychange", () => {
      if (document.hidden && this.controller && !this.stopped) {
        this.parked = true;
        this.controller.abort();
      } else if (!document.hidden) {
        const waiters = this.visibleWaiters;
        this.visibleWaiters = [];
        for (const resolve of waiters) resolve();
      }
    });
  }

  untilVisible() {
    return new Promise((resolve) => (document.hidden ? this.visibleWaiters.push(resolve) : resolve()));
  }

  async start() {
    let tail;
    try {
      tail = await api(`${this.path}?tail=${TAIL}`);
    } catch (error) {
      this.say(error.message);
      return;
    }
    this.dropped = tail.dropped_lines || 0;
    this.top = tail.prev_page ? { before: tail.prev_page } : null;
    if (this.top === null) this.showStart();
    this.follow(tail.prev_page);
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
    this.release();
  }

  async follow(startCursor) {
    while (!this.stopped) {
      const query = new URLSearchParams({ follow: "true" });
      const from = this.resumeCursor || startCursor;
      if (from) query.set("page_cursor", from);
      this.controller = new AbortController();
      try {
        const response = await fetch(`${this.path}?${query}`, {
          credentials: "same-origin", signal: this.controller.signal,
        });
        if (response.status === 401) {
          location.reload();
          return;
        }
        if (!response.ok) {
          const body = await response.json().catch(() => ({ detail: response.statusText }));
          throw new ApiError(response.status, body.detail);
        }
        this.say("following");
        await this.read(response.body);
        this.flush();
        this.say("the job has finished: this is the whole log's end");
        this.box.dataset.ended = "true";
        return;
      } catch (error) {
        if (this.stopped) return;
        if (this.parked) {
          this.flush();
          this.say("paused while the tab is hidden");
          await this.untilVisible();
          this.parked = false;
          continue; // resumes after the last line received
        }
        if (error instanceof ApiError && error.status < 500) {
          this.say(error.message);
          return;
        }
        this.say(`reconnecting… (${error.message})`);
        await sleep(RETRY_MS);
      }
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      // Scrolled up with a full view: stop reading (the daemon waits) until the reader comes back.
      while (!this.following && this.count + this.pending.length >= MAX_LINES && !this.stopped) {
        await new Promise((resolve) => this.waiters.push(resolve));
      }
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const parts = buffer.split("\n");
      buffer = parts.pop();
      for (const text of parts) if (text) this.receive(JSON.parse(text));
    }
  }

  receive(line) {
    this.resumeCursor = line.cursor;
    this.pending.push(line);
    if (this.pending.length >= PAGE) this.flush();
    else if (this.flushTimer === null) this.flushTimer = setTimeout(() => this.flush(), FLUSH_MS);
  }

  flush() {
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    if (!this.pending.length) return;
    const fragment = document.createDocumentFragment();
    for (const line of this.pending) fragment.append(this.lineNode(line));
    this.count += this.pending.length;
    if (!this.following) this.unseen += this.pending.length;
    this.pending = [];
    this.box.append(fragment);
    if (this.following) {
      this.trim();
      this.box.scrollTop = this.box.scrollHeight;
    } else {
      this.endButton.hidden = false;
      this.endButton.textContent = `↓ ${this.unseen.toLocaleString()} new line${this.unseen === 1 ? "" : "s"}`;
    }
    this.sayCount();
  }

  lineNode(line) {
    const stderr = line.stream === "stderr";
    let message = line.message;
    if (stderr && message.startsWith(STDERR_PREFIX)) message = message.slice(STDERR_PREFIX.length);
    const node = el("div", { class: stderr ? "line stderr" : "line" });
    if (line.cursor) node.dataset.cursor = line.cursor;
    const ts = line.timestamp || "";
    node.append(
      el("time", { datetime: ts, title: ts }, ts.slice(11, 19)),
      el("span", { class: "src", title: `step ${line.job_step}, task ${line.job_task}` }, line.job_step),
    );
    if (stderr) node.append(el("span", { class: "err-tag" }, "stderr"));
    node.append(el("span", { class: "msg" }, message));
    return node;
  }

  // Keep the page light: the oldest lines go (they are paged back again on scroll).
  trim() {
    while (this.count > MAX_LINES) {
      const first = this.box.firstElementChild;
      if (!first) return;
      first.remove();
      if (first.classList.contains("log-start")) continue;
      if (first.classList.contains("older")) {
        this.count -= first.childElementCount;
        this.top = { before: first.dataset.before };
      } else {
        this.count -= 1;
        this.top = first.dataset.cursor ? { after: first.dataset.cursor } : this.top;
      }
    }
  }

  async loadOlder() {
    if (this.loadingOlder || this.top === null) return;
    this.loadingOlder = true;
    try {
      let before = this.top.before;
      if (!before) {
        const probe = await api(`${this.path}?${new URLSearchParams({ page_cursor: this.top.after, limit: "1" })}`);
        before = probe.prev_page;
      }
      if (!before) {
        this.top = null;
        this.showStart();
        return;
      }
      const page = await api(`${this.path}?${new URLSearchParams({ page_cursor: before, limit: String(PAGE) })}`);
      const block = el("div", { class: "older", "data-before": before });
      for (const line of page.data) block.append(this.lineNode(line));
      const height = this.box.scrollHeight;
      this.box.prepend(block);
      this.count += page.data.length;
      // The lines the reader was looking at stay where they were.
      this.box.scrollTop += this.box.scrollHeight - height;
      this.top = page.prev_page ? { before: page.prev_page } : null;
      if (this.top === null) this.showStart();
      this.sayCount();
    } catch (error) {
      this.say(error.message);
    } finally {
      this.loadingOlder = false;
    }
  }

  showStart() {
    if (this.box.querySelector(".log-start")) return;
    const note = this.dropped ? ` (${this.dropped.toLocaleString()} lines were dropped by the size limit)` : "";
    this.box.prepend(el("div", { class: "log-start" }, `start of the log${note}`));
  }

  onScroll() {
    const box = this.box;
    const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    if (atEnd !== this.following) {
      this.following = atEnd;
      if (atEnd) {
        this.unseen = 0;
        this.endButton.hidden = true;
        this.trim();
        this.release();
      }
    }
    if (box.scrollTop < 80) this.loadOlder();
  }

  toEnd() {
    this.box.scrollTop = this.box.scrollHeight;
    this.onScroll();
  }

  release() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const resolve of waiters) resolve();
  }

  say(text) {
    this.state = text;
    this.sayCount();
  }

  sayCount() {
    const lines = `${this.count.toLocaleString()} line${this.count === 1 ? "" : "s"} shown`;
    this.stateLine.textContent = this.state ? `${this.state} · ${lines}` : lines;
  }
}
