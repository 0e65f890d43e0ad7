// Counts per zone (plots analysis): the user uploads zones (fields, parcels, stands) as GeoJSON;
// the finished export's objects are counted in each, per class, shown on the map and in a table,
// and downloadable as CSV, GeoParquet, GeoPackage or GeoJSON.
import { authHeaders, post } from "./api.js";
import { $, el, on, showError } from "./ui.js";
import { state } from "./state.js";

const EMPTY = { type: "FeatureCollection", features: [] };
let exportId = null;
let zones = null; // the uploaded FeatureCollection

export function initZones() {
  const map = state.map;
  map.addSource("zones", { type: "geojson", data: EMPTY });
  map.addLayer({ id: "zones-fill", type: "fill", source: "zones",
    paint: { "fill-color": "#8b5cf6", "fill-opacity": ["interpolate", ["linear"], ["get", "_share"], 0, 0.05, 1, 0.45] } });
  map.addLayer({ id: "zones-line", type: "line", source: "zones", paint: { "line-color": "#8b5cf6", "line-width": 2 } });
  $("zones-file").addEventListener("change", upload);
  document.querySelectorAll("[data-zone-format]").forEach((button) =>
    button.addEventListener("click", () => download(button.dataset.zoneFormat)));
  on("export-done", (id) => {
    exportId = id;
    $("zones-block").hidden = !id;
    if (zones && id) count();
  });
}

async function upload() {
  const file = $("zones-file").files[0];
  if (!file) return;
  showError("zones-error", null);
  try {
    zones = JSON.parse(await file.text());
  } catch (error) {
    showError("zones-error", new Error(`${file.name} is not JSON: ${error.message}`));
    return;
  }
  await count();
}

async function count() {
  try {
    const counted = await post(`/api/exports/${exportId}/zones.geojson`, zones);
    show(counted);
    $("zones-downloads").hidden = false;
  } catch (error) {
    showError("zones-error", new Error(`Zones not counted: ${error.message}`));
  }
}

function show(counted) {
  const classes = state.detector ? state.detector.classes : [];
  const totals = counted.features.map((f) => classes.reduce((sum, c) => sum + (f.properties[`${c}_count`] || 0), 0));
  const most = Math.max(1, ...totals);
  const features = counted.features.map((f, i) => ({ ...f, properties: { ...f.properties, _share: totals[i] / most } }));
  state.map.getSource("zones").setData({ type: "FeatureCollection", features });
  const name = (f) => f.properties.name ?? f.properties.id ?? `zone ${f.properties.zone}`;
  $("zones-table").replaceChildren(
    el("tr", {}, el("th", {}, "zone"), el("th", {}, "ha"), ...classes.flatMap((c) => [el("th", {}, c), el("th", {}, "/ha")])),
    ...counted.features.map((f) => el("tr", { "data-zone": String(f.properties.zone) },
      el("td", {}, String(name(f))),
      el("td", {}, Number(f.properties.zone_area_ha).toFixed(2)),
      ...classes.flatMap((c) => [
        el("td", { class: `count-${c}` }, String(f.properties[`${c}_count`])),
        el("td", {}, Number(f.properties[`${c}_per_ha`]).toFixed(1)),
      ]))),
  );
}

// The counts as a file: POST (the zones are the body), then save what comes back.
async function download(format) {
  showError("zones-error", null);
  try {
    const response = await fetch(`/api/exports/${exportId}/zones.${format}`, {
      method: "POST", headers: { ...authHeaders(), "Content-Type": "application/json" }, body: JSON.stringify(zones),
    });
    if (!response.ok) throw new Error((await response.json()).detail || response.statusText);
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: `zones-${exportId}.${format}` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) {
    showError("zones-error", new Error(`Download failed: ${error.message}`));
  }
}
