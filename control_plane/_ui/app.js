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

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body, signal });
  const text = await response.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { detail: `HTTP ${response.status} from something that is not the API (a proxy?)` };
  }
  if (!response.ok) {
    if (response.status === 401) askForToken(data.detail);
    throw new ApiError(response.status, data);
  }
  return data;
}

// Each route() starts a new view: what the one before started (polling, a stream, waits)
// is stopped, and a view that was still loading finds out after each await and stops.
let view = { abort: new AbortController(), stops: [] };

function stale(mine) {
  return mine !== view;
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

function localInput(iso) {
  // An instant as a datetime-local input shows it: this browser's local time.
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "";
  const d = new Date(t - new Date(t).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

async function runsView(params, mine) {
  const signal = mine.abort.signal;
  const workflows = await api("/v1/workflows?page_size=100", { signal }).catch(() => ({ workflows: [] }));
  if (stale(mine)) return;
  const workflow = params.get("workflow") || "";
  const status = params.get("status") || "";
  const before = params.get("before") || ""; // an instant (ISO 8601): the same for everyone
  const form = el(
    "form",
    {
      class: "filters",
      onchange: (e) => { e.preventDefault(); go(form); },
      onsubmit: (e) => { e.preventDefault(); go(form); },
    },
    el("label", {}, "Workflow ",
      el("select", { name: "workflow" }, el("option", { value: "" }, "all"),
        workflows.workflows.map((w) => el("option", { value: w.name, selected: w.name === workflow }, w.name)))),
    el("label", {}, "Status ",
      el("select", { name: "status" }, el("option", { value: "" }, "all"),
        STATUSES.map((s) => el("option", { value: s, selected: s === status }, s.toLowerCase())))),
    el("label", {}, "Started before ", el("input", { type: "datetime-local", name: "before", value: localInput(before) || false })),
  );
  const go = (f) => {
    const data = [...new FormData(f)].filter(([, v]) => v).map(([k, v]) =>
      k === "before" && !Number.isNaN(Date.parse(v)) ? [k, new Date(v).toISOString()] : [k, v]);
    location.hash = `#/?${new URLSearchParams(data)}`;
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
  let paged = false; // once older pages are shown, the list stops refreshing page one

  const problem = el("p", { class: "error", role: "alert" });
  async function load(append) {
    let page;
    try {
      page = await api(`/v1/runs?${query}${append && next ? `&page_token=${encodeURIComponent(next)}` : ""}`, { signal });
      problem.textContent = "";
    } catch (error) {
      if (!stale(mine)) problem.textContent = `Not up to date: ${error.message}`;
      return;
    }
    if (stale(mine)) return;
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
  more.addEventListener("click", () => { paged = true; load(true); });
  show(el("h1", {}, "Runs"), form, problem, list, more);
  await load(false);
  if (stale(mine)) return;
  // The first page follows what happens: new runs, and runs that change.
  const refresher = setInterval(() => { if (!document.hidden && !paged) load(false); }, 2000);
  mine.stops.push(() => clearInterval(refresher));
}

// --- workflows and the start form ------------------------------------------------------

async function workflowsView(mine) {
  const { workflows } = await api("/v1/workflows?page_size=100", { signal: mine.abort.signal });
  if (stale(mine)) return;
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

async function runView(runId, mine) {
  const signal = mine.abort.signal;
  const { run } = await api(`/v1/runs/${encodeURIComponent(runId)}`, { signal });
  if (stale(mine)) return;
  const state = el("p", { class: "state", "aria-live": "polite" });
  const output = el("pre", { class: "output", "aria-label": "Output", tabindex: "0" });
  const timeline = el("ol", { class: "timeline", "aria-label": "Timeline" });
  const view = new LiveView(output, timeline);
  const outcome = el("div", { class: "outcome" });
  const cancel = el("button", { type: "button", onclick: async () => {
    cancel.disabled = true;
    try { await api(`/v1/runs/${encodeURIComponent(runId)}:cancel`, { method: "POST", body: "{}" }); }
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
  const notice = el("p", { class: "muted notice", role: "status" });
  const waterfall = el("div", { class: "waterfall", "aria-label": "Trace" });
  const requests = new Map(); // input name -> its form, while the run waits for it
  const traceButton = el("button", { type: "button", onclick: () => drawTrace(runId, waterfall) }, "Refresh the trace");
  show(
    el("h1", {}, run.workflow, " ", el("small", {}, runId)),
    el("div", { class: "bar" }, state, cancel),
    notice,
    asks,
    el("h2", {}, "Output"), output, view.moreOutput,
    outcome,
    el("h2", {}, "Trace"), traceButton, waterfall,
    el("h2", {}, "Timeline"), view.moreTimeline, timeline,
  );
  drawTrace(runId, waterfall);

  // The whole history once, then live, resumed after a drop from the last event seen.
  window.__longline.seen = [];
  window.__longline.endedAt = undefined;
  let ended = false;
  const received = new Set(); // inputs that arrived, so their requests need no form
  const handle = (type, id, data) => {
    const event = JSON.parse(data);
    window.__longline.seen.push(id);
    attempt = event.attempt || attempt;
    if (type === "EVENT_TYPE_OUTPUT") {
      view.write(event.message);
    } else if (type !== "EVENT_TYPE_COMPONENT_STARTED" && type !== "EVENT_TYPE_COMPONENT_FINISHED") {
      view.note(type, event);
    }
    const ask = (request) => {
      if (request.name && !requests.has(request.name)) {
        const form = inputForm(runId, request);
        requests.set(request.name, form);
        asks.append(form);
      }
    };
    const drop = (name) => {
      const form = requests.get(name);
      if (form) { form.remove(); requests.delete(name); }
    };
    if (type === "EVENT_TYPE_INPUT_REQUESTED") {
      const request = parseJson(event.dataJson) || {};
      // Sent early, it is taken without a wait; a wait (RUN_WAITING) shows the form after all.
      if (!received.has(request.name)) ask(request);
      asked.set(request.name, request);
    }
    if (type === "EVENT_TYPE_RUN_WAITING") {
      const wait = parseJson(event.dataJson) || {};
      if (wait.kind === "input" && asked.has(wait.name)) ask(asked.get(wait.name));
    }
    if (type === "EVENT_TYPE_INPUT_RECEIVED") {
      const name = (parseJson(event.dataJson) || {}).name;
      received.add(name);
      drop(name);
    }
    if (type === "EVENT_TYPE_RUN_STARTED") {
      // A new attempt: whatever the run waited for has ended (arrived, or timed out).
      for (const name of [...requests.keys()]) drop(name);
      received.clear();
    }
    if (type === "EVENT_TYPE_RUN_STARTED") status = "RUN_STATUS_RUNNING";
    if (type === "EVENT_TYPE_RUN_WAITING") status = "RUN_STATUS_WAITING";
    if (TERMINAL.has(type)) {
      ended = true;
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
  const asked = new Map(); // name -> its request, for a wait that comes after
  follow(runId, handle, mine, () => ended, (text) => { notice.textContent = text; });
}

// A run's event stream over fetch, read as Server-Sent Events, with the tab's token in the
// Authorization header (no token in any URL, none that expires mid-run). A dropped stream
// is read again from the last event seen (Last-Event-ID), after a wait that doubles up to
// 10 s; the end (204, or the terminal event) stops it, and so does leaving the view.
async function follow(runId, handle, mine, ended, say) {
  let after = "";
  let delay = 500;
  const url = `/v1/runs/${encodeURIComponent(runId)}/events`;
  while (!stale(mine) && !ended()) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (token()) headers.Authorization = `Bearer ${token()}`;
      if (after) headers["Last-Event-ID"] = after;
      const response = await fetch(url, { headers, signal: mine.abort.signal });
      if (response.status === 204) return; // ended, and every event was seen
      if (!response.ok) {
        const problem = await response.json().catch(() => ({}));
        if (response.status === 401) askForToken(problem.detail);
        if (response.status < 500 && response.status !== 429) {
          say(`The live view stopped: ${problem.detail || response.status} (${problem.reason || ""})`);
          return;
        }
        throw new Error(problem.detail || `HTTP ${response.status}`);
      }
      window.__longline.opens += 1;
      say("");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let id = "", type = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) id = line.slice(4);
            else if (line.startsWith("event: ")) type = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data && !stale(mine)) {
            after = id;
            handle(type, id, data);
          }
        }
      }
      delay = 500;
    } catch (error) {
      if (stale(mine)) return;
      say(`Reconnecting (${error.message})…`);
    }
    if (stale(mine) || ended()) return;
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10_000);
  }
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

let lastPath = null;

async function route() {
  view.abort.abort();
  for (const stop of view.stops) stop();
  const mine = (view = { abort: new AbortController(), stops: [] });
  const [path, query] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  try {
    const run = /^\/runs\/([^/]+)$/.exec(path || "");
    if (run) await runView(decodeURIComponent(run[1]), mine);
    else if (path === "/workflows") await workflowsView(mine);
    else await runsView(params, mine);
  } catch (error) {
    if (!stale(mine)) show(failure(error));
  }
  // Focus moves to the new page only when it is one (not when a filter changed).
  if (!stale(mine) && path !== lastPath) main.focus({ preventScroll: true });
  lastPath = path;
}

window.addEventListener("hashchange", route);
route();
