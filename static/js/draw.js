// A small drawing tool on MapLibre GeoJSON sources: rectangle, polygon and point tools; select,
// move, reshape (drag a vertex or a midpoint, shift-click a vertex to remove it), delete; undo. Features are WGS84 GeoJSON with a string id; the owner decides what their
// properties mean (`newProperties()`) and how they look (`decorate()`).

const AREA_STYLES = {
  training_area: { color: "#facc15", dash: [1, 0] },
  testing_area: { color: "#38bdf8", dash: [4, 2] },
  accuracy_area: { color: "#e879f9", dash: [1, 1.5] },
  aoi: { color: "#ffffff", dash: [3, 1, 1, 1] },
};

const EMPTY = { type: "FeatureCollection", features: [] };
const CLOSE_PX = 10; // a click this close to the first vertex closes the polygon

function newId() {
  return `f-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

export class Draw {
  constructor(map, { newProperties, decorate, onChange, onModeChange, onSelect }) {
    this.map = map;
    this.newProperties = newProperties;
    this.decorate = decorate;
    this.onChange = onChange;
    this.onModeChange = onModeChange || (() => {});
    this.onSelect = onSelect || (() => {});
    this.features = [];
    this.history = [];
    this.mode = "select";
    this.selectedId = null;
    this.sketch = null; // in-progress shape: {kind, points: [[lon, lat]...], cursor}
    this.drag = null;
    this.enabled = false;
    this._addLayers();
    this._bindEvents();
  }

  // --- state -----------------------------------------------------------------------------------

  setFeatures(features) {
    this.features = features.map((f) => ({ ...f, id: f.id ?? newId() }));
    this.history = [];
    this.selectedId = null;
    this.sketch = null;
    this.render();
  }

  setEnabled(enabled) {
    this.enabled = enabled;
    if (!enabled) this.setMode("select");
  }

  setMode(mode) {
    this.mode = mode;
    this.sketch = null;
    const canvas = this.map.getCanvasContainer();
    canvas.style.cursor = mode === "select" ? "" : "crosshair";
    if (mode === "select") this.map.doubleClickZoom.enable();
    else this.map.doubleClickZoom.disable();
    if (mode === "rectangle") this.map.dragPan.disable();
    else this.map.dragPan.enable();
    this.render();
    this.onModeChange(mode);
  }

  selected() {
    return this.features.find((f) => f.id === this.selectedId) || null;
  }

  select(id) {
    this.selectedId = id;
    this.render();
    this.onSelect(this.selected());
  }

  // Every change goes through here: a snapshot for undo, then the owner saves.
  mutate(change) {
    this.history.push(JSON.stringify(this.features));
    if (this.history.length > 200) this.history.shift();
    change();
    this.render();
    this.onChange(this.features);
  }

  add(geometry, extra = {}) {
    const feature = { type: "Feature", id: newId(), geometry, properties: { ...this.newProperties(), ...extra } };
    this.mutate(() => this.features.push(feature));
    return feature;
  }

  // Several features at once (e.g. pre-filled labels): one undo step removes them all.
  addAll(features) {
    const added = features.map((f) => ({ ...f, id: newId() }));
    this.mutate(() => this.features.push(...added));
    return added;
  }

  updateSelected(properties) {
    const feature = this.selected();
    if (!feature) return;
    this.mutate(() => Object.assign(feature.properties, properties));
  }

  deleteSelected() {
    if (!this.selectedId) return false;
    const id = this.selectedId;
    this.mutate(() => {
      this.features = this.features.filter((f) => f.id !== id);
    });
    this.select(null);
    return true;
  }

  undo() {
    if (this.sketch) {
      this.sketch = null;
      this.render();
      return true;
    }
    const previous = this.history.pop();
    if (previous === undefined) return false;
    this.features = JSON.parse(previous);
    if (!this.selected()) this.selectedId = null;
    this.render();
    this.onChange(this.features);
    this.onSelect(this.selected());
    return true;
  }

  // --- rendering -------------------------------------------------------------------------------

  _addLayers() {
    const map = this.map;
    map.addSource("draw", { type: "geojson", data: EMPTY });
    map.addSource("draw-sketch", { type: "geojson", data: EMPTY });
    map.addSource("draw-handles", { type: "geojson", data: EMPTY });
    const isArea = ["==", ["get", "_kind"], "area"];
    for (const [role, style] of Object.entries(AREA_STYLES)) {
      const filter = ["all", isArea, ["==", ["get", "role"], role]];
      map.addLayer({ id: `draw-${role}-fill`, type: "fill", source: "draw", filter,
        paint: { "fill-color": style.color, "fill-opacity": 0.07 } });
      map.addLayer({ id: `draw-${role}-line`, type: "line", source: "draw", filter,
        paint: { "line-color": style.color, "line-width": 2.5, "line-dasharray": style.dash } });
    }
    const isLabelPolygon = ["all", ["==", ["get", "_kind"], "label"], ["==", ["geometry-type"], "Polygon"]];
    map.addLayer({ id: "draw-label-fill", type: "fill", source: "draw", filter: isLabelPolygon,
      paint: { "fill-color": ["get", "_color"], "fill-opacity": 0.3 } });
    map.addLayer({ id: "draw-label-line", type: "line", source: "draw", filter: isLabelPolygon,
      paint: { "line-color": ["get", "_color"], "line-width": 1.5 } });
    map.addLayer({ id: "draw-label-point", type: "circle", source: "draw",
      filter: ["==", ["geometry-type"], "Point"],
      paint: { "circle-color": ["get", "_color"], "circle-radius": 5,
        "circle-stroke-color": "#fff", "circle-stroke-width": 1.5 } });
    map.addLayer({ id: "draw-selected", type: "line", source: "draw",
      filter: ["all", ["==", ["get", "_selected"], true], ["==", ["geometry-type"], "Polygon"]],
      paint: { "line-color": "#22d3ee", "line-width": 3.5 } });
    map.addLayer({ id: "draw-selected-point", type: "circle", source: "draw",
      filter: ["all", ["==", ["get", "_selected"], true], ["==", ["geometry-type"], "Point"]],
      paint: { "circle-radius": 8, "circle-color": "rgba(0,0,0,0)",
        "circle-stroke-color": "#22d3ee", "circle-stroke-width": 3 } });
    map.addLayer({ id: "draw-handle-midpoint", type: "circle", source: "draw-handles",
      filter: ["==", ["get", "kind"], "midpoint"],
      paint: { "circle-radius": 3.5, "circle-color": "#22d3ee", "circle-opacity": 0.7 } });
    map.addLayer({ id: "draw-handle-vertex", type: "circle", source: "draw-handles",
      filter: ["==", ["get", "kind"], "vertex"],
      paint: { "circle-radius": 5, "circle-color": "#fff", "circle-stroke-color": "#0891b2",
        "circle-stroke-width": 2 } });
    map.addLayer({ id: "draw-sketch-fill", type: "fill", source: "draw-sketch",
      filter: ["==", ["geometry-type"], "Polygon"],
      paint: { "fill-color": "#f472b6", "fill-opacity": 0.15 } });
    map.addLayer({ id: "draw-sketch-line", type: "line", source: "draw-sketch",
      paint: { "line-color": "#db2777", "line-width": 2, "line-dasharray": [2, 1] } });
    map.addLayer({ id: "draw-sketch-vertex", type: "circle", source: "draw-sketch",
      filter: ["==", ["geometry-type"], "Point"],
      paint: { "circle-radius": 4, "circle-color": "#fff", "circle-stroke-color": "#db2777",
        "circle-stroke-width": 2 } });
  }

  get pickLayers() {
    return ["draw-label-point", "draw-label-fill",
      ...Object.keys(AREA_STYLES).map((role) => `draw-${role}-fill`)];
  }

  render() {
    const shown = this.features.map((f) => ({
      type: "Feature",
      geometry: f.geometry,
      properties: { ...f.properties, ...this.decorate(f), _id: f.id, _selected: f.id === this.selectedId },
    }));
    this.map.getSource("draw").setData({ type: "FeatureCollection", features: shown });
    this.map.getSource("draw-sketch").setData(this._sketchGeoJSON());
    this.map.getSource("draw-handles").setData(this._handlesGeoJSON());
  }

  // Vertices of the selected polygon, and midpoints where a drag inserts one (not for boxes,
  // whose corners move as a rectangle).
  _handlesGeoJSON() {
    const feature = this.selected();
    if (!feature || feature.geometry.type !== "Polygon" || this.mode !== "select") return EMPTY;
    const ring = feature.geometry.coordinates[0].slice(0, -1);
    const features = ring.map((p, index) => handle("vertex", index, p));
    if (feature.properties.shape !== "box") {
      ring.forEach((p, index) => {
        const q = ring[(index + 1) % ring.length];
        features.push(handle("midpoint", index, [(p[0] + q[0]) / 2, (p[1] + q[1]) / 2]));
      });
    }
    return { type: "FeatureCollection", features };
  }

  _pickHandle(point) {
    const box = [[point.x - 6, point.y - 6], [point.x + 6, point.y + 6]];
    const hits = this.map.queryRenderedFeatures(box, { layers: ["draw-handle-vertex", "draw-handle-midpoint"] });
    const vertex = hits.find((h) => h.properties.kind === "vertex");
    const hit = vertex || hits[0];
    return hit ? { kind: hit.properties.kind, index: hit.properties.index } : null;
  }

  _sketchGeoJSON() {
    const s = this.sketch;
    if (!s) return EMPTY;
    const features = [];
    if (s.kind === "rectangle" && s.cursor) {
      features.push({ type: "Feature", properties: {}, geometry: rectangle(s.points[0], s.cursor) });
    } else if (s.kind === "polygon") {
      const ring = s.cursor ? [...s.points, s.cursor] : s.points;
      if (ring.length >= 3) features.push({ type: "Feature", properties: {},
        geometry: { type: "Polygon", coordinates: [[...ring, ring[0]]] } });
      else if (ring.length === 2) features.push({ type: "Feature", properties: {},
        geometry: { type: "LineString", coordinates: ring } });
      for (const p of s.points) features.push({ type: "Feature", properties: {}, geometry: { type: "Point", coordinates: p } });
    }
    return { type: "FeatureCollection", features };
  }

  // --- mouse and keyboard ----------------------------------------------------------------------

  _bindEvents() {
    const map = this.map;
    map.on("mousedown", (e) => this._down(e));
    map.on("mousemove", (e) => this._move(e));
    map.on("mouseup", (e) => this._up(e));
    map.on("click", (e) => this._click(e));
    map.on("dblclick", (e) => {
      if (this.mode === "polygon" && this.sketch) {
        e.preventDefault();
        this._finishPolygon();
      }
    });
    document.addEventListener("keydown", (e) => {
      if (!this.enabled || ["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName)) return;
      if (e.key === "Escape") { this.sketch = null; this.render(); if (this.mode !== "select") this.setMode("select"); }
      else if (e.key === "Enter" && this.mode === "polygon") this._finishPolygon();
      else if ((e.key === "Delete" || e.key === "Backspace") && this.deleteSelected()) e.preventDefault();
      else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); this.undo(); }
      else if (e.key === "r") this.setMode("rectangle");
      else if (e.key === "p") this.setMode("polygon");
      else if (e.key === "o") this.setMode("point");
      else if (e.key === "s") this.setMode("select");
    });
  }

  _lngLat(e) {
    return [e.lngLat.lng, e.lngLat.lat];
  }

  _pick(point) {
    const hits = this.map.queryRenderedFeatures(point, { layers: this.pickLayers });
    return hits.length ? hits[0].properties._id : null;
  }

  _down(e) {
    if (!this.enabled || e.originalEvent.button !== 0) return;
    this.swallowClick = false;
    if (this.mode === "rectangle") {
      e.preventDefault();
      this.sketch = { kind: "rectangle", points: [this._lngLat(e)], cursor: null };
    } else if (this.mode === "select") {
      const grip = this.selectedId && this._pickHandle(e.point);
      if (grip) {
        e.preventDefault(); // reshape instead of panning
        this.swallowClick = true; // the click that ends this must not change the selection
        const feature = this.selected();
        const original = JSON.stringify(feature.geometry);
        if (e.originalEvent.shiftKey && grip.kind === "vertex") {
          this._removeVertex(feature, grip.index);
          return;
        }
        let index = grip.index;
        if (grip.kind === "midpoint") {
          const ring = feature.geometry.coordinates[0];
          ring.splice(index + 1, 0, this._lngLat(e));
          index += 1;
        }
        const ring = feature.geometry.coordinates[0];
        const anchor = feature.properties.shape === "box" ? ring[(index + 2) % 4] : null;
        this.drag = { vertex: index, anchor, moved: false, original };
        return;
      }
      const id = this._pick(e.point);
      if (id && id === this.selectedId) {
        e.preventDefault(); // drag the selected feature instead of panning
        this.drag = { start: this._lngLat(e), moved: false, original: JSON.stringify(this.selected().geometry) };
      }
    }
  }

  _move(e) {
    if (!this.enabled) return;
    if (this.sketch) {
      this.sketch.cursor = this._lngLat(e);
      this.map.getSource("draw-sketch").setData(this._sketchGeoJSON());
    } else if (this.drag && this.drag.vertex !== undefined) {
      const feature = this.selected();
      const to = this._lngLat(e);
      feature.geometry = this.drag.anchor ? rectangle(this.drag.anchor, to) : moveVertex(feature.geometry, this.drag.vertex, to);
      this.drag.moved = true;
      this.render();
    } else if (this.drag) {
      const [lon, lat] = this._lngLat(e);
      const dx = lon - this.drag.start[0];
      const dy = lat - this.drag.start[1];
      const feature = this.selected();
      feature.geometry = translate(JSON.parse(this.drag.original), dx, dy);
      this.drag.moved = true;
      this.render();
    } else if (this.mode === "select") {
      this.map.getCanvasContainer().style.cursor = this._pick(e.point) ? "pointer" : "";
    }
  }

  _up(e) {
    if (!this.enabled) return;
    if (this.mode === "rectangle" && this.sketch) {
      const start = this.map.project(this.sketch.points[0]);
      const end = e.point;
      const corner = this.sketch.points[0];
      this.sketch = null;
      this.render();
      if (Math.abs(start.x - end.x) > 3 && Math.abs(start.y - end.y) > 3) {
        const f = this.add(rectangle(corner, this._lngLat(e)), { shape: "box" });
        this.select(f.id);
      }
    } else if (this.drag) {
      const { moved, original } = this.drag;
      this.drag = null;
      if (!moved) {
        this.selected().geometry = JSON.parse(original); // a click on a midpoint adds nothing
        this.render();
      } else {
        const feature = this.selected();
        const movedGeometry = feature.geometry;
        feature.geometry = JSON.parse(original);
        this.mutate(() => { feature.geometry = movedGeometry; });
      }
    }
  }

  _click(e) {
    if (!this.enabled) return;
    if (this.swallowClick) {
      this.swallowClick = false;
      return;
    }
    if (this.mode === "select") {
      this.select(this._pick(e.point));
    } else if (this.mode === "point") {
      const f = this.add({ type: "Point", coordinates: this._lngLat(e) });
      this.select(f.id);
    } else if (this.mode === "polygon") {
      const here = this._lngLat(e);
      if (!this.sketch) {
        this.sketch = { kind: "polygon", points: [here], cursor: null };
      } else {
        const first = this.map.project(this.sketch.points[0]);
        const close = Math.hypot(first.x - e.point.x, first.y - e.point.y) < CLOSE_PX;
        if (close && this.sketch.points.length >= 3) return this._finishPolygon();
        const last = this.map.project(this.sketch.points[this.sketch.points.length - 1]);
        if (Math.hypot(last.x - e.point.x, last.y - e.point.y) < 2) return; // the dblclick's 2nd click
        this.sketch.points.push(here);
      }
      this.render();
    }
  }

  _removeVertex(feature, index) {
    const ring = feature.geometry.coordinates[0].slice(0, -1);
    if (ring.length <= 3 || feature.properties.shape === "box") return; // stays a polygon
    ring.splice(index, 1);
    this.mutate(() => { feature.geometry = { type: "Polygon", coordinates: [[...ring, ring[0]]] }; });
  }

  _finishPolygon() {
    const s = this.sketch;
    this.sketch = null;
    if (!s || s.points.length < 3) { this.render(); return; }
    const ring = [...s.points, s.points[0]];
    const f = this.add({ type: "Polygon", coordinates: [ring] });
    this.select(f.id);
  }
}

function rectangle([x0, y0], [x1, y1]) {
  const [w, e] = [Math.min(x0, x1), Math.max(x0, x1)];
  const [s, n] = [Math.min(y0, y1), Math.max(y0, y1)];
  return { type: "Polygon", coordinates: [[[w, s], [e, s], [e, n], [w, n], [w, s]]] };
}

function handle(kind, index, coordinates) {
  return { type: "Feature", properties: { kind, index }, geometry: { type: "Point", coordinates } };
}

// The polygon with vertex `index` at `to` (boxes are redrawn from their fixed corner instead).
function moveVertex(geometry, index, to) {
  const ring = geometry.coordinates[0].slice(0, -1);
  ring[index] = to;
  return { type: "Polygon", coordinates: [[...ring, ring[0]], ...geometry.coordinates.slice(1)] };
}

function translate(geometry, dx, dy) {
  const shift = ([x, y]) => [x + dx, y + dy];
  if (geometry.type === "Point") return { ...geometry, coordinates: shift(geometry.coordinates) };
  if (geometry.type === "Polygon") return { ...geometry, coordinates: geometry.coordinates.map((r) => r.map(shift)) };
  return geometry;
}

export { AREA_STYLES };
