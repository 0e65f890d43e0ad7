// Entry point: the map (no basemap, so it works offline), the image catalogue and uploads.
import { apiKey, get, onUnauthorized, poll, setApiKey, uploadFile, withToken } from "./api.js";
import { $, el, emit, on, showError } from "./ui.js";
import { state } from "./state.js";
import { initDetectors } from "./detectors.js";
import { initTraining } from "./training.js";
import { initLayers } from "./layers.js";
import { initExports } from "./exports.js";
import { initSuggestions } from "./suggestions.js";
import { initZones } from "./zones.js";

const map = new maplibregl.Map({
  container: "map",
  style: {
    version: 8,
    sources: {},
    layers: [{ id: "background", type: "background", paint: { "background-color": "#1f2430" } }],
  },
  center: [0, 0],
  zoom: 1,
  attributionControl: false,
  preserveDrawingBuffer: true, // screenshots and tests read the canvas
  transformRequest: (url) => ({ url: withToken(url) }), // tiles and TileJSON carry the key
});
map.addControl(new maplibregl.NavigationControl(), "top-right");
map.addControl(new maplibregl.ScaleControl({ unit: "metric" }), "bottom-right");
state.map = map;
window.tiledetect = { map, state }; // for the browser tests and the curious

function describe(image) {
  if (image.status !== "ready") return "processing…";
  const gsd = image.gsd ? ` · ${image.gsd.toFixed(2)} m` : "";
  return `${image.width}×${image.height} px · ${image.count} band(s) ${image.dtype}${gsd}`;
}

function showImage(image) {
  if (map.getLayer("imagery")) map.removeLayer("imagery");
  if (map.getSource("imagery")) map.removeSource("imagery");
  map.addSource("imagery", { type: "raster", url: image.links.tilejson, tileSize: 512 });
  const firstOverlay = map.getStyle().layers.find((l) => l.id !== "background");
  map.addLayer({ id: "imagery", type: "raster", source: "imagery" }, firstOverlay && firstOverlay.id);
  const [west, south, east, north] = image.bounds_wgs84;
  map.fitBounds([[west, south], [east, north]], { padding: { top: 70, bottom: 30, left: 30, right: 60 }, animate: false });
  state.image = image;
  document.querySelectorAll("#images li").forEach((li) => li.classList.toggle("active", li.dataset.id === image.id));
  emit("image", image);
}

let pollTimer = null;
async function loadImages() {
  clearTimeout(pollTimer);
  let images;
  try {
    images = await get("/api/images");
  } catch (error) {
    $("status").textContent = `Could not list images: ${error.message}`;
    return;
  }
  $("images").replaceChildren(
    ...images.map((image) => {
      const li = el("li", { "data-id": image.id, class: image.status, title: image.id },
        el("span", { class: "name" }, image.name), el("span", { class: "meta" }, describe(image)));
      if (state.image && state.image.id === image.id) li.classList.add("active");
      if (image.status === "ready") li.addEventListener("click", () => showImage(image));
      return li;
    }),
  );
  $("status").textContent = images.length ? "" : "No images yet: upload one, or run `tiledetect demo`.";
  const ready = images.filter((image) => image.status === "ready");
  if (!state.image && ready.length) showImage(ready[0]);
  if (images.some((image) => image.status !== "ready")) pollTimer = setTimeout(loadImages, 2000);
}

async function upload(file) {
  showError("upload-error", null);
  $("upload-progress").hidden = false;
  const label = $("upload-label");
  const bar = $("upload-bar");
  try {
    label.textContent = `Uploading ${file.name}…`;
    const accepted = await uploadFile(file, (fraction) => {
      bar.value = fraction;
      label.textContent = `Uploading ${file.name}: ${Math.round(100 * fraction)} %`;
    });
    loadImages();
    const job = await poll(`/api/jobs/${accepted.job.id}`, (j) => j.status === "succeeded" || j.status === "failed",
      (j) => {
        bar.value = j.progress || 0;
        label.textContent = `Ingesting ${file.name}: ${Math.round(100 * (j.progress || 0))} % ${j.message || ""}`;
      });
    if (job.status === "failed") throw new Error(`Ingest of ${file.name} failed: ${job.error || job.message}`);
    $("upload-progress").hidden = true;
    await loadImages();
    showImage(await get(`/api/images/${job.result.image_id}`));
  } catch (error) {
    $("upload-progress").hidden = true;
    showError("upload-error", error);
    loadImages();
  }
}

const dropzone = $("dropzone");
dropzone.addEventListener("dragover", (e) => { e.preventDefault(); dropzone.classList.add("over"); });
dropzone.addEventListener("dragleave", () => dropzone.classList.remove("over"));
dropzone.addEventListener("drop", (e) => {
  e.preventDefault();
  dropzone.classList.remove("over");
  for (const file of e.dataTransfer.files) upload(file);
});
$("file-input").addEventListener("change", (e) => {
  for (const file of e.target.files) upload(file);
  e.target.value = "";
});
on("images-changed", loadImages);
$("wmts-link").href = withToken("/wmts/WMTSCapabilities.xml");

// A server with auth on answers 401 until a key is given: ask for one, keep it, start again.
onUnauthorized((message) => {
  $("key-form").hidden = false;
  $("key-hint").textContent = apiKey() ? `The key was refused: ${message}` : "This server needs an API key of your project.";
});
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setApiKey($("key-input").value.trim());
  location.reload();
});

map.on("load", () => {
  initDetectors();
  initTraining();
  initLayers();
  initExports();
  initSuggestions();
  initZones();
  loadImages();
});
