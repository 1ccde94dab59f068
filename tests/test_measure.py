"""Grading measurements on shapes whose answers are known, with anisotropic pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely import affinity

from idcmap.pipeline.measure import (
    RegionMeasurements,
    caliper_diameters_um,
    measure_polygon,
    measure_slide,
)

# anisotropic level-0 pixels: 0.5 µm along x, 0.25 µm along y
MPP_X, MPP_Y = 0.5, 0.25


def px(poly_um: shapely.Geometry) -> shapely.Geometry:
    """A shape drawn in µm, expressed in level-0 px of the anisotropic slide."""
    return affinity.scale(poly_um, 1 / MPP_X, 1 / MPP_Y, origin=(0, 0))


def test_rectangle() -> None:
    # 3 mm × 1 mm rectangle
    m = measure_polygon(px(shapely.box(0, 0, 3000, 1000)), MPP_X, MPP_Y)
    assert m.area_mm2 == pytest.approx(3.0)
    assert m.greatest_dimension_mm == pytest.approx(math.hypot(3, 1))
    assert m.least_dimension_mm == pytest.approx(1.0)


@pytest.mark.parametrize("angle", [17.0, 45.0, 73.5, 120.0])
def test_rotated_rectangle(angle: float) -> None:
    rect = affinity.rotate(shapely.box(1000, 2000, 5000, 3000), angle, origin="centroid")
    m = measure_polygon(px(rect), MPP_X, MPP_Y)
    assert m.area_mm2 == pytest.approx(4.0)
    assert m.greatest_dimension_mm == pytest.approx(math.hypot(4, 1))
    assert m.least_dimension_mm == pytest.approx(1.0)


def test_disc() -> None:
    disc = shapely.Point(5000, 5000).buffer(1000, quad_segs=256)  # radius 1 mm
    m = measure_polygon(px(disc), MPP_X, MPP_Y)
    assert m.area_mm2 == pytest.approx(math.pi, rel=1e-4)
    # not a bounding circle's diameter, but the calipers of the (polygonal) disc
    assert m.greatest_dimension_mm == pytest.approx(2.0, rel=1e-4)
    assert m.least_dimension_mm == pytest.approx(2.0, rel=1e-4)


def test_l_shape() -> None:
    # L: a 4 × 1 mm bar and a 1 × 4 mm bar; hull (0,0)-(4,0)-(4,1)-(1,4)-(0,4) in mm
    ell = shapely.union_all([shapely.box(0, 0, 4000, 1000), shapely.box(0, 0, 1000, 4000)])
    m = measure_polygon(px(ell), MPP_X, MPP_Y)
    assert m.area_mm2 == pytest.approx(7.0)
    assert m.greatest_dimension_mm == pytest.approx(math.hypot(4, 4))
    # narrowest direction: perpendicular to the hull edge (4,1)-(1,4), seen from (0,0)
    assert m.least_dimension_mm == pytest.approx(5 / math.sqrt(2))


def test_hole_reduces_area_not_dimensions() -> None:
    ring = shapely.box(0, 0, 2000, 2000).difference(shapely.box(500, 500, 1500, 1500))
    m = measure_polygon(px(ring), MPP_X, MPP_Y)
    assert m.area_mm2 == pytest.approx(3.0)
    assert m.greatest_dimension_mm == pytest.approx(math.hypot(2, 2))
    assert m.least_dimension_mm == pytest.approx(2.0)


def test_isotropic_default_and_degenerate() -> None:
    big, small = caliper_diameters_um(shapely.box(0, 0, 10, 4), 2.0)
    assert (big, small) == pytest.approx((2 * math.hypot(10, 4), 8.0))
    assert caliper_diameters_um(shapely.Polygon(), 1.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="mpp"):
        caliper_diameters_um(shapely.box(0, 0, 1, 1), 0.0)


def test_many_vertices_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    pts = shapely.MultiPoint(rng.normal(size=(3000, 2)) * [3000, 1000])
    hull = shapely.convex_hull(pts)
    big, small = caliper_diameters_um(hull, 1.0)
    c = np.asarray(hull.exterior.coords)[:-1]
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)).max()
    assert big == pytest.approx(d)
    # width over 3600 directions approaches the exact minimum from above
    ang = np.linspace(0, np.pi, 3600, endpoint=False)
    proj = c @ np.stack([np.cos(ang), np.sin(ang)])
    assert small <= (proj.max(0) - proj.min(0)).min() + 1e-9
    assert small == pytest.approx((proj.max(0) - proj.min(0)).min(), rel=1e-3)


def test_slide_figures() -> None:
    regions = [RegionMeasurements(2.0, 3.0, 1.0), RegionMeasurements(5.0, 2.5, 2.0)]
    s = measure_slide(regions, tissue_area_mm2=70.0)
    assert s.foci == 2
    assert s.largest_focus_greatest_dimension_mm == 3.0
    assert s.idc_area_mm2 == pytest.approx(7.0)
    assert s.idc_percent_of_tissue == pytest.approx(10.0)
    empty = measure_slide([], 0.0)
    assert (empty.foci, empty.largest_focus_greatest_dimension_mm) == (0, 0.0)
    assert empty.idc_percent_of_tissue == 0.0
    assert RegionMeasurements(1, 2, 3).qupath() == {
        "Area mm^2": 1,
        "Greatest dimension mm": 2,
        "Least dimension mm": 3,
    }


def test_measurements_summary() -> None:
    from idcmap.pipeline.measure import NOTE, measurements_summary

    polys = [px(shapely.box(0, 0, 3000, 1000)), px(shapely.box(5000, 0, 6000, 1000))]
    per, block = measurements_summary(polys, 40.0, MPP_X, MPP_Y)
    assert [m.area_mm2 for m in per] == pytest.approx([3.0, 1.0])
    assert block["note"] == NOTE and block["foci"] == 2
    assert block["idc_area_mm2"] == pytest.approx(4.0)
    assert block["idc_percent_of_tissue"] == pytest.approx(10.0)
    assert block["largest_focus_greatest_dimension_mm"] == pytest.approx(math.hypot(3, 1), abs=1e-4)
    assert [r["name"] for r in block["regions"]] == ["IDC 1", "IDC 2"]
    assert block["regions"][1] == {
        "name": "IDC 2",
        "area_mm2": 1.0,
        "greatest_dimension_mm": round(math.sqrt(2), 4),
        "least_dimension_mm": 1.0,
    }


def test_largest_focus_is_the_longest_region_not_the_first() -> None:
    """Regions come sorted by cell count; the staged focus is the one with the greatest
    greatest dimension, wherever it is in the list (a long thin focus after a compact one)."""
    compact = RegionMeasurements(area_mm2=4.0, greatest_dimension_mm=2.0, least_dimension_mm=2.0)
    thin = RegionMeasurements(area_mm2=0.5, greatest_dimension_mm=5.0, least_dimension_mm=0.1)
    mid = RegionMeasurements(area_mm2=1.0, greatest_dimension_mm=3.0, least_dimension_mm=0.5)
    for order in ([compact, thin, mid], [compact, mid, thin], [mid, compact, thin]):
        assert measure_slide(order, 100.0).largest_focus_greatest_dimension_mm == 5.0
    # through the summary block, on polygons: a 1.5 × 1.5 mm square first, a 4 × 0.2 mm strip
    from idcmap.pipeline.measure import measurements_summary

    polys = [px(shapely.box(0, 0, 1500, 1500)), px(shapely.box(0, 3000, 4000, 3200))]
    _, block = measurements_summary(polys, 40.0, MPP_X, MPP_Y)
    assert block["regions"][0]["area_mm2"] > block["regions"][1]["area_mm2"]
    assert block["largest_focus_greatest_dimension_mm"] == pytest.approx(
        math.hypot(4, 0.2), abs=1e-4
    )


def test_artefact_share_is_the_part_of_the_region_under_each_kind() -> None:
    """Half a region under a stroke is 50 % ink; a ring round it (the region in its hole) is
    0 %, and so is a kind whose outlines lie elsewhere; QuPath names carry the unit."""
    from idcmap.pipeline.measure import artefact_measurements, artefact_share_pct

    region = shapely.box(0, 0, 10, 10)
    stroke = shapely.box(5, -5, 20, 20)
    ring = shapely.Polygon(
        [(-10, -10), (20, -10), (20, 20), (-10, 20)], [[(-1, -1), (11, -1), (11, 11), (-1, 11)]]
    )
    far = shapely.box(100, 100, 110, 110)
    got = artefact_share_pct(region, {"ink": [stroke], "fold": [ring], "debris": [far, far]})
    assert got == {"ink": 50.0, "fold": 0.0, "debris": 0.0}
    assert artefact_share_pct(region, {"ink": [stroke, ring]}) == {"ink": 50.0}
    assert artefact_share_pct(region, {"ink": [shapely.box(-5, -5, 15, 15)]}) == {"ink": 100.0}
    assert artefact_measurements({"ink": 50.0, "blur": 0.0}) == {
        "Ink % of area": 50.0,
        "Blur % of area": 0.0,
    }
