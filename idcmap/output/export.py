"""Export stage: QuPath GeoJSON, the heatmap array, JSON (pictures: :mod:`idcmap.output.render`).

Coordinates in every GeoJSON written or read here are **level-0 pixels in QuPath's frame**
(origin at the top-left of the image QuPath shows, which already accounts for OpenSlide's
``bounds-x/-y``), x to the right and y down, as QuPath's own "Export as GeoJSON" writes them.

GeoJSON shape (what QuPath ≥ 0.4 writes and reads), one Feature per IDC region::

    {"type": "Feature", "id": "<uuid4>",
     "geometry": {"type": "Polygon", "coordinates": [[[x, y], ...], [hole...]]},
     "properties": {"objectType": "annotation", "name": "IDC 1",
                    "classification": {"name": "IDC", "color": [200, 0, 0]},
                    "isLocked": false,
                    "measurements": {"Area µm^2": ..., "Area mm^2": ...,
                                     "Greatest dimension mm": ..., "Least dimension mm": ...,
                                     "Mean IDC probability": ...,
                                     "Max IDC probability": ..., "Heatmap cells": ...}}}

(the mm measurements when the caller passes them, as :meth:`SlideResult.to_geojson` does; see
:mod:`idcmap.pipeline.measure`).

Rings are closed; exterior rings are counter-clockwise and holes clockwise *in the numbers*
(RFC 7946 §3.1.6, signed area with x right / y up — on screen, with y down, that looks
clockwise); QuPath accepts either. Coordinates are rounded to 0.01 px (snapped with
:func:`shapely.set_precision`, so the rounded polygons stay valid).
"""

from __future__ import annotations

import io
import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.regions import Region

__all__ = [
    "IDC_COLOR",
    "OTHER_COLOR",
    "heatmap_npz",
    "load_heatmap_npz",
    "read_geojson_polygons",
    "regions_to_geojson",
    "write_json",
]

PathLike = str | os.PathLike[str]

#: RGB colour of the IDC class in QuPath (QuPath rejects a classification without one).
IDC_COLOR: tuple[int, int, int] = (200, 0, 0)
#: QuPath colours of the QC stage's classes (kind → RGB): ink blue, fold orange, blur grey,
#: debris brown, scanner border black.
ARTEFACT_COLORS: dict[str, tuple[int, int, int]] = {
    "ink": (40, 80, 220),
    "fold": (240, 140, 20),
    "blur": (150, 150, 150),
    "debris": (120, 70, 30),
    "border": (0, 0, 0),
}
#: RGB colour of tiles below the threshold ("Other", QuPath's own colour for that class).
OTHER_COLOR: tuple[int, int, int] = (255, 200, 0)

_PRECISION_PX = 0.01


# --------------------------------------------------------------------------------------------
# GeoJSON


def _round(v: float) -> float:
    r = round(float(v), 2)
    return 0.0 if r == 0 else r  # no "-0.0"


def _ring_coords(ring: shapely.LinearRing) -> list[list[float]]:
    return [[_round(x), _round(y)] for x, y in np.asarray(ring.coords)[:, :2]]


def _polygon_coords(poly: shapely.Polygon) -> list[list[list[float]]]:
    poly = shapely.geometry.polygon.orient(poly, sign=1.0)  # exterior CCW, holes CW (numbers)
    return [_ring_coords(poly.exterior), *(_ring_coords(r) for r in poly.interiors)]


def geometry_to_geojson(geom: shapely.Geometry) -> dict[str, Any] | None:
    """GeoJSON geometry (Polygon or MultiPolygon) of a polygonal geometry, coordinates snapped
    to 0.01 px; ``None`` when nothing polygonal is left."""
    geom = shapely.set_precision(geom, _PRECISION_PX)
    polys = [p for p in shapely.get_parts(geom) if isinstance(p, shapely.Polygon)]
    polys = [p for p in polys if not p.is_empty]
    if not polys:
        return None
    if len(polys) == 1:
        return {"type": "Polygon", "coordinates": _polygon_coords(polys[0])}
    return {"type": "MultiPolygon", "coordinates": [_polygon_coords(p) for p in polys]}


def _finite_measurements(items: Mapping[str, float | int]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for k, v in items.items():
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out[k] = int(v)
        elif v is not None and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def _classification(name: str, color: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "color": [int(c) for c in color]}


def regions_to_geojson(
    regions: Sequence[Region],
    *,
    tiles: Heatmap | None = None,
    class_name: str = "IDC",
    color: Sequence[int] = IDC_COLOR,
    tile_threshold: float = 0.5,
    measurements: Sequence[Mapping[str, float]] | None = None,
    artefacts: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """QuPath FeatureCollection of the IDC regions (and optionally the heatmap cells as tiles).

    Args:
        regions: the regions (polygons in level-0 px, QuPath frame).
        tiles: a heatmap: also write one ``"objectType": "tile"`` Feature per evaluated cell
            (NaN cells are skipped), its box in level-0 px, measurements ``"IDC probability"``
            and ``"Tile threshold"``, classified ``class_name`` when ``prob >= tile_threshold``
            and ``"Other"`` otherwise (so QuPath colours them; Measure → Show measurement maps
            shows the probability). Tiles are locked, as WSInfer writes them.
        class_name: QuPath class of the regions.
        color: RGB of that class, 3 ints in 0–255.
        tile_threshold: probability at which a tile is classified ``class_name`` (tiles
            only): the model's per-tile threshold, not the region threshold that the region
            mask applies to the smoothed heatmap.
        measurements: one mapping per region of further measurements (name with its unit →
            value), e.g. :meth:`idcmap.pipeline.measure.RegionMeasurements.qupath`'s ``Area mm^2``,
            ``Greatest dimension mm``, ``Least dimension mm``.
        artefacts: what the QC stage found, kind → polygons (level-0 px): one annotation per
            polygon, classified ``Ink``, ``Fold``, ``Blur``, ``Debris`` or ``Border`` in its
            colour (:data:`ARTEFACT_COLORS`), never the IDC class.

    Returns:
        ``{"type": "FeatureCollection", "features": [...]}`` (JSON-serialisable, NaN-free);
        with ``tiles``, also the foreign member ``"idcmap": {"tile_threshold": ...}``.
    """
    if measurements is not None and len(measurements) != len(regions):
        raise ValueError(f"{len(measurements)} measurement sets for {len(regions)} regions")
    features: list[dict[str, Any]] = []
    for i, region in enumerate(regions):
        geometry = geometry_to_geojson(region.polygon)
        if geometry is None:
            continue
        measurements_i = _finite_measurements(
            {
                "Area µm^2": region.area_um2,
                **(measurements[i] if measurements is not None else {}),
                "Mean IDC probability": region.mean_prob,
                "Max IDC probability": region.max_prob,
                "Heatmap cells": int(region.n_cells),
            }
        )
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": geometry,
                "properties": {
                    "objectType": "annotation",
                    "name": f"{class_name} {i + 1}",
                    "classification": _classification(class_name, color),
                    "isLocked": False,
                    "measurements": measurements_i,
                },
            }
        )
    for kind, polygons in (artefacts or {}).items():
        cls = _classification(kind.capitalize(), ARTEFACT_COLORS.get(kind, OTHER_COLOR))
        for k, poly in enumerate(polygons, start=1):
            geometry = geometry_to_geojson(poly)
            if geometry is not None:
                features.append(
                    {
                        "type": "Feature",
                        "id": str(uuid.uuid4()),
                        "geometry": geometry,
                        "properties": {
                            "objectType": "annotation",
                            "name": f"{kind.capitalize()} {k}",
                            "classification": cls,
                            "isLocked": True,
                        },
                    }
                )
    if tiles is None:
        return {"type": "FeatureCollection", "features": features}
    features.extend(_tile_features(tiles, class_name, color, tile_threshold))
    return {
        "type": "FeatureCollection",
        "features": features,
        "idcmap": {
            "tile_threshold": float(tile_threshold),
            "tile_classification": f"{class_name} when the tile's IDC probability ≥ "
            "tile_threshold (the model's per-tile threshold; regions use the region threshold "
            "of the smoothed heatmap)",
        },
    }


def _tile_features(
    heatmap: Heatmap, class_name: str, color: Sequence[int], tile_threshold: float
) -> Iterable[dict[str, Any]]:
    prob = np.asarray(heatmap.prob, dtype=np.float64)
    ox, oy = (float(v) for v in heatmap.origin_level0_px)
    cw, ch = (float(v) for v in heatmap.cell_level0_px)
    idc = _classification(class_name, color)
    other = _classification("Other", OTHER_COLOR)
    thr = float(tile_threshold)
    rows, cols = np.nonzero(np.isfinite(prob))
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        x0, y0 = _round(ox + c * cw), _round(oy + r * ch)
        x1, y1 = _round(ox + (c + 1) * cw), _round(oy + (r + 1) * ch)
        p = float(prob[r, c])
        yield {
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": {
                "type": "Polygon",
                # counter-clockwise in the numbers (RFC 7946)
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
            },
            "properties": {
                "objectType": "tile",
                "classification": dict(idc if p >= tile_threshold else other),
                "isLocked": True,
                "measurements": {"IDC probability": p, "Tile threshold": thr},
            },
        }


def _features_of(obj: Any) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        kind = obj.get("type")
        if kind == "FeatureCollection":
            feats = obj.get("features")
            if not isinstance(feats, list):
                raise ValueError("FeatureCollection without a 'features' list")
            return feats
        if kind == "Feature":
            return [obj]
        if kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
            return [{"type": "Feature", "geometry": obj, "properties": {}}]
    raise ValueError(
        "not GeoJSON from QuPath: expected a FeatureCollection, a list of Features or a Feature"
    )


def _class_name_of(feature: Mapping[str, Any]) -> str | None:
    props = feature.get("properties") or {}
    cls = props.get("classification")
    if isinstance(cls, Mapping):
        name = cls.get("name")
        return name if isinstance(name, str) else None
    if isinstance(cls, str):
        return cls
    return None


def read_geojson_polygons(
    path: PathLike | Mapping[str, Any] | list[Any], class_name: str | None = "IDC"
) -> list[shapely.Geometry]:
    """Polygons of a GeoJSON file, e.g. a ground truth drawn in QuPath.

    Args:
        path: a GeoJSON file (a FeatureCollection, a list of Features, a single Feature, or a
            bare Polygon/MultiPolygon geometry), or the already-parsed object.
        class_name: keep only Features whose ``properties.classification.name`` is this
            (``None``: keep every Feature, classified or not).

    Returns:
        one valid Polygon or MultiPolygon per kept Feature, level-0 px as in the file. Features
        whose geometry is not areal (points, lines) are skipped; invalid polygons (e.g.
        self-crossing hand-drawn outlines) are repaired with :func:`shapely.make_valid`.
    """
    if isinstance(path, (Mapping, list)):
        obj: Any = path
    else:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    out: list[shapely.Geometry] = []
    for i, feature in enumerate(_features_of(obj)):
        if not isinstance(feature, Mapping):
            raise ValueError(f"feature {i} is not an object")
        if class_name is not None and _class_name_of(feature) != class_name:
            continue
        geometry = feature.get("geometry")
        if not isinstance(geometry, Mapping):
            continue
        try:
            geom = shapely.geometry.shape(geometry)
        except Exception as e:  # shapely raises several types for malformed input
            raise ValueError(f"feature {i}: unreadable geometry: {e}") from e
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        polys = [
            p
            for p in shapely.get_parts(geom)
            if isinstance(p, (shapely.Polygon, shapely.MultiPolygon)) and not p.is_empty
        ]
        if not polys:
            continue
        out.append(polys[0] if len(polys) == 1 else shapely.union_all(polys))
    return out


# --------------------------------------------------------------------------------------------
# arrays and JSON

_NPZ_FORMAT = 1


def heatmap_npz(heatmap: Heatmap, path: PathLike, **extra: Any) -> None:
    """Write the heatmap as a compressed ``.npz`` at exactly ``path``.

    Arrays: ``prob`` (float32 rows×cols, NaN = not tissue), ``origin_level0_px`` (x, y; level-0
    px, QuPath frame), ``cell_level0_px`` (w, h; level-0 px), ``slide_mpp``, ``slide_mpp_y`` and
    ``model_mpp`` (µm/px), ``stride_px`` and ``patch_px`` (model px), ``format`` (1), plus
    ``extra`` arrays or scalars (names must not clash). Read back with :func:`load_heatmap_npz`.
    """
    arrays: dict[str, Any] = {
        "prob": np.asarray(heatmap.prob, dtype=np.float32),
        "origin_level0_px": np.asarray(heatmap.origin_level0_px, dtype=np.float64),
        "cell_level0_px": np.asarray(heatmap.cell_level0_px, dtype=np.float64),
        "slide_mpp": np.float64(heatmap.slide_mpp),
        "slide_mpp_y": np.float64(heatmap.mpp_xy[1]),
        "model_mpp": np.float64(heatmap.model_mpp),
        "stride_px": np.int64(heatmap.stride_px),
        "patch_px": np.int64(heatmap.patch_px),
        "format": np.int64(_NPZ_FORMAT),
    }
    clash = set(extra) & set(arrays)
    if clash:
        raise ValueError(f"extra names clash with the heatmap's: {sorted(clash)}")
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with open(path, "wb") as f:  # np.savez would append ".npz" to a path without it
        f.write(buf.getbuffer())


def load_heatmap_npz(path: PathLike) -> Heatmap:
    """Read a heatmap written by :func:`heatmap_npz`."""
    with np.load(path, allow_pickle=False) as z:
        ox, oy = (float(v) for v in z["origin_level0_px"])
        cw, ch = (float(v) for v in z["cell_level0_px"])
        return Heatmap(
            prob=np.asarray(z["prob"], dtype=np.float32),
            origin_level0_px=(ox, oy),
            cell_level0_px=(cw, ch),
            slide_mpp=float(z["slide_mpp"]),
            model_mpp=float(z["model_mpp"]),
            stride_px=int(z["stride_px"]),
            patch_px=int(z["patch_px"]),
            slide_mpp_y=float(z["slide_mpp_y"]) if "slide_mpp_y" in z.files else None,
        )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(obj: Any, path: PathLike) -> None:
    """Write ``obj`` as UTF-8 JSON, indent 2, trailing newline (the one JSON writer of idcmap:
    outputs, reports, model files' side files).

    The rule: the file is strict JSON (RFC 8259 has no NaN), so NaN and ±inf become ``null``
    ("no value": e.g. the mean probability of a region without evaluated cells, an AUC with one
    class); numpy scalars and arrays, tuples and paths become plain JSON. Missing parent
    folders are created.
    """
    text = json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text + "\n", encoding="utf-8")
