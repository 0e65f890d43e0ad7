// The detection layer (on-the-fly tiles) over the imagery: visibility, opacity, minimum object
// score, version; and the XYZ / TileJSON / WMTS URLs of every layer for QGIS and other maps.
import { withToken } from "./api.js";
import { $, el, on, classColors } from "./ui.js";
import { state } from "./state.js";

const BELOW = "draw-training_area-fill"; // detections go under the annotations

function layerRoot() {
  return `${location.origin}/api/detectors/${state.detector.id}/images/${state.image.id}`;
}

function removeDetections() {
  for (const id of ["detections-objects", "detections"]) if (state.map.getLayer(id)) state.map.removeLayer(id);
  for (const id of ["detections-objects", "detections"]) if (state.map.getSource(id)) state.map.removeSource(id);
}

function refresh() {
  const map = state.map;
  removeDetections();
  const ready = state.detector && state.image && state.version;
  $("layer-panel").hidden = !ready;
  $("export-panel").hidden = !ready;
  renderUrls();
  if (!ready || !$("detections-visible").checked) return;
  const root = layerRoot();
  const version = `version=${state.version}`;
  map.addSource("detections", { type: "raster", tileSize: 256,
    tiles: [overlayUrl()],
    bounds: state.image.bounds_wgs84, minzoom: state.image.minzoom ?? 0, maxzoom: state.image.maxzoom ?? 22 });
  map.addLayer({ id: "detections", type: "raster", source: "detections",
    paint: { "raster-opacity": Number($("detections-opacity").value), "raster-fade-duration": 0 } }, BELOW);
  // The objects' outlines as vectors too, filtered by the same threshold in the browser.
  const colors = classColors(state.detector);
  map.addSource("detections-objects", { type: "vector",
    tiles: [`${root}/tiles/WebMercatorQuad/{z}/{x}/{y}.mvt?${version}`],
    bounds: state.image.bounds_wgs84, minzoom: state.image.minzoom ?? 0, maxzoom: state.image.maxzoom ?? 22 });
  const match = ["match", ["get", "class"], ...Object.entries(colors).flat(), "#e5e7eb"];
  map.addLayer({ id: "detections-objects", type: "line", source: "detections-objects",
    "source-layer": "objects", filter: scoreFilter(),
    paint: { "line-color": match, "line-width": 1.5, "line-opacity": Number($("detections-opacity").value) } }, BELOW);
}

function scoreFilter() {
  return [">=", ["to-number", ["get", "score"], 0], threshold() ?? 0];
}

// The slider's value, or null at 0 (the detector's own threshold); the API takes 0 < t < 1.
function threshold() {
  const value = Number($("score-threshold").value);
  return value > 0 ? Math.min(value, 0.99) : null;
}

// The overlay is re-rendered by the server at the threshold, from its cached probabilities.
function overlayUrl() {
  const t = threshold();
  const query = `version=${state.version}` + (t === null ? "" : `&threshold=${t}`);
  return `${layerRoot()}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?${query}`;
}

function setOpacity() {
  const value = Number($("detections-opacity").value);
  if (state.map.getLayer("detections")) state.map.setPaintProperty("detections", "raster-opacity", value);
  if (state.map.getLayer("detections-objects")) state.map.setPaintProperty("detections-objects", "line-opacity", value);
}

function setThreshold() {
  const value = Number($("score-threshold").value);
  $("score-value").textContent = value.toFixed(2);
  if (state.map.getLayer("detections-objects")) state.map.setFilter("detections-objects", scoreFilter());
  const overlay = state.map.getSource("detections");
  if (overlay) overlay.setTiles([overlayUrl()]);
}

function urlRow(label, plainUrl) {
  const url = withToken(plainUrl); // copied into a GIS, it must work without a header
  const input = el("input", { type: "text", readonly: "", value: url, "aria-label": label });
  const button = el("button", { type: "button", class: "secondary copy", "data-url": url }, "Copy");
  button.addEventListener("click", async () => {
    input.select();
    try {
      await navigator.clipboard.writeText(url);
    } catch {
      document.execCommand("copy");
    }
    button.textContent = "Copied ✓";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
  return el("div", { class: "url-row" }, el("span", { class: "url-label" }, label), el("div", { class: "row" }, input, button));
}

function renderUrls() {
  const list = $("url-list");
  const rows = [];
  if (state.image && state.image.links) {
    rows.push(el("h3", {}, `Imagery: ${state.image.name}`),
      urlRow("XYZ", state.image.links.tiles), urlRow("TileJSON", state.image.links.tilejson), urlRow("WMTS", state.image.links.wmts));
  }
  if (state.detector && state.image && state.version) {
    const root = layerRoot();
    const v = `version=${state.version}`;
    rows.push(el("h3", {}, `Detections: ${state.detector.name} v${state.version}`),
      urlRow("XYZ", `${root}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?${v}`),
      urlRow("TileJSON", `${root}/WebMercatorQuad/tilejson.json?${v}`),
      urlRow("WMTS", `${root}/WMTSCapabilities.xml`),
      urlRow("Vector tiles (MVT)", `${root}/tiles/WebMercatorQuad/{z}/{x}/{y}.mvt?${v}`));
  }
  rows.push(el("h3", {}, "Every layer"), urlRow("WMTS", `${location.origin}/wmts/WMTSCapabilities.xml`));
  list.replaceChildren(...rows);
}

export function initLayers() {
  $("detections-visible").addEventListener("change", refresh);
  $("detections-opacity").addEventListener("input", setOpacity);
  $("score-threshold").addEventListener("input", setThreshold);
  on("image", refresh);
  on("version", refresh);
  on("detector", refresh);
}
