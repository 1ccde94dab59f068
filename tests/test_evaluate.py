"""Slide-level evaluation pieces that have one copy in idcmap: Dice, truth from GeoJSON, JSON,
and the region tuning scored on the pipeline's own mask."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from idcmap.errors import UsageError
from idcmap.output.export import write_json
from idcmap.params import Params
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.regions import idc_mask
from idcmap.train import cases, evaluate, tune
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


def _speckled_case() -> cases.Case:
    """A 14×14 heatmap of 160-µm cells (25 600 µm², below the 40 000-µm² minimum region) and
    its truth: a 3×3 IDC block whose 2×2 core is at 0.9 and rim at 0.6, plus 16 isolated
    one-cell specks at 0.7 that are not IDC. The raw ``p >= t`` mask is best at 0.8 (the specks
    cost more than the rim); the pipeline's mask removes the specks and is best at 0.5."""
    prob = np.zeros((14, 14), np.float32)
    truth = np.zeros((14, 14), bool)
    prob[1:4, 1:4], truth[1:4, 1:4] = 0.6, True
    prob[1:3, 1:3] = 0.9
    for r in (6, 8, 10, 12):
        for c in (6, 8, 10, 12):
            prob[r, c] = 0.7
    return Heatmap(prob, (0.0, 0.0), (40.0, 40.0), 4.0, 4.0, 40, 50), truth


def test_tune_regions_scores_the_pipelines_mask_not_the_raw_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from idcmap.model.runtime import load_model

    case = _speckled_case()
    hm, truth = case
    d = Params()
    for t in (0.5, 0.8):  # the mask scored is the pipeline's own, with its Params sizes
        np.testing.assert_array_equal(
            cases.pipeline_mask(hm, t),
            idc_mask(hm, t, min_region_um2=d.min_region_um2, min_hole_um2=d.min_hole_um2),
        )
    raw = {t: dice_iou(hm.prob >= t, truth)["dice"] for t in (0.5, 0.8)}
    assert raw[0.8] > raw[0.5]  # the raw threshold would choose 0.8 (8/13 against 18/34)
    model = load_model(device="cpu")
    monkeypatch.setattr(tune, "slide_heatmaps", lambda slides, truths, m: [case])

    def run(**kw: object) -> dict:
        return tune.tune_regions(["s.tiff"], ["s.cells.csv"], model, smooth_um=(0,), **kw)

    rep = run(thresholds=(0.5, 0.8))
    assert rep["best"] == {"smooth_um": 0.0, "threshold": 0.5, "dice": 1.0}
    assert [r["dice"] for r in rep["table"]] == [1.0, pytest.approx(8 / 13)]
    # with nothing removed or filled the pipeline's mask is the raw one, and so is the choice
    rep = run(thresholds=(0.5, 0.8), params=Params(min_region_um2=0.0, min_hole_um2=0.0))
    assert rep["best"]["threshold"] == 0.8
    assert rep["best"]["dice"] == pytest.approx(raw[0.8])
