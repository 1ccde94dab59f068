"""Grading measurements of IDC regions: area, greatest and least dimension, per-slide figures.

These are **research measurements at the model's resolution** (one heatmap cell = 200 µm at the
bundled model): they describe the polygons idcmap drew, not the tumour a pathologist would
measure under the microscope, and they are **not a pT stage**.

Definitions (polygon coordinates are level-0 px, converted to µm with the slide's µm/px along x
and along y before anything is measured, so anisotropic pixels are handled):

* **area**: the polygon's area, holes excluded (mm²).
* **greatest dimension**: the maximum caliper (Feret) diameter: the largest distance between two
  points of the polygon, i.e. between two vertices of its convex hull (mm). This is not QuPath's
  "Max diameter", which is the diameter of a bounding circle.
* **least dimension**: the minimum caliper width: the smallest distance between two parallel
  lines enclosing the polygon (mm). It is attained with one line along an edge of the convex
  hull (rotating calipers), so it is exact.

Per slide: the number of foci (regions), the greatest dimension of the largest focus (the
largest greatest dimension over the regions), the total IDC area (sum of the region areas) and
IDC as a percentage of the tissue area.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import shapely

__all__ = [
    "NOTE",
    "RegionMeasurements",
    "SlideMeasurements",
    "artefact_measurements",
    "artefact_share_pct",
    "caliper_diameters_um",
    "measure_polygon",
    "measure_slide",
    "measurements_summary",
]

#: What the figures are, written beside them in summary.json.
NOTE = (
    "research measurements of the drawn IDC regions at the model's resolution "
    "(200-µm heatmap cells); not a pT stage"
)


@dataclass(frozen=True)
class RegionMeasurements:
    """Measurements of one region (mm², mm)."""

    area_mm2: float
    greatest_dimension_mm: float
    least_dimension_mm: float

    def qupath(self) -> dict[str, float]:
        """QuPath-style measurement names (with units) for the GeoJSON ``measurements``."""
        return {
            "Area mm^2": self.area_mm2,
            "Greatest dimension mm": self.greatest_dimension_mm,
            "Least dimension mm": self.least_dimension_mm,
        }


@dataclass(frozen=True)
class SlideMeasurements:
    """Per-slide figures (mm², mm, %); ``largest_focus_greatest_dimension_mm`` is 0 without
    foci, ``idc_percent_of_tissue`` is 0 without tissue."""

    foci: int
    largest_focus_greatest_dimension_mm: float
    idc_area_mm2: float
    tissue_area_mm2: float
    idc_percent_of_tissue: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hull_um(geom: shapely.Geometry, mpp_x: float, mpp_y: float) -> np.ndarray:
    """Convex-hull vertices (counter-clockwise, not closed) in µm, ``k × 2``."""
    scaled = shapely.transform(geom, lambda xy: xy * np.array([mpp_x, mpp_y]))
    hull = shapely.convex_hull(scaled)
    if isinstance(hull, shapely.Polygon) and not hull.is_empty:
        ring = shapely.geometry.polygon.orient(hull, sign=1.0).exterior
        return np.asarray(ring.coords)[:-1, :2]
    return np.asarray(shapely.get_coordinates(hull))[:, :2]  # a point or a segment


def caliper_diameters_um(
    geom: shapely.Geometry, mpp_x: float, mpp_y: float | None = None
) -> tuple[float, float]:
    """(maximum, minimum) caliper diameter of a geometry in level-0 px, in µm.

    Maximum: largest distance between two convex-hull vertices. Minimum: over the hull's edges,
    the largest distance of a hull vertex from the edge's line, minimised (the minimum width is
    attained with a caliper flush with a hull edge). Both exact; O(h²) in the hull's vertex
    count ``h``, which stays in the hundreds for heatmap regions.
    """
    my = mpp_x if mpp_y is None else mpp_y
    if not (mpp_x > 0 and my > 0):
        raise ValueError(f"mpp must be > 0, got mpp_x={mpp_x}, mpp_y={my}")
    if geom is None or geom.is_empty:
        return 0.0, 0.0
    pts = _hull_um(geom, mpp_x, my)
    k = len(pts)
    if k < 2:
        return 0.0, 0.0
    # maximum: all pairs, in chunks so that memory stays bounded for big hulls
    best = 0.0
    for i in range(0, k, 1024):
        d = pts[i : i + 1024, None, :] - pts[None, :, :]
        best = max(best, float(np.sqrt((d * d).sum(axis=2)).max()))
    if k < 3:
        return best, 0.0
    edges = np.roll(pts, -1, axis=0) - pts
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    ok = lengths > 0
    edges, starts, lengths = edges[ok], pts[ok], lengths[ok]
    least = math.inf
    for i in range(0, len(edges), 1024):
        e, s, n = edges[i : i + 1024], starts[i : i + 1024], lengths[i : i + 1024]
        rel = pts[None, :, :] - s[:, None, :]
        # distance from each edge's line (|cross| / length); hull is convex, all on one side
        dist = np.abs(e[:, None, 0] * rel[:, :, 1] - e[:, None, 1] * rel[:, :, 0]) / n[:, None]
        least = min(least, float(dist.max(axis=1).min()))
    return best, (0.0 if math.isinf(least) else least)


def measure_polygon(
    geom: shapely.Geometry, mpp_x: float, mpp_y: float | None = None
) -> RegionMeasurements:
    """Area (mm²), greatest and least dimension (mm) of a polygon in level-0 px.

    Args:
        geom: a Polygon or MultiPolygon in level-0 px.
        mpp_x: µm per level-0 px along x.
        mpp_y: µm per level-0 px along y (default: ``mpp_x``).
    """
    my = mpp_x if mpp_y is None else mpp_y
    greatest_um, least_um = caliper_diameters_um(geom, mpp_x, my)
    area_um2 = float(shapely.area(geom)) * mpp_x * my if geom is not None else 0.0
    return RegionMeasurements(
        area_mm2=area_um2 / 1e6,
        greatest_dimension_mm=greatest_um / 1e3,
        least_dimension_mm=least_um / 1e3,
    )


def artefact_share_pct(
    geom: shapely.Geometry, artefacts: Mapping[str, Sequence[shapely.Geometry]]
) -> dict[str, float]:
    """How much of ``geom``'s area lies under each kind of ``artefacts`` (kind → polygons in
    the same frame, e.g. :func:`idcmap.pipeline.qc.artefact_polygons`), in %: one entry per
    kind given, 0 where none of its polygons touches ``geom``. A ratio of areas, so the
    same in level-0 px² as in µm², anisotropic pixels included."""
    area = float(shapely.area(geom)) if geom is not None else 0.0
    out: dict[str, float] = {}
    for kind, polys in artefacts.items():
        if area <= 0 or not polys:
            out[kind] = 0.0
            continue
        under = shapely.intersection(geom, shapely.union_all(list(polys)))
        out[kind] = min(100.0, 100.0 * float(shapely.area(under)) / area)
    return out


def artefact_measurements(shares: Mapping[str, float]) -> dict[str, float]:
    """QuPath measurement names of :func:`artefact_share_pct`'s shares (``"Ink % of area"``)."""
    return {f"{kind.capitalize()} % of area": v for kind, v in shares.items()}


def measure_slide(
    regions: Sequence[RegionMeasurements], tissue_area_mm2: float
) -> SlideMeasurements:
    """Per-slide figures from the measurements of its regions.

    The largest focus is the one with the greatest greatest-dimension (how a pathologist
    picks the focus that is staged), so ``largest_focus_greatest_dimension_mm`` is the maximum
    greatest dimension over the regions.
    """
    idc = float(sum(r.area_mm2 for r in regions))
    tissue = float(tissue_area_mm2)
    return SlideMeasurements(
        foci=len(regions),
        largest_focus_greatest_dimension_mm=max(
            (r.greatest_dimension_mm for r in regions), default=0.0
        ),
        idc_area_mm2=idc,
        tissue_area_mm2=tissue,
        idc_percent_of_tissue=100.0 * idc / tissue if tissue > 0 else 0.0,
    )


def measurements_summary(
    polygons: Sequence[shapely.Geometry],
    tissue_area_mm2: float,
    mpp_x: float,
    mpp_y: float | None = None,
    *,
    class_name: str = "IDC",
    artefacts: Mapping[str, Sequence[shapely.Geometry]] | None = None,
) -> tuple[list[RegionMeasurements], dict[str, Any]]:
    """Measure every region and the slide: the per-region list (in ``polygons`` order, named
    ``"<class_name> <k>"`` like the GeoJSON features) and the ``summary.json`` block. With
    ``artefacts`` (what the QC stage found, kind → polygons), each region's entry also says
    how much of it lies under each kind (``artefact_pct_of_area``, :func:`artefact_share_pct`):
    a region read through ink or a fold may be off in area."""
    per = [measure_polygon(p, mpp_x, mpp_y) for p in polygons]
    slide = measure_slide(per, tissue_area_mm2)
    regions: list[dict[str, Any]] = []
    for k, (poly, m) in enumerate(zip(polygons, per, strict=True), start=1):
        entry: dict[str, Any] = {"name": f"{class_name} {k}"}
        entry.update({n: round(v, 4) for n, v in asdict(m).items()})
        if artefacts is not None:
            shares = artefact_share_pct(poly, artefacts)
            entry["artefact_pct_of_area"] = {n: round(v, 2) for n, v in shares.items()}
        regions.append(entry)
    block: dict[str, Any] = {
        "note": NOTE,
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in slide.to_dict().items()},
        "regions": regions,
    }
    return per, block
