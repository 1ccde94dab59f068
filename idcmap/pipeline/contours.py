"""Smooth IDC region outlines: iso-contours of the probability surface at the threshold.

:func:`idcmap.pipeline.regions.mask_to_regions` traces the cell edges of the IDC mask: 200-µm
staircases.
:func:`contour_regions` traces the same regions where the (smoothed) probability surface crosses
the threshold instead, with sub-cell precision: marching squares on the cell-centre samples
(``skimage.measure.find_contours``), linear interpolation along each edge between two cell
centres. Frame and units are those of :mod:`idcmap.pipeline.regions` (level-0 px, QuPath frame; cell
``(r, c)`` has its centre at grid point ``(c + 0.5, r + 0.5)``).

What stays exactly as with the staircase:

* **the regions**: the mask decides (threshold, small-region and hole rules in µm², on cells).
  The surface is nudged so that its sign agrees with the mask at every cell centre (a filled
  hole or a cell at exactly the threshold counts as just above it; a removed small region as
  just below), so each 4-connected component of the mask gives exactly one polygon, and
  every mask cell's centre lies inside its polygon and every other centre outside: the cell
  Dice of the polygons equals that of the mask.
* **connectivity**: saddles are resolved with the background 8-connected
  (``fully_connected="low"``), i.e. IDC cells touching only at a corner stay separate, as in
  the 4-connected mask.
* **validity**: every crossing lies strictly between two cell centres (no sample equals the
  level), so rings never touch: valid polygons with holes.

Outside tissue (NaN) there is no surface; there the value is set to minus the mean of the
positive edge neighbours, which puts the boundary half-way between a tissue cell's centre and
the non-tissue cell's centre — on the cell edge, where the staircase puts it.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from scipy import ndimage
from skimage import measure as skmeasure

from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.regions import (
    CROSS,
    Region,
    component_stats,
    fix_simplified,
    mask_to_regions,
)

__all__ = ["DELTA", "contour_regions", "signed_surface"]

#: Least distance (probability units) of a cell centre's value from the level: a cell whose side
#: the mask overrules, or whose probability is within DELTA of the threshold, is put this far
#: on the mask's side, so every crossing stays ≥ ~1 % of a cell away from every cell centre.
DELTA = 0.01


def signed_surface(mask: np.ndarray, prob: np.ndarray, threshold: float) -> np.ndarray:
    """``prob - threshold`` on a grid padded by one cell, its sign forced to the mask's.

    Returns:
        float64 ``(rows + 2) × (cols + 2)``: ≥ DELTA exactly at (padded) mask cells, ≤ −DELTA
        elsewhere (never NaN).
    """
    rows, cols = mask.shape
    p = np.full((rows + 2, cols + 2), np.nan)
    p[1:-1, 1:-1] = prob
    m = np.zeros((rows + 2, cols + 2), dtype=bool)
    m[1:-1, 1:-1] = mask
    finite = np.isfinite(p)
    f = np.where(finite, p - threshold, 0.0)
    # the mask's side, at least DELTA from the level: filled holes (any tissue status) and ties
    # count as above, removed small regions as below, and no crossing comes closer to a cell
    # centre than DELTA / (DELTA + 1) of a cell (so rounding or simplifying cannot flip it)
    f = np.where(m, np.maximum(f, DELTA), np.minimum(f, -DELTA))
    # outside tissue: minus the mean of the positive edge neighbours (boundary on the cell edge)
    pos = np.where(finite & (f > 0), f, 0.0)
    total = ndimage.convolve(pos, CROSS.astype(np.float64), mode="constant")
    count = ndimage.convolve(
        (pos > 0).astype(np.float64), CROSS.astype(np.float64), mode="constant"
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        fill = -np.maximum(np.where(count > 0, total / np.maximum(count, 1), 0.0), DELTA)
    return np.where(~finite & ~m, fill, f)


def _assemble(rings: list[np.ndarray]) -> list[shapely.Polygon]:
    """Polygons from non-crossing closed rings: even nesting depth = shell, odd = hole of the
    innermost ring around it."""
    ring_polys = np.array([shapely.Polygon(r) for r in rings], dtype=object)
    first = shapely.points([r[0] for r in rings])
    tree = shapely.STRtree(ring_polys)
    # vertex of ring i strictly inside ring j (a ring's own vertex is on its boundary: not within)
    inner, outer = tree.query(first, predicate="within")
    depth = np.bincount(inner, minlength=len(rings))
    parent = np.full(len(rings), -1)
    # the innermost enclosing ring is the enclosing ring of greatest depth
    order = np.argsort(depth[outer], kind="stable")
    parent[inner[order]] = outer[order]
    holes: dict[int, list[np.ndarray]] = {}
    for i in np.nonzero(depth % 2 == 1)[0]:
        holes.setdefault(int(parent[i]), []).append(rings[i])
    return [shapely.Polygon(rings[i], holes.get(int(i), [])) for i in np.nonzero(depth % 2 == 0)[0]]


def _holds_its_cells(polys: np.ndarray, labels: np.ndarray, grid: Heatmap) -> np.ndarray:
    """bool per component ``k`` (``polys[k - 1]``): its polygon contains exactly the centres of
    the cells labelled ``k``."""
    rows, cols = labels.shape
    ox, oy = (float(v) for v in grid.origin_level0_px)
    cw, ch = (float(v) for v in grid.cell_level0_px)
    sizes = np.bincount(labels.ravel(), minlength=len(polys) + 1)
    ok = np.zeros(len(polys), dtype=bool)
    for k, poly in enumerate(polys):
        if not isinstance(poly, shapely.Polygon) or poly.is_empty:
            continue
        # cells whose centre may be inside: the bounding box, one cell more on each side
        x0, y0, x1, y1 = poly.bounds
        c0, c1 = max(0, math.floor((x0 - ox) / cw) - 1), min(cols, math.ceil((x1 - ox) / cw) + 1)
        r0, r1 = max(0, math.floor((y0 - oy) / ch) - 1), min(rows, math.ceil((y1 - oy) / ch) + 1)
        xs = ox + (np.arange(c0, c1) + 0.5) * cw
        ys = oy + (np.arange(r0, r1) + 0.5) * ch
        inside = shapely.contains_xy(poly, xs[None, :], ys[:, None])
        own = labels[r0:r1, c0:c1] == k + 1
        ok[k] = int(own.sum()) == int(sizes[k + 1]) and bool(np.array_equal(inside, own))
    return ok


def contour_regions(
    mask: np.ndarray,
    surface: Heatmap,
    threshold: float,
    *,
    stats: Heatmap | None = None,
    simplify_um: float = 0.0,
) -> list[Region]:
    """Regions of ``mask`` outlined where ``surface`` crosses ``threshold``.

    Args:
        mask: bool ``rows × cols`` IDC mask on the heatmap grid (e.g. :func:`idc_mask` of
            ``surface`` at ``threshold``).
        surface: the heatmap the mask was drawn from (the smoothed one); its grid geometry
            places the polygons.
        threshold: the probability the mask was drawn at.
        stats: heatmap for the regions' mean and max probability (default ``surface``;
            :func:`mask_to_regions` callers pass the unsmoothed one).
        simplify_um: Douglas-Peucker tolerance in µm (topology preserving), 0 = none.

    Returns:
        Regions in the order of :func:`mask_to_regions` (most cells first, then top-most, then
        left-most), ``n_cells`` and the probabilities per mask component as there; ``area_um2``
        is the smooth polygon's area.
    """
    mask = np.asarray(mask, dtype=bool)
    prob = np.asarray(surface.prob, dtype=np.float64)
    if mask.shape != prob.shape:
        raise ValueError(f"mask shape {mask.shape} != heatmap shape {prob.shape}")
    if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    if simplify_um < 0 or math.isnan(simplify_um):
        raise ValueError(f"simplify_um must be >= 0, got {simplify_um}")
    stats = surface if stats is None else stats
    labels, n = ndimage.label(mask, structure=CROSS)
    if n == 0:
        return []
    f = signed_surface(mask, prob, threshold)
    found = skmeasure.find_contours(f, 0.0, fully_connected="low")
    ox, oy = (float(v) for v in surface.origin_level0_px)
    cw, ch = (float(v) for v in surface.cell_level0_px)
    # (row, col) on the padded grid -> level-0 px: centre of cell (r, c) is grid (c+0.5, r+0.5)
    rings = [
        np.column_stack([ox + (rc[:, 1] - 0.5) * cw, oy + (rc[:, 0] - 0.5) * ch])
        for rc in found
        if len(rc) >= 4
    ]
    polys = np.asarray(_assemble(rings), dtype=object) if rings else np.empty(0, dtype=object)

    # one polygon per component: find the polygon around each component's first cell centre
    first = ndimage.minimum_position(
        np.arange(labels.size).reshape(labels.shape), labels, index=np.arange(1, n + 1)
    )
    fr = np.array([p[0] for p in first], dtype=np.float64)
    fc = np.array([p[1] for p in first], dtype=np.float64)
    centres = shapely.points(ox + (fc + 0.5) * cw, oy + (fr + 0.5) * ch)
    pt, poly_idx = shapely.STRtree(polys).query(centres, predicate="within")
    if len(polys) != n or len(pt) != n or len(np.unique(poly_idx)) != n:
        # cannot happen with a sign-consistent surface; never return wrong regions
        return mask_to_regions(mask, stats, simplify_um=simplify_um)
    comp_poly = np.empty(n, dtype=object)
    comp_poly[pt] = polys[poly_idx]

    mx, my = surface.mpp_xy
    if simplify_um > 0:  # level-0 px; the coarser axis keeps boundaries within simplify_um µm
        simple = shapely.simplify(comp_poly, simplify_um / max(mx, my), preserve_topology=True)
        bad = ~shapely.is_valid(simple) | shapely.is_empty(simple)
        # a simplification that moved the boundary across a cell centre is not taken
        bad |= ~_holds_its_cells(simple, labels, surface)
        simple[bad] = comp_poly[bad]
        comp_poly = simple
    bad = ~shapely.is_valid(comp_poly)
    if bad.any():
        comp_poly[bad] = [fix_simplified(shapely.make_valid(p), p) for p in comp_poly[bad]]

    counts, means, maxs = component_stats(labels, n, stats.prob)  # as mask_to_regions does
    areas = shapely.area(comp_poly) * mx * my
    x0, y0 = shapely.bounds(comp_poly)[:, :2].T
    order = np.lexsort((x0, y0, -counts))
    return [
        Region(
            polygon=comp_poly[k],
            area_um2=float(areas[k]),
            mean_prob=float(means[k]),
            max_prob=float(maxs[k]),
            n_cells=int(counts[k]),
        )
        for k in order
    ]
