"""Export stage: QuPath GeoJSON (written, validated, read back), PNGs, NPZ, JSON."""

from __future__ import annotations

import copy
import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from geojson_check import validate_qupath_geojson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_regions import grid, heatmap_and_mask, make_heatmap

from idcmap.output.export import (
    IDC_COLOR,
    heatmap_npz,
    load_heatmap_npz,
    read_geojson_polygons,
    regions_to_geojson,
    write_json,
)
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.regions import Region, mask_to_regions, rasterize


def json_round_trip(obj: Any) -> Any:
    return json.loads(json.dumps(obj, allow_nan=False))


def ring_sign(ring: list[list[float]]) -> float:
    """Signed area (shoelace) in the numbers: > 0 counter-clockwise with x right, y up."""
    xy = np.asarray(ring)
    return float(np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1]) / 2)


def same_geometries(a: list[shapely.Geometry], b: list[shapely.Geometry], tol: float) -> None:
    assert len(a) == len(b)
    for ga, gb in zip(a, b, strict=True):
        assert ga.hausdorff_distance(gb) <= tol
        assert shapely.get_num_interior_rings(ga) == shapely.get_num_interior_rings(gb)


# ------------------------------------------------------------------------- GeoJSON


def test_feature_shape_ring_with_hole() -> None:
    mask = grid(
        """
        .....
        .###.
        .#.#.
        .###.
        """
    )
    hm = make_heatmap(np.where(mask, 0.8, 0.2))
    regions = mask_to_regions(mask, hm)
    fc = json_round_trip(regions_to_geojson(regions))
    validate_qupath_geojson(fc)
    assert fc["type"] == "FeatureCollection"
    (f,) = fc["features"]
    uuid.UUID(f["id"], version=4)
    props = f["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"] == {"name": "IDC", "color": list(IDC_COLOR)}
    assert props["isLocked"] is False
    m = props["measurements"]
    assert m["Area µm^2"] == pytest.approx(8 * hm.cell_area_um2)
    assert m["Mean IDC probability"] == pytest.approx(0.8)
    assert m["Max IDC probability"] == pytest.approx(0.8)
    assert m["Heatmap cells"] == 8
    geom = f["geometry"]
    assert geom["type"] == "Polygon"
    exterior, hole = geom["coordinates"]
    for ring in (exterior, hole):
        assert ring[0] == ring[-1]
        assert all(round(v, 2) == v for xy in ring for v in xy)
    # RFC 7946: exterior counter-clockwise, holes clockwise (in the numbers)
    assert ring_sign(exterior) > 0 > ring_sign(hole)
    # back onto the grid
    (poly,) = read_geojson_polygons(fc)
    assert np.array_equal(rasterize([poly], hm), mask)


def test_empty_feature_collection(tmp_path: Path) -> None:
    fc = regions_to_geojson([])
    assert fc == {"type": "FeatureCollection", "features": []}
    path = tmp_path / "empty.geojson"
    write_json(fc, path)
    validate_qupath_geojson(json.loads(path.read_text(encoding="utf-8")))
    assert read_geojson_polygons(path) == []


def test_tiles() -> None:
    prob = np.array([[0.1, np.nan], [0.7, 0.5]], np.float32)
    hm = make_heatmap(prob, origin=(10.0, 20.0), cell=(100.5, 100.5))
    fc = json_round_trip(regions_to_geojson([], tiles=hm, tile_threshold=0.5))
    validate_qupath_geojson(fc)
    tiles = fc["features"]
    assert len(tiles) == 3  # the NaN cell is not a tile
    assert all(t["properties"]["objectType"] == "tile" for t in tiles)
    assert len({t["id"] for t in tiles}) == 3
    by_prob = {round(t["properties"]["measurements"]["IDC probability"], 3): t for t in tiles}
    assert by_prob[0.1]["properties"]["classification"]["name"] == "Other"
    assert by_prob[0.7]["properties"]["classification"]["name"] == "IDC"
    assert by_prob[0.5]["properties"]["classification"]["name"] == "IDC"  # >= threshold
    # the file names the threshold its tiles are classified at: the tile threshold
    assert fc["idcmap"]["tile_threshold"] == 0.5
    assert all(t["properties"]["measurements"]["Tile threshold"] == 0.5 for t in tiles)
    assert by_prob[0.7]["geometry"]["coordinates"] == [
        [[10.0, 120.5], [110.5, 120.5], [110.5, 221.0], [10.0, 221.0], [10.0, 120.5]]
    ]
    # tiles are not IDC annotations: read_geojson_polygons keeps only the IDC-classified ones
    assert len(read_geojson_polygons(fc, class_name="IDC")) == 2
    assert len(read_geojson_polygons(fc, class_name=None)) == 3


def test_nan_measurements_are_left_out() -> None:
    region = Region(shapely.box(0, 0, 10, 10), 6.25, float("nan"), float("nan"), 1)
    fc = json_round_trip(regions_to_geojson([region]))
    validate_qupath_geojson(fc)
    assert fc["features"][0]["properties"]["measurements"] == {
        "Area µm^2": 6.25,
        "Heatmap cells": 1,
    }


def test_multipolygon_region_and_class_name() -> None:
    mp = shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(2, 0, 3, 1)])
    fc = json_round_trip(
        regions_to_geojson([Region(mp, 2.0, 0.9, 0.9, 2)], class_name="Tumor", color=(1, 2, 3))
    )
    validate_qupath_geojson(fc)
    f = fc["features"][0]
    assert f["geometry"]["type"] == "MultiPolygon"
    assert f["properties"]["classification"] == {"name": "Tumor", "color": [1, 2, 3]}
    assert read_geojson_polygons(fc) == []
    (g,) = read_geojson_polygons(fc, class_name="Tumor")
    assert g.equals(mp)


def _valid_feature() -> dict[str, Any]:
    region = Region(shapely.box(0, 0, 10, 10).difference(shapely.box(2, 2, 4, 4)), 1, 0.5, 0.6)
    return regions_to_geojson([region])["features"][0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda fc: fc.update(type="Feature"), "FeatureCollection"),
        (lambda fc: fc.pop("features"), "features"),
        (lambda fc: fc["features"][0].update(type="Thing"), "Feature"),
        (lambda fc: fc["features"][0].pop("id"), "id"),
        (lambda fc: fc["features"][0].update(id=""), "id"),
        (lambda fc: fc["features"][0].pop("geometry"), "geometry"),
        (lambda fc: fc["features"][0]["geometry"].update(type="Point"), "Polygon"),
        (lambda fc: fc["features"][0]["geometry"]["coordinates"][0].pop(), "closed"),
        (lambda fc: fc["features"][0]["geometry"].update(coordinates=[]), "rings"),
        (
            lambda fc: fc["features"][0]["geometry"]["coordinates"][0].__setitem__(1, [1, "a"]),
            "position",
        ),
        (
            # a bow-tie: closed but self-crossing
            lambda fc: fc["features"][0]["geometry"].update(
                coordinates=[[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]
            ),
            "invalid",
        ),
        (lambda fc: fc["features"][0]["properties"].update(objectType="blob"), "objectType"),
        (lambda fc: fc["features"][0]["properties"].pop("objectType"), "objectType"),
        (lambda fc: fc["features"][0]["properties"].pop("classification"), "classification"),
        (
            lambda fc: fc["features"][0]["properties"]["classification"].pop("color"),
            "color",
        ),
        (
            lambda fc: fc["features"][0]["properties"]["classification"].update(
                color=[255, 0, 256]
            ),
            "color",
        ),
        (
            lambda fc: fc["features"][0]["properties"]["classification"].update(
                color=[255.0, 0, 0]
            ),
            "color",
        ),
        (
            lambda fc: fc["features"][0]["properties"]["classification"].update(name=""),
            "name",
        ),
        (
            lambda fc: fc["features"][0]["properties"]["measurements"].update(x=float("nan")),
            "finite",
        ),
    ],
)
def test_validate_names_the_problem(mutate: Any, message: str) -> None:
    fc = {"type": "FeatureCollection", "features": [_valid_feature()]}
    validate_qupath_geojson(copy.deepcopy(fc))
    bad = copy.deepcopy(fc)
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        validate_qupath_geojson(bad)


def test_validate_rejects_repeated_ids() -> None:
    f = _valid_feature()
    with pytest.raises(ValueError, match="repeats feature 0"):
        validate_qupath_geojson({"type": "FeatureCollection", "features": [f, copy.deepcopy(f)]})


def test_read_qupath_shapes(tmp_path: Path) -> None:
    """Ground truth as QuPath exports it: a list of Features, a single Feature, odd members."""
    feature = _valid_feature()
    bowtie = {
        "type": "Feature",
        "id": "b",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]]]},
        "properties": {"objectType": "annotation", "classification": {"name": "IDC"}},
    }
    point = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [1, 2]},
        "properties": {"classification": {"name": "IDC", "color": [1, 1, 1]}},
    }
    unclassified = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        "properties": {"objectType": "annotation"},
    }
    path = tmp_path / "gt.geojson"
    path.write_text(json.dumps([feature, bowtie, point, unclassified]), encoding="utf-8")
    polys = read_geojson_polygons(path)
    assert len(polys) == 2
    assert polys[0].equals(shapely.geometry.shape(feature["geometry"]))
    assert polys[1].is_valid and polys[1].area == pytest.approx(8.0)  # repaired bow-tie
    assert len(read_geojson_polygons(str(path), class_name=None)) == 3
    path.write_text(json.dumps(feature), encoding="utf-8")
    assert len(read_geojson_polygons(path)) == 1
    with pytest.raises(ValueError, match="FeatureCollection"):
        read_geojson_polygons({"type": "Topology"})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heatmap_and_mask(), st.sampled_from([0.0, 0.0, 0.5, 2.0]), st.booleans())
def test_property_geojson_valid_and_round_trips(
    case: tuple[Heatmap, np.ndarray], simplify_cells: float, tiles: bool
) -> None:
    """Every GeoJSON written passes the QuPath checks after a JSON round trip, reads back to
    the same geometries within 0.01 px, and (unsimplified) rasterises back to the mask."""
    hm, mask = case
    simplify_um = simplify_cells * min(hm.cell_level0_px) * hm.slide_mpp
    regions = mask_to_regions(mask, hm, simplify_um=simplify_um)
    fc = json_round_trip(regions_to_geojson(regions, tiles=hm if tiles else None))
    validate_qupath_geojson(fc)
    ids = [f["id"] for f in fc["features"]]
    assert len(set(ids)) == len(ids)
    back = read_geojson_polygons(fc)
    idc_tiles = int(mask.sum()) if tiles else 0  # prob 0.9 on the mask, 0.1 elsewhere
    assert len(back) == len(regions) + idc_tiles
    same_geometries(back[: len(regions)], [r.polygon for r in regions], tol=0.01)
    for f in fc["features"][: len(regions)]:
        for ring in f["geometry"]["coordinates"][:1]:
            assert ring_sign(ring) > 0
    if simplify_cells == 0:
        assert np.array_equal(rasterize(back[: len(regions)], hm), mask)


# ------------------------------------------------------------------------- arrays, JSON


def test_heatmap_npz_round_trip(tmp_path: Path) -> None:
    prob = np.array([[0.25, np.nan], [1.0, 0.0]], np.float32)
    hm = Heatmap(prob, (12.5, -3.0), (200.4, 200.4), 0.2277, 4.0, 25, 50)
    path = tmp_path / "heatmap.tmp"  # exactly this name: no ".npz" appended
    heatmap_npz(hm, path, tissue=np.ones((2, 2), bool), threshold=0.5)
    assert path.exists() and not (tmp_path / "heatmap.tmp.npz").exists()
    back = load_heatmap_npz(path)
    np.testing.assert_array_equal(back.prob, hm.prob)
    assert back.prob.dtype == np.float32
    assert (back.origin_level0_px, back.cell_level0_px) == ((12.5, -3.0), (200.4, 200.4))
    assert (back.slide_mpp, back.model_mpp, back.stride_px, back.patch_px) == (0.2277, 4.0, 25, 50)
    with np.load(path) as z:
        assert float(z["threshold"]) == 0.5 and z["tissue"].all()
    with pytest.raises(ValueError, match="clash"):
        heatmap_npz(hm, path, prob=1)


def test_write_json_is_nan_free(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json(
        {
            "a": float("nan"),
            "b": [np.float32(0.5), np.inf, (1, 2)],
            "µm": np.int64(3),
            "ok": np.bool_(True),
            "arr": np.array([1.0, np.nan]),
            "path": tmp_path,
        },
        path,
    )
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text and "µm" in text
    assert text.startswith('{\n  "a": null')
    obj = json.loads(text)
    assert obj["b"] == [0.5, None, [1, 2]] and obj["µm"] == 3 and obj["ok"] is True
    assert obj["arr"] == [1.0, None] and obj["path"] == str(tmp_path)
    assert not math.isnan(obj["b"][0])
