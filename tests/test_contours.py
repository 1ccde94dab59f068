"""Smooth region outlines (contour_regions): same regions and cells as the staircase, valid
polygons with holes, boundaries where the surface crosses the threshold."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pipeline_helpers import make_heatmap as shared_make_heatmap
from scipy import ndimage

from idcmap.pipeline.contours import DELTA, contour_regions, signed_surface
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.regions import idc_mask, mask_to_regions, rasterize


def make_heatmap(
    prob: np.ndarray,
    origin: tuple[float, float] = (1000.25, 2000.5),
    cell: tuple[float, float] = (50.5, 40.0),
    mpp: float = 0.25,
) -> Heatmap:
    return shared_make_heatmap(prob, origin, cell, mpp)


def check(mask: np.ndarray, hm: Heatmap, threshold: float, **kw: float) -> list:
    regions = contour_regions(mask, hm, threshold, **kw)
    stair = mask_to_regions(mask, hm)
    assert len(regions) == len(stair)
    assert [r.n_cells for r in regions] == [r.n_cells for r in stair]
    for r in regions:
        assert r.polygon.geom_type == "Polygon" and r.polygon.is_valid and not r.polygon.is_empty
    # every mask cell centre inside, every other one outside: cell Dice unchanged
    assert np.array_equal(rasterize([r.polygon for r in regions], hm), mask)
    polys = [r.polygon for r in regions]
    # marching squares: every vertex lies on a line joining two cell centres (grid x or y at
    # c + 0.5), never on the staircase's cell corners (which would mean a fallback)
    for p in polys:
        xy = shapely.get_coordinates(p)
        gx = (xy[:, 0] - hm.origin_level0_px[0]) / hm.cell_level0_px[0]
        gy = (xy[:, 1] - hm.origin_level0_px[1]) / hm.cell_level0_px[1]

        def on_centre_line(g: np.ndarray) -> np.ndarray:
            return np.isclose((g - 0.5) % 1.0, 0.0, atol=1e-6) | np.isclose(
                (g - 0.5) % 1.0, 1.0, atol=1e-6
            )

        assert np.all(on_centre_line(gx) | on_centre_line(gy))
    if polys:  # no overlaps between regions
        total = sum(p.area for p in polys)
        assert shapely.union_all(polys).area == pytest.approx(total, rel=1e-9)
    return regions


def test_boundary_at_the_threshold_crossing() -> None:
    # a linear ramp along x: prob 0.1, 0.3, 0.5, 0.7, 0.9 ... crossing 0.6 half-way between
    # the centres of columns 2 and 3, i.e. on the edge x = 3 cells
    prob = np.tile(np.linspace(0.1, 0.9, 5), (6, 1))
    prob[:, 4] = 0.8  # plateau
    hm = make_heatmap(prob)
    mask = idc_mask(hm, 0.6, min_region_um2=0, min_hole_um2=0)
    (r,) = check(mask, hm, 0.6)
    ox, _ = hm.origin_level0_px
    cw, _ = hm.cell_level0_px
    x_left = r.polygon.bounds[0]
    assert x_left == pytest.approx(ox + 3.0 * cw)
    # a different threshold moves the boundary by the interpolated amount
    mask = idc_mask(hm, 0.65, min_region_um2=0, min_hole_um2=0)
    (r,) = check(mask, hm, 0.65)
    # 0.65 is 3/4 of the way from 0.5 (col 2 centre) to 0.7 (col 3 centre)
    assert r.polygon.bounds[0] == pytest.approx(ox + (2.5 + 0.75) * cw)


def test_hole_and_island_in_the_hole() -> None:
    prob = np.full((9, 9), 0.9)
    prob[2:7, 2:7] = 0.1  # a 5×5 hole
    prob[4, 4] = 0.95  # an island inside the hole
    hm = make_heatmap(prob)
    mask = idc_mask(hm, 0.5, min_region_um2=0, min_hole_um2=0)
    regions = check(mask, hm, 0.5)
    assert len(regions) == 2
    outer, island = regions
    assert len(outer.polygon.interiors) == 1 and len(island.polygon.interiors) == 0
    assert outer.polygon.interiors[0].envelope.contains(island.polygon)


def test_corner_touching_cells_stay_apart() -> None:
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], bool)
    hm = make_heatmap(np.where(mask, 0.9, 0.1))
    regions = check(mask, hm, 0.5)
    assert len(regions) == 3
    assert not regions[0].polygon.intersects(regions[1].polygon)


def test_nan_outside_tissue_puts_the_boundary_on_the_cell_edge() -> None:
    prob = np.full((5, 5), np.nan)
    prob[1:4, 1:4] = 0.9
    hm = make_heatmap(prob)
    mask = idc_mask(hm, 0.5, min_region_um2=0, min_hole_um2=0)
    (r,) = check(mask, hm, 0.5)
    ox, oy = hm.origin_level0_px
    cw, ch = hm.cell_level0_px
    assert r.polygon.bounds == pytest.approx((ox + cw, oy + ch, ox + 4 * cw, oy + 4 * ch))
    # corners are cut (sub-cell outline), so the area is a little below the 9 cells
    assert 8 * cw * ch < r.polygon.area < 9 * cw * ch


def test_mask_overrules_the_surface() -> None:
    # a filled hole (below threshold) and a removed small region (above) follow the mask
    prob = np.full((12, 12), 0.1)
    prob[1:8, 1:8] = 0.9
    prob[4, 4] = 0.2  # one-cell hole: filled by the hole rule
    prob[10, 10] = 0.9  # one-cell region: removed by the region rule
    hm = make_heatmap(prob, cell=(50.0, 50.0), mpp=4.0)  # cell = 200 µm → 40000 µm²
    mask = idc_mask(hm, 0.5, min_region_um2=80_000, min_hole_um2=80_000)
    assert mask[4, 4] and not mask[10, 10]
    (r,) = check(mask, hm, 0.5)
    assert len(r.polygon.interiors) == 0
    assert r.area_um2 == pytest.approx(r.polygon.area * 16.0)
    assert r.mean_prob == pytest.approx((48 * 0.9 + 0.2) / 49)


def test_signed_surface_keeps_off_the_level() -> None:
    prob = np.array([[0.5, np.nan], [0.4, 0.6], [0.501, 0.499]])
    mask = np.array([[True, False], [True, True], [True, False]])
    f = signed_surface(mask, prob, 0.5)
    assert f.shape == (5, 4) and np.all(np.isfinite(f)) and np.all(np.abs(f) >= DELTA)
    padded = np.pad(mask, 1)
    assert np.array_equal(f > 0, padded)
    assert f[2, 2] == pytest.approx(0.1)  # far from the level: unchanged


def test_empty_simplify_and_bad_arguments() -> None:
    hm = make_heatmap(np.full((3, 3), 0.1))
    assert contour_regions(np.zeros((3, 3), bool), hm, 0.5) == []
    with pytest.raises(ValueError, match="shape"):
        contour_regions(np.zeros((2, 3), bool), hm, 0.5)
    with pytest.raises(ValueError, match="threshold"):
        contour_regions(np.zeros((3, 3), bool), hm, math.nan)
    with pytest.raises(ValueError, match="simplify"):
        contour_regions(np.zeros((3, 3), bool), hm, 0.5, simplify_um=-1)


# ------------------------------------------------------------------------- properties

origins = st.floats(min_value=-1e4, max_value=1e5, allow_nan=False, allow_infinity=False)
cell_sizes = st.floats(min_value=1.0, max_value=500.0, allow_nan=False, allow_infinity=False)


@st.composite
def surfaces(draw: st.DrawFn) -> tuple[Heatmap, float, float, float]:
    shape = draw(st.tuples(st.integers(1, 30), st.integers(1, 30)))
    prob = draw(
        arrays(
            np.float32,
            shape,
            elements=st.one_of(
                st.floats(0, 1, width=32), st.just(np.float32(np.nan)), st.just(np.float32(0.5))
            ),
        )
    )
    if draw(st.booleans()):  # smooth surfaces as well as noise
        prob = ndimage.gaussian_filter(np.nan_to_num(prob, nan=0.0), 1.0).astype(np.float32)
    hm = make_heatmap(
        prob,
        origin=(draw(origins), draw(origins)),
        cell=(draw(cell_sizes), draw(cell_sizes)),
        mpp=draw(st.sampled_from([0.25, 0.499, 4.0])),
    )
    cell_um2 = hm.cell_area_um2
    return (
        hm,
        draw(st.sampled_from([0.3, 0.5, 0.69])),
        draw(st.sampled_from([0.0, 1.0, 3.0])) * cell_um2,
        draw(st.sampled_from([0.0, 1.0, 2.0])) * cell_um2,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(surfaces())
def test_property_same_cells_valid_polygons(case: tuple[Heatmap, float, float, float]) -> None:
    hm, thr, min_region, min_hole = case
    mask = idc_mask(hm, thr, min_region_um2=min_region, min_hole_um2=min_hole)
    check(mask, hm, thr)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(surfaces(), st.floats(min_value=0.05, max_value=0.45))
# a simplification of a one-cell region that would move its outline across the cell's centre
# (found by hypothesis; pinned so that the check never depends on the draw)
@example(
    case=(make_heatmap(np.array([[0.5], [0.0]]), (0.0, 0.0), (1.0, 1.0)), 0.5, 0.0, 0.0),
    t=0.25,
)
def test_property_simplified_still_valid(
    case: tuple[Heatmap, float, float, float], t: float
) -> None:
    hm, thr, min_region, min_hole = case
    mask = idc_mask(hm, thr, min_region_um2=min_region, min_hole_um2=min_hole)
    simplify_um = t * min(hm.cell_level0_px) * hm.slide_mpp
    regions = contour_regions(mask, hm, thr, simplify_um=simplify_um)
    assert len(regions) == len(mask_to_regions(mask, hm))
    assert all(r.polygon.is_valid and not r.polygon.is_empty for r in regions)
    # a simplification never moves a boundary across a cell centre: same cells as the mask
    assert np.array_equal(rasterize([r.polygon for r in regions], hm), mask)


def test_speed_1000x1000_blobs() -> None:
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.random((1000, 1000)), 3)
    thr = float(np.quantile(noise, 0.6))
    hm = make_heatmap(noise)
    mask = idc_mask(hm, 0.0, min_region_um2=0, min_hole_um2=0) & (noise > thr)
    t = time.perf_counter()
    regions = contour_regions(mask, hm, thr, simplify_um=2.0)
    elapsed = time.perf_counter() - t
    assert len(regions) > 1000
    assert elapsed < 20.0, elapsed
