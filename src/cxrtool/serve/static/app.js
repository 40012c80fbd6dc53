// cxrtool serve: the page. Plain JS, no dependencies, no third-party origin.
// Every request is async (fetch) and a newer search aborts an older one, so the page never freezes.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, mode: null, controller: null };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

// ------------------------------------------------------------------------------------- messages
function showError(error, hint) {
  const box = $("error");
  box.replaceChildren(el("span", { text: "error: " + error }));
  if (hint) box.append(el("span", { class: "hint", text: "hint: " + hint }));
  box.hidden = false;
}
function clearError() { $("error").hidden = true; }
function setStatus(text, busy = false) {
  $("status").textContent = text;
  $("status").classList.toggle("busy", busy);
}

async function api(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw { error: "the server did not answer (" + err.message + ")", hint: "is `cxrtool serve` still running?" };
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw { error: body.error || response.status + " " + response.statusText, hint: body.hint };
  return body;
}

// ------------------------------------------------------------------------------------- controls
function checkboxes(fieldset, values, name) {
  for (const { value, count } of values) {
    const box = el("input", { type: "checkbox", name, value });
    box.addEventListener("change", rerun);
    fieldset.append(el("label", { title: count + " images" }, box, " " + value));
  }
  if (!values.length) fieldset.disabled = true;
}

function checked(name) {
  return [...document.querySelectorAll(`input[name="${name}"]:checked`)].map((b) => b.value);
}

function searchParams() {
  const p = new URLSearchParams();
  p.set("target", $("target").value);
  p.set("k", $("k").value || "20");
  for (const v of checked("view")) p.append("view", v);
  for (const m of checked("modality")) p.append("modality", m);
  if ($("date-from").value) p.set("date_from", $("date-from").value);
  if ($("date-to").value) p.set("date_to", $("date-to").value);
  if ($("per-study").checked) p.set("per_study", "true");
  if (!$("dedupe").checked) p.set("dedupe", "0");
  return p;
}

// --------------------------------------------------------------------------------------- search
async function run() {
  const mode = state.mode;
  if (!mode) return;
  if (state.controller) state.controller.abort();
  const controller = (state.controller = new AbortController());
  const params = searchParams();
  let url, options = { signal: controller.signal }, label;
  if (mode.kind === "text") {
    params.set("q", mode.q);
    url = "/api/search?" + params;
    label = "for “" + mode.q + "”";
  } else if (mode.kind === "like") {
    params.set("like", mode.id);
    url = "/api/search?" + params;
    label = "like " + mode.label;
  } else {
    params.set("name", mode.file.name);
    url = "/api/search/image?" + params;
    options = { ...options, method: "POST", body: mode.file, headers: { "content-type": "application/octet-stream" } };
    label = "like " + mode.file.name;
  }
  clearError();
  $("note").hidden = true;
  setStatus("searching " + label + "…", true);
  const started = performance.now();
  try {
    const result = await api(url, options);
    if (controller !== state.controller) return;
    render(result, label);
    const n = result.target === "reports" ? result.reports.length : result.images.length;
    const noun = n === 1 ? result.target.slice(0, -1) : result.target;
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    setStatus(`${n} ${noun} ${label} (search ${result.took_ms} ms, ${seconds} s with transfer)`);
    $("note").textContent = result.note || "";
    $("note").hidden = !result.note;
  } catch (err) {
    if (err.name === "AbortError") return;
    setStatus("");
    showError(err.error || String(err), err.hint);
  }
}

function rerun() { if (state.mode) run(); }

function render(result, label) {
  const main = $("results");
  main.classList.toggle("reports-list", result.target === "reports");
  if (result.target === "reports") {
    main.replaceChildren(reportList(result.reports));
    return;
  }
  main.replaceChildren(...result.images.map(card));
  if (!result.images.length) main.append(el("p", { class: "muted", text: "no results " + label + " (check the filters)" }));
}

function card(hit) {
  const caption = [hit.view, hit.modality].filter(Boolean).join(" · ") || "—";
  const img = el("img", { src: hit.thumb, loading: "lazy", alt: `rank ${hit.rank}, score ${hit.score.toFixed(3)}` });
  const thumb = el("div", { class: "thumb" }, img);
  img.addEventListener("error", () => thumb.replaceChildren(el("span", { class: "broken", text: "image unavailable" })));
  const views = hit.views_in_study > 1 ? ` · ${hit.views_in_study} views` : "";
  return el("button", { type: "button", class: "card", "data-id": hit.id, title: hit.path, onclick: () => openDetail(hit) },
    thumb,
    el("div", { class: "cap" }, el("span", { text: "#" + hit.rank }), el("span", { text: caption + views }),
       el("span", { class: "score", text: hit.score.toFixed(3) })),
    el("div", { class: "sub", text: hit.study_key || hit.path }));
}

function reportList(reports) {
  if (!reports.length) return el("p", { class: "muted", text: "no reports" });
  return el("ol", { class: "reports" }, ...reports.map((r) =>
    el("li", {}, el("span", { class: "score", text: r.score.toFixed(3) }), el("span", { text: r.text }), " ",
       el("span", { class: "key", text: "(" + r.report_key + ")" }))));
}

// --------------------------------------------------------------------------------------- detail
async function openDetail(hit) {
  const dialog = $("detail");
  $("detail-title").textContent = `#${hit.rank} · score ${hit.score.toFixed(3)} · ${hit.path}`;
  $("detail-img").src = hit.image;
  $("detail-img").alt = "image " + hit.path;
  $("detail-fields").replaceChildren();
  $("detail-reports").replaceChildren();
  const link = $("detail-link");
  const href = hit.viewer_url || (/^https?:\/\//.test(hit.retrieve_url || "") ? hit.retrieve_url : "");
  link.hidden = !href;
  link.href = href || "#";
  link.textContent = hit.viewer_url ? "open in viewer" : "retrieve from PACS (WADO-RS)";
  resetWindow();
  $("more-like").onclick = () => {
    dialog.close();
    state.mode = { kind: "like", id: hit.id, label: hit.path };
    $("target").value = "images";
    run();
  };
  if (!dialog.open) dialog.showModal();
  try {
    const detail = await api("/api/images/" + hit.id);
    $("detail-fields").replaceChildren(...Object.entries(detail.fields).flatMap(([k, v]) =>
      [el("dt", { text: k.replace(/_/g, " ") }), el("dd", { text: String(v) })]));
    $("reports-title").hidden = !state.info.reports;
    if (state.info.reports) {
      const dedupe = $("dedupe").checked ? "" : "&dedupe=0";
      const reports = await api(`/api/images/${hit.id}/reports?k=5${dedupe}`);
      $("detail-reports").replaceChildren(...reports.map((r) =>
        el("li", {}, el("span", { class: "score", text: r.score.toFixed(3) }), el("span", { text: r.text }))));
    }
  } catch (err) {
    showError(err.error || String(err), err.hint);
  }
}

// Display window on the rendered image (already windowed by the DICOM header): out = (x - level) / width + 0.5.
function applyWindow() {
  const level = $("win-level").value / 100, width = Math.max($("win-width").value / 100, 0.02);
  for (const id of ["win-r", "win-g", "win-b"]) {
    $(id).setAttribute("slope", (1 / width).toFixed(4));
    $(id).setAttribute("intercept", (0.5 - level / width).toFixed(4));
  }
}
function resetWindow() { $("win-level").value = 50; $("win-width").value = 100; applyWindow(); }

// ---------------------------------------------------------------------------------------- upload
function useFile(file) {
  if (!file) return;
  const limit = state.info ? state.info.max_upload_bytes : Infinity;
  if (file.size > limit) {
    showError(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; the limit is ${(limit / 2 ** 20).toFixed(0)} MB`,
      "start serve with a larger --max-upload-mb");
    return;
  }
  state.mode = { kind: "image", file };
  $("upload-name").textContent = file.name;
  $("upload").hidden = false;
  $("drop-hint").hidden = true;
  run();
}

function clearUpload() {
  clearError();
  $("upload").hidden = true;
  $("drop-hint").hidden = false;
  $("file").value = "";
  state.mode = $("q").value.trim() ? { kind: "text", q: $("q").value.trim() } : null;
  rerun();
}

// ----------------------------------------------------------------------------------------- start
async function start() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("q").value.trim();
    if (!q) { showError("the query is empty", "type what you look for, e.g. left pleural effusion"); return; }
    $("upload").hidden = true;
    $("drop-hint").hidden = false;
    state.mode = { kind: "text", q };
    run();
  });
  $("file").addEventListener("change", () => useFile($("file").files[0]));
  $("clear-upload").addEventListener("click", clearUpload);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    useFile(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  window.addEventListener("dragover", (e) => e.preventDefault()); // a drop beside the zone must not navigate away
  window.addEventListener("drop", (e) => e.preventDefault());
  for (const id of ["target", "per-study", "dedupe", "date-from", "date-to", "k"]) $(id).addEventListener("change", rerun);
  $("detail-close").addEventListener("click", () => $("detail").close());
  for (const id of ["win-level", "win-width"]) $(id).addEventListener("input", applyWindow);
  $("win-reset").addEventListener("click", resetWindow);

  try {
    const info = (state.info = await api("/api/info"));
    const reports = info.reports ? `, ${info.reports} reports` : "";
    const model = info.index.model ? ` · model ${info.index.model}` : "";
    $("stats").textContent = `${info.images} images${reports} · ${info.index.kind} index${model}`;
    checkboxes($("views"), info.views, "view");
    checkboxes($("modalities"), info.modalities, "modality");
    if (info.dates) {
      const iso = (d) => `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}`;
      $("date-from").min = $("date-to").min = iso(info.dates.from);
      $("date-from").max = $("date-to").max = iso(info.dates.to);
    } else {
      $("dates").disabled = true;
      $("dates").title = "no study dates in this workspace (embed with --keep-study-date)";
    }
    $("target").querySelector('option[value="reports"]').disabled = !info.reports;
    $("k").max = info.k_max;
    $("q").focus();
  } catch (err) {
    $("stats").textContent = "";
    showError(err.error || String(err), err.hint);
  }
}

document.addEventListener("DOMContentLoaded", start);
