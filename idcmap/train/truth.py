"""Ground truth on a heatmap's cell grid, from a mosaic's ``cells.csv`` or a QuPath GeoJSON.

A heatmap cell is IDC in the truth when its centre (level-0 px) lies in an IDC cell of the
``cells.csv`` (:func:`idcmap.train.data.read_cells`) or in a polygon classified ``IDC``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely

from idcmap.errors import UsageError
from idcmap.output.export import read_geojson_polygons
from idcmap.pipeline.heatmap import Heatmap
from idcmap.train.data import read_cells

__all__ = ["read_truth", "truth_from_cells", "truth_from_geojson"]


def truth_from_cells(cells_csv: str | Path, grid: Heatmap) -> np.ndarray:
    """IDC truth on the heatmap's grid: a cell is IDC when its centre lies in a ``cells.csv``
    cell labelled 1 (cells absent from the file — glass — are not IDC)."""
    cx, cy = grid.cell_centres_level0()
    out = np.zeros(grid.shape, dtype=bool)
    for x, y, w, h, label in read_cells(cells_csv):
        if label != 1:
            continue
        out |= (cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h)
    return out


def truth_from_geojson(path: str | Path, grid: Heatmap, class_name: str = "IDC") -> np.ndarray:
    """IDC truth on the heatmap's grid from a QuPath GeoJSON (level-0 px): a cell is IDC when
    its centre lies in a polygon classified exactly ``class_name`` (the rule of
    :func:`idcmap.output.export.read_geojson_polygons`: unclassified and other classes are not
    IDC)."""
    try:
        polygons = read_geojson_polygons(path, class_name=class_name)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read GeoJSON {path}: {e}") from e
    if not polygons:
        return np.zeros(grid.shape, dtype=bool)
    cx, cy = grid.cell_centres_level0()
    region = shapely.union_all(polygons)
    return shapely.contains_xy(region, cx.ravel(), cy.ravel()).reshape(cx.shape)


def read_truth(path: str | Path, grid: Heatmap) -> np.ndarray:
    """Truth on ``grid`` from a ``*.csv`` (cells.csv) or ``*.geojson`` / ``*.json`` (QuPath)."""
    path = Path(path)
    if path.name.endswith(".csv"):
        return truth_from_cells(path, grid)
    if path.suffix.lower() in (".geojson", ".json"):
        return truth_from_geojson(path, grid)
    raise UsageError(f"unknown truth format {path}; pass a cells.csv or a QuPath .geojson")
