"""Regions stage: threshold the heatmap, clean the mask up, turn it into polygons.

Units and frames:

* the *cell grid* is the heatmap's grid, ``rows × cols`` cells, cell ``(r, c)`` covering
  ``[c, c + 1) × [r, r + 1)`` in grid units;
* polygons are returned in **level-0 pixels in QuPath's frame**: ``x = origin_x + gx · cell_w``,
  ``y = origin_y + gy · cell_h`` (``Heatmap.origin_level0_px``, ``Heatmap.cell_level0_px``);
* areas are in **µm²** (level-0 px² × µm/px along x × along y); tolerances in **µm**.

Connectivity: IDC cells are grouped with **4-connectivity** (cells sharing an edge). Two cells
that touch only at a corner are separate regions, so every region is one valid
:class:`shapely.Polygon` (a corner contact inside one polygon's boundary is a legal
hole-touches-shell point, never a self-crossing ring). :func:`idc_mask` uses the same
connectivity for its minimum-region size, and 4-connected background for holes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from scipy import ndimage

from idcmap.params import Params
from idcmap.pipeline.heatmap import Heatmap

__all__ = [
    "CROSS",
    "Region",
    "component_stats",
    "fix_simplified",
    "idc_mask",
    "mask_to_regions",
    "rasterize",
]

#: relative slack of the area comparisons, so that a region of exactly the minimum area is kept
#: whatever the float rounding of ``cell_area_um2``.
_REL_EPS = 1e-9
#: 4-connectivity structuring element (edge neighbours only).
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


@dataclass(frozen=True)
class Region:
    """One IDC region.

    Attributes:
        polygon: level-0 px (QuPath frame); valid; holes as interior rings.
        area_um2: area of ``polygon`` in µm² (equals ``cells × Heatmap.cell_area_um2`` when the
            polygon is not simplified).
        mean_prob: mean heatmap probability over the region's cells (NaN cells ignored; NaN if
            none of them was evaluated).
        max_prob: maximum heatmap probability over the region's cells (same NaN rule).
        n_cells: number of heatmap cells in the region.
    """

    polygon: shapely.Polygon
    area_um2: float
    mean_prob: float
    max_prob: float
    n_cells: int = 0


# --------------------------------------------------------------------------------------------
# mask


def _component_sizes(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, n = ndimage.label(mask, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return labels, sizes


def idc_mask(
    heatmap: Heatmap,
    threshold: float,
    *,
    min_region_um2: float = Params.min_region_um2,
    min_hole_um2: float = Params.min_hole_um2,
) -> np.ndarray:
    """IDC mask on the heatmap grid.

    Args:
        heatmap: the heatmap (NaN cells = outside tissue = not IDC).
        threshold: a cell is IDC when ``prob >= threshold``.
        min_region_um2: 4-connected IDC regions whose area (cells × ``cell_area_um2``) is below
            this many µm² are removed (0 keeps everything; a region of exactly this area stays).
        min_hole_um2: holes — 4-connected non-IDC components that do not touch the grid border,
            whatever their tissue status — whose area is below this many µm² are filled
            (0 fills nothing; a hole of exactly this area stays open). Applied after the
            small regions are removed.

    Returns:
        bool ``rows × cols``.
    """
    if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    prob = np.asarray(heatmap.prob)
    with np.errstate(invalid="ignore"):
        mask = prob >= threshold  # NaN compares False
    cell_um2 = heatmap.cell_area_um2
    if min_region_um2 > 0 and mask.any():
        labels, sizes = _component_sizes(mask, CROSS)
        keep = sizes * cell_um2 >= min_region_um2 * (1 - _REL_EPS)
        keep[0] = False
        mask = keep[labels]
    if min_hole_um2 > 0 and (~mask).any():
        labels, sizes = _component_sizes(~mask, CROSS)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        fill = sizes * cell_um2 < min_hole_um2 * (1 - _REL_EPS)
        fill[0] = False
        fill[border] = False
        mask = mask | fill[labels]
    return mask


# --------------------------------------------------------------------------------------------
# polygons


def _row_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True cells: (row, col_start, col_end_exclusive)."""
    rows, cols = mask.shape
    padded = np.zeros((rows, cols + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    sr, sc = np.nonzero(d == 1)
    er, ec = np.nonzero(d == -1)
    # np.nonzero is row-major, so starts and ends pair up in order
    assert np.array_equal(sr, er)
    return sr, sc, ec


def _run_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One box per horizontal run of True cells, noded so that the boxes form a valid coverage.

    Two runs in neighbouring rows share part of an edge; for a coverage union the shared part
    must have matching vertices, so each run's top (bottom) edge also gets a vertex at every
    run start/end of the row above (below) that falls strictly inside it.

    Returns:
        (boxes, run_row, run_col_start): shapely polygons in grid units and their run keys.
    """
    r, a, b = _row_runs(mask)
    width = mask.shape[1] + 1
    # every run end-point as a sorted key row * width + x
    keys = np.sort(np.concatenate([r * width + a, r * width + b]))
    key_x = keys % width

    def between(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.searchsorted(keys, row * width + a, side="right")
        hi = np.searchsorted(keys, row * width + b, side="left")
        return lo, hi

    t_lo, t_hi = between(r - 1)
    b_lo, b_hi = between(r + 1)
    n_top = t_hi - t_lo
    n_bot = b_hi - b_lo
    n_ring = 5 + n_top + n_bot  # 4 corners + closing point + breakpoints
    total = int(n_ring.sum())
    start = np.concatenate([[0], np.cumsum(n_ring)[:-1]])
    ring_id = np.repeat(np.arange(len(r)), n_ring)
    pos = np.arange(total) - start[ring_id]  # position of each vertex within its ring
    xs = np.empty(total, dtype=np.float64)
    ys = np.empty(total, dtype=np.float64)
    nt = n_top[ring_id]
    nb = n_bot[ring_id]
    rr = r[ring_id].astype(np.float64)
    # ring: (a, r) -> top breakpoints (increasing x) -> (b, r) -> (b, r+1)
    #       -> bottom breakpoints (decreasing x) -> (a, r+1) -> (a, r)
    is_a0 = pos == 0
    is_top = (pos >= 1) & (pos <= nt)
    is_b0 = pos == nt + 1
    is_b1 = pos == nt + 2
    is_bot = (pos >= nt + 3) & (pos < nt + 3 + nb)
    is_a1 = pos == nt + 3 + nb
    is_close = pos == nt + 4 + nb
    ai = a[ring_id].astype(np.float64)
    bi = b[ring_id].astype(np.float64)
    xs[is_a0 | is_a1 | is_close] = ai[is_a0 | is_a1 | is_close]
    ys[is_a0 | is_close] = rr[is_a0 | is_close]
    ys[is_a1] = rr[is_a1] + 1
    xs[is_b0 | is_b1] = bi[is_b0 | is_b1]
    ys[is_b0] = rr[is_b0]
    ys[is_b1] = rr[is_b1] + 1
    ti = t_lo[ring_id][is_top] + (pos[is_top] - 1)
    xs[is_top] = key_x[ti]
    ys[is_top] = rr[is_top]
    bi_idx = b_hi[ring_id][is_bot] - 1 - (pos[is_bot] - nt[is_bot] - 3)
    xs[is_bot] = key_x[bi_idx]
    ys[is_bot] = rr[is_bot] + 1
    rings = shapely.linearrings(xs, ys, indices=ring_id)
    return shapely.polygons(rings), r, a


def _grid_polygons(mask: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Exact cell-edge polygons, in grid units, one per 4-connected component (label 1..n).

    Returns:
        object array of ``n`` :class:`shapely.Polygon`, item ``k`` for label ``k + 1``.
    """
    boxes, r, c0 = _run_boxes(mask)
    run_label = labels[r, c0]
    order = np.argsort(run_label, kind="stable")
    bounds = np.searchsorted(run_label[order], np.arange(1, n + 2))
    n_runs = np.diff(bounds)
    out = np.empty(n, dtype=object)
    # a one-run component is its box (no neighbour run can add a breakpoint to it)
    single = np.nonzero(n_runs == 1)[0]
    out[single] = boxes[order[bounds[single]]]
    # The noded run boxes of one 4-component form a valid coverage of it: its coverage union is
    # the exact cell-edge polygon. Unions are done per component (GEOS's coverage union grows
    # faster than linearly with its input), vectorised over components with a similar number
    # of runs: a None-padded (components × width) array, unioned along axis 1.
    multi = np.nonzero(n_runs > 1)[0]
    width = 2 ** np.ceil(np.log2(n_runs[multi])).astype(np.int64)
    for w in np.unique(width):
        ks = multi[width == w]
        if w > 1024:
            for k in ks:
                out[k] = shapely.coverage_union_all(boxes[order[bounds[k] : bounds[k + 1]]])
            continue
        grid = np.full((len(ks), int(w)), None, dtype=object)
        col = np.arange(int(w))
        take = col[None, :] < n_runs[ks][:, None]
        idx = bounds[ks][:, None] + col[None, :]
        grid[take] = boxes[order[idx[take]]]
        out[ks] = shapely.coverage_union_all(grid, axis=1)
    # drop the collinear vertices left by the noding (the geometry does not change)
    out[multi] = shapely.simplify(out[multi], 0.0, preserve_topology=False)
    kinds = shapely.get_type_id(out)
    if not np.all(kinds == shapely.GeometryType.POLYGON):  # cannot happen for 4-components
        raise AssertionError("a 4-connected component did not give one polygon")
    return out


def fix_simplified(simple: shapely.Geometry, poly: shapely.Polygon) -> shapely.Polygon:
    """A valid polygon from an invalid simplification ``simple`` of ``poly`` (rare)."""
    if not simple.is_empty:
        simple = shapely.make_valid(simple)
    if isinstance(simple, shapely.Polygon) and not simple.is_empty:
        return simple
    parts = [p for p in shapely.get_parts(simple) if isinstance(p, shapely.Polygon)]
    if not parts:
        return poly
    return max(parts, key=lambda p: p.area)


def component_stats(
    labels: np.ndarray, n: int, prob: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per component 1..n of ``labels``: (cells, mean and max probability over its finite
    cells; NaN when it has none), each an array of n."""
    flat = labels.ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    finite = np.isfinite(p) & (flat > 0)
    n_fin = np.bincount(flat[finite], minlength=n + 1)[1:]
    sums = np.bincount(flat[finite], weights=p[finite], minlength=n + 1)[1:]
    maxs = np.full(n + 1, -np.inf)
    np.maximum.at(maxs, flat[finite], p[finite])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n_fin > 0, sums / np.maximum(n_fin, 1), np.nan)
    return counts, means, np.where(n_fin > 0, maxs[1:], np.nan)


def mask_to_regions(
    mask: np.ndarray,
    heatmap: Heatmap,
    *,
    simplify_um: float = 0.0,
) -> list[Region]:
    """Polygons of a boolean mask on the heatmap grid, one :class:`Region` per component.

    Components are **4-connected** (edge neighbours): two cells touching only at a corner are
    two regions, so each polygon is valid. Each polygon follows the cell edges exactly (holes as
    interior rings), is mapped to level-0 px with ``origin_level0_px`` and ``cell_level0_px``,
    then, if ``simplify_um > 0``, simplified with Douglas-Peucker (topology preserving) at a
    tolerance of ``simplify_um / slide_mpp`` level-0 px: every boundary moves by at most that
    distance and the polygon stays valid.

    Args:
        mask: bool ``rows × cols``, same shape as ``heatmap.prob``.
        heatmap: the grid geometry and the probabilities for the measurements.
        simplify_um: simplification tolerance in µm (0 = exact cell edges).

    Returns:
        Regions sorted by decreasing number of cells (ties: top-most, then left-most first).
    """
    mask = np.asarray(mask, dtype=bool)
    prob = np.asarray(heatmap.prob, dtype=np.float64)
    if mask.shape != prob.shape:
        raise ValueError(f"mask shape {mask.shape} != heatmap shape {prob.shape}")
    if simplify_um < 0 or math.isnan(simplify_um):
        raise ValueError(f"simplify_um must be >= 0, got {simplify_um}")
    labels, n = ndimage.label(mask, structure=CROSS)
    if n == 0:
        return []
    grid_polys = _grid_polygons(mask, labels, n)

    counts, means, maxs = component_stats(labels, n, prob)

    ox, oy = (float(v) for v in heatmap.origin_level0_px)
    cw, ch = (float(v) for v in heatmap.cell_level0_px)
    mx, my = heatmap.mpp_xy
    # in level-0 px; the coarser axis keeps every boundary within simplify_um µm
    tol_px = simplify_um / max(mx, my) if simplify_um > 0 else 0.0

    def to_level0(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([ox + xy[:, 0] * cw, oy + xy[:, 1] * ch])

    polys = shapely.transform(grid_polys, to_level0)
    if tol_px > 0:
        simple = shapely.simplify(polys, tol_px, preserve_topology=True)
        bad = ~shapely.is_valid(simple) | shapely.is_empty(simple)
        simple[bad] = [fix_simplified(s, p) for s, p in zip(simple[bad], polys[bad], strict=True)]
        polys = simple
    areas = shapely.area(polys) * mx * my
    x0, y0 = shapely.bounds(polys)[:, :2].T
    # stable, deterministic order: most cells first, then top-most, then left-most
    order = np.lexsort((x0, y0, -counts))
    return [
        Region(
            polygon=polys[k],
            area_um2=float(areas[k]),
            mean_prob=float(means[k]),
            max_prob=float(maxs[k]),
            n_cells=int(counts[k]),
        )
        for k in order
    ]


# --------------------------------------------------------------------------------------------
# rasterisation


def rasterize(polygons: Iterable[shapely.Geometry], heatmap_like: Any) -> np.ndarray:
    """Cells of a heatmap grid whose **centre** lies strictly inside any of the polygons.

    Args:
        polygons: geometries in level-0 px (QuPath frame); non-polygonal ones cover nothing.
        heatmap_like: a :class:`Heatmap` or anything with ``shape`` (rows, cols),
            ``origin_level0_px`` and ``cell_level0_px``.

    Returns:
        bool ``rows × cols``.
    """
    rows, cols = (int(v) for v in heatmap_like.shape)
    ox, oy = (float(v) for v in heatmap_like.origin_level0_px)
    cw, ch = (float(v) for v in heatmap_like.cell_level0_px)
    out = np.zeros((rows, cols), dtype=bool)
    if rows == 0 or cols == 0:
        return out
    for geom in polygons:
        if geom is None or geom.is_empty:
            continue
        x0, y0, x1, y1 = geom.bounds
        c0 = max(0, math.floor((x0 - ox) / cw - 0.5))
        c1 = min(cols, math.ceil((x1 - ox) / cw + 0.5))
        r0 = max(0, math.floor((y0 - oy) / ch - 0.5))
        r1 = min(rows, math.ceil((y1 - oy) / ch + 0.5))
        if c0 >= c1 or r0 >= r1:
            continue
        xs = ox + (np.arange(c0, c1) + 0.5) * cw
        ys = oy + (np.arange(r0, r1) + 0.5) * ch
        shapely.prepare(geom)
        out[r0:r1, c0:c1] |= shapely.contains_xy(geom, xs[None, :], ys[:, None])
    return out
