"""Regions stage: idc_mask, mask_to_regions, rasterize (known masks and hypothesis properties)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pipeline_helpers import make_heatmap

from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.regions import Region, idc_mask, mask_to_regions, rasterize


def grid(text: str) -> np.ndarray:
    """A mask from rows of '#' (True) and '.' (False)."""
    return np.array([[ch == "#" for ch in row.strip()] for row in text.strip().splitlines()])


def regions_of(mask: np.ndarray, **kw: object) -> tuple[Heatmap, list[Region]]:
    hm = make_heatmap(np.where(mask, 0.9, 0.1))
    return hm, mask_to_regions(mask, hm, **kw)  # type: ignore[arg-type]


def check_exact(mask: np.ndarray, hm: Heatmap, regions: list[Region]) -> None:
    assert all(r.polygon.is_valid and r.polygon.geom_type == "Polygon" for r in regions)
    assert np.array_equal(rasterize([r.polygon for r in regions], hm), mask)
    assert sum(r.n_cells for r in regions) == int(mask.sum())
    for r in regions:
        assert math.isclose(r.area_um2, r.n_cells * hm.cell_area_um2, rel_tol=1e-9)


# ------------------------------------------------------------------------- known masks


def test_square() -> None:
    mask = np.zeros((6, 6), bool)
    mask[1:4, 2:5] = True
    hm, regions = regions_of(mask)
    assert len(regions) == 1
    (r,) = regions
    check_exact(mask, hm, regions)
    ox, oy = hm.origin_level0_px
    cw, ch = hm.cell_level0_px
    assert r.polygon.bounds == pytest.approx((ox + 2 * cw, oy + 1 * ch, ox + 5 * cw, oy + 4 * ch))
    assert len(r.polygon.exterior.coords) == 5  # no collinear vertices left
    assert r.area_um2 == pytest.approx(9 * cw * ch * 0.25**2)
    assert r.mean_prob == pytest.approx(0.9) and r.max_prob == pytest.approx(0.9)


def test_ring_with_hole() -> None:
    mask = grid(
        """
        .....
        .###.
        .#.#.
        .###.
        .....
        """
    )
    hm, regions = regions_of(mask)
    assert len(regions) == 1
    assert len(regions[0].polygon.interiors) == 1
    check_exact(mask, hm, regions)
    assert regions[0].n_cells == 8


def test_corner_touching_cells_are_two_valid_regions() -> None:
    mask = grid(
        """
        #.
        .#
        """
    )
    hm, regions = regions_of(mask)
    assert len(regions) == 2
    check_exact(mask, hm, regions)
    assert regions[0].polygon.touches(regions[1].polygon)


def test_hole_touching_outside_at_a_corner() -> None:
    # the hole cell (1, 1) touches the background (0, 2) at a corner only
    mask = grid(
        """
        ##.
        #.#
        ###
        """
    )
    hm, regions = regions_of(mask)
    assert len(regions) == 1
    check_exact(mask, hm, regions)


def test_checkerboard() -> None:
    mask = (np.add.outer(np.arange(9), np.arange(11)) % 2).astype(bool)
    hm, regions = regions_of(mask)
    assert len(regions) == int(mask.sum())
    check_exact(mask, hm, regions)
    hm, regions = regions_of(mask, simplify_um=3.0)
    assert all(r.polygon.is_valid for r in regions)


def test_empty_and_full() -> None:
    hm, regions = regions_of(np.zeros((5, 4), bool))
    assert regions == []
    assert not rasterize([], hm).any()
    full = np.ones((5, 4), bool)
    hm, regions = regions_of(full)
    assert len(regions) == 1
    check_exact(full, hm, regions)
    assert len(regions[0].polygon.exterior.coords) == 5


def test_stats_ignore_nan_and_order() -> None:
    prob = np.array([[0.6, 0.8, np.nan, 0.7], [np.nan, np.nan, np.nan, np.nan]], np.float32)
    mask = np.array([[1, 1, 0, 1], [0, 0, 0, 0]], bool)
    hm = make_heatmap(prob)
    big, small = mask_to_regions(mask, hm)
    assert big.n_cells == 2 and small.n_cells == 1
    assert big.mean_prob == pytest.approx(0.7) and big.max_prob == pytest.approx(0.8)
    # a region made only of NaN cells (e.g. a ground-truth mask) has NaN statistics
    (r,) = mask_to_regions(np.array([[0, 0, 1, 0], [0, 0, 0, 0]], bool), hm)
    assert math.isnan(r.mean_prob) and math.isnan(r.max_prob)


def test_bad_arguments() -> None:
    hm = make_heatmap(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="shape"):
        mask_to_regions(np.zeros((2, 3), bool), hm)
    with pytest.raises(ValueError, match="simplify"):
        mask_to_regions(np.zeros((3, 3), bool), hm, simplify_um=-1)
    with pytest.raises(ValueError, match="threshold"):
        idc_mask(hm, 1.5)


def test_simplify_reduces_vertices_of_a_staircase() -> None:
    n = 40
    mask = np.tril(np.ones((n, n), bool))
    hm, exact = regions_of(mask)
    tol_um = 20.0  # 80 level-0 px = 1.6 cells
    _, simple = regions_of(mask, simplify_um=tol_um)
    assert len(simple[0].polygon.exterior.coords) < len(exact[0].polygon.exterior.coords) / 5
    tol_px = tol_um / hm.slide_mpp
    assert simple[0].polygon.hausdorff_distance(exact[0].polygon) <= tol_px + 1e-6


# ------------------------------------------------------------------------- idc_mask


def test_idc_mask_threshold_and_nan() -> None:
    prob = np.array([[0.2, 0.5, 0.7, np.nan]], np.float32)
    hm = make_heatmap(prob)
    m = idc_mask(hm, 0.5, min_region_um2=0, min_hole_um2=0)
    assert m.tolist() == [[False, True, True, False]]
    assert idc_mask(hm, 0.0, min_region_um2=0, min_hole_um2=0).tolist() == [
        [True, True, True, False]
    ]


def test_idc_mask_min_region_and_hole_in_um2() -> None:
    # cells of 50.5 level-0 px at 0.25 µm/px: 12.625 µm side, 159.390625 µm² each
    mask = grid(
        """
        ..........
        .#####....
        .#...#..#.
        .#.#.#....
        .#...#.##.
        .#####.##.
        ..........
        """
    )
    hm = make_heatmap(np.where(mask, 0.9, 0.1))
    a = hm.cell_area_um2
    assert a == pytest.approx(159.390625)
    # nothing removed / filled with 0
    assert np.array_equal(idc_mask(hm, 0.5, min_region_um2=0, min_hole_um2=0), mask)
    # regions of 1 cell removed (the lone one, and the one inside the ring), 4 cells kept
    m = idc_mask(hm, 0.5, min_region_um2=2 * a, min_hole_um2=0)
    assert not m[2, 8] and not m[3, 3] and m[4:6, 7:9].all()
    # exactly the minimum area is kept
    m = idc_mask(hm, 0.5, min_region_um2=4 * a, min_hole_um2=0)
    assert m[4:6, 7:9].all() and not m[2, 8]
    m = idc_mask(hm, 0.5, min_region_um2=4.01 * a, min_hole_um2=0)
    assert not m[4:6, 7:9].any() and m[1, 1:6].all()
    # the ring's hole is 9 cells once the 1-cell island is removed: filled when min_hole > 9 a
    m = idc_mask(hm, 0.5, min_region_um2=2 * a, min_hole_um2=9 * a)
    assert not m[2:5, 2:5].any()
    m = idc_mask(hm, 0.5, min_region_um2=2 * a, min_hole_um2=9.5 * a)
    assert m[1:6, 1:6].all()
    # the outside never counts as a hole
    assert not m[0].any() and not m[:, 0].any()


def test_idc_mask_background_at_the_grid_border_is_never_a_hole() -> None:
    """A small notch of background open to the grid border stays open, however small."""
    mask = grid(
        """
        ##.##
        #####
        #####
        #...#
        #####
        """
    )
    hm = make_heatmap(np.where(mask, 0.9, 0.1))
    m = idc_mask(hm, 0.5, min_region_um2=0, min_hole_um2=10 * hm.cell_area_um2)
    assert not m[0, 2]  # the notch touches the border: not a hole
    assert m[3, 1:4].all()  # the enclosed 3 cells are


def test_idc_mask_fills_non_tissue_holes() -> None:
    prob = np.full((5, 5), 0.9, np.float32)
    prob[2, 2] = np.nan  # a lumen: not tissue
    hm = make_heatmap(prob)
    assert not idc_mask(hm, 0.5, min_region_um2=0, min_hole_um2=0)[2, 2]
    assert idc_mask(hm, 0.5, min_region_um2=0, min_hole_um2=2 * hm.cell_area_um2)[2, 2]


# ------------------------------------------------------------------------- properties

cell_sizes = st.floats(min_value=1.0, max_value=300.0, allow_nan=False).map(lambda v: round(v, 3))
origins = st.floats(min_value=-5000.0, max_value=50000.0, allow_nan=False).map(
    lambda v: round(v, 3)
)
masks = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda shape: arrays(np.bool_, shape)
)


@st.composite
def heatmap_and_mask(draw: st.DrawFn) -> tuple[Heatmap, np.ndarray]:
    mask = draw(masks)
    hm = make_heatmap(
        prob=np.where(mask, 0.9, 0.1),
        origin=(draw(origins), draw(origins)),
        cell=(draw(cell_sizes), draw(cell_sizes)),
        mpp=draw(st.sampled_from([0.2277, 0.25, 0.499, 1.0, 4.0])),
    )
    return hm, mask


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heatmap_and_mask())
def test_property_exact_round_trip(case: tuple[Heatmap, np.ndarray]) -> None:
    """mask → polygons (no simplification) → rasterised cell centres == mask, exactly."""
    hm, mask = case
    regions = mask_to_regions(mask, hm)
    check_exact(mask, hm, regions)
    # 4-connected components: polygons never overlap (they may touch)
    polys = [r.polygon for r in regions]
    total = sum(p.area for p in polys)
    assert shapely.union_all(polys).area == pytest.approx(total, rel=1e-9) if polys else True


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heatmap_and_mask(), st.floats(min_value=0.1, max_value=3.0))
def test_property_simplified_round_trip(case: tuple[Heatmap, np.ndarray], tol_cells: float) -> None:
    """With simplification at tolerance t (level-0 px), polygons stay valid, and the only cells
    whose membership changes have their centre within t of the exact boundary (Douglas-Peucker
    moves every boundary by at most t; the simplified polygons are then rasterised the same
    way)."""
    hm, mask = case
    tol_px = tol_cells * min(hm.cell_level0_px)
    simplify_um = tol_px * hm.slide_mpp
    exact = mask_to_regions(mask, hm)
    simple = mask_to_regions(mask, hm, simplify_um=simplify_um)
    assert len(simple) == len(exact)
    assert all(r.polygon.is_valid and not r.polygon.is_empty for r in simple)
    got = rasterize([r.polygon for r in simple], hm)
    diff_r, diff_c = np.nonzero(got != mask)
    if len(diff_r) == 0:
        return
    boundary = shapely.union_all([r.polygon.boundary for r in exact])
    ox, oy = hm.origin_level0_px
    cw, ch = hm.cell_level0_px
    d = shapely.distance(
        boundary, shapely.points(ox + (diff_c + 0.5) * cw, oy + (diff_r + 0.5) * ch)
    )
    assert np.all(d <= tol_px * (1 + 1e-9) + 1e-6), (d.max(), tol_px)


# ------------------------------------------------------------------------- speed


def test_speed_1000x1000_blobs() -> None:
    """1000×1000 grid, ~1000 blob components: well under the budget (≈0.3-0.5 s here)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.random((1000, 1000)), 3)
    mask = noise > np.quantile(noise, 0.6)
    hm = make_heatmap(noise)
    t = time.perf_counter()
    regions = mask_to_regions(mask, hm, simplify_um=2.0)
    elapsed = time.perf_counter() - t
    assert len(regions) > 1000
    assert elapsed < 10.0, elapsed


def _disc_heatmap(mpp: float) -> Heatmap:
    """A 24 × 24 grid of 200-µm cells on a slide of ``mpp`` µm/px: a smooth radial
    probability, ≥ 0.5 on a disc of radius 8 cells off the grid's centre."""
    yy, xx = np.mgrid[0:24, 0:24] + 0.5
    r = np.hypot(yy - 11.3, xx - 12.1)
    prob = 1.0 / (1.0 + np.exp((r - 8.0) / 2.0))
    cell = 200.0 / mpp
    return Heatmap(
        prob=prob.astype(np.float32),
        origin_level0_px=(100.0, 60.0),
        cell_level0_px=(cell, cell),
        slide_mpp=mpp,
        model_mpp=4.0,
        stride_px=50,
        patch_px=50,
    )


@pytest.mark.parametrize("mpp", [0.25, 4.0])
@pytest.mark.parametrize(("outline", "simplify_um"), [("cells", 150.0), ("smooth", 20.0)])
def test_simplification_happens_and_stays_within_its_tolerance(
    outline: str, simplify_um: float, mpp: float
) -> None:
    """``simplify_um`` is µm: the outline loses vertices, and moves by at most
    ``simplify_um / mpp`` level-0 px (Hausdorff distance to the exact outline), at a fine and
    at a coarse µm/px (a tolerance converted with × instead of ÷ fails one or the other)."""
    from idcmap.pipeline.contours import contour_regions

    hm = _disc_heatmap(mpp)
    mask = idc_mask(hm, 0.5)

    def draw(tol: float) -> list[Region]:
        if outline == "cells":
            return mask_to_regions(mask, hm, simplify_um=tol)
        return contour_regions(mask, hm, 0.5, simplify_um=tol)

    (exact,), (simple,) = draw(0.0), draw(simplify_um)
    tol_px = simplify_um / mpp
    n_exact = len(shapely.get_coordinates(exact.polygon))
    n_simple = len(shapely.get_coordinates(simple.polygon))
    assert n_simple < 0.8 * n_exact, (n_simple, n_exact)
    moved = shapely.hausdorff_distance(exact.polygon, simple.polygon)
    assert 0 < moved <= tol_px * (1 + 1e-9), (moved, tol_px)
    assert simple.polygon.is_valid and simple.n_cells == exact.n_cells
    # the area stays close: the boundary (~50 mm long) moved by at most the tolerance
    assert simple.area_um2 == pytest.approx(exact.area_um2, rel=0.05)
