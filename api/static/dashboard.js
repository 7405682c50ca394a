// mftd dashboard: plain JavaScript, no framework, no build step, nothing from a CDN.
// The token is pasted once (or traded for a one-time login code) and sent as a header on every call;
// live updates come as Server-Sent Events read with fetch(), since EventSource cannot send headers.
"use strict";

const TOKEN_KEY = "mftd.token";
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const PACE_WINDOW = 20;
const MAX_EVENTS_SHOWN = 500;
const RECONNECT_MS = 2000;
const MAX_DRAWN_POINTS = 600;
const FORM_FIELDS = new Set(["model", "dataset", "method", "max_steps", "epochs", "learning_rate", "batch_size",
  "grad_accum_steps", "max_seq_len", "priority", "name"]);
// Metric fields drawn by a named chart, or never drawn; any other numeric field gets a chart of its own.
const METRIC_BOOKKEEPING = new Set(["id", "job_id", "step", "split", "created_at", "tokens", "learning_rate", "grad_norm"]);
const CHARTS = [
  { id: "loss", title: "Loss", always: true, series: [
    { name: "training", split: "train", fields: ["loss"] },
    { name: "validation", split: "eval", fields: ["loss"], dots: true },
  ] },
  { id: "tokens", title: "Tokens / s", series: [{ name: "tokens/s", split: "train", fields: ["tokens_per_second"] }] },
  { id: "memory", title: "Worker memory (MB)", series: [{ name: "RSS", fields: ["rss_mb"] }] },
  { id: "battery-temperature", title: "Battery temperature (°C)",
    series: [{ name: "°C", fields: ["battery_temperature_c", "battery_temp_c", "battery_temperature"] }] },
  { id: "battery-level", title: "Battery level (%)", series: [{ name: "%", fields: ["battery_percent", "battery_level"] }] },
];
const CHARTED = new Set(CHARTS.flatMap((chart) => chart.series.flatMap((series) => series.fields)));

const state = {
  token: localStorage.getItem(TOKEN_KEY),
  view: null,
  stream: null,
  jobs: [],
  device: null,
  models: [],
  datasets: [],
  pace: new Map(),
  job: null,
  metrics: new Map(),
  events: new Map(),
  schemaLoaded: false,
  drawPending: false,
};

// ---- small helpers -------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "text") element.textContent = value;
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function number(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en");
  return Number(value.toPrecision(digits)).toString();
}

function bytes(size) {
  if (size < 1024) return `${size} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = size / 1024, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function localTime(iso) {
  return iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }) : "–";
}

function showMessage(element, text, kind = "error") {
  element.textContent = "";
  element.className = `message ${kind}`;
  if (Array.isArray(text)) element.append(...text);
  else element.textContent = text;
}

function clearMessage(element) {
  element.textContent = "";
  element.className = "message";
}

// ---- the API ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function describeError(body, status) {
  const detail = body && typeof body === "object" ? (body.detail ?? body.error?.message ?? body) : body;
  if (Array.isArray(detail)) {
    return detail.map((item) => {
      if (!item || typeof item !== "object") return String(item);
      const where = (item.loc || []).filter((part) => !["body", "query", "path", "form"].includes(part)).join(".");
      return where ? `${where}: ${item.msg}` : item.msg;
    }).join("; ");
  }
  if (typeof detail === "string" && detail) return detail;
  return `the daemon answered HTTP ${status}`;
}

async function api(path, { method = "GET", json, form, headers = {}, token = state.token, raw = false } = {}) {
  const options = { method, headers: { ...headers }, cache: "no-store" };
  if (token) options.headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(json);
  } else if (form) {
    options.body = form;
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(0, `cannot reach the daemon (${error.message}); is mftd still running?`);
  }
  if (raw && response.ok) return response;
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!response.ok) {
    const error = new ApiError(response.status, describeError(body, response.status), body);
    if (response.status === 401 && state.token && token === state.token) logOut(`The daemon refused the token: ${error.message}`);
    throw error;
  }
  return body;
}

// Server-Sent Events over fetch(), so the Authorization header goes along.
async function readEvents(path, onEvent, signal) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" }, signal, cache: "no-store",
  });
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch { if (signal.aborted) throw new ApiError(0, "stopped"); }
    const error = new ApiError(response.status, describeError(body, response.status), body);
    if (response.status === 401 && state.token) logOut(`The daemon refused the token: ${error.message}`);  // the first refusal explains it
    throw error;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
      if (data.length && onEvent(name, JSON.parse(data.join("\n"))) === "stop") return true;
    }
  }
}

// Keeps one live stream open for the current view, reconnecting after a drop until the view changes.
function follow(path, onEvent) {
  stopFollowing();
  const controller = new AbortController();
  state.stream = controller;
  (async () => {
    while (!controller.signal.aborted) {
      try {
        setConnection("live", "ok");
        const ended = await readEvents(path, onEvent, controller.signal);
        if (ended) { setConnection("", ""); return; }
      } catch (error) {
        if (controller.signal.aborted || error.status === 401) return;
        if (error.status === 404) { setConnection("", ""); return; }
      }
      setConnection("reconnecting…", "warn");
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  })();
}

function stopFollowing() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

function setConnection(text, kind) {
  const element = $("connection");
  element.textContent = text;
  element.className = `connection ${kind}`;
}

// ---- log in / out ----------------------------------------------------------------------------------

function logOut(message) {
  state.token = null;
  localStorage.removeItem(TOKEN_KEY);
  stopFollowing();
  show("login");
  if (message) showMessage($("login-message"), message);
}

async function logIn(token) {
  await api("/v1/jobs?limit=1", { token });
  state.token = token;
  localStorage.setItem(TOKEN_KEY, token);
}

async function exchangeLoginCode(code) {
  const body = await api("/v1/auth/exchange", { method: "POST", token: code });
  state.token = body.token;
  localStorage.setItem(TOKEN_KEY, body.token);
}

function onLoginSubmit(event) {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) {
    showMessage($("login-message"), "Paste the token first: it is the file named token in mftd's data dir.");
    return;
  }
  showMessage($("login-message"), "Checking…", "info");
  logIn(token).then(() => {
    $("token-input").value = "";
    clearMessage($("login-message"));
    route();
  }).catch((error) => {
    const prefix = error.status === 401 ? "The daemon refused this token" : "Could not log in";
    showMessage($("login-message"), `${prefix}: ${error.message}`);
  });
}

// ---- views -----------------------------------------------------------------------------------------

function show(view) {
  state.view = view;
  $("boot").hidden = true;
  $("login-view").hidden = view !== "login";
  $("home-view").hidden = view !== "home";
  $("job-view").hidden = view !== "job";
  $("logout").hidden = view === "login";
}

async function route() {
  const hash = location.hash;
  const code = new URLSearchParams(hash.slice(1)).get("code");
  if (code) {
    history.replaceState(null, "", `${location.pathname}#/`);  // the code works once; keep it out of history
    try {
      await exchangeLoginCode(code);
    } catch (error) {
      logOut(`The login link did not work: ${error.message}`);
      return;
    }
  }
  if (!state.token) { logOut(); return; }
  const match = /^#\/jobs\/(\d+)$/.exec(location.hash);
  if (match) openJob(Number(match[1]));
  else openHome();
}

// ---- home: jobs, device, forms -------------------------------------------------------------------

function openHome() {
  show("home");
  document.title = "mftd";
  refreshChoices();
  follow("/v1/live/jobs", (name, payload) => {
    if (name === "jobs") { state.jobs = payload.data; notePace(state.jobs); renderJobs(); }
    else if (name === "device") { state.device = payload; renderDevice(); renderJobs(); }
  });
}

async function refreshChoices() {
  try {
    const [models, datasets] = await Promise.all([api("/v1/models?limit=1000"), api("/v1/datasets?limit=1000")]);
    state.models = models.data;
    state.datasets = datasets.data;
    fillSelect($("job-model"), state.models, "a model", (model) => `${model.name} (${model.architecture})`);
    fillSelect($("job-dataset"), state.datasets, "a dataset", (dataset) => `${dataset.name} (${dataset.format}, ${dataset.num_examples} examples)`);
    renderJobs();
  } catch (error) {
    if (error.status !== 401) showMessage($("job-form-message"), `Could not load models and datasets: ${error.message}`);
  }
}

function fillSelect(select, items, what, label) {
  const chosen = select.value;
  select.replaceChildren(h("option", { value: "", text: items.length ? `— choose ${what} —` : `no ${what.replace(/^an? /, "")}s yet` }));
  for (const item of items) select.append(h("option", { value: String(item.id), text: label(item) }));
  if (items.some((item) => String(item.id) === chosen)) select.value = chosen;
}

// Steps per second from the job list's own updates, seeded from the metrics of a running job.
function notePace(jobs) {
  const now = Date.now();
  for (const job of jobs) {
    if (job.status !== "running") { state.pace.delete(job.id); continue; }
    if (!state.pace.has(job.id)) {
      state.pace.set(job.id, []);
      api(`/v1/jobs/${job.id}/metrics?split=train`).then((metrics) => {
        const seeded = metrics.slice(-PACE_WINDOW).map((metric) => [Date.parse(metric.created_at), metric.step]);
        state.pace.set(job.id, [...seeded, ...(state.pace.get(job.id) || [])].slice(-PACE_WINDOW));
        renderJobs();
      }).catch(() => {});
    }
    const samples = state.pace.get(job.id);
    if (!samples.length || samples[samples.length - 1][1] !== job.step) samples.push([now, job.step]);
    if (samples.length > PACE_WINDOW) samples.shift();
  }
}

function etaSeconds(job, samples) {
  if (job.status !== "running" || !job.total_steps || !samples || samples.length < 2) return null;
  const [firstTime, firstStep] = samples[0];
  const [lastTime, lastStep] = samples[samples.length - 1];
  if (lastStep <= firstStep || lastTime <= firstTime) return null;
  const secondsPerStep = (lastTime - firstTime) / 1000 / (lastStep - firstStep);
  return Math.max(0, job.total_steps - job.step) * secondsPerStep;
}

// Why a job that is not running is not running (yet).
function waitReason(job) {
  const device = state.device;
  // The job's own verdict when the daemon reports one per job, else the device-wide one.
  const verdict = device && Array.isArray(device.jobs) ? device.jobs.find((item) => item.job_id === job.id) : null;
  const reasons = verdict ? (verdict.allowed ? [] : verdict.reasons || []) : device && !device.can_train ? device.reasons : [];
  const deviceReasons = reasons.join("; ");
  switch (job.status) {
    case "waiting":
      return `waits for the device: ${job.status_reason || deviceReasons || "conditions not met"}`;
    case "interrupted":
      return `${job.status_reason || "the worker stopped"}${job.not_before ? `; retries after ${localTime(job.not_before)}` : ""}`;
    case "queued": {
      const running = state.jobs.find((other) => other.status === "running" && other.id !== job.id);
      if (running) return `waits for job #${running.id} to finish (one job trains at a time)`;
      if (deviceReasons) return `waits for the device: ${deviceReasons}`;
      if (job.not_before && Date.parse(job.not_before) > Date.now()) return `waits until ${localTime(job.not_before)}`;
      return "starting soon";
    }
    case "running":
      return job.stop_request ? `stopping (${job.stop_request} requested)` : "";
    default:
      return job.status_reason || "";
  }
}

function progressBar(job) {
  const bar = h("div");
  bar.style.width = `${((job.progress ?? 0) * 100).toFixed(1)}%`;  // through CSSOM: the page's CSP forbids style attributes
  return h("div", { class: "progress", "aria-hidden": "true" }, bar);
}

function nameOf(items, id) {
  const item = items.find((candidate) => candidate.id === id);
  return item ? item.name : `#${id}`;
}

function renderJobs() {
  const list = $("job-list");
  if (!state.jobs.length) {
    list.replaceChildren(h("li", { class: "muted", text: "No jobs yet: register a model, upload a dataset, then submit a job below." }));
    return;
  }
  list.replaceChildren(...state.jobs.map((job) => {
    const eta = etaSeconds(job, state.pace.get(job.id));
    const steps = job.total_steps ? `step ${job.step}/${job.total_steps}` : `step ${job.step}`;
    const facts = [steps, job.loss !== null ? `loss ${number(job.loss)}` : null, eta !== null ? `ETA ${duration(eta)}` : null];
    const reason = waitReason(job);
    return h("li", {},
      h("a", { href: `#/jobs/${job.id}`, class: "job", "data-job-id": job.id, "data-status": job.status },
        h("span", { class: "job-head" },
          h("strong", { text: `#${job.id} ${job.name || ""}`.trim() }),
          h("span", { class: `badge status-${job.status}`, text: job.status })),
        h("span", { class: "muted small", text: `${nameOf(state.models, job.model_id)} on ${nameOf(state.datasets, job.dataset_id)} · ${job.config.method}` }),
        progressBar(job),
        h("span", { class: "small", text: facts.filter(Boolean).join(" · ") }),
        reason ? h("span", { class: "reason small", text: reason }) : null));
  }));
}

function readingValue(reading) {
  if (reading.unavailable_reason) return "unavailable";
  if (typeof reading.value === "boolean" || reading.unit === "bool") return reading.value ? "yes" : "no";
  return `${number(reading.value)} ${reading.unit}`.trim();
}

const label = (key) => String(key).replace(/_mb$/, "").replaceAll("_", " ");

// A list, not a table: on a phone the source notes get the full width under each reading.
function renderDevice() {
  const device = state.device;
  const verdict = $("device-verdict");
  verdict.textContent = device.can_train ? "Training may run now." : "Training is held back:";
  verdict.className = `verdict ${device.can_train ? "ok" : "held"}`;
  $("device-reasons").replaceChildren(...device.reasons.map((reason) => h("li", { text: reason })));
  $("device-readings").replaceChildren(h("ul", { class: "records" }, device.readings.map((reading) => h("li", {},
    h("span", { class: "record-head" }, h("strong", { text: label(reading.name) }), h("span", { text: readingValue(reading) })),
    h("span", { class: "muted small", text: reading.unavailable_reason || reading.source })))));
  // Whatever else the daemon reports about the device (each constraint and whether it holds, per-job verdicts, ...).
  const extra = Object.entries(device).filter(([key, value]) => !["can_train", "reasons", "readings"].includes(key) && value !== null);
  $("device-extra").replaceChildren(...extra.map(([key, value]) => h("div", {}, h("h3", { text: label(key) }), renderValue(value))));
}

function cellText(value) {
  if (value === true) return "✓ yes";
  if (value === false) return "✗ no";
  if (value === null || value === undefined) return "–";
  if (Array.isArray(value)) {
    if (value.every((item) => item === null || typeof item !== "object")) return value.length ? value.join("; ") : "–";
    const failing = value.filter((item) => item && item.holds === false).map((item) => item.constraint || item.name);
    return failing.length ? `${failing.join(", ")}: not met` : `${value.length} checked, all met`;
  }
  return typeof value === "object" ? JSON.stringify(value) : number(value);
}

// One record per object: its name (and ✓/✗ for a holds/allowed flag) on top, the other fields below.
function renderRecord(item) {
  const titleKey = ["constraint", "name", "job_id"].find((key) => key in item);
  const flagKey = ["holds", "allowed", "ok"].find((key) => typeof item[key] === "boolean");
  const title = titleKey === "job_id" ? `job #${item.job_id}` : titleKey ? label(item[titleKey]) : "";
  const rest = Object.entries(item).filter(([key, value]) => key !== titleKey && key !== flagKey && value !== null && value !== "");
  return h("li", { class: flagKey && !item[flagKey] ? "record-fails" : "" },
    h("span", { class: "record-head" }, h("strong", { text: title }),
      flagKey ? h("span", { class: item[flagKey] ? "holds" : "fails", text: item[flagKey] ? "✓ met" : "✗ not met" }) : null),
    rest.map(([key, value]) => h("span", { class: "small", text: `${label(key)}: ${cellText(value)}` })));
}

function renderValue(value) {
  if (Array.isArray(value) && value.every((item) => item && typeof item === "object" && !Array.isArray(item))) {
    return value.length ? h("ul", { class: "records" }, value.map(renderRecord)) : h("p", { class: "muted", text: "none" });
  }
  if (value && typeof value === "object" && !Array.isArray(value)) return h("ul", { class: "records" }, renderRecord(value));
  return h("p", { text: cellText(value) });
}

// ---- forms ----------------------------------------------------------------------------------------

function formatProblems(error) {
  const problems = error.body && Array.isArray(error.body.problems) ? error.body.problems : [];
  if (!problems.length) return error.message;
  const shown = problems.slice(0, 10).map((problem) => h("li", { text: problem.line ? `line ${problem.line}: ${problem.error}` : problem.error }));
  const more = problems.length > 10 ? [h("li", { text: `… and ${problems.length - 10} more` })] : [];
  return [h("span", { text: "The file is not a valid dataset (one JSON object per line):" }), h("ul", {}, shown, more)];
}

async function onModelSubmit(event) {
  event.preventDefault();
  const message = $("model-form-message");
  const name = $("model-name").value.trim();
  const path = $("model-path").value.trim();
  const missing = [!name && "a name", !path && "the model folder's path"].filter(Boolean);
  if (missing.length) { showMessage(message, `Missing: ${missing.join(" and ")}.`); return; }
  showMessage(message, "Checking the folder…", "info");
  try {
    const model = await api("/v1/models", { method: "POST", json: { name, path } });
    showMessage(message, `Model ${model.name} registered: ${model.architecture}, ${number(model.num_parameters)} parameters, context ${model.context_length}.`, "ok");
    event.target.reset();
    refreshChoices();
  } catch (error) {
    showMessage(message, `Not registered: ${error.message}`);
  }
}

function onDatasetFileChosen() {
  const file = $("dataset-file").files[0];
  if (file && !$("dataset-name").value.trim()) {
    $("dataset-name").value = file.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[-._]+/, "").slice(0, 100);
  }
}

async function onDatasetSubmit(event) {
  event.preventDefault();
  const message = $("dataset-form-message");
  const file = $("dataset-file").files[0];
  const name = $("dataset-name").value.trim();
  const missing = [!file && "a JSONL file", !name && "a name"].filter(Boolean);
  if (missing.length) { showMessage(message, `Missing: ${missing.join(" and ")}.`); return; }
  const form = new FormData();
  form.append("name", name);
  form.append("format", $("dataset-format").value);
  form.append("file", file, file.name);
  showMessage(message, `Uploading ${file.name} (${bytes(file.size)}); every line is checked…`, "info");
  try {
    const dataset = await api("/v1/datasets", { method: "POST", form });
    showMessage(message, `Dataset ${dataset.name} uploaded: ${dataset.num_examples} examples, ${dataset.format} format.`, "ok");
    event.target.reset();
    refreshChoices();
  } catch (error) {
    showMessage(message, error.status === 422 && error.body?.problems?.length ? formatProblems(error) : `Not uploaded: ${error.message}`);
  }
}

function readNumber(input, errors) {
  const text = input.value.trim();
  if (!text) return undefined;
  const value = Number(text);
  if (!Number.isFinite(value)) { errors.push(`${input.name} is not a number`); return undefined; }
  return value;
}

function readMoreField(input, errors) {
  const text = input.value.trim();
  if (!text) return undefined;
  const kind = input.dataset.kind;
  if (kind === "number" || kind === "integer") return readNumber(input, errors);
  if (kind === "boolean") return text === "true";
  if (kind === "string" || kind === "enum") return text;
  try { return JSON.parse(text); } catch { return text; }
}

async function onJobSubmit(event) {
  event.preventDefault();
  const message = $("job-form-message");
  const errors = [];
  const body = {};
  const model = $("job-model").value;
  const dataset = $("job-dataset").value;
  const missing = [!model && "a model", !dataset && "a dataset"].filter(Boolean);
  if (missing.length) errors.push(`choose ${missing.join(" and ")}`);
  if (model) body.model = Number(model);
  if (dataset) body.dataset = Number(dataset);
  body.method = $("job-method").value;
  for (const id of ["job-max-steps", "job-epochs", "job-learning-rate", "job-batch-size", "job-grad-accum", "job-max-seq-len", "job-priority"]) {
    const value = readNumber($(id), errors);
    if (value !== undefined) body[$(id).name] = value;
  }
  const name = $("job-name").value.trim();
  if (name) body.name = name;
  for (const input of $("job-more-fields").querySelectorAll("[data-field]")) {
    const value = readMoreField(input, errors);
    if (value === undefined) continue;
    // "constraints.min_battery_percent" goes into a nested object.
    const path = input.dataset.field.split(".");
    let target = body;
    for (const key of path.slice(0, -1)) target = target[key] ??= {};
    target[path[path.length - 1]] = value;
  }
  if (errors.length) { showMessage(message, `Not submitted: ${errors.join("; ")}.`); return; }
  showMessage(message, "Submitting…", "info");
  try {
    const job = await api("/v1/jobs", { method: "POST", json: body });
    clearMessage(message);
    location.hash = `#/jobs/${job.id}`;
  } catch (error) {
    showMessage(message, `Not submitted: ${error.message}`);
  }
}

// The fields the form does not show, built from the API's own schema, so new job settings appear here by themselves.
async function loadMoreFields() {
  if (state.schemaLoaded) return;
  state.schemaLoaded = true;
  const container = $("job-more-fields");
  try {
    const schema = await api("/openapi.json");
    const job = schema.components.schemas.JobCreate;
    for (const [field, property] of Object.entries(job.properties)) {
      if (FORM_FIELDS.has(field)) continue;
      const nested = objectSchema(schema, property);
      if (!nested) { container.append(moreField(field, property)); continue; }
      // A group of settings (such as the job's device constraints): one input per field.
      container.append(h("fieldset", { class: "group" }, h("legend", { text: field.replaceAll("_", " ") }),
        property.description ? h("span", { class: "help", text: property.description }) : null,
        Object.entries(nested.properties).map(([name, inner]) => moreField(`${field}.${name}`, inner))));
    }
  } catch (error) {
    state.schemaLoaded = false;
    container.replaceChildren(h("p", { class: "message error", text: `Could not load the job fields: ${error.message}` }));
  }
}

// The object schema a property refers to (directly or as "X or null"), if it is one with fields.
function objectSchema(schema, property) {
  for (const variant of property.anyOf || property.allOf || [property]) {
    const target = variant.$ref ? schema.components.schemas[variant.$ref.split("/").pop()] : variant;
    if (target && target.type === "object" && target.properties) return target;
  }
  return null;
}

function moreField(field, property) {
  const variants = (property.anyOf || [property]).filter((variant) => variant.type !== "null");
  const simple = variants.length === 1 ? variants[0] : null;
  const id = `more-${field.replace(".", "-")}`;
  const fallback = property.default;
  const placeholder = fallback === undefined || fallback === null ? "default" : typeof fallback === "string" ? fallback : JSON.stringify(fallback);
  let input;
  if (simple && (simple.enum || simple.const !== undefined)) {
    const values = simple.enum || [simple.const];
    input = h("select", { id, "data-field": field, "data-kind": "enum" },
      h("option", { value: "", text: placeholder === "default" ? "default" : `default (${placeholder})` }), values.map((value) => h("option", { value, text: value })));
  } else if (simple && simple.type === "boolean") {
    input = h("select", { id, "data-field": field, "data-kind": "boolean" },
      h("option", { value: "", text: placeholder === "default" ? "default" : `default (${placeholder})` }), h("option", { value: "true", text: "yes" }), h("option", { value: "false", text: "no" }));
  } else if (simple && (simple.type === "integer" || simple.type === "number")) {
    input = h("input", { id, type: "number", step: simple.type === "integer" ? "1" : "any", inputmode: "decimal",
      placeholder, "data-field": field, "data-kind": simple.type, name: field });
  } else {
    input = h("input", { id, type: "text", placeholder, "data-field": field, "data-kind": simple?.type === "string" ? "string" : "json",
      autocomplete: "off", spellcheck: "false" });
  }
  return h("div", {}, h("label", { for: id, text: field.split(".").pop().replaceAll("_", " ") }), input,
    property.description ? h("span", { class: "help", text: property.description }) : null);
}

// ---- one job ----------------------------------------------------------------------------------------

function openJob(jobId) {
  show("job");
  state.job = null;
  state.metrics = new Map();
  state.events = new Map();
  document.title = `mftd · job ${jobId}`;
  $("job-title").textContent = `Job #${jobId}`;
  for (const id of ["job-stats", "events", "artifacts", "checkpoints", "charts"]) $(id).replaceChildren();
  $("job-status").textContent = "";
  $("job-reason").textContent = "";
  $("job-config").textContent = "";
  clearMessage($("job-message"));
  drawCharts();
  if (!state.device) api("/v1/device").then((device) => { state.device = device; }).catch(() => {});
  follow(`/v1/live/jobs/${jobId}`, (name, payload) => {
    if (name === "job") renderJob(payload);
    else if (name === "metrics") { for (const metric of payload) state.metrics.set(`${metric.split}:${metric.step}`, metric); scheduleDraw(); }
    else if (name === "event") addEvent(payload);
    else if (name === "end") { refreshOutputs(jobId); return "stop"; }
    return undefined;
  });
  refreshOutputs(jobId);
}

function trainMetrics() {
  return [...state.metrics.values()].filter((metric) => metric.split === "train").sort((a, b) => a.step - b.step);
}

function renderJob(job) {
  const previous = state.job;
  state.job = job;
  $("job-title").textContent = `Job #${job.id}${job.name ? ` · ${job.name}` : ""}`;
  const badge = $("job-status");
  badge.textContent = job.status;
  badge.className = `badge status-${job.status}`;
  badge.dataset.status = job.status;
  $("job-reason").textContent = waitReason(job);
  $("job-bar").style.width = `${((job.progress ?? 0) * 100).toFixed(1)}%`;
  $("job-config").textContent = JSON.stringify(job.config, null, 2);
  for (const button of document.querySelectorAll("#job-view [data-action]")) {
    const action = button.dataset.action;
    button.disabled = action === "resume" ? job.status !== "paused"
      : action === "pause" ? FINAL.has(job.status) || job.status === "paused" || Boolean(job.stop_request)
      : FINAL.has(job.status) || job.stop_request === "cancel";
  }
  renderStats();
  if (previous && (previous.status !== job.status || previous.step !== job.step) && job.step % 5 === 0) refreshOutputs(job.id);
}

function renderStats() {
  const job = state.job;
  if (!job) return;
  const train = trainMetrics();
  const last = train[train.length - 1] || {};
  const evals = [...state.metrics.values()].filter((metric) => metric.split === "eval").sort((a, b) => a.step - b.step);
  const samples = train.slice(-PACE_WINDOW).map((metric) => [Date.parse(metric.created_at), metric.step]);
  const eta = etaSeconds(job, samples);
  const stats = [
    ["Step", job.total_steps ? `${job.step} / ${job.total_steps}` : String(job.step)],
    ["Progress", job.progress !== null ? `${(job.progress * 100).toFixed(0)} %` : "–"],
    ["ETA", job.status === "running" ? (eta !== null ? duration(eta) : "estimating…") : null],
    ["Loss", number(job.loss ?? last.loss)],
    ["Validation loss", evals.length ? number(evals[evals.length - 1].loss) : null],
    ["Tokens / s", number(last.tokens_per_second, 3)],
    ["Memory", last.rss_mb ? `${number(last.rss_mb, 3)} MB` : "–"],
    ["Memory plan", memoryPlanText(job.memory_plan)],
    ["Battery", last.battery_percent !== undefined ? `${number(last.battery_percent, 3)} %` : null],
    ["Battery temp.", last.battery_temperature_c !== undefined ? `${number(last.battery_temperature_c, 3)} °C` : null],
    ["Tokens seen", job.tokens_seen ? number(job.tokens_seen) : null],
    ["Energy", job.energy_mwh ? `${number(job.energy_mwh, 3)} mWh` : null],
    ["mWh / 1k tokens", job.energy_mwh_per_1k_tokens ? number(job.energy_mwh_per_1k_tokens, 3) : null],
    ["Battery used", job.battery_percent_used ? `${number(job.battery_percent_used, 3)} %` : null],
    ["Interruptions", String(job.interruptions)],
    ["Started", localTime(job.started_at)],
    ["Finished", job.finished_at ? localTime(job.finished_at) : null],
  ].filter(([, value]) => value !== null);
  $("job-stats").replaceChildren(...stats.flatMap(([term, value]) => [h("div", {}, h("dt", { text: term }), h("dd", { text: value }))]));
}

// "micro-batch 2 × 2, checkpointing, lean allocator · est. 1,234 MB of 3,000 MB · peak 1,190 MB" (null before any plan).
// A sharded plan's estimate also counts mapped file pages that stay while memory allows; its resident need is what must fit.
function memoryPlanText(plan) {
  if (!plan) return null;
  const settings = [`micro-batch ${plan.micro_batch} × ${plan.grad_accum_steps}`];
  if (plan.gradient_checkpointing) settings.push("checkpointing");
  if (plan.base_dtype && plan.base_dtype !== "float32") settings.push(`${plan.base_dtype} base`);
  if (plan.parameter_sharding) settings.push("sharded");
  if (plan.allocator) settings.push(`${plan.allocator} allocator`);
  const resident = plan.resident_mb != null && plan.resident_mb < plan.estimate_mb ? ` (${number(plan.resident_mb)} MB resident)` : "";
  const parts = [settings.join(", "), `est. ${number(plan.estimate_mb)} MB${resident} of ${number(plan.budget_mb)} MB`];
  if (plan.peak_mb) parts.push(`peak ${number(plan.peak_mb)} MB`);
  if (!plan.fits) parts.push("does not fit");
  return parts.join(" · ");
}

function addEvent(event) {
  if (state.events.has(event.id)) return;
  state.events.set(event.id, event);
  const list = $("events");
  list.prepend(h("li", { class: `event level-${event.level}` },
    h("span", { class: "muted small", text: `${localTime(event.created_at)} · ${event.kind}` }),
    h("span", { text: event.message })));
  while (list.children.length > MAX_EVENTS_SHOWN) list.lastChild.remove();
}

async function refreshOutputs(jobId) {
  try {
    const [artifacts, checkpoints] = await Promise.all([api(`/v1/jobs/${jobId}/artifacts`), api(`/v1/jobs/${jobId}/checkpoints`)]);
    if (!state.job || state.job.id !== jobId) return;
    $("artifacts").replaceChildren(...(artifacts.length ? artifacts.map((artifact) => h("li", {},
      h("button", { type: "button", class: "link", "data-artifact": artifact.path, onclick: () => download(artifact) },
        `Download ${artifact.path}${artifact.kind === "folder" ? " (zip)" : ""}`),
      h("span", { class: "muted small", text: ` ${bytes(artifact.size_bytes)}` }))) : [h("li", { class: "muted", text: "none yet" })]));
    $("checkpoints").replaceChildren(...(checkpoints.length ? checkpoints.map((checkpoint) => h("li", {
      text: `step ${checkpoint.step} · ${bytes(checkpoint.size_bytes)} · ${localTime(checkpoint.created_at)}` }))
      : [h("li", { class: "muted", text: FINAL.has(state.job.status) ? "none kept" : "none yet" })]));
  } catch (error) {
    if (error.status !== 401) showMessage($("job-message"), `Could not list the outputs: ${error.message}`);
  }
}

async function download(artifact) {
  const message = $("job-message");
  showMessage(message, `Downloading ${artifact.path}…`, "info");
  try {
    const response = await api(artifact.url, { raw: true });
    const blob = await response.blob();
    const disposition = response.headers.get("Content-Disposition") || "";
    const filename = /filename="?([^";]+)"?/.exec(disposition)?.[1] || artifact.path;
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    showMessage(message, `Saved ${filename} (${bytes(blob.size)}).`, "ok");
  } catch (error) {
    showMessage(message, `Download failed: ${error.message}`);
  }
}

async function onJobAction(event) {
  const button = event.target.closest("[data-action]");
  if (!button || !state.job) return;
  const action = button.dataset.action;
  if (action === "cancel" && !confirm(`Cancel job #${state.job.id}? It cannot be resumed afterwards.`)) return;
  const message = $("job-message");
  showMessage(message, `${action}…`, "info");
  try {
    const job = await api(`/v1/jobs/${state.job.id}/${action}`, { method: "POST" });
    renderJob(job);
    showMessage(message, job.stop_request ? `${action} requested: the worker writes a checkpoint and stops.` : `Job is ${job.status}.`, "ok");
  } catch (error) {
    showMessage(message, `Could not ${action}: ${error.message}`);
  }
}

// ---- charts (inline SVG) ---------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 340, HEIGHT = 150, LEFT = 46, RIGHT = 8, TOP = 10, BOTTOM = 22;

function svg(tag, attributes, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, value);
  element.append(...children);
  return element;
}

function scheduleDraw() {
  if (state.drawPending) return;
  state.drawPending = true;
  requestAnimationFrame(() => { state.drawPending = false; drawCharts(); renderStats(); });
}

function seriesPoints(series) {
  const points = [];
  for (const metric of state.metrics.values()) {
    if (series.split && metric.split !== series.split) continue;
    const field = series.fields.find((name) => typeof metric[name] === "number");
    if (field) points.push([metric.step, metric[field]]);
  }
  return points.sort((a, b) => a[0] - b[0]);
}

function extraCharts() {
  const fields = new Set();
  for (const metric of state.metrics.values()) {
    for (const [key, value] of Object.entries(metric)) {
      if (typeof value === "number" && !METRIC_BOOKKEEPING.has(key) && !CHARTED.has(key)) fields.add(key);
    }
  }
  return [...fields].sort().map((field) => ({ id: `extra-${field}`, title: field.replaceAll("_", " "), series: [{ name: field, fields: [field] }] }));
}

function drawCharts() {
  const container = $("charts");
  for (const chart of [...CHARTS, ...extraCharts()]) {
    const series = chart.series.map((item) => ({ ...item, points: seriesPoints(item) }));
    const count = series.reduce((total, item) => total + item.points.length, 0);
    let card = container.querySelector(`[data-chart="${chart.id}"]`);
    if (!count && !chart.always) { if (card) card.remove(); continue; }
    if (!card) {
      card = h("figure", { class: "card chart", "data-chart": chart.id });
      container.append(card);
    }
    card.replaceChildren(h("figcaption", {}, h("span", { text: chart.title }),
      series.length > 1 ? h("span", { class: "legend" }, series.map((item, index) =>
        index === 0 || item.points.length ? h("span", { class: `key series-${index}`, text: item.name }) : null)) : null),
      chartSvg(series, chart.id));
  }
}

function ticks(min, max) {
  return [min, (min + max) / 2, max];
}

// Enough digits that ticks over a narrow range (memory 398.2 .. 399.1 MB) stay distinct.
function tickLabel(value, span) {
  const digits = Math.ceil(Math.log10(Math.max(Math.abs(value), span) / span)) + 2;
  return number(value, Math.min(Math.max(digits, 2), 8));
}

// A long run has more steps than the chart has pixels: draw every k-th point (and the last).
function thin(points) {
  if (points.length <= MAX_DRAWN_POINTS) return points;
  const every = Math.ceil(points.length / MAX_DRAWN_POINTS);
  return points.filter((_, index) => index % every === 0 || index === points.length - 1);
}

function chartSvg(series, id) {
  const all = series.flatMap((item) => item.points);
  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": id,
    "data-points": String(series[0].points.length), "data-all-points": String(all.length) });
  if (!all.length) {
    root.append(svg("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" }, "no steps logged yet"));
    return root;
  }
  let [xMin, xMax] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [yMin, yMax] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (xMax === xMin) { xMin -= 1; xMax += 1; }
  if (yMax === yMin) { const pad = Math.abs(yMin) * 0.05 || 1; yMin -= pad; yMax += pad; }
  const x = (value) => LEFT + ((value - xMin) / (xMax - xMin)) * (WIDTH - LEFT - RIGHT);
  const y = (value) => TOP + (1 - (value - yMin) / (yMax - yMin)) * (HEIGHT - TOP - BOTTOM);
  for (const value of ticks(yMin, yMax)) {
    root.append(svg("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: y(value), y2: y(value), class: "gridline" }));
    root.append(svg("text", { x: LEFT - 4, y: y(value) + 3, "text-anchor": "end", class: "tick" }, tickLabel(value, yMax - yMin)));
  }
  for (const value of [xMin, xMax]) {
    root.append(svg("text", { x: x(value), y: HEIGHT - 6, "text-anchor": value === xMin ? "start" : "end", class: "tick" }, `step ${number(Math.round(value))}`));
  }
  series.forEach((item, index) => {
    if (!item.points.length) return;
    const path = thin(item.points).map(([px, py], at) => `${at ? "L" : "M"}${x(px).toFixed(1)},${y(py).toFixed(1)}`).join(" ");
    root.append(svg("path", { d: path, class: `line series-${index}${item.dots ? " dashed" : ""}`, "data-series": item.name }));
    if (item.dots || item.points.length === 1) {
      for (const [px, py] of item.points) root.append(svg("circle", { cx: x(px), cy: y(py), r: 2.5, class: `dot series-${index}` }));
    }
  });
  return root;
}

// ---- start -----------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", onLoginSubmit);
  $("logout").addEventListener("click", () => logOut("Logged out. The token is no longer stored in this browser."));
  $("model-form").addEventListener("submit", onModelSubmit);
  $("dataset-form").addEventListener("submit", onDatasetSubmit);
  $("dataset-file").addEventListener("change", onDatasetFileChosen);
  $("job-form").addEventListener("submit", onJobSubmit);
  $("job-more").addEventListener("toggle", () => { if ($("job-more").open) loadMoreFields(); });
  document.querySelector("#job-view .actions").addEventListener("click", onJobAction);
  window.addEventListener("hashchange", route);
  route();
});
