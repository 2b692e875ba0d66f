// The longline web UI: plain modules on the HTTP API (docs/http.md), nothing else.
// Views: #/ (runs), #/workflows (and their start form), #/runs/ID (one run, live).

const main = document.getElementById("main");
const TERMINAL = new Set([
  "EVENT_TYPE_RUN_SUCCEEDED",
  "EVENT_TYPE_RUN_FAILED",
  "EVENT_TYPE_RUN_CANCELLED",
]);
const STATUSES = ["QUEUED", "RUNNING", "WAITING", "SUCCEEDED", "FAILED", "CANCELLED"];
const EVENT_TYPES = [
  "RUN_QUEUED", "RUN_STARTED", "STATUS", "OUTPUT", "COMPONENT_STARTED", "COMPONENT_FINISHED",
  "RUN_RETRYING", "RUN_SUCCEEDED", "RUN_FAILED", "RUN_CANCELLED", "INPUT_REQUESTED",
  "INPUT_RECEIVED", "RUN_WAITING", "PROGRESS", "CHILD_STARTED", "CHILD_ENDED",
  "UNSPECIFIED",
].map((t) => "EVENT_TYPE_" + t);

// What the run view has handled, for tests and for a look from the console.
window.__longline = { seen: [], opens: 0 };

// --- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || `HTTP ${status}`);
    this.status = status;
    this.reason = problem.reason || "";
  }
}

function token() {
  return sessionStorage.getItem("longline.token") || "";
}

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body });
  const text = await response.text();
  const data = text ? JSON.parse(text) : {};
  if (!response.ok) {
    if (response.status === 401) askForToken(data.detail);
    throw new ApiError(response.status, data);
  }
  return data;
}

function askForToken(why) {
  const dialog = document.getElementById("token-dialog");
  document.getElementById("token-error").textContent = why || "";
  document.getElementById("token-button").hidden = false;
  if (!dialog.open) dialog.showModal();
}

document.getElementById("token-form").addEventListener("submit", () => {
  sessionStorage.setItem("longline.token", document.getElementById("token-input").value.trim());
  route();
});
document.getElementById("token-button").addEventListener("click", () => askForToken(""));

// --- small helpers ---------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== false && value !== undefined) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const short = (name, prefix) => (name || "").replace(prefix, "");
const when = (time) => (time ? new Date(time).toLocaleTimeString() : "");

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function failure(error) {
  return el("p", { class: "error", role: "alert" }, `${error.message}${error.reason ? ` (${error.reason})` : ""}`);
}

// --- runs ------------------------------------------------------------------------------

let refresher = null;

async function runsView(params) {
  const workflows = await api("/v1/workflows?page_size=100").catch(() => ({ workflows: [] }));
  const workflow = params.get("workflow") || "";
  const status = params.get("status") || "";
  const before = params.get("before") || ""; // a local date and time, as the input gives it
  const form = el(
    "form",
    { class: "filters", onchange: (e) => { e.preventDefault(); go(form); } },
    el("label", {}, "Workflow ",
      el("select", { name: "workflow" }, el("option", { value: "" }, "all"),
        workflows.workflows.map((w) => el("option", { value: w.name, selected: w.name === workflow }, w.name)))),
    el("label", {}, "Status ",
      el("select", { name: "status" }, el("option", { value: "" }, "all"),
        STATUSES.map((s) => el("option", { value: s, selected: s === status }, s.toLowerCase())))),
    el("label", {}, "Started before ", el("input", { type: "datetime-local", name: "before", value: before || false })),
  );
  const go = (f) => {
    const data = new FormData(f);
    const query = new URLSearchParams([...data].filter(([, v]) => v));
    location.hash = `#/?${query}`;
  };
  const table = el("tbody");
  const list = el("table", { class: "runs" },
    el("thead", {}, el("tr", {}, el("th", {}, "Run"), el("th", {}, "Workflow"), el("th", {}, "Status"), el("th", {}, "Started"))),
    table);
  const more = el("button", { type: "button", hidden: true }, "Older runs");
  let next = "";
  const query = new URLSearchParams({ page_size: "50" });
  if (workflow) query.set("workflow", workflow);
  if (status) query.set("status", status);
  if (before && !Number.isNaN(Date.parse(before))) query.set("created_before", new Date(before).toISOString());

  async function load(append) {
    const page = await api(`/v1/runs?${query}${append && next ? `&page_token=${encodeURIComponent(next)}` : ""}`);
    const rows = page.runs.map((run) =>
      el("tr", {},
        el("td", {}, el("a", { href: `#/runs/${run.runId}` }, run.runId.slice(0, 12))),
        el("td", {}, run.workflow),
        el("td", { class: `status ${short(run.status, "RUN_STATUS_").toLowerCase()}` }, short(run.status, "RUN_STATUS_").toLowerCase()),
        el("td", {}, when(run.createTime))));
    if (append) table.append(...rows);
    else table.replaceChildren(...rows);
    next = page.nextPageToken;
    more.hidden = !next;
  }
  more.addEventListener("click", () => load(true));
  show(el("h1", {}, "Runs"), form, list, more);
  await load(false);
  // The first page follows what happens: new runs, and runs that change.
  refresher = setInterval(() => { if (!document.hidden) load(false).catch(() => {}); }, 2000);
}

// --- workflows and the start form ------------------------------------------------------

async function workflowsView() {
  const { workflows } = await api("/v1/workflows?page_size=100");
  const items = workflows.map((w) => {
    const input = el("textarea", { name: "input", rows: 4, "aria-label": `Input for ${w.name} (JSON)`, spellcheck: "false" }, "{}");
    const problem = el("p", { class: "error", role: "alert" });
    const start = el("button", { type: "submit" }, `Start ${w.name}`);
    const check = () => {
      try {
        JSON.parse(input.value || "null");
        problem.textContent = "";
        start.disabled = false;
      } catch (e) {
        problem.textContent = `Not JSON: ${e.message}`;
        start.disabled = true;
      }
    };
    input.addEventListener("input", check);
    const form = el("form", { class: "start", "data-workflow": w.name, onsubmit: async (e) => {
      e.preventDefault();
      check();
      if (start.disabled) return;
      start.disabled = true;
      try {
        const started = await api(`/v1/workflows/${encodeURIComponent(w.name)}/runs`, { method: "POST", body: input.value || "null" });
        location.hash = `#/runs/${started.run.runId}`;
      } catch (error) {
        problem.textContent = `${error.message} (${error.reason})`;
        start.disabled = false;
      }
    } }, input, problem, start);
    return el("li", {}, el("h2", {}, w.name), el("p", {}, w.description || ""),
      el("p", { class: "muted" }, `${w.workers} worker${w.workers === 1 ? "" : "s"}`,
        (w.builds || []).some((b) => b) ? ` · builds ${w.builds.map((b) => b || "(none)").join(", ")}` : ""), form);
  });
  show(el("h1", {}, "Workflows"), el("ul", { class: "workflows" }, items));
}

// --- one run, live ---------------------------------------------------------------------

let source = null;

async function runView(runId) {
  const { run } = await api(`/v1/runs/${encodeURIComponent(runId)}`);
  const state = el("p", { class: "state" });
  const output = el("pre", { class: "output", "aria-label": "Output", tabindex: "0" });
  const timeline = el("ol", { class: "timeline", "aria-label": "Timeline" });
  const view = new LiveView(output, timeline);
  const outcome = el("div", { class: "outcome" });
  const cancel = el("button", { type: "button", onclick: async () => {
    cancel.disabled = true;
    try { await api(`/v1/runs/${runId}:cancel`, { method: "POST", body: "{}" }); }
    catch (error) { outcome.replaceChildren(failure(error)); cancel.disabled = false; }
  } }, "Cancel");
  let status = run.status;
  let attempt = run.attempt;
  const paint = () => {
    state.textContent = `${short(status, "RUN_STATUS_").toLowerCase()} · attempt ${attempt}`;
    state.className = `state status ${short(status, "RUN_STATUS_").toLowerCase()}`;
    cancel.hidden = ["RUN_STATUS_SUCCEEDED", "RUN_STATUS_FAILED", "RUN_STATUS_CANCELLED"].includes(status);
  };
  paint();
  const asks = el("div", { class: "asks" });
  const waterfall = el("div", { class: "waterfall", "aria-label": "Trace" });
  const requests = new Map(); // input name -> its form, while the run waits for it
  const traceButton = el("button", { type: "button", onclick: () => drawTrace(runId, waterfall) }, "Refresh the trace");
  show(
    el("h1", {}, run.workflow, " ", el("small", {}, runId)),
    el("div", { class: "bar" }, state, cancel),
    asks,
    el("h2", {}, "Output"), output, view.moreOutput,
    outcome,
    el("h2", {}, "Trace"), traceButton, waterfall,
    el("h2", {}, "Timeline"), view.moreTimeline, timeline,
  );
  drawTrace(runId, waterfall);

  // The whole history once, then live: EventSource resumes by itself with Last-Event-ID
  // after a drop, and a reload starts again from the first event.
  window.__longline.seen = [];
  window.__longline.endedAt = undefined;
  let url = `/v1/runs/${encodeURIComponent(runId)}/events`;
  if (token()) {
    const minted = await api(`/v1/runs/${encodeURIComponent(runId)}/tokens`, { method: "POST", body: "{}" });
    url += `?access_token=${encodeURIComponent(minted.token)}`;
  }
  source = new EventSource(url);
  source.onopen = () => { window.__longline.opens += 1; };
  const handle = (e) => {
    const event = JSON.parse(e.data);
    window.__longline.seen.push(e.lastEventId);
    attempt = event.attempt || attempt;
    const type = e.type;
    if (type === "EVENT_TYPE_OUTPUT") {
      view.write(event.message);
    } else if (type !== "EVENT_TYPE_COMPONENT_STARTED" && type !== "EVENT_TYPE_COMPONENT_FINISHED") {
      view.note(type, event);
    }
    if (type === "EVENT_TYPE_INPUT_REQUESTED") {
      const request = parseJson(event.dataJson) || {};
      if (request.name && !requests.has(request.name)) {
        const form = inputForm(runId, request);
        requests.set(request.name, form);
        asks.append(form);
      }
    }
    if (type === "EVENT_TYPE_INPUT_RECEIVED") {
      const name = (parseJson(event.dataJson) || {}).name;
      const form = requests.get(name);
      if (form) { form.remove(); requests.delete(name); }
    }
    if (type === "EVENT_TYPE_RUN_STARTED") status = "RUN_STATUS_RUNNING";
    if (type === "EVENT_TYPE_RUN_WAITING") status = "RUN_STATUS_WAITING";
    if (TERMINAL.has(type)) {
      window.__longline.endedAt = performance.now(); // the whole history is in
      status = "RUN_STATUS_" + short(type, "EVENT_TYPE_RUN_");
      for (const form of requests.values()) form.remove();
      requests.clear();
      drawTrace(runId, waterfall);
      if (type === "EVENT_TYPE_RUN_SUCCEEDED") {
        outcome.replaceChildren(el("h2", {}, "Result"), el("pre", { class: "result" }, prettyJson(event.dataJson)));
      } else if (type === "EVENT_TYPE_RUN_FAILED") {
        const error = parseJson(event.dataJson) || {};
        const where = [error.component ? `in ${error.component}` : "", `attempt ${event.attempt}`].filter(Boolean).join(", ");
        outcome.replaceChildren(el("h2", {}, "Error"),
          el("p", { class: "error", role: "alert" }, `${error.type || "Error"}: ${error.message || event.message} (${where})`),
          el("details", {}, el("summary", {}, "Details"), el("pre", { class: "error" }, prettyJson(event.dataJson))));
      }
    }
    view.later(paint);
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, handle);
}

// What a run's events draw, a frame at a time: a run with 10,000 events is read as fast
// as the stream brings it, and drawn at most once per animation frame. The output shows
// its last OUTPUT_SHOWN characters and the timeline its last TIMELINE_SHOWN entries,
// each with a button for the rest, so the page stays light however long the run.
const OUTPUT_SHOWN = 100_000;
const TIMELINE_SHOWN = 300;

class LiveView {
  constructor(output, timeline) {
    this.output = output;
    this.timeline = timeline;
    this.text = "";
    this.textDirty = false;
    this.allText = false;
    this.entries = [];
    this.drawn = 0; // entries drawn so far
    this.allEntries = false;
    this.frame = 0;
    this.after = [];
    this.moreOutput = el("button", { type: "button", hidden: true, onclick: () => {
      this.allText = true; this.textDirty = true; this.schedule();
    } });
    this.moreTimeline = el("button", { type: "button", hidden: true, onclick: () => {
      this.allEntries = true; this.timeline.replaceChildren(); this.drawn = 0; this.schedule();
    } });
  }

  write(text) {
    this.text += text;
    this.textDirty = true;
    this.schedule();
  }

  note(type, event) {
    this.entries.push([type, event.time, event.message]);
    this.schedule();
  }

  later(fn) {
    if (!this.after.includes(fn)) this.after.push(fn);
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    if (this.textDirty) {
      this.textDirty = false;
      const out = this.output;
      const atEnd = out.scrollHeight - out.scrollTop - out.clientHeight < 40;
      const cut = !this.allText && this.text.length > OUTPUT_SHOWN;
      out.textContent = cut ? this.text.slice(-OUTPUT_SHOWN) : this.text;
      this.moreOutput.hidden = !cut;
      this.moreOutput.textContent = `Show all ${this.text.length.toLocaleString()} characters`;
      if (atEnd) out.scrollTop = out.scrollHeight;
    }
    if (this.drawn < this.entries.length) {
      const first = this.allEntries ? this.drawn : Math.max(this.drawn, this.entries.length - TIMELINE_SHOWN);
      const items = this.entries.slice(first).map(([type, time, message]) =>
        el("li", { class: short(type, "EVENT_TYPE_").toLowerCase() },
          el("time", {}, when(time)), " ", short(type, "EVENT_TYPE_").toLowerCase().replaceAll("_", " "),
          message ? `: ${message}` : ""));
      this.timeline.append(...items);
      this.drawn = this.entries.length;
      if (!this.allEntries) {
        while (this.timeline.childElementCount > TIMELINE_SHOWN) this.timeline.firstElementChild.remove();
      }
      this.timeline.start = this.entries.length - this.timeline.childElementCount + 1;
      this.moreTimeline.hidden = this.allEntries || this.entries.length <= TIMELINE_SHOWN;
      this.moreTimeline.textContent = `Show all ${this.entries.length.toLocaleString()} entries`;
    }
    for (const fn of this.after.splice(0)) fn();
  }
}

function parseJson(text) {
  try { return JSON.parse(text); } catch { return null; }
}

// --- answering a request for input: a form drawn from its JSON Schema ------------------

function inputForm(runId, request) {
  const schema = request.schema || {};
  const payload = el("textarea", { rows: 3, class: "payload", "aria-label": "The answer as JSON", spellcheck: "false" });
  const problem = el("p", { class: "error", role: "alert" });
  const fields = [];
  const properties = schema.type === "object" && schema.properties ? schema.properties : null;
  const required = new Set(schema.required || []);
  const sync = () => {
    const value = {};
    for (const { name, read } of fields) {
      const v = read();
      if (v !== undefined) value[name] = v;
    }
    payload.value = JSON.stringify(value);
  };
  if (properties) {
    for (const [name, property] of Object.entries(properties)) {
      const label = `${property.title || name}${required.has(name) ? " *" : ""}`;
      let control;
      let read;
      if (property.type === "boolean") {
        control = el("input", { type: "checkbox", name });
        read = () => control.checked;
      } else if (Array.isArray(property.enum)) {
        control = el("select", { name }, el("option", { value: "" }, "—"),
          property.enum.map((v) => el("option", { value: JSON.stringify(v) }, String(v))));
        read = () => (control.value ? JSON.parse(control.value) : undefined);
      } else if (property.type === "integer" || property.type === "number") {
        control = el("input", { type: "number", name, step: property.type === "integer" ? "1" : "any" });
        read = () => (control.value === "" ? undefined : Number(control.value));
      } else if (property.type === "string") {
        control = el("input", { type: "text", name });
        read = () => (control.value === "" ? undefined : control.value);
      } else {
        control = el("textarea", { name, rows: 2, "aria-label": `${name} (JSON)` });
        read = () => (control.value === "" ? undefined : parseJson(control.value) ?? control.value);
      }
      control.addEventListener("input", sync);
      control.addEventListener("change", sync);
      fields.push({ name, read });
      const help = property.description ? el("span", { class: "muted" }, ` ${property.description}`) : null;
      // A checkbox goes before its words, other controls after.
      const row = control.type === "checkbox"
        ? el("label", { class: "field" }, control, ` ${label}`, help)
        : el("label", { class: "field" }, `${label} `, control, help);
      fields[fields.length - 1].row = row;
    }
    sync();
  } else {
    payload.value = "null";
  }
  const send = el("button", { type: "submit" }, "Send");
  const form = el("form", { class: "ask", "data-input": request.name, onsubmit: async (e) => {
    e.preventDefault();
    let body;
    try {
      body = JSON.stringify(JSON.parse(payload.value || "null"));
    } catch (error) {
      problem.textContent = `Not JSON: ${error.message}`;
      return;
    }
    send.disabled = true;
    try {
      await api(`/v1/runs/${encodeURIComponent(runId)}/inputs/${encodeURIComponent(request.name)}`, { method: "POST", body });
      problem.textContent = "";
      form.classList.add("sent");
    } catch (error) {
      problem.textContent = `${error.message}`;
      send.disabled = false;
    }
  } },
    el("h2", {}, `Input: ${request.name}`),
    request.prompt ? el("p", {}, request.prompt) : null,
    fields.map((f) => f.row),
    el("details", {}, el("summary", {}, "As JSON"), payload),
    problem, send);
  return form;
}

// --- the trace: a waterfall of attempts and steps --------------------------------------

async function drawTrace(runId, into) {
  let trace;
  try {
    trace = await api(`/v1/runs/${encodeURIComponent(runId)}/trace`);
  } catch (error) {
    into.replaceChildren(failure(error));
    return;
  }
  const spans = trace.spans || [];
  if (!spans.length) { into.replaceChildren(el("p", { class: "muted" }, "Nothing yet.")); return; }
  const t = (s) => (s ? Date.parse(s) : NaN);
  const now = Date.now();
  const start = Math.min(...spans.map((s) => t(s.startTime)).filter((x) => !Number.isNaN(x)));
  const end = Math.max(...spans.map((s) => (Number.isNaN(t(s.endTime)) ? now : t(s.endTime))));
  const total = Math.max(end - start, 1);
  const children = new Map();
  for (const span of spans) {
    const key = span.parentSpanId || "";
    if (!children.has(key)) children.set(key, []);
    children.get(key).push(span);
  }
  const ids = new Set(spans.map((s) => s.spanId));
  const rows = [];
  const walk = (span, depth) => {
    const s = t(span.startTime);
    const e = Number.isNaN(t(span.endTime)) ? now : t(span.endTime);
    const status = short(span.status, "TRACE_SPAN_STATUS_").toLowerCase();
    const kind = short(span.kind, "TRACE_SPAN_KIND_").toLowerCase();
    const label = kind === "attempt" ? `attempt ${span.attempt}` : span.name || span.step || kind;
    const notes = [];
    if (span.worker && kind === "attempt") notes.push(`on ${span.worker}`);
    if (span.tries > 1) notes.push(`${span.tries} tries`);
    if (span.cacheHit) notes.push("cache hit");
    if (status === "replayed") notes.push("its checkpoint, not run again");
    if (Number(span.inputTokens) || Number(span.outputTokens)) notes.push(`${span.inputTokens}+${span.outputTokens} tokens`);
    if (span.error) notes.push(span.error);
    const bar = el("span", { class: `bar-fill ${status}`, style: false });
    bar.style.marginLeft = `${((s - start) / total) * 100}%`;
    bar.style.width = `${Math.max(((e - s) / total) * 100, 0.5)}%`;
    rows.push(el("li", { class: `span ${kind} ${status}`, "data-kind": kind, "data-status": status, "data-attempt": String(span.attempt) },
      el("span", { class: "name" }, "\u00a0".repeat(depth * 2), label),
      el("span", { class: "track" }, bar),
      el("span", { class: "took" }, `${Math.max(e - s, 0)} ms`),
      el("span", { class: "notes" }, `${status}${notes.length ? " · " + notes.join(" · ") : ""}`)));
    for (const child of children.get(span.spanId) || []) walk(child, depth + 1);
  };
  for (const span of spans) {
    if (!span.parentSpanId || !ids.has(span.parentSpanId)) walk(span, 0);
  }
  const summary = el("p", { class: "muted" },
    `${trace.inputTokens || 0}+${trace.outputTokens || 0} tokens${trace.truncated ? " · truncated" : ""}`);
  into.replaceChildren(summary, el("ol", { class: "spans" }, rows));
}

function prettyJson(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text || ""; }
}

// --- the router ------------------------------------------------------------------------

async function route() {
  if (source) { source.close(); source = null; }
  if (refresher) { clearInterval(refresher); refresher = null; }
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  try {
    const run = /^\/runs\/([^/]+)$/.exec(path || "");
    if (run) await runView(decodeURIComponent(run[1]));
    else if (path === "/workflows") await workflowsView();
    else await runsView(params);
  } catch (error) {
    show(failure(error));
  }
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
route();
