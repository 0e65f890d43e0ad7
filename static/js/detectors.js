// The detector panel (choose, create with classes and colours) and its annotations on the map:
// the drawing toolbar, saving to the API as they change, and errors the API finds in them.
import { authHeaders, get, post, put } from "./api.js";
import { Draw } from "./draw.js";
import { $, el, emit, on, showError, classColors, DEFAULT_COLORS } from "./ui.js";
import { state } from "./state.js";

const ROLE_NAMES = { training_area: "training", testing_area: "testing", accuracy_area: "accuracy" };
let draw = null;
let saveTimer = null;

export function getDraw() {
  return draw;
}

export function drawnAoi() {
  const aoi = draw && draw.features.filter((f) => f.properties.role === "aoi");
  return aoi && aoi.length ? aoi[aoi.length - 1].geometry : null;
}

function isArea(feature) {
  return feature.properties.role && feature.properties.role !== "label";
}

export function initDetectors() {
  draw = new Draw(state.map, {
    newProperties: () => {
      const role = $("draw-role").value;
      const props = { image_id: state.image && state.image.id };
      if (role === "label") return { ...props, role: "label", class: $("draw-class").value };
      return { ...props, role };
    },
    decorate: (f) => ({
      _kind: isArea(f) ? "area" : "label",
      _color: classColors(state.detector)[f.properties.class] || "#e5e7eb",
    }),
    onChange: () => scheduleSave(),
    onModeChange: (mode) => {
      document.querySelectorAll("#toolbar [data-mode]").forEach((b) => b.classList.toggle("on", b.dataset.mode === mode));
    },
    onSelect: (feature) => {
      $("delete-button").disabled = !feature;
      updatePrefill();
      if (feature && feature.properties.role === "label") $("draw-class").value = feature.properties.class;
    },
  });
  window.tiledetect.draw = draw;

  document.querySelectorAll("#toolbar [data-mode]").forEach((button) =>
    button.addEventListener("click", () => draw.setMode(button.dataset.mode)));
  $("delete-button").addEventListener("click", () => draw.deleteSelected());
  $("undo-button").addEventListener("click", () => draw.undo());
  $("prefill-button").addEventListener("click", prefill);
  on("version", updatePrefill);
  $("draw-role").addEventListener("change", () => {
    $("draw-class").disabled = $("draw-role").value !== "label";
  });
  $("draw-class").addEventListener("change", () => {
    const f = draw.selected();
    if (f && f.properties.role === "label" && f.properties.class !== $("draw-class").value) {
      draw.updateSelected({ class: $("draw-class").value }); // edit: relabel the selection
    }
  });
  $("detector-select").addEventListener("change", () => chooseDetector($("detector-select").value));
  $("new-detector-button").addEventListener("click", () => toggleForm());
  $("add-class").addEventListener("click", () => addClassRow(""));
  $("new-detector").addEventListener("submit", (e) => {
    e.preventDefault();
    createDetector();
  });
  window.addEventListener("pagehide", () => {
    // Leaving with a save pending: send it anyway (keepalive outlives the page).
    if (!saveTimer || !state.detector) return;
    clearTimeout(saveTimer);
    saveTimer = null;
    fetch(`/api/detectors/${state.detector.id}/annotations`, { method: "PUT", keepalive: true,
      headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(collection()) });
  });
  on("image", () => showAnnotations());
  on("detector-updated", (detector) => {
    state.detector = detector;
    fillClassSelect();
    draw.render();
  });
  loadDetectors(localStorage.getItem("tiledetect.detector"));
}

async function loadDetectors(selectId) {
  let detectors = [];
  try {
    detectors = await get("/api/detectors");
  } catch (error) {
    showError("detector-error", error);
  }
  const select = $("detector-select");
  select.replaceChildren(el("option", { value: "" }, detectors.length ? "— choose a detector —" : "— no detectors yet —"),
    ...detectors.map((d) => el("option", { value: d.id }, `${d.name} (${d.classes.join(", ")})`)));
  const chosen = detectors.find((d) => d.id === selectId);
  select.value = chosen ? chosen.id : "";
  if (!detectors.length) toggleForm(true);
  await chooseDetector(chosen ? chosen.id : "");
}

function toggleForm(show) {
  const form = $("new-detector");
  form.hidden = show === undefined ? !form.hidden : !show;
  if (!form.hidden && !$("class-rows").children.length) addClassRow("");
  if (!form.hidden) $("detector-name").focus();
}

function addClassRow(name) {
  const rows = $("class-rows");
  const i = rows.children.length;
  rows.append(el("div", { class: "row class-row" },
    el("input", { type: "color", value: DEFAULT_COLORS[i % DEFAULT_COLORS.length], "aria-label": `class ${i + 1} colour` }),
    el("input", { type: "text", placeholder: `class ${i + 1}, e.g. tree`, value: name, "aria-label": `class ${i + 1} name` }),
    el("button", { type: "button", class: "icon", title: "remove", onclick: (e) => e.target.closest(".class-row").remove() }, "×")));
}

async function createDetector() {
  showError("detector-error", null);
  const rows = [...document.querySelectorAll("#class-rows .class-row")];
  const classes = rows.map((r) => r.querySelector("input[type=text]").value.trim()).filter(Boolean);
  const colors = rows.filter((r) => r.querySelector("input[type=text]").value.trim())
    .map((r) => r.querySelector("input[type=color]").value);
  try {
    const detector = await post("/api/detectors", { name: $("detector-name").value.trim(), classes, colors });
    $("new-detector").hidden = true;
    $("detector-name").value = "";
    $("class-rows").replaceChildren();
    await loadDetectors(detector.id);
  } catch (error) {
    showError("detector-error", error);
  }
}

function fillClassSelect() {
  const colors = classColors(state.detector);
  const classes = state.detector ? state.detector.classes : [];
  const select = $("draw-class");
  const previous = select.value;
  select.replaceChildren(...classes.map((c) => {
    const option = el("option", { value: c }, `● ${c}`);
    option.style.color = colors[c];
    return option;
  }));
  if (classes.includes(previous)) select.value = previous;
}

async function chooseDetector(id) {
  await flush();
  showError("annotations-error", null);
  showError("draw-error", null);
  showWarnings([], { features: [] });
  state.detector = null;
  state.annotations = [];
  if (id) {
    try {
      state.detector = await get(`/api/detectors/${id}`);
      const collection = await get(`/api/detectors/${id}/annotations`);
      state.annotations = collection.features || [];
    } catch (error) {
      showError("annotations-error", error);
    }
    localStorage.setItem("tiledetect.detector", id);
  }
  fillClassSelect();
  $("toolbar").hidden = !state.detector;
  draw.setEnabled(Boolean(state.detector));
  showAnnotations();
  emit("detector", state.detector);
}

// The draw tool holds the shown image's features; the others wait in state.annotations.
function showAnnotations() {
  if (!draw) return;
  const imageId = state.image && state.image.id;
  const aoi = draw.features.filter((f) => f.properties.role === "aoi" && f.properties.image_id === imageId);
  draw.setFeatures([...state.annotations.filter((f) => f.properties.image_id === imageId), ...aoi]);
  summarize();
}

function collection() {
  const imageId = state.image && state.image.id;
  const mine = draw.features.filter((f) => f.properties.role !== "aoi");
  state.annotations = [...state.annotations.filter((f) => f.properties.image_id !== imageId), ...mine];
  return { type: "FeatureCollection", features: state.annotations };
}

function summarize() {
  const counts = { training: 0, testing: 0, accuracy: 0, labels: 0 };
  for (const f of draw.features) {
    if (f.properties.role === "label" || !f.properties.role) counts.labels += 1;
    else if (ROLE_NAMES[f.properties.role]) counts[ROLE_NAMES[f.properties.role]] += 1;
  }
  $("annotation-summary").textContent = state.detector
    ? `On this image: ${counts.training} training, ${counts.testing} testing, ${counts.accuracy} accuracy area(s), ${counts.labels} label(s).`
    : "Choose or create a detector to annotate.";
}

function scheduleSave() {
  summarize();
  if (!state.detector) return;
  $("save-state").textContent = "unsaved…";
  $("save-state").className = "save-state pending";
  clearTimeout(saveTimer);
  saveTimer = setTimeout(flush, 400);
}

// One save at a time, so saves land in the order they were made: two PUTs in flight at once
// could be applied the other way round on a busy server, and an edit (a delete) would be lost.
let saving = null;
let saveAgain = false;

async function flush() {
  if (saveTimer && state.detector) {
    clearTimeout(saveTimer);
    saveTimer = null;
    if (saving) saveAgain = true; // the save in flight sends the newer state once it is done
    else saving = saveInOrder().finally(() => { saving = null; });
  }
  if (saving) await saving;
}

async function saveInOrder() {
  do {
    saveAgain = false;
    await saveOnce();
  } while (saveAgain && state.detector);
}

async function saveOnce() {
  const body = collection();
  const status = $("save-state");
  status.textContent = "saving…";
  try {
    const saved = await put(`/api/detectors/${state.detector.id}/annotations`, body);
    if (saveAgain || saveTimer) {
      status.textContent = "unsaved…"; // newer edits are saved next: "saved" only when all are
      return;
    }
    status.textContent = saved.warnings?.length ? `saved, ${saved.warnings.length} warning(s)` : "saved ✓";
    status.className = "save-state ok";
    showError("annotations-error", null);
    showError("draw-error", null);
    showWarnings(saved.warnings || [], body);
    emit("annotations-saved", body);
  } catch (error) {
    status.textContent = "not saved";
    status.className = "save-state bad";
    // "feature N" in the message: point at that feature when it is on this image.
    const match = /feature (\d+)/.exec(error.message);
    const feature = match && body.features[Number(match[1])];
    if (feature && draw.features.includes(feature)) draw.select(feature.id);
    const shown = new Error(`Annotations not saved: ${error.message}`);
    showError("annotations-error", shown);
    showError("draw-error", shown); // under the toolbar, next to the drawing that caused it
  }
}

// Predictions become labels: the chosen version's detections in the selected training area, added
// as ordinary (editable) labels in one undoable step; the user deletes, reshapes, adds, and saves.
function updatePrefill() {
  const feature = draw && draw.selected();
  const button = $("prefill-button");
  button.disabled = !(feature && feature.properties.role === "training_area" && state.version);
  button.textContent = state.version ? `Pre-fill labels (v${state.version})` : "Pre-fill labels";
}

async function prefill() {
  const area = draw.selected();
  if (!area || !state.version) return;
  const button = $("prefill-button");
  button.disabled = true;
  showError("draw-error", null);
  try {
    const url = `/api/detectors/${state.detector.id}/images/${state.image.id}/prefill`;
    const found = await post(url, { area: area.geometry, version: state.version });
    const added = draw.addAll(found.features);
    $("save-state").title = `${added.length} label(s) pre-filled from version ${state.version}`;
    draw.select(area.id);
  } catch (error) {
    showError("draw-error", new Error(`Pre-fill failed: ${error.message}`));
  } finally {
    updatePrefill();
  }
}

// Labels the server kept but will not use whole (straddling an area's edge, in no area): one line
// each, saying what will be done; a click selects the feature when it is on this image.
function showWarnings(warnings, body) {
  const list = $("annotations-warnings");
  list.replaceChildren(...warnings.map((warning) => {
    const item = el("li", {}, warning.message);
    item.dataset.feature = String(warning.feature);
    item.addEventListener("click", () => {
      const feature = body.features[warning.feature];
      if (feature && draw.features.includes(feature)) draw.select(feature.id);
    });
    return item;
  }));
  list.hidden = warnings.length === 0;
}

export { flush as saveAnnotations };
