// Export the detections over the image or a drawn AOI: progress per cell, the count per class,
// and the file to download.
import { post, poll, withToken } from "./api.js";
import { $, el, emit, showError, duration } from "./ui.js";
import { state } from "./state.js";
import { drawnAoi } from "./detectors.js";

const SUFFIX = { geojson: "geojson", gpkg: "gpkg", fgb: "fgb", parquet: "parquet" };

function showCells(exp) {
  const total = Math.min(exp.cells_total || 0, 400);
  const box = $("export-cells");
  if (box.children.length !== total) {
    box.replaceChildren(...Array.from({ length: total }, () => el("i", { class: "cell" })));
  }
  const scale = (exp.cells_total || 1) / Math.max(total, 1);
  [...box.children].forEach((cell, i) => {
    const index = i * scale;
    cell.className = index < exp.cells_done ? "cell done" : index < exp.cells_done + exp.cells_failed ? "cell failed" : "cell";
  });
}

let current = null; // the export shown in the panel: {id, format}

async function runExport() {
  showError("export-error", null);
  const format = $("export-format").value;
  const body = { format, version: state.version };
  if ($("export-extent").value === "aoi") {
    const aoi = drawnAoi();
    if (!aoi) {
      showError("export-error", new Error('Draw an AOI first: choose "Export AOI" in the toolbar, then a rectangle or polygon.'));
      return;
    }
    body.aoi = aoi;
  }
  await follow(() => post(`/api/detectors/${state.detector.id}/images/${state.image.id}/exports`, body), format);
}

// Start (or resume) an export with `start()`, then show its progress until it ends.
async function follow(start, format) {
  $("export-download").hidden = true;
  $("export-resume").hidden = true;
  $("export-counts").replaceChildren();
  emit("export-done", null);
  const button = $("export-button");
  button.disabled = true;
  $("export-progress").hidden = false;
  $("export-label").textContent = "Starting…";
  $("export-bar").value = 0;
  try {
    const started = await start();
    current = { id: started.id, format };
    $("export-cancel").hidden = false;
    const exp = await poll(`/api/exports/${started.id}`, (e) => !["queued", "running", "pending"].includes(e.state), (e) => {
      const fraction = e.cells_total ? (e.cells_done + e.cells_failed) / e.cells_total : 0;
      $("export-bar").value = fraction;
      $("export-label").textContent = `${e.state}: cell ${e.cells_done}/${e.cells_total}` +
        (e.cells_failed ? `, ${e.cells_failed} failed` : "") + ` · ${e.objects} objects` +
        (e.eta_seconds ? ` · ${duration(e.eta_seconds)} left` : "");
      showCells(e);
    }, 500);
    if (exp.state === "cancelled") {
      $("export-label").textContent = `Cancelled after ${exp.cells_done} of ${exp.cells_total} cells; the cells done are kept.`;
      $("export-resume").hidden = false;
      return;
    }
    if (exp.state !== "succeeded" && exp.state !== "done" && !exp.download_url) {
      $("export-resume").hidden = false;
      throw new Error(`Export ${exp.state}: ${exp.error || "see the server log"}`);
    }
    $("export-label").textContent = `Done: ${exp.objects} objects in ${exp.cells_total} cells` +
      (exp.result_bytes ? ` · ${(exp.result_bytes / 1024).toFixed(1)} KiB` : "");
    const classes = (exp.summary && exp.summary.classes) || {};
    $("export-counts").replaceChildren(
      el("tr", {}, el("th", {}, "class"), el("th", {}, "count"), el("th", {}, "area")),
      ...Object.entries(classes).map(([name, c]) => el("tr", { "data-class": name }, el("td", {}, name),
        el("td", { class: "count" }, String(c.count)), el("td", {}, c.area_m2 !== undefined ? `${Math.round(c.area_m2)} m²` : "–"))));
    const link = $("export-download");
    link.href = withToken(exp.download_url); // a plain link cannot send the key as a header
    link.setAttribute("download", `${state.detector.name}-${state.image.name}.${SUFFIX[format]}`.replace(/[^\w.-]+/g, "_"));
    link.textContent = `Download ${format}`;
    link.hidden = false;
    emit("export-done", exp.id);
  } catch (error) {
    showError("export-error", error);
  } finally {
    button.disabled = false;
    $("export-cancel").hidden = true;
  }
}

async function cancelExport() {
  if (!current) return;
  $("export-cancel").disabled = true;
  try {
    await post(`/api/exports/${current.id}/cancel`, {});
    $("export-label").textContent = "Cancelling…";
  } catch (error) {
    showError("export-error", error);
  } finally {
    $("export-cancel").disabled = false;
  }
}

function resumeExport() {
  if (!current) return;
  showError("export-error", null);
  const { id, format } = current;
  follow(() => post(`/api/exports/${id}/resume`, {}), format);
}

export function initExports() {
  $("export-button").addEventListener("click", runExport);
  $("export-cancel").addEventListener("click", cancelExport);
  $("export-resume").addEventListener("click", resumeExport);
}
