"""The ``summary.json`` of one slide: what was read, with which model and knobs, what was found.

:func:`build_summary` is the one place that decides its keys; :func:`idcmap.pipeline.segment.segment_slide`
calls it with the pipeline's pieces. Keys (units in the names): ``idcmap_version``, ``slide``
(:meth:`SlideInfo.to_dict` plus the level read), ``model``, ``parameters`` (every
:class:`~idcmap.pipeline.segment.Params` field, with the model's defaults resolved, plus ``tile_threshold``),
``coordinates``, ``tissue_from``, ``tissue_area_mm2``, ``idc_area_mm2``,
``idc_fraction_of_tissue``, ``regions`` (count), ``measurements`` (grading measurements of the
drawn regions, per slide and per region: :func:`idcmap.pipeline.measure.measurements_summary`), ``tiles``
and ``timings_s``. ``idc_area_mm2`` counts the mask's heatmap cells; ``measurements.idc_area_mm2``
sums the drawn polygons (with smooth outlines they differ by a few per cent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from idcmap import __version__
from idcmap.io.slide import SlideInfo
from idcmap.model.runtime import IDCModel
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.infer import InferenceStats
from idcmap.pipeline.measure import measurements_summary
from idcmap.pipeline.regions import Region
from idcmap.pipeline.tiles import TileGrid

#: Frame of every coordinate in the outputs.
COORDINATES = "level-0 px relative to the slide bounds origin (QuPath's frame)"


def build_summary(
    *,
    info: SlideInfo,
    model: IDCModel,
    parameters: Mapping[str, Any],
    heatmap: Heatmap,
    mask: np.ndarray,
    regions: Sequence[Region],
    grid: TileGrid,
    stats: InferenceStats,
    tissue_from_tiles: bool,
    timings_s: Mapping[str, float],
) -> dict[str, Any]:
    """The summary dict of one slide (JSON-ready once NaN are nulled by ``write_json``).

    Args:
        info: the slide as read.
        model: the model used (its config, path and device are recorded).
        parameters: the run's parameters with the model's defaults resolved.
        heatmap: the stitched heatmap (its tissue cells give the tissue area).
        mask: the IDC mask on the heatmap grid (its cells give the IDC area).
        regions: the IDC regions (counted).
        grid: the tile grid (its shape).
        stats: inference statistics (level read, tiles, blocks, busy times).
        tissue_from_tiles: the tissue mask came from the tile pass (no coarser level).
        timings_s: wall time per stage, seconds.
    """
    cfg = model.config
    tissue_mm2 = float(heatmap.tissue.sum() * heatmap.cell_area_um2 / 1e6)
    idc_mm2 = float(np.count_nonzero(mask) * heatmap.cell_area_um2 / 1e6)
    return {
        "idcmap_version": __version__,
        "slide": {**info.to_dict(), "level_read": stats.level, "level_read_mpp": stats.level_mpp},
        "model": {
            "name": cfg.name,
            "version": cfg.version,
            "architecture": cfg.architecture,
            "sha256": cfg.weights_sha256,
            "path": str(model.path) if model.path else None,
            "mpp": cfg.mpp,
            "patch_px": cfg.patch_px,
            "device": str(model.device),
        },
        "parameters": dict(parameters),
        "coordinates": COORDINATES,
        "tissue_from": (
            "the tile pass (no coarser level)" if tissue_from_tiles else "a low-resolution read"
        ),
        "tissue_area_mm2": round(tissue_mm2, 4),
        "idc_area_mm2": round(idc_mm2, 4),
        "idc_fraction_of_tissue": round(idc_mm2 / tissue_mm2, 4) if tissue_mm2 > 0 else 0.0,
        "regions": len(regions),
        "measurements": measurements_summary(
            [r.polygon for r in regions], tissue_mm2, info.mpp, info.mpp_y
        )[1],
        "tiles": {
            "evaluated": stats.tiles,
            "grid": list(grid.shape),
            "blocks": stats.blocks,
            "dense_blocks": stats.dense_blocks,
        },
        "timings_s": {
            **{k: round(v, 4) for k, v in timings_s.items()},
            "read_busy": round(stats.read_s, 4),
            "resize_busy": round(stats.resize_s, 4),
            "model": round(stats.model_s, 4),
            "model_waited_for_pixels": round(stats.wait_s, 4),
        },
    }
