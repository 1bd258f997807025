// glass-ad inspection page: plain JavaScript, same-origin requests only (the API token, when the service
// has one, travels as the HttpOnly cookie set by /?token=...).
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let nextBefore = null;

function fmt(x, digits = 4) {
  return typeof x === "number" ? x.toFixed(digits) : "–";
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : response.statusText;
    const error = new Error(`${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function loadModels() {
  try {
    const info = await api("/v1/models");
    models = info.models;
    const select = $("model");
    const filter = $("f-model");
    const current = select.value;
    select.replaceChildren();
    filter.replaceChildren(new Option("any", ""));
    for (const m of models) {
      const rect = m.input_shape && m.input_shape[0] !== m.input_shape[1];
      const size = rect ? `${m.input_shape[0]}×${m.input_shape[1]}` : `${m.image_size}`;
      select.add(new Option(`${m.name} (${m.backbone}, ${size} px)`, m.name));
      filter.add(new Option(m.name, m.name));
    }
    if (current) select.value = current;
    showOperatingPoint();
    const status = info.status === "ready" ? `ready: ${models.length} model(s), log ${info.log.backend}` : `${info.status}…`;
    $("status").textContent = status;
    if (info.status === "loading") setTimeout(loadModels, 1000);
    if (info.status === "failed") showError(`model loading failed: ${JSON.stringify(info.errors)}`);
  } catch (error) {
    $("status").textContent = "unavailable";
    showError(error.message);
    setTimeout(loadModels, 2000);
  }
}

function currentModel() {
  const name = $("model").value;
  return models.find((m) => m.name === name);
}

// What the chosen model's OK/NG threshold promises, in amber when its evidence cannot hold the target.
function showOperatingPoint() {
  const model = currentModel();
  const line = $("operating");
  const point = model && model.operating_point;
  line.hidden = !point;
  if (!point) return;
  line.textContent = point.line;
  line.classList.toggle("warn", point.supported === false);
}

function showResult(result, file) {
  $("result").hidden = false;
  const verdict = $("verdict");
  verdict.textContent = result.decision;
  verdict.className = `verdict ${result.decision}`;
  verdict.dataset.decision = result.decision;
  $("filename").textContent = file ? file.name : "";
  $("score").textContent = fmt(result.score);
  $("normalized").textContent = fmt(result.normalized_score, 3);
  $("threshold").textContent = `${fmt(result.threshold)} (${result.threshold_kind})`;
  $("region").textContent = `${(100 * result.region_fraction).toFixed(2)} % of the image`;
  $("timing").textContent = `${result.timing.total_ms.toFixed(0)} ms`;
  $("version").textContent = `${result.model} @ ${result.model_version}`;
  const overlay = $("overlay");
  overlay.src = result.overlay_url || "";
  overlay.dataset.inspection = String(result.id);
  const scale = result.color_scale;
  $("cb-max").textContent = `${fmt(scale.max, 3)} top of the scale`;
  $("cb-threshold").textContent = `${fmt(scale.pixel_threshold, 3)} pixel threshold`;
  $("cb-min").textContent = `${fmt(scale.min, 3)} typical normal pixel`;
}

async function inspectFiles(files) {
  const model = currentModel();
  if (!model) { showError("no model loaded yet"); return; }
  // A new pick starts clean: the previous verdict must not stand above this pick's errors.
  showError("");
  $("result").hidden = true;
  let inspected = 0;
  const failed = [];
  for (const [index, file] of files.entries()) {
    $("progress").textContent = `inspecting ${file.name} (${index + 1}/${files.length})…`;
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const result = await api(`/v1/models/${encodeURIComponent(model.name)}/inspect?overlay=true`, { method: "POST", body: form });
      showResult(result, file);
      inspected += 1;
    } catch (error) {
      failed.push(`${file.name}: ${error.message}`);
      showError(failed.join("\n"));
    }
  }
  $("progress").textContent = failed.length
    ? `${inspected} image(s) inspected, ${failed.length} failed`
    : `${inspected} image(s) inspected`;
  await loadLog(false);
}

function filterQuery(before) {
  const params = new URLSearchParams({ limit: "25" });
  const decision = $("f-decision").value;
  const model = $("f-model").value;
  const review = $("f-review").value;
  const since = $("f-since").value;
  if (decision) params.set("decision", decision);
  if (model) params.set("model", model);
  if (review) params.set("review", review);
  if (since) params.set("since", new Date(since).toISOString());
  if (before) params.set("before_id", String(before));
  return params.toString();
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function review(id, label, td) {
  try {
    const updated = await api(`/v1/inspections/${id}/review`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label }),
    });
    td.firstChild.textContent = updated.review || "";
  } catch (error) {
    showError(error.message);
  }
}

async function loadLog(append) {
  try {
    const page = await api(`/v1/inspections?${filterQuery(append ? nextBefore : null)}`);
    const body = $("inspections").tBodies[0];
    if (!append) body.replaceChildren();
    for (const item of page.items) {
      const row = body.insertRow();
      row.dataset.id = String(item.id);
      cell(row, String(item.id));
      cell(row, new Date(item.created_at).toLocaleString());
      cell(row, item.model);
      cell(row, item.filename || "");
      cell(row, item.decision, item.decision);
      cell(row, fmt(item.score));
      cell(row, fmt(item.normalized_score, 3));
      const link = row.insertCell();
      if (item.overlay_url) {
        const a = document.createElement("a");
        a.href = item.overlay_url;
        a.target = "_blank";
        a.textContent = "view";
        link.appendChild(a);
      }
      const td = row.insertCell();
      td.appendChild(document.createElement("span")).textContent = item.review || "";
      for (const label of ["defect", "good"]) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = label;
        button.addEventListener("click", () => review(item.id, label, td));
        td.appendChild(button);
      }
    }
    nextBefore = page.next_before_id;
    $("older").hidden = nextBefore === null;
  } catch (error) {
    showError(error.message);
  }
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const files = Array.from(event.target.files);
    if (files.length) inspectFiles(files);
    event.target.value = "";
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const files = Array.from(event.dataTransfer.files);
    if (files.length) inspectFiles(files);
  });
  $("model").addEventListener("change", showOperatingPoint);
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); loadLog(false); });
  $("older").addEventListener("click", () => loadLog(true));
  loadModels();
  loadLog(false);
}

setUp();
