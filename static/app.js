// Minimal catalogue map: lists images and shows one as an XYZ raster layer. No basemap, so it
// works offline. The full web app (annotation, training, export) grows from here.
"use strict";

const map = new maplibregl.Map({
  container: "map",
  style: {
    version: 8,
    sources: {},
    layers: [{ id: "background", type: "background", paint: { "background-color": "#e5e7eb" } }],
  },
  center: [0, 0],
  zoom: 1,
});
map.addControl(new maplibregl.NavigationControl(), "top-right");
map.addControl(new maplibregl.ScaleControl({ unit: "metric" }), "bottom-left");

const statusLine = document.getElementById("status");
let shownImageId = null;

function describe(image) {
  if (image.status !== "ready") return "processing…";
  const gsd = image.gsd ? `${image.gsd.toFixed(2)} m` : "";
  return `${image.width}×${image.height} px · ${image.count} band(s) ${image.dtype} · ${gsd}`;
}

function showImage(image) {
  if (map.getLayer("imagery")) map.removeLayer("imagery");
  if (map.getSource("imagery")) map.removeSource("imagery");
  map.addSource("imagery", { type: "raster", url: image.links.tilejson, tileSize: 512 });
  map.addLayer({ id: "imagery", type: "raster", source: "imagery" });
  const [west, south, east, north] = image.bounds_wgs84;
  map.fitBounds([[west, south], [east, north]], { padding: 20, animate: false });
  shownImageId = image.id;
  showDetections(image);
  document.querySelectorAll("#images li").forEach((li) => {
    li.classList.toggle("active", li.dataset.id === image.id);
  });
}

// The first detector's layer over the shown image (the full layer switcher is the web app's).
async function showDetections(image) {
  if (map.getLayer("detections")) map.removeLayer("detections");
  if (map.getSource("detections")) map.removeSource("detections");
  const detectors = await (await fetch("/api/detectors")).json();
  const detector = detectors.find((d) => d.versions.length > 0);
  const toggle = document.getElementById("detections-toggle");
  toggle.hidden = !detector;
  if (!detector) return;
  document.getElementById("detector-name").textContent = detector.name;
  const tilejson = `/api/detectors/${detector.id}/images/${image.id}/WebMercatorQuad/tilejson.json`;
  map.addSource("detections", { type: "raster", url: tilejson, tileSize: 256 });
  map.addLayer({ id: "detections", type: "raster", source: "detections" });
  const checkbox = document.getElementById("detections-visible");
  map.setLayoutProperty("detections", "visibility", checkbox.checked ? "visible" : "none");
}

document.getElementById("detections-visible").addEventListener("change", (event) => {
  if (!map.getLayer("detections")) return;
  map.setLayoutProperty("detections", "visibility", event.target.checked ? "visible" : "none");
});

async function loadImages() {
  const response = await fetch("/api/images");
  if (!response.ok) {
    statusLine.textContent = `Could not list images: ${response.status}`;
    return;
  }
  const images = await response.json();
  const list = document.getElementById("images");
  list.replaceChildren(
    ...images.map((image) => {
      const li = document.createElement("li");
      li.dataset.id = image.id;
      li.className = image.status;
      li.textContent = image.name;
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = describe(image);
      li.append(meta);
      if (image.status === "ready") li.addEventListener("click", () => showImage(image));
      return li;
    }),
  );
  const ready = images.filter((image) => image.status === "ready");
  statusLine.textContent = images.length ? "" : "No images yet: run `tiledetect demo` or upload one.";
  if (!shownImageId && ready.length) showImage(ready[0]);
  if (images.some((image) => image.status !== "ready")) setTimeout(loadImages, 2000);
}

map.on("load", loadImages);
