// The page: choose files and settings, upload each file (POST /api/uploads, body = the file), queue a job
// (POST /api/jobs), then poll GET /api/jobs while anything runs. A file's results are drawn once, when it finishes,
// so polling never restarts an audio player.
"use strict";

const $ = (id) => document.getElementById(id);
let chosen = [];      // File objects
let menu = [];        // GET /api/models -> models
let maxUpload = 0;
let polling = null;

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function fillSelect(select, values, labels = values) {
  select.replaceChildren(...values.map((value, i) => element("option", { value }, labels[i])));
}

function megabytes(bytes) { return (bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0) + " MB"; }

async function errorText(response) {
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) return body.detail.map((d) => `${d.loc.at(-1)}: ${d.msg}`).join("; ");
    return body.detail || response.statusText;
  } catch { return `${response.status} ${response.statusText}`; }
}

function describeModel(model) {
  const parts = [];
  if (model.stems.length) parts.push("stems: " + model.stems.join(", "));
  if (model.score) parts.push(model.score);
  if (model.id !== "local") parts.push(model.cached ? "on this machine" : "downloaded on first use");
  return parts.join(" · ");
}

async function loadMenu() {
  const info = await (await fetch("/api/models")).json();
  menu = info.models;
  maxUpload = info.max_upload_bytes;
  fillSelect($("model"), menu.map((m) => m.id), menu.map((m) => (m.cached || m.id === "local" ? "" : "↓ ") + m.label));
  fillSelect($("device"), info.devices);
  fillSelect($("precision"), info.precisions);
  fillSelect($("format"), info.formats);
  $("format").value = "wav32f";
  $("upload-limit").textContent = `WAV, FLAC, OGG, MP3 (others with ffmpeg); up to ${megabytes(maxUpload)} each`;
  showModel();
}

function showModel() {
  const model = menu.find((m) => m.id === $("model").value);
  $("model-info").textContent = model ? describeModel(model) : "";
  $("local-model").hidden = !model || model.id !== "local";
}

function choose(files) {
  for (const file of files) chosen.push(file);
  $("chosen-files").replaceChildren(...chosen.map((file) => element("li", {}, `${file.name} (${megabytes(file.size)})`)));
  $("message").textContent = "";
}

async function uploadFile(file) {
  if (file.size > maxUpload) throw new Error(`${file.name}: larger than the upload limit of ${megabytes(maxUpload)}`);
  const response = await fetch("/api/uploads?name=" + encodeURIComponent(file.name), { method: "POST", body: file });
  if (!response.ok) throw new Error(await errorText(response));
  return (await response.json()).upload;
}

async function start() {
  if (!chosen.length) { $("message").textContent = "Choose or drop at least one audio file first."; return; }
  $("start").disabled = true;
  $("message").textContent = "Uploading…";
  try {
    const uploads = [];
    for (const file of chosen) uploads.push(await uploadFile(file));
    const overlap = $("overlap").value.trim();
    const request = {
      uploads, model: $("model").value, config: $("config-path").value, checkpoint: $("checkpoint-path").value,
      device: $("device").value, precision: $("precision").value, overlap: overlap ? Number(overlap) : null,
      tta: $("tta").checked, instrumental: $("instrumental").checked, output_format: $("format").value,
    };
    const response = await fetch("/api/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    if (!response.ok) throw new Error(await errorText(response));
    chosen = [];
    $("chosen-files").replaceChildren();
    $("file-input").value = "";
    $("message").textContent = "";
    poll();
  } catch (error) {
    $("message").textContent = error.message;
  } finally {
    $("start").disabled = false;
  }
}

// ---- jobs ----

function progressLine(file) {
  if (file.state === "queued") return "waiting";
  if (file.state === "running") {
    if (!file.total_seconds) return "starting…";
    return `${file.done_seconds.toFixed(1)} of ${file.total_seconds.toFixed(1)} s of audio · ` +
           `${file.speed.toFixed(1)} audio-s/s`;
  }
  if (file.state === "done") return `${file.total_seconds.toFixed(1)} s of audio at ${file.speed.toFixed(1)} audio-s/s`;
  return "failed";
}

function stemRow(name, audioUrl, pictureUrl, downloadName) {
  const label = element("div", { class: "name" }, name);
  if (downloadName) label.append(element("br"), element("a", { href: audioUrl, download: downloadName }, "download"));
  return element("div", { class: name === "mixture" ? "mixture" : "stem" },
    label,
    element("audio", { controls: "", preload: "metadata", src: audioUrl }),
    element("img", { src: pictureUrl, alt: `spectrogram of ${name}` }));
}

function fileResults(job, file) {
  const track = file.name.replace(/\.[^.]*$/, "");
  const results = element("div", { class: "results" });
  if (file.mixture_spectrogram) results.append(stemRow("mixture", file.mixture_audio, file.mixture_spectrogram, null));
  for (const stem of file.stems) {
    const extension = stem.audio.split(".").at(-1);
    results.append(stemRow(stem.name, stem.audio, stem.spectrogram, `${track} - ${stem.name}.${extension}`));
  }
  return results;
}

function drawFile(node, job, file) {
  // Rebuilt only when the file's state changes; while it runs, only the progress bar and line move.
  if (node.dataset.state !== file.state) {
    node.dataset.state = file.state;
    node.replaceChildren(element("h3", {}, file.name));
    if (file.state === "running" || file.state === "queued") {
      node.append(element("progress", { max: "1", value: "0" }), " ", element("span", { class: "line" }));
    } else {
      node.append(element("span", { class: "line" }));
    }
    if (file.error) node.append(element("p", { class: "error" }, file.error));
    if (file.state === "done") node.append(fileResults(job, file));
  }
  const bar = node.querySelector("progress");
  if (bar && file.total_seconds) bar.value = file.done_seconds / file.total_seconds;
  node.querySelector(".line").textContent = progressLine(file);
}

function drawJob(job) {
  let node = $("job-" + job.id);
  if (!node) {
    node = element("article", { class: "job", id: "job-" + job.id },
      element("h2", {}, "Job ", element("span", { class: "state" })),
      element("div", { class: "meta" }), element("p", { class: "error job-error" }), element("div", { class: "files" }));
    $("jobs").prepend(node);
  }
  const state = node.querySelector(".state");
  state.textContent = job.state;
  state.className = "state " + job.state;
  const s = job.settings;
  node.querySelector(".meta").textContent = `model ${job.model} · ${s.device} · ${s.precision} · overlap ` +
    `${s.overlap ?? "config's"} · ${s.tta ? "TTA · " : ""}${s.instrumental ? "instrumental · " : ""}${s.output_format}`;
  node.querySelector(".job-error").textContent = job.error;
  const files = node.querySelector(".files");
  job.files.forEach((file, index) => {
    let fileNode = files.children[index];
    if (!fileNode) { fileNode = element("div", { class: "file" }); files.append(fileNode); }
    drawFile(fileNode, job, file);
  });
  if (job.zip && !node.querySelector(".zip") && (job.state === "done" || job.state === "failed")) {
    node.append(element("a", { class: "zip", href: job.zip }, "Download all stems (zip)"));
  }
}

async function poll() {
  clearTimeout(polling);
  try {
    const { jobs } = await (await fetch("/api/jobs")).json();
    jobs.forEach(drawJob);
    if (jobs.some((job) => job.state === "queued" || job.state === "running")) polling = setTimeout(poll, 700);
  } catch (error) {
    $("message").textContent = "The server does not answer: " + error.message;
  }
}

function setUp() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    choose(event.dataTransfer.files);
  });
  $("file-input").addEventListener("change", (event) => choose(event.target.files));
  $("model").addEventListener("change", showModel);
  $("start").addEventListener("click", start);
  loadMenu().then(poll);
}

setUp();
