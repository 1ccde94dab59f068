"""A checker of QuPath GeoJSON for tests: what QuPath needs to import a FeatureCollection."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import shapely

#: objectType values QuPath knows.
QUPATH_OBJECT_TYPES = frozenset({"annotation", "detection", "tile", "cell", "tma_core", "root"})


def _check_position(pos: Any, where: str) -> None:
    if (
        not isinstance(pos, list)
        or len(pos) not in (2, 3)
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in pos
        )
    ):
        raise ValueError(f"{where}: a position must be [x, y] finite numbers, got {pos!r}")


def _check_polygon_coords(rings: Any, where: str) -> None:
    if not isinstance(rings, list) or not rings:
        raise ValueError(f"{where}: a Polygon needs a non-empty list of rings")
    for j, ring in enumerate(rings):
        w = f"{where} ring {j}"
        if not isinstance(ring, list) or len(ring) < 4:
            raise ValueError(f"{w}: a ring needs at least 4 positions")
        for pos in ring:
            _check_position(pos, w)
        if ring[0] != ring[-1]:
            raise ValueError(f"{w}: ring not closed (first position != last)")


def validate_qupath_geojson(obj: Any) -> None:
    """Check that ``obj`` is a FeatureCollection QuPath imports as intended.

    Checks, in order, for each Feature: ``type``, a unique non-empty string ``id``, a Polygon or
    MultiPolygon geometry with closed rings of finite ``[x, y]`` positions that shapely finds
    valid, ``properties.objectType`` one of QuPath's, ``classification`` (when present — it is
    required for annotations) with a non-empty ``name`` and a ``color`` of 3 ints in 0–255,
    and ``measurements`` (when present) mapping names to finite numbers.

    Raises:
        ValueError: naming the first problem found (and the feature's index).
    """
    if not isinstance(obj, Mapping) or obj.get("type") != "FeatureCollection":
        raise ValueError("top level: 'type' must be 'FeatureCollection'")
    features = obj.get("features")
    if not isinstance(features, list):
        raise ValueError("top level: 'features' must be a list")
    seen_ids: dict[str, int] = {}
    for i, f in enumerate(features):
        w = f"feature {i}"
        if not isinstance(f, Mapping) or f.get("type") != "Feature":
            raise ValueError(f"{w}: 'type' must be 'Feature'")
        fid = f.get("id")
        if not isinstance(fid, str) or not fid:
            raise ValueError(f"{w}: 'id' missing (QuPath needs a unique id per object)")
        if fid in seen_ids:
            raise ValueError(f"{w}: 'id' {fid!r} repeats feature {seen_ids[fid]}'s")
        seen_ids[fid] = i
        g = f.get("geometry")
        if not isinstance(g, Mapping):
            raise ValueError(f"{w}: 'geometry' missing")
        gtype = g.get("type")
        coords = g.get("coordinates")
        if gtype == "Polygon":
            _check_polygon_coords(coords, f"{w} geometry")
        elif gtype == "MultiPolygon":
            if not isinstance(coords, list) or not coords:
                raise ValueError(f"{w} geometry: a MultiPolygon needs a non-empty list")
            for k, poly in enumerate(coords):
                _check_polygon_coords(poly, f"{w} geometry polygon {k}")
        else:
            raise ValueError(f"{w} geometry: type must be Polygon or MultiPolygon, got {gtype!r}")
        geom = shapely.geometry.shape(g)
        if not geom.is_valid:
            raise ValueError(f"{w} geometry: invalid ({shapely.is_valid_reason(geom)})")
        props = f.get("properties")
        if not isinstance(props, Mapping):
            raise ValueError(f"{w}: 'properties' missing")
        otype = props.get("objectType")
        if otype not in QUPATH_OBJECT_TYPES:
            raise ValueError(
                f"{w}: properties.objectType must be one of {sorted(QUPATH_OBJECT_TYPES)}, "
                f"got {otype!r}"
            )
        cls = props.get("classification")
        if cls is None and otype == "annotation":
            raise ValueError(f"{w}: properties.classification missing")
        if cls is not None:
            if not isinstance(cls, Mapping):
                raise ValueError(f"{w}: properties.classification must be an object")
            name = cls.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{w}: classification.name must be a non-empty string")
            color = cls.get("color")
            if (
                not isinstance(color, list)
                or len(color) != 3
                or not all(
                    isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color
                )
            ):
                raise ValueError(
                    f"{w}: classification.color must be [r, g, b], 3 ints in 0-255, got {color!r}"
                )
        meas = props.get("measurements")
        if meas is not None:
            if not isinstance(meas, Mapping):
                raise ValueError(f"{w}: properties.measurements must be an object")
            for k, v in meas.items():
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    raise ValueError(f"{w}: measurement {k!r} must be a finite number, got {v!r}")
