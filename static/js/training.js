// Train a version with live progress (step, loss curve, time left), then its scores and where it
// goes wrong: predictions in testing and accuracy areas against the labels.
import { get, post, poll } from "./api.js";
import { $, el, emit, on, showError, duration, pct } from "./ui.js";
import { state } from "./state.js";
import { saveAnnotations } from "./detectors.js";

const VERDICT_COLORS = { true_positive: "#22c55e", false_positive: "#ef4444", missed: "#f97316", prediction: "#a3a3a3" };
const EMPTY = { type: "FeatureCollection", features: [] };

export function initTraining() {
  const map = state.map;
  map.addSource("verdicts", { type: "geojson", data: EMPTY });
  const color = ["match", ["get", "verdict"], ...Object.entries(VERDICT_COLORS).flat(), "#a3a3a3"];
  const polygons = ["==", ["geometry-type"], "Polygon"];
  map.addLayer({ id: "verdicts-fill", type: "fill", source: "verdicts",
    filter: ["all", polygons, ["!=", ["get", "verdict"], "missed"]],
    paint: { "fill-color": color, "fill-opacity": 0.35 } });
  map.addLayer({ id: "verdicts-line", type: "line", source: "verdicts", filter: polygons,
    paint: { "line-color": color, "line-width": ["match", ["get", "verdict"], "missed", 2.5, 1.5] } });
  map.addLayer({ id: "verdicts-missed", type: "line", source: "verdicts",
    filter: ["all", polygons, ["==", ["get", "verdict"], "missed"]],
    paint: { "line-color": "#fff", "line-width": 1, "line-dasharray": [2, 2] } });
  map.addLayer({ id: "verdicts-point", type: "circle", source: "verdicts",
    filter: ["==", ["geometry-type"], "Point"],
    paint: { "circle-color": color, "circle-radius": 5, "circle-stroke-color": "#fff", "circle-stroke-width": 1 } });

  $("train-button").addEventListener("click", train);
  $("version-select").addEventListener("change", () => chooseVersion(Number($("version-select").value)));
  $("verdicts-visible").addEventListener("change", setVerdictVisibility);
  on("detector", (detector) => {
    $("train-panel").hidden = !detector;
    $("train-progress").hidden = true;
    showError("train-error", null);
    showVersions(detector);
  });
  on("image", () => loadVerdicts());
}

function setVerdictVisibility() {
  const visible = $("verdicts-visible").checked ? "visible" : "none";
  for (const id of ["verdicts-fill", "verdicts-line", "verdicts-missed", "verdicts-point"]) {
    state.map.setLayoutProperty(id, "visibility", visible);
  }
}

async function train() {
  const detector = state.detector;
  showError("train-error", null);
  const button = $("train-button");
  button.disabled = true;
  $("train-progress").hidden = false;
  $("train-label").textContent = "Starting…";
  $("train-bar").value = 0;
  drawLoss([]);
  try {
    await saveAnnotations();
    const steps = Number($("train-steps").value);
    const job = await post(`/api/detectors/${detector.id}/train`, steps ? { steps } : {});
    const done = await poll(`/api/jobs/${job.id}`, (j) => j.status === "succeeded" || j.status === "failed", (j) => {
      const r = j.result || {};
      $("train-bar").value = r.fraction ?? j.progress ?? 0;
      const parts = r.step === undefined ? [j.message || j.status] : [`step ${r.step}`];
      if (r.loss !== undefined) parts.push(`loss ${Number(r.loss).toFixed(3)}`);
      if (r.seconds_left !== undefined) parts.push(`${duration(r.seconds_left)} left`);
      $("train-label").textContent = parts.join(" · ");
      if (r.loss_curve) drawLoss(r.loss_curve);
    });
    if (done.status === "failed") throw new Error(`Training failed: ${done.error || done.message}`);
    $("train-label").textContent = `Trained version ${done.result.version}.`;
    $("train-bar").value = 1;
    const updated = await get(`/api/detectors/${detector.id}`);
    $("detections-visible").checked = true; // the new version's detections, on the map at once
    emit("detector-updated", updated);
    showVersions(updated, done.result.version);
  } catch (error) {
    showError("train-error", error);
  } finally {
    button.disabled = false;
  }
}

function drawLoss(curve) {
  const svg = $("loss-curve");
  if (curve.length < 2) {
    svg.replaceChildren();
    return;
  }
  const W = 260, H = 70, pad = 4;
  const steps = curve.map((p) => p.step);
  const losses = curve.map((p) => p.loss);
  const [s0, s1] = [Math.min(...steps), Math.max(...steps)];
  const [l0, l1] = [Math.min(...losses), Math.max(...losses)];
  const x = (s) => pad + ((s - s0) / Math.max(s1 - s0, 1e-9)) * (W - 2 * pad);
  const y = (l) => H - pad - ((l - l0) / Math.max(l1 - l0, 1e-9)) * (H - 2 * pad);
  const d = curve.map((p, i) => `${i ? "L" : "M"}${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  const text = document.createElementNS(ns, "text");
  text.setAttribute("x", W - pad);
  text.setAttribute("y", 12);
  text.setAttribute("text-anchor", "end");
  text.textContent = `loss ${losses[losses.length - 1].toFixed(3)}`;
  svg.replaceChildren(path, text);
}

function showVersions(detector, chosen) {
  const versions = detector ? detector.versions : [];
  $("results-panel").hidden = !versions.length;
  const select = $("version-select");
  select.replaceChildren(...versions.map((v) => el("option", { value: v.number }, `v${v.number} · ${v.source}`)).reverse());
  if (!versions.length) {
    state.version = null;
    state.map.getSource("verdicts").setData(EMPTY);
    emit("version", null);
    return;
  }
  const number = chosen || versions[versions.length - 1].number;
  select.value = number;
  chooseVersion(number);
}

function chooseVersion(number) {
  state.version = number;
  const version = state.detector.versions.find((v) => v.number === number);
  showScores(version && version.metrics);
  loadVerdicts();
  emit("version", number);
}

function showScores(metrics) {
  const table = $("scores");
  if (!metrics) {
    table.replaceChildren(el("tr", {}, el("td", {}, "No accuracy areas were labelled for this version.")));
    showAreaScores([]);
    return;
  }
  const object = metrics.object || {};
  const row = (name, value, cls) => el("tr", {}, el("th", {}, name), el("td", { class: cls || "" }, value));
  const rows = [
    row("object precision", pct(object.precision), "metric-precision"),
    row("object recall", pct(object.recall), "metric-recall"),
    row("object F1", pct(object.f1), "metric-f1"),
    row("counting F-score", pct(metrics.counting_f1), "metric-counting"),
  ];
  if (metrics.foreground_iou !== undefined) rows.push(row("foreground IoU", pct(metrics.foreground_iou)));
  for (const [name, m] of Object.entries(metrics.per_class || {})) {
    const f1 = m && (m.f1 ?? (m.object && m.object.f1));
    if (f1 !== undefined) rows.push(row(`${name} F1`, pct(f1)));
  }
  table.replaceChildren(...rows);
  showAreaScores(metrics.per_area || []);
}

// Every accuracy area's own scores, worst F1 first by default: where to look and fix next.
const AREA_COLUMNS = [
  ["area", "area"], ["labelled", "labels"], ["predicted", "found"],
  ["precision", "P"], ["recall", "R"], ["f1", "F1"],
];
let areaSort = { key: "f1", ascending: true };

function showAreaScores(areas) {
  $("area-scores-box").hidden = areas.length === 0;
  const table = $("area-scores");
  const order = new Map(areas.map((a, i) => [a, i + 1])); // "area 2": the second one scored
  const name = (a) => `area ${order.get(a)}`;
  const value = (a, key) => (key === "area" ? name(a) : a[key]);
  const sorted = [...areas].sort((a, b) => {
    const [x, y] = [value(a, areaSort.key), value(b, areaSort.key)];
    const sign = typeof x === "string" ? x.localeCompare(y, undefined, { numeric: true }) : x - y;
    return areaSort.ascending ? sign : -sign;
  });
  const head = el("tr", {}, ...AREA_COLUMNS.map(([key, label]) => {
    const th = el("th", { "data-key": key }, label);
    if (key === areaSort.key) th.setAttribute("aria-sort", areaSort.ascending ? "ascending" : "descending");
    th.addEventListener("click", () => {
      areaSort = { key, ascending: key === areaSort.key ? !areaSort.ascending : true };
      showAreaScores(areas);
    });
    return th;
  }));
  const cell = (a, key) => (["precision", "recall", "f1"].includes(key) ? pct(a[key]) : String(value(a, key)));
  const rows = sorted.map((a) => {
    const tr = el("tr", { "data-area": String(a.area), title: a.id || `feature ${a.area}` }, ...AREA_COLUMNS.map(([key]) => el("td", {}, cell(a, key))));
    tr.addEventListener("click", () => goToArea(a));
    return tr;
  });
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

function goToArea(area) {
  if (area.image_id && state.image && area.image_id !== state.image.id) {
    const item = document.querySelector(`#images li[data-id="${area.image_id}"]`);
    if (item) item.click();
  }
  if (!area.bounds_wgs84) return;
  const [west, south, east, north] = area.bounds_wgs84;
  state.map.fitBounds([[west, south], [east, north]], { padding: 60, animate: false });
}

async function loadVerdicts() {
  const source = state.map.getSource("verdicts");
  if (!state.detector || !state.version) {
    source.setData(EMPTY);
    return;
  }
  try {
    const data = await get(`/api/detectors/${state.detector.id}/versions/${state.version}/predictions.geojson`);
    const imageId = state.image && state.image.id;
    const features = (data.features || []).filter((f) => !f.properties.image_id || f.properties.image_id === imageId);
    source.setData({ type: "FeatureCollection", features });
  } catch {
    source.setData(EMPTY); // a version without accuracy areas has no predictions file
  }
}
