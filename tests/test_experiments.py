"""The experiment framework: datasets with N labels, a suite run's table and JSON, the change
against the previous run, and skipping real data that is not on the machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.experiments import (
    DATASETS,
    format_table,
    make_annotations,
    run_from_cli,
    run_suite,
    truth_objects,
)

ROW_KEYS = {
    "dataset",
    "labels",
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
    rows = run_suite("quick", None, None, out, printed.append, steps=3, cache=cache)

    assert len(rows) == 1
    row = rows[0]
    assert row.keys() >= ROW_KEYS, row
    assert row["dataset"] == "synthetic-quick" and row["labels"] == 10 and row["steps"] == 3
    for key in ("precision", "recall", "f1", "counting_f1", "foreground_iou"):
        assert 0.0 <= row[key] <= 1.0
    assert row["count_error"] >= 0.0 and row["delta_f1"] is None
    table = printed[-2]
    assert table.splitlines()[0].split()[:3] == ["dataset", "labels", "train"]
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
    again = run_suite("quick", None, None, out, printed.append, steps=3, cache=cache)
    table = printed[-2]
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
    assert sum(line.startswith("skipped ") for line in printed) == 2
    record = json.loads((tmp_path / "real-latest.json").read_text())
    assert {s["dataset"] for s in record["skipped"]} == {"neon-osbs029", "spacenet-atlanta"}


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
