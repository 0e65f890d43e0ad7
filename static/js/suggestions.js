// Where to label next: the chosen version's suggestions (places where labels would teach the
// detector most, each with its reason), listed best first and outlined on the map; a click flies
// there, "Label here" turns one into a training area.
import { get } from "./api.js";
import { $, el, on } from "./ui.js";
import { state } from "./state.js";
import { getDraw } from "./detectors.js";

const EMPTY = { type: "FeatureCollection", features: [] };
let suggestions = [];

export function initSuggestions() {
  const map = state.map;
  map.addSource("suggestions", { type: "geojson", data: EMPTY });
  map.addLayer({ id: "suggestions-line", type: "line", source: "suggestions",
    paint: { "line-color": "#facc15", "line-width": 2, "line-dasharray": [3, 2] } });
  on("version", load);
  on("image", show);
}

async function load() {
  suggestions = [];
  if (state.detector && state.version) {
    try {
      const url = `/api/detectors/${state.detector.id}/versions/${state.version}/suggestions.geojson`;
      suggestions = (await get(url)).features || [];
    } catch {
      suggestions = []; // imported versions and versions trained before suggestions have none
    }
  }
  show();
}

function show() {
  const imageId = state.image && state.image.id;
  const here = suggestions.filter((f) => f.properties.image_id === imageId);
  state.map.getSource("suggestions").setData({ type: "FeatureCollection", features: here });
  $("suggestions-box").hidden = suggestions.length === 0;
  $("suggestions").replaceChildren(...suggestions.map((feature) => {
    const p = feature.properties;
    const make = el("button", { type: "button", class: "secondary small make-area" }, "Label here");
    make.addEventListener("click", (event) => {
      event.stopPropagation();
      makeTrainingArea(feature);
    });
    const item = el("li", { "data-rank": String(p.rank), title: `score ${p.score}` },
      el("span", { class: "rank" }, `${p.rank}.`), el("span", { class: "reason" }, p.reason), make);
    item.addEventListener("click", () => flyTo(feature));
    return item;
  }));
}

function bounds(feature) {
  const ring = feature.geometry.coordinates[0];
  const xs = ring.map((c) => c[0]);
  const ys = ring.map((c) => c[1]);
  return [[Math.min(...xs), Math.min(...ys)], [Math.max(...xs), Math.max(...ys)]];
}

function flyTo(feature) {
  if (state.image && feature.properties.image_id !== state.image.id) {
    const item = document.querySelector(`#images li[data-id="${feature.properties.image_id}"]`);
    if (item) item.click();
  }
  state.map.fitBounds(bounds(feature), { padding: 60, animate: false });
}

function makeTrainingArea(feature) {
  flyTo(feature);
  const draw = getDraw();
  const [area] = draw.addAll([{ type: "Feature", geometry: feature.geometry,
    properties: { role: "training_area", image_id: feature.properties.image_id } }]);
  draw.select(area.id);
}
