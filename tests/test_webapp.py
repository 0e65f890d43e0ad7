"""The web app in a real browser: Playwright driving Debian's Chromium (never a downloaded one)
against `tiledetect serve` on loopback. The full workflow on a small synthetic scene (upload,
create a detector, draw areas and labels with the mouse, train, scores, detection layer, export,
download), then a reload that keeps the annotations and API errors shown to the user.

Screenshots of the key states go to test-artifacts/webapp/ (gitignored)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright import sync_api as playwright_api
from shapely.geometry import shape

from tests.conftest import REPO, start_server, stop_server, upload, write_scene_tif

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "webapp"
TRAIN_STEPS = 30

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 1024 px scene, crowded so that small areas hold many objects (as in test_training)."""
    tif, truth = write_scene_tif(
        tmp_path_factory.mktemp("web-scene") / "scene.tif", 1024, seed=31, crowding=4
    )
    return tif, json.loads(truth.read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    # Small export cells: the scene's export has 16 of them, so progress per cell shows and
    # there is time to cancel one.
    live = start_server(root / "data", root / "server.log", export_cell_px="256")
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture(scope="module")
def browser():
    # make test installs it (scripts/sysdeps.sh); without it these tests fail, never skip
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make test` (scripts/sysdeps.sh)"
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--use-gl=angle",
                "--use-angle=swiftshader",
                "--ignore-gpu-blocklist",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.screenshot(path=str(ARTIFACTS / f"last-{request.node.name}.png"))  # the state at the end
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def wait_idle(page) -> None:
    """Until the map has loaded every tile it wants and drawn them."""
    page.wait_for_function(
        "() => window.tiledetect.map.loaded() && window.tiledetect.map.areTilesLoaded()"
    )
    page.evaluate(
        "() => new Promise((done) => { const m = window.tiledetect.map;"
        " m.once('idle', () => done()); m.triggerRepaint(); })"
    )


def screen(page, lon: float, lat: float) -> tuple[float, float]:
    """Page pixel of a WGS84 position on the map, as the user would point at it."""
    x, y = page.evaluate(
        "([lon, lat]) => { const p = window.tiledetect.map.project([lon, lat]);"
        " return [p.x, p.y]; }",
        [lon, lat],
    )
    box = page.locator("#map").bounding_box()
    return box["x"] + x, box["y"] + y


def image_point(image: dict, fx: float, fy: float) -> tuple[float, float]:
    """WGS84 of a fraction of the image extent (fx from west, fy from north)."""
    west, south, east, north = image["bounds_wgs84"]
    return west + fx * (east - west), north - fy * (north - south)


def drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=3)
    page.mouse.move(*end, steps=3)
    page.mouse.up()


def drag_on_image(page, image, a: tuple[float, float], b: tuple[float, float]) -> None:
    """Drag between two fractions of the image extent (see image_point)."""
    drag(page, screen(page, *image_point(image, *a)), screen(page, *image_point(image, *b)))


def draw_rectangle(page, image, a: tuple[float, float], b: tuple[float, float]) -> None:
    page.click("#toolbar [data-mode=rectangle]")
    drag_on_image(page, image, a, b)


def draw_box_lonlat(page, bounds: tuple[float, float, float, float]) -> None:
    west, south, east, north = bounds
    page.click("#toolbar [data-mode=rectangle]")
    drag(page, screen(page, west, north), screen(page, east, south))


def annotations(server, detector_id: str) -> list[dict]:
    return server.get(f"/api/detectors/{detector_id}/annotations").json()["features"]


def wait_saved(page) -> None:
    page.wait_for_function("() => document.getElementById('save-state').textContent === 'saved ✓'")


def wait_saved_any(page) -> None:
    """Saved, with or without warnings (pre-filled boxes may reach past their area's edge)."""
    page.wait_for_function(
        "() => document.getElementById('save-state').textContent.startsWith('saved')"
    )


def truth_in(truth: dict, image: dict, cls: str, fx: tuple, fy: tuple, n: int):
    """WGS84 bounds of up to n objects of class `cls` (the truth is WGS84) centred inside a
    fraction window of the image, big enough to draw on screen."""
    west, south, east, north = image["bounds_wgs84"]
    w, h = east - west, north - south
    found = []
    for feature in truth["features"]:
        if feature["properties"].get("class") != cls:
            continue
        geom = shape(feature["geometry"])
        c = geom.centroid
        x0, y0, x1, y1 = geom.bounds
        inside = (
            west + fx[0] * w < c.x < west + fx[1] * w
            and north - fy[1] * h < c.y < north - fy[0] * h
        )
        if inside and (x1 - x0) > 0.01 * w and (y1 - y0) > 0.01 * h:
            found.append(geom.bounds)
        if len(found) == n:
            break
    return found


def changed_pixels(before: bytes, after: bytes) -> float:
    a = np.asarray(Image.open(io.BytesIO(before)).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(after)).convert("RGB"), dtype=np.int16)
    return float((np.abs(a - b).sum(axis=2) > 30).mean())


def test_full_workflow(server, browser, page, scene):
    tif, truth = scene
    page.goto(server.url)
    page.wait_for_function("() => window.tiledetect && window.tiledetect.map.loaded()")
    shot(page, "01-empty")

    # Upload through the drop zone's file input: upload and ingest progress, then on the map.
    page.set_input_files("#file-input", str(tif))
    page.wait_for_selector("#images li.active", timeout=120_000)
    image = page.evaluate("() => window.tiledetect.state.image")
    assert image["name"] and image["bounds_wgs84"]
    wait_idle(page)

    # A detector with two classes and colours (the form opens itself when there are none).
    page.fill("#detector-name", "Trees and buildings")
    page.fill("#class-rows .class-row:nth-child(1) input[type=text]", "tree")
    page.click("#add-class")
    page.fill("#class-rows .class-row:nth-child(2) input[type=text]", "building")
    page.click("#create-detector")
    page.wait_for_selector("#toolbar:not([hidden])")
    detector = page.evaluate("() => window.tiledetect.state.detector")
    assert detector["classes"] == ["tree", "building"]

    # Areas: training top-left, accuracy bottom-right (as test_training does), with the mouse.
    page.select_option("#draw-role", "training_area")
    draw_rectangle(page, image, (0.0, 0.0), (0.55, 0.55))
    page.select_option("#draw-role", "accuracy_area")  # two, side by side: scored each
    draw_rectangle(page, image, (0.6, 0.6), (1.0, 0.8))
    draw_rectangle(page, image, (0.6, 0.8), (1.0, 1.0))
    page.select_option("#draw-role", "testing_area")
    draw_rectangle(page, image, (0.6, 0.02), (0.98, 0.3))
    wait_saved(page)

    # Labels: rectangles around true objects, and a polygon drawn vertex by vertex.
    page.select_option("#draw-role", "label")
    page.select_option("#draw-class", "tree")
    trees = truth_in(truth, image, "tree", (0.03, 0.52), (0.03, 0.52), 10)
    trees += truth_in(truth, image, "tree", (0.63, 0.97), (0.63, 0.97), 6)
    assert len(trees) >= 8
    for bounds in trees:
        draw_box_lonlat(page, bounds)
    page.select_option("#draw-class", "building")
    buildings = truth_in(truth, image, "building", (0.05, 0.5), (0.05, 0.5), 3)
    for bounds in buildings[:-1]:
        draw_box_lonlat(page, bounds)
    if buildings:
        west, south, east, north = buildings[-1]
        page.click("#toolbar [data-mode=polygon]")
        for lon, lat in ((west, north), (east, north), (east, south)):
            page.mouse.click(*screen(page, lon, lat))
        page.mouse.dblclick(*screen(page, west, south))
    # Select, delete, undo: the label comes back.
    page.click("#toolbar [data-mode=select]")
    wait_saved(page)
    count = len(annotations(server, detector["id"]))
    last = trees[-1]
    page.mouse.click(*screen(page, (last[0] + last[2]) / 2, (last[1] + last[3]) / 2))
    page.click("#delete-button")
    page.wait_for_function("() => document.getElementById('save-state').textContent !== 'saved ✓'")
    wait_saved(page)
    assert len(annotations(server, detector["id"])) == count - 1
    page.click("#undo-button")
    wait_saved(page)
    saved = annotations(server, detector["id"])
    assert len(saved) == count
    roles = [f["properties"].get("role", "label") for f in saved]
    assert roles.count("training_area") == 1 and roles.count("accuracy_area") == 2
    assert roles.count("testing_area") == 1
    assert roles.count("label") == len(trees) + len(buildings)
    assert (
        any(
            f["geometry"]["type"] == "Polygon" and f["properties"].get("shape") != "box"
            for f in saved
            if f["properties"].get("class") == "building"
        )
        or not buildings
    )
    shot(page, "02-annotated")

    # Train with a short budget: live progress, then the version's scores.
    page.fill("#train-steps", str(TRAIN_STEPS))
    page.click("#train-button")
    page.wait_for_function("() => document.querySelector('#loss-curve path')", timeout=300_000)
    shot(page, "03-training")
    page.wait_for_selector("#results-panel:not([hidden]) .metric-f1", timeout=600_000)
    assert "%" in page.text_content(".metric-precision")
    assert "%" in page.text_content(".metric-counting")
    page.wait_for_function(
        "() => window.tiledetect.map.querySourceFeatures('verdicts').length > 0", timeout=30_000
    )
    verdicts = page.evaluate(
        "() => window.tiledetect.map.querySourceFeatures('verdicts')"
        ".map((f) => f.properties.verdict)"
    )
    assert {"true_positive", "false_positive", "missed"} & set(verdicts)
    wait_idle(page)
    shot(page, "04-scores")

    # Each accuracy area's own scores, worst F1 first; headings sort; a row goes to its area.
    rows = page.locator("#area-scores tbody tr")
    assert rows.count() == 2

    def column(index: int) -> list[str]:
        return [rows.nth(i).locator("td").nth(index).text_content() for i in range(rows.count())]

    def percent(texts: list[str]) -> list[float]:
        return [float(t.rstrip(" %")) for t in texts]

    assert percent(column(5)) == sorted(percent(column(5)))
    page.click("#area-scores th[data-key=f1]")
    assert percent(column(5)) == sorted(percent(column(5)), reverse=True)
    page.click("#area-scores th[data-key=labelled]")
    assert [int(t) for t in column(1)] == sorted(int(t) for t in column(1))
    metrics = server.get(f"/api/detectors/{detector['id']}").json()["versions"][-1]["metrics"]
    per_area = {a["area"]: a for a in metrics["per_area"]}
    first = per_area[int(rows.nth(0).get_attribute("data-area"))]
    assert str(first["labelled"]) == column(1)[0]
    rows.nth(0).click()
    west, south, east, north = first["bounds_wgs84"]
    shown = page.evaluate("() => window.tiledetect.map.getBounds().toArray().flat()")
    assert shown[0] <= west and shown[2] >= east and shown[1] <= south and shown[3] >= north
    image_width = image["bounds_wgs84"][2] - image["bounds_wgs84"][0]
    assert shown[2] - shown[0] < 0.9 * image_width  # zoomed in on the area, not the image
    shot(page, "04-area-scores")
    [w, s_, e, n] = image["bounds_wgs84"]
    page.evaluate(
        f"() => window.tiledetect.map.fitBounds([[{w}, {s_}], [{e}, {n}]], {{animate: false}})"
    )

    # Where to label next: the version's suggestions, each with its reason; "Label here" makes
    # one a training area (saved), which Undo takes back.
    page.wait_for_selector("#suggestions-box:not([hidden]) #suggestions li")
    suggested = server.get(
        f"/api/detectors/{detector['id']}/versions/1/suggestions.geojson"
    ).json()["features"]
    items = page.locator("#suggestions li")
    assert items.count() == len(suggested) >= 1
    assert items.nth(0).locator(".reason").text_content() == suggested[0]["properties"]["reason"]
    before = len(annotations(server, detector["id"]))
    items.nth(0).locator(".make-area").click()
    wait_saved_any(page)
    stored = annotations(server, detector["id"])
    assert len(stored) == before + 1
    assert stored[-1]["properties"]["role"] == "training_area"
    assert shape(stored[-1]["geometry"]).equals_exact(shape(suggested[0]["geometry"]), 1e-9)
    shot(page, "04-suggestion-area")
    page.click("#undo-button")
    wait_saved(page)
    assert len(annotations(server, detector["id"])) == before
    page.evaluate(
        f"() => window.tiledetect.map.fitBounds([[{w}, {s_}], [{e}, {n}]], {{animate: false}})"
    )

    # The detection layer is on once a training finishes: tiles requested and drawn.
    assert page.is_checked("#detections-visible")
    page.uncheck("#detections-visible")
    page.uncheck("#verdicts-visible")
    wait_idle(page)
    before = page.locator("#map").screenshot()
    tile_urls: list[str] = []
    page.on(
        "response",
        lambda r: (
            tile_urls.append(r.url)
            if "/tiles/WebMercatorQuad/" in r.url and "/api/detectors/" in r.url and r.status == 200
            else None
        ),
    )
    page.check("#detections-visible")
    page.fill("#detections-opacity", "1")
    page.wait_for_function("() => window.tiledetect.map.getLayer('detections')")
    wait_idle(page)
    after = page.locator("#map").screenshot()
    shot(page, "05-detections")
    assert any(u.split("?")[0].endswith(".png") and "version=1" in u for u in tile_urls), tile_urls
    assert changed_pixels(before, after) > 0.005, "the detection layer drew nothing"

    # The score threshold re-renders the overlay on the server and filters the outlines.
    page.fill("#score-threshold", "0.9")
    assert page.text_content("#score-value") == "0.90"
    assert page.evaluate("() => window.tiledetect.map.getFilter('detections-objects')[2]") == 0.9
    deadline = time.monotonic() + 30
    while not any("threshold=0.9" in u for u in tile_urls):
        assert time.monotonic() < deadline, tile_urls[-5:]
        page.wait_for_timeout(200)

    # Predictions become labels: a new training area, filled with version 1's detections as
    # editable labels in one click; one deleted as a false positive; saved as ordinary labels.
    page.select_option("#draw-role", "training_area")
    draw_rectangle(page, image, (0.62, 0.32), (0.98, 0.58))
    wait_saved_any(page)
    before = len(annotations(server, detector["id"]))
    new_area = page.evaluate(
        "() => window.tiledetect.draw.features.filter("
        "(f) => f.properties.role === 'training_area').at(-1).id"
    )
    page.evaluate(f"() => window.tiledetect.draw.select({new_area!r})")
    prefill = page.locator("#prefill-button")
    assert prefill.is_enabled() and "v1" in prefill.text_content()
    prefill.click()
    page.wait_for_function(
        f"() => window.tiledetect.draw.features.length > {before}", timeout=120_000
    )
    wait_saved_any(page)
    stored = annotations(server, detector["id"])
    prefilled = [f for f in stored if f["properties"].get("prefilled_from") == 1]
    assert prefilled and len(stored) == before + len(prefilled)
    shot(page, "05b-prefilled")
    first_label = page.evaluate(
        "() => window.tiledetect.draw.features.find((f) => f.properties.prefilled_from).id"
    )
    page.evaluate(f"() => window.tiledetect.draw.select({first_label!r})")
    page.click("#delete-button")
    page.wait_for_function(f"() => window.tiledetect.draw.features.length === {len(stored) - 1}")
    wait_saved_any(page)
    assert len(annotations(server, detector["id"])) == len(stored) - 1

    # A second version (a very short training), then back to the first: the layer and the
    # scores follow the version chosen.
    f1_v1 = page.text_content(".metric-f1")
    page.fill("#train-steps", "10")
    page.click("#train-button")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#version-select option')].length === 2",
        timeout=600_000,
    )
    page.wait_for_function("() => window.tiledetect.state.version === 2")
    tile_urls.clear()
    page.select_option("#version-select", "1")
    page.wait_for_function("() => window.tiledetect.state.version === 1")
    assert page.text_content(".metric-f1") == f1_v1
    deadline = time.monotonic() + 30
    while not any("version=1" in u for u in tile_urls):
        assert time.monotonic() < deadline, tile_urls[-5:]
        page.wait_for_timeout(200)

    # URLs for QGIS.
    page.click("#urls summary")
    copies = page.locator("#url-list .copy")
    urls = [copies.nth(i).get_attribute("data-url") for i in range(copies.count())]
    assert any("tilejson.json" in u for u in urls) and any(
        "WMTSCapabilities.xml" in u for u in urls
    )
    assert (
        httpx.get(next(u for u in urls if "/api/detectors/" in u and "tilejson" in u)).status_code
        == 200
    )

    # Export over the whole image as GeoJSON: per-cell progress, counts, download.
    page.select_option("#export-format", "geojson")
    page.click("#export-button")
    page.wait_for_selector("#export-download:not([hidden])", timeout=300_000)
    shot(page, "06-exported")
    counts = {
        row.get_attribute("data-class"): int(row.locator(".count").text_content())
        for row in page.locator("#export-counts tr[data-class]").all()
    }
    with page.expect_download() as info:
        page.click("#export-download")
    path = ARTIFACTS / "export.geojson"
    info.value.save_as(path)
    exported = json.loads(path.read_text())
    assert exported["type"] == "FeatureCollection"
    by_class: dict[str, int] = {}
    for f in exported["features"]:
        by_class[f["properties"]["class"]] = by_class.get(f["properties"]["class"], 0) + 1
    assert {k: v for k, v in counts.items() if v} == by_class

    # Counts per zone: two zones (the image's west and east halves, with their own names)
    # uploaded; counted on the map and in a table; the GeoPackage downloaded and read by GDAL.
    west, south, east, north = image["bounds_wgs84"]
    middle = (west + east) / 2
    zones_path = ARTIFACTS / "zones.geojson"

    def ring(a: float, b: float) -> list:
        return [[a, south], [b, south], [b, north], [a, north], [a, south]]

    zones_path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {"name": name}, "geometry": {
                        "type": "Polygon",
                        "coordinates": [ring(a, b)],
                    }}
                    for name, a, b in (("west field", west, middle), ("east field", middle, east))
                ],
            }
        )
    )  # fmt: skip
    page.set_input_files("#zones-file", str(zones_path))
    page.wait_for_selector("#zones-table tr[data-zone]")
    table_rows = page.locator("#zones-table tr[data-zone]")
    assert table_rows.count() == 2
    assert table_rows.nth(0).locator("td").nth(0).text_content() == "west field"
    shown = {
        cls: sum(int(table_rows.nth(i).locator(f".count-{cls}").text_content()) for i in range(2))
        for cls in detector["classes"]
    }
    assert shown == {cls: by_class.get(cls, 0) for cls in detector["classes"]}  # each once
    wait_idle(page)
    shot(page, "06b-zones")
    with page.expect_download() as info:
        page.click("[data-zone-format=gpkg]")
    zones_gpkg = ARTIFACTS / "zones.gpkg"
    info.value.save_as(zones_gpkg)
    ogrinfo = subprocess.run(
        ["ogrinfo", "-ro", "-al", str(zones_gpkg)], capture_output=True, text=True, check=True
    ).stdout
    assert "Feature Count: 2" in ogrinfo and "west field" in ogrinfo
    for cls in detector["classes"]:
        assert f"{cls}_count (Integer" in ogrinfo

    # Cancel an export while it runs, then resume it: the cells done are kept.
    page.select_option("#export-format", "fgb")
    page.click("#export-button")
    page.wait_for_selector("#export-cancel:not([hidden])")
    page.click("#export-cancel")
    page.wait_for_selector("#export-resume:not([hidden])", timeout=120_000)
    assert "Cancelled after" in page.text_content("#export-label")
    (cancelled,) = [e for e in server.get("/api/exports").json() if e["format"] == "fgb"]
    assert cancelled["state"] == "cancelled" and cancelled["cells_done"] < cancelled["cells_total"]
    shot(page, "06a-export-cancelled")
    page.click("#export-resume")
    page.wait_for_function(
        "() => !document.getElementById('export-download').hidden"
        " && document.getElementById('export-download').textContent.includes('fgb')",
        timeout=300_000,
    )
    resumed = server.get(f"/api/exports/{cancelled['id']}").json()
    assert resumed["state"] == "done" and resumed["cells_done"] == resumed["cells_total"]
    # Resumed, it found what the uninterrupted GeoJSON export found.
    assert {k: c["count"] for k, c in resumed["summary"]["classes"].items()} == counts

    # An export over a drawn AOI, as a GeoPackage.
    page.select_option("#draw-role", "aoi")
    draw_rectangle(page, image, (0.1, 0.1), (0.4, 0.4))
    page.click("#toolbar [data-mode=select]")
    page.select_option("#export-format", "gpkg")
    page.select_option("#export-extent", "aoi")
    page.click("#export-button")
    page.wait_for_function(
        "() => !document.getElementById('export-download').hidden"
        " && document.getElementById('export-download').textContent.includes('gpkg')",
        timeout=300_000,
    )
    with page.expect_download() as info:
        page.click("#export-download")
    path = ARTIFACTS / "export-aoi.gpkg"
    info.value.save_as(path)
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    shot(page, "06b-exported-aoi")


def test_reload_keeps_annotations_and_errors_are_shown(server, browser, page, scene):
    if not server.get("/api/images").json():  # when run alone
        with httpx.Client(base_url=server.url, timeout=60) as client:
            upload(client, scene[0])
    page.goto(server.url)
    page.wait_for_selector("#images li.active", timeout=60_000)
    image = page.evaluate("() => window.tiledetect.state.image")
    wait_idle(page)

    # An API error next to the form that caused it: a detector without classes.
    if page.locator("#new-detector").is_hidden():
        page.click("#new-detector-button")
    page.fill("#detector-name", "nothing")
    page.click("#create-detector")
    error = page.locator("#detector-error")
    error.wait_for(state="visible")
    assert "classes" in error.text_content()
    shot(page, "07-detector-error")

    page.fill("#class-rows .class-row:nth-child(1) input[type=text]", "car")
    page.click("#create-detector")
    page.wait_for_selector("#toolbar:not([hidden])")
    detector = page.evaluate("() => window.tiledetect.state.detector")
    assert detector["name"] == "nothing"

    # A label outside every area: kept, and the app warns that it is unused until an area is
    # drawn round it, naming the feature.
    page.select_option("#draw-role", "label")
    draw_rectangle(page, image, (0.2, 0.2), (0.25, 0.25))
    page.wait_for_function(
        "() => document.getElementById('save-state').textContent === 'saved, 1 warning(s)'"
    )
    warning = page.locator("#annotations-warnings li")
    assert warning.count() == 1
    assert "feature 0" in warning.text_content()
    assert "draw a training_area round it" in warning.text_content()
    assert len(annotations(server, detector["id"])) == 1
    shot(page, "08-annotation-warning")
    page.click("#undo-button")
    wait_saved(page)
    assert page.locator("#annotations-warnings").is_hidden()

    # Saves land in the order they were made. The first save's request is held back 1.5 s in
    # the browser (as on a slow link or a busy server); an undo made meanwhile is sent after it,
    # not beside it, and "saved" shows once both are stored: the label stays deleted.
    page.evaluate(
        """() => {
            const real = window.fetch;
            window.fetch = async (url, options) => {
                if (options && options.method === "PUT" && !window.heldOnce) {
                    window.heldOnce = true;
                    await new Promise((resolve) => setTimeout(resolve, 1500));
                }
                return real(url, options);
            };
        }"""
    )
    draw_rectangle(page, image, (0.2, 0.2), (0.25, 0.25))
    page.wait_for_function("() => document.getElementById('save-state').textContent === 'saving…'")
    page.click("#undo-button")
    wait_saved(page)
    page.wait_for_timeout(2000)  # past the held request, had it been sent beside the undo's
    assert annotations(server, detector["id"]) == []
    assert page.text_content("#save-state") == "saved ✓"

    # An accuracy area over a training area cannot be understood: refused, the app says why
    # and selects it, and nothing is stored.
    page.select_option("#draw-role", "training_area")
    draw_rectangle(page, image, (0.6, 0.6), (0.8, 0.8))
    wait_saved(page)
    page.select_option("#draw-role", "accuracy_area")
    draw_rectangle(page, image, (0.7, 0.7), (0.9, 0.9))
    message = page.locator("#annotations-error")
    message.wait_for(state="visible")
    assert "feature 1" in message.text_content() and "overlaps" in message.text_content()
    assert page.text_content("#save-state") == "not saved"
    assert len(annotations(server, detector["id"])) == 1
    shot(page, "08-annotation-error")
    page.click("#undo-button")
    page.click("#undo-button")
    wait_saved(page)
    assert annotations(server, detector["id"]) == []

    # A box drawn past the training area's edge: kept whole, the warning says the part outside
    # is not used for training; a click on the warning selects it.
    page.select_option("#draw-role", "training_area")
    draw_rectangle(page, image, (0.1, 0.1), (0.5, 0.5))
    page.select_option("#draw-role", "label")
    draw_rectangle(page, image, (0.48, 0.2), (0.53, 0.25))
    page.wait_for_function(
        "() => document.getElementById('save-state').textContent === 'saved, 1 warning(s)'"
    )
    warning = page.locator("#annotations-warnings li")
    assert "feature 1" in warning.text_content()
    assert "the part outside is not used for training" in warning.text_content()
    shot(page, "08-straddling-label-warning")
    page.evaluate("() => window.tiledetect.draw.select(null)")
    warning.click()
    selected = page.evaluate("() => window.tiledetect.draw.selectedId")
    assert selected is not None
    page.click("#undo-button")
    wait_saved(page)
    page.select_option("#draw-role", "label")
    draw_rectangle(page, image, (0.2, 0.2), (0.25, 0.25))
    page.click("#toolbar [data-mode=polygon]")
    for fx, fy in ((0.3, 0.3), (0.4, 0.3), (0.4, 0.4)):
        page.mouse.click(*screen(page, *image_point(image, fx, fy)))
    page.keyboard.press("Enter")
    page.click("#toolbar [data-mode=point]")
    page.mouse.click(*screen(page, *image_point(image, 0.45, 0.2)))
    wait_saved(page)
    assert page.locator("#annotations-error").is_hidden()
    drawn = page.evaluate("() => window.tiledetect.draw.features.length")
    assert drawn == 4

    # Reshape the triangle: drag a vertex, drag a midpoint (a new vertex), shift-click it away.
    def triangle() -> list[list[float]]:
        (polygon,) = [
            f
            for f in annotations(server, detector["id"])
            if f["geometry"]["type"] == "Polygon"
            and f["properties"].get("shape") != "box"
            and f["properties"].get("role", "label") == "label"
        ]
        return polygon["geometry"]["coordinates"][0]

    def near(a, b) -> bool:
        west, south, east, north = image["bounds_wgs84"]
        return abs(a[0] - b[0]) < 0.01 * (east - west) and abs(a[1] - b[1]) < 0.01 * (north - south)

    def handles_drawn(count: int) -> None:
        """Until the map has drawn the selected polygon's vertex handles (a drag needs them)."""
        page.wait_for_function(
            "(n) => window.tiledetect.map.queryRenderedFeatures("
            "{layers: ['draw-handle-vertex']}).length === n",
            arg=count,
        )

    def reshape(start: tuple[float, float], end: tuple[float, float]) -> list[list[float]]:
        """Drag a handle; once the edit is in the drawing's history, the ring the API saves."""
        handles_drawn(3)
        before, edits = triangle(), page.evaluate("() => window.tiledetect.draw.history.length")
        drag_on_image(page, image, start, end)
        page.wait_for_function("(n) => window.tiledetect.draw.history.length > n", arg=edits)
        deadline = time.monotonic() + 30
        while (ring := triangle()) == before:
            assert time.monotonic() < deadline, "the reshaped polygon was never saved"
            page.wait_for_timeout(100)
        wait_saved(page)
        return ring

    page.click("#toolbar [data-mode=select]")
    page.mouse.click(*screen(page, *image_point(image, 0.38, 0.33)))
    page.wait_for_function("() => window.tiledetect.draw.selected() !== null")
    ring = reshape((0.4, 0.4), (0.45, 0.45))
    assert len(ring) == 4 and any(near(p, image_point(image, 0.45, 0.45)) for p in ring)
    assert not any(near(p, image_point(image, 0.4, 0.4)) for p in ring)
    ring = reshape((0.35, 0.3), (0.35, 0.26))
    assert len(ring) == 5 and any(near(p, image_point(image, 0.35, 0.26)) for p in ring)
    shot(page, "08b-reshaped")
    handles_drawn(4)
    page.keyboard.down("Shift")
    page.mouse.click(*screen(page, *image_point(image, 0.35, 0.26)))
    page.keyboard.up("Shift")
    page.wait_for_function(
        "() => window.tiledetect.draw.selected().geometry.coordinates[0].length === 4"
    )
    wait_saved(page)
    assert len(triangle()) == 4

    page.reload()
    page.wait_for_selector("#toolbar:not([hidden])", timeout=60_000)
    page.wait_for_function(
        "() => window.tiledetect.draw && window.tiledetect.draw.features.length === 4"
    )
    kinds = page.evaluate(
        "() => window.tiledetect.draw.features.map((f) => f.geometry.type).sort()"
    )
    assert kinds == ["Point", "Polygon", "Polygon", "Polygon"]
    assert page.input_value("#detector-select") == detector["id"]
    wait_idle(page)
    shot(page, "09-after-reload")
