"""The experiment framework: datasets with N labels, a suite run's table and JSON, the change
against the previous run, folds, seeds and their mean and spread, cross-image runs, and
skipping real data that is not on the machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_scene_tif
from trainer.experiments import (
    DATASETS,
    _cross_image,
    _halves,
    format_summary,
    format_table,
    make_annotations,
    run_from_cli,
    run_suite,
    summarise,
    truth_objects,
)

ROW_KEYS = {
    "dataset",
    "fold",
    "seed",
    "labels",
    "f1_iou40",
    "per_class",
    "train_seconds",
    "steps",
    "precision",
    "recall",
    "f1",
    "counting_f1",
    "count_error",
    "foreground_iou",
    "delta_f1",
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    prepared = DATASETS["synthetic-quick"].prepare(cache, cache / "no-shared-data")
    return cache, prepared, truth_objects(prepared)


def test_training_area_holds_the_asked_labels_and_never_meets_the_accuracy_area(quick):
    _, prepared, objects = quick
    accuracy_labels = set()
    for wanted in (5, 10, 20):
        labelled = make_annotations(prepared, objects, wanted)
        annotations = labelled.annotations
        assert labelled.clean_edges
        assert labelled.training_labels == wanted
        (training,), (accuracy,) = annotations.training, annotations.accuracy
        assert training.geometry.intersection(accuracy.geometry).area < 1e-6
        # whole objects: no label anchored in the training area sticks out of it much
        for label in annotations.labels_in(training):
            assert label.geometry.difference(training.geometry).area < 0.01 * label.geometry.area
        accuracy_labels.add(labelled.accuracy_labels)
    assert len(accuracy_labels) == 1  # the same accuracy objects whatever N


def test_asking_more_labels_than_the_zone_holds_gives_all_it_holds(quick):
    _, prepared, objects = quick
    most = make_annotations(prepared, objects, 1000).training_labels
    assert most == make_annotations(prepared, objects, 5000).training_labels
    assert 20 < most < 1000


def test_quick_suite_writes_json_and_table_then_shows_the_change(quick, tmp_path):
    cache, _, _ = quick
    out = tmp_path / "results"
    printed: list[str] = []
    rows = run_suite("quick", None, None, out, printed.append, steps=3, cache=cache, seeds=(0,))

    assert len(rows) == 1
    row = rows[0]
    assert row.keys() >= ROW_KEYS, row
    assert row["dataset"] == "synthetic-quick" and row["labels"] == 10 and row["steps"] == 3
    for key in ("precision", "recall", "f1", "counting_f1", "foreground_iou"):
        assert 0.0 <= row[key] <= 1.0
    assert row["count_error"] >= 0.0 and row["delta_f1"] is None
    table = printed[-3]
    assert table.splitlines()[0].split()[:4] == ["dataset", "fold", "seed", "labels"]
    assert "synthetic-quick" in table and "ΔF1" not in table

    latest = json.loads((out / "quick-latest.json").read_text())
    assert latest["suite"] == "quick" and latest["previous"] is None
    assert latest["rows"] == json.loads(json.dumps(rows))
    assert {"cpu", "cores", "torch_threads"} <= latest["machine"].keys()
    assert "commit" in latest["git"] and latest["budget"]["steps"] == 3
    assert latest["config"]["chip"] > 0
    stamped = sorted(p.name for p in out.glob("quick-2*.json"))
    assert len(stamped) == 1

    printed.clear()
    again = run_suite("quick", None, None, out, printed.append, steps=3, cache=cache, seeds=(0,))
    table = printed[-3]
    assert "ΔF1" in table.splitlines()[0]
    assert again[0]["delta_f1"] == pytest.approx(again[0]["f1"] - row["f1"], abs=1e-3)
    second = json.loads((out / "quick-latest.json").read_text())
    assert second["previous"] == latest["timestamp"]
    assert len(list(out.glob("quick-2*.json"))) == 2


def test_missing_real_data_is_skipped_and_recorded(tmp_path):
    printed: list[str] = []
    rows = run_suite(
        "real", None, None, tmp_path, printed.append, cache=tmp_path, data_dir=tmp_path / "none"
    )
    assert rows == []
    assert sum(line.startswith("skipped ") for line in printed) == 4
    record = json.loads((tmp_path / "real-latest.json").read_text())
    assert {s["dataset"] for s in record["skipped"]} == {
        "neon-osbs029",
        "neon-soap061",
        "neon-osbs029-to-soap061",
        "spacenet-atlanta",
    }


def test_unknown_suite_is_refused(tmp_path: Path, capsys):
    assert run_from_cli("no-such-suite", out_dir=tmp_path) == 2
    assert "unknown suite" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_table_marks_failures_and_deltas():
    rows = [
        {"dataset": "a", "labels": 50, "train_seconds": 240.2, "steps": 300, "precision": 0.9,
         "recall": 0.8, "f1": 0.847, "delta_f1": 0.021, "counting_f1": 0.95,
         "count_error": 0.05, "foreground_iou": 0.7},
        {"dataset": "b", "labels": 20, "error": "RuntimeError: boom"},
    ]  # fmt: skip
    lines = format_table(rows).splitlines()
    assert "+0.021" in lines[2] and "5.0%" in lines[2]
    assert "failed" in lines[3]


def test_seeds_are_summarised_as_mean_and_spread(quick, tmp_path):
    cache, _, _ = quick
    printed: list[str] = []
    rows = run_suite(
        "quick", None, None, tmp_path, printed.append, steps=2, cache=cache, seeds=(0, 1)
    )
    assert [(r["seed"], r["fold"]) for r in rows] == [(0, 0), (1, 0)]
    (entry,) = json.loads((tmp_path / "quick-latest.json").read_text())["summary"]
    assert entry["runs"] == 2 and entry["seeds"] == 2 and entry["folds"] == 1
    f1s = [r["f1"] for r in rows]
    assert entry["f1"]["mean"] == pytest.approx(sum(f1s) / 2, abs=1e-4)
    assert entry["f1"]["min"] == min(f1s) and entry["f1"]["max"] == max(f1s)
    assert entry["f1"]["sd"] == pytest.approx(abs(f1s[0] - f1s[1]) / 2**0.5, abs=1e-4)
    assert printed[-2].startswith("summary (mean ± sd over folds and seeds)")


def test_summary_pools_folds_and_reports_each_class():
    rows = [
        {"dataset": "d", "fold": fold, "seed": seed, "labels": 17 + fold,
         "labels_requested": 100, "f1": f1, "f1_iou40": f1 + 0.1, "precision": 0.5,
         "recall": 0.5, "steps": 10, "count_error": 0.1,
         "per_class": {"dead": {"f1": f1, "f1_iou40": f1}, "alive": {"f1": 0.0, "f1_iou40": 0.2}}}
        for fold, seed, f1 in ((0, 0, 0.6), (0, 1, 0.7), (1, 0, 0.5), (1, 1, 0.6))
    ] + [{"dataset": "d", "fold": 1, "seed": 2, "labels": 18, "labels_requested": 100,
          "error": "RuntimeError: boom"}]  # fmt: skip
    (entry,) = summarise(rows)
    assert (entry["runs"], entry["folds"], entry["seeds"], entry["failed"]) == (4, 2, 2, 1)
    assert entry["labels_trained"] == [17, 18]
    assert entry["f1"]["mean"] == pytest.approx(0.6) and entry["f1_iou40"]["mean"] == 0.7
    assert entry["per_class"]["alive"]["f1_iou40"]["mean"] == pytest.approx(0.2)
    text = format_summary([entry])
    assert "0.600 ± 0.082" in text and "  alive" in text and "4 (2x2)" in text


@pytest.fixture(scope="module")
def two_images(tmp_path_factory) -> Path:
    """Two painted scenes in the layout of the shared data folder (one per site)."""
    root = tmp_path_factory.mktemp("shared")
    for site, seed in (("a", 11), ("b", 12)):
        (root / site).mkdir()
        write_scene_tif(root / site / "scene.tif", size=384, seed=seed, crowding=4.0)
    return root


def test_a_real_image_trains_on_each_half_in_turn(two_images, tmp_path):
    dataset = _halves("halves", "", "a", "scene.tif", "scene.geojson", "tree", as_boxes=True)
    assert dataset.folds == 2
    first, second = (dataset.prepare(tmp_path, two_images, fold) for fold in (0, 1))
    assert first.training_zone.equals(second.accuracy_zone)
    assert first.accuracy_zone.equals(second.training_zone)
    assert first.training_zone.intersection(first.accuracy_zone).area == 0
    labelled = make_annotations(second, truth_objects(second), 1000)
    (training,) = labelled.annotations.training
    assert training.geometry.centroid.x > first.training_zone.centroid.x  # the east half
    assert labelled.training_labels > 0 and labelled.accuracy_labels > 0


def test_a_cross_image_run_trains_on_one_image_and_scores_another(two_images, tmp_path):
    dataset = _cross_image(
        "cross", "", ("a", "scene.tif", "scene.geojson"), ("b", "scene.tif", "scene.geojson"),
        "thing",
    )  # fmt: skip
    prepared = dataset.prepare(tmp_path, two_images, 0)
    assert prepared.score_image == two_images / "b" / "scene.tif"
    classes = {f["properties"]["class"] for f in prepared.score_truth["features"]}
    assert classes == {"thing"}  # every class merged into the one trained
    labelled = make_annotations(prepared, truth_objects(prepared), 1000)
    assert labelled.annotations.accuracy == () and len(labelled.annotations.training) == 1
    scored = labelled.scored()
    assert scored.training == () and len(scored.accuracy) == 1
    everything = len(prepared.score_truth["features"])
    assert labelled.accuracy_labels == everything > 0
    row = run_suite_row(prepared, labelled, tmp_path)
    assert row["accuracy_labels"] == everything and row["steps"] == 2


def run_suite_row(prepared, labelled, tmp_path: Path) -> dict:
    from trainer.experiments import run_one
    from trainer.loop import TrainConfig

    return run_one(
        prepared, labelled, tmp_path / "run", seconds=None, steps=2, seed=0,
        config=TrainConfig(), progress=print,
    )  # fmt: skip


def test_settings_parse_true_and_false_and_refuse_other_words():
    from trainer.experiments import config_with

    assert config_with(["box_head=true"]).box_head is True
    assert config_with(["box_head=False"]).box_head is False  # bool("False") would be True
    assert config_with(["gap_radius=1", "widths=16,32"]).widths == (16, 32)
    with pytest.raises(KeyError, match="box_head is true or false"):
        config_with(["box_head=maybe"])
    with pytest.raises(KeyError, match="unknown setting"):
        config_with(["no_such=1"])
