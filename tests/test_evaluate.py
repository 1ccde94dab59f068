"""Slide-level evaluation pieces that have one copy in idcmap: Dice, truth from GeoJSON, JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from idcmap.errors import UsageError
from idcmap.output.export import write_json
from idcmap.pipeline.heatmap import Heatmap
from idcmap.train import evaluate
from idcmap.train.metrics import dice_from_counts, dice_iou
from idcmap.train.truth import truth_from_geojson


def _square(x0: float, y0: float, side: float, cls: object) -> dict:
    props = {} if cls is None else {"classification": cls}
    ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
    return {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }


def _grid(rows: int, cols: int, cell: float) -> Heatmap:
    return Heatmap(np.zeros((rows, cols), np.float32), (0.0, 0.0), (cell, cell), 4.0, 4.0, 50, 50)


def test_dice_has_one_rule() -> None:
    assert dice_from_counts(0, 0, 0) == (1.0, 1.0)  # both empty: agreement
    assert dice_from_counts(2, 3, 3) == (pytest.approx(2 / 3), pytest.approx(0.5))
    r = dice_iou(np.array([[1, 1, 0]], bool), np.array([[1, 0, 1]], bool))
    assert (r["dice"], r["iou"]) == dice_from_counts(1, 2, 2)


def test_truth_from_geojson_matches_the_class_name_exactly(tmp_path: Path) -> None:
    """One rule with read_geojson_polygons: the class name must be "IDC" exactly (no substring,
    unclassified features are not truth)."""
    features = [
        _square(0, 0, 50, {"name": "IDC"}),  # cell (0, 0)
        _square(50, 0, 50, {"name": "IDC grade 2"}),  # not IDC: a different class
        _square(100, 0, 50, None),  # not IDC: unclassified
        _square(0, 50, 50, {"name": "Tumor"}),  # not IDC
        _square(100, 50, 50, "IDC"),  # a bare class string (old QuPath): IDC
    ]
    gj = tmp_path / "t.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    np.testing.assert_array_equal(truth_from_geojson(gj, _grid(2, 3, 50.0)), [[1, 0, 0], [0, 0, 1]])
    tumor = truth_from_geojson(gj, _grid(2, 3, 50.0), class_name="Tumor")
    np.testing.assert_array_equal(tumor, [[0, 0, 0], [1, 0, 0]])
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(UsageError, match="cannot read GeoJSON"):
        truth_from_geojson(tmp_path / "bad.geojson", _grid(2, 3, 50.0))


def test_one_json_writer_nulls_nan_and_inf(tmp_path: Path) -> None:
    assert not hasattr(evaluate, "write_json")  # idcmap.output.export.write_json is the one
    path = tmp_path / "sub" / "r.json"  # parent folders are made
    write_json({"auc": math.nan, "x": np.float32(0.5), "inf": -math.inf, "a": np.arange(2)}, path)
    assert json.loads(path.read_text()) == {"auc": None, "x": 0.5, "inf": None, "a": [0, 1]}
