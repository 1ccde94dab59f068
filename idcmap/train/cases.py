"""Slides with ground truth as scoring cases for the region stage.

:func:`slide_heatmaps` runs every slide once through the pipeline for its raw (unsmoothed)
heatmap and reads the truth onto that grid; :func:`pooled_mask_dice` scores, at each threshold,
the mask the pipeline itself would draw from a (smoothed or refined) heatmap:
:func:`idcmap.pipeline.regions.idc_mask` with the small-region and hole sizes of
:class:`idcmap.params.Params`. The region tuning (:mod:`idcmap.train.tune`) and the aggregator's
threshold (:mod:`idcmap.train.aggregator`) both go through these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idcmap.errors import UsageError
from idcmap.params import Params
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.regions import idc_mask
from idcmap.train.metrics import dice_from_counts
from idcmap.train.truth import read_truth

__all__ = ["Case", "pipeline_mask", "pooled_mask_dice", "slide_heatmaps"]

#: (heatmap, bool truth on its grid)
Case = tuple[Heatmap, np.ndarray]


def slide_heatmaps(
    slides: Sequence[str | Path],
    truths: Sequence[str | Path],
    model: Any,
    stride_px: int | None = None,
) -> list[Case]:
    """(raw heatmap, truth on its grid) of every slide, through the pipeline (no smoothing, no
    aggregator; ``model`` a loaded :class:`idcmap.model.runtime.IDCModel`)."""
    from idcmap.pipeline.segment import segment_slide  # imports torch

    if len(slides) != len(truths):
        raise UsageError(f"{len(slides)} slides but {len(truths)} truth files; pass one per slide")
    out = []
    for s, t in zip(slides, truths, strict=True):
        res = segment_slide(
            s, model=model, progress=False, params=Params(smooth_um=0.0, stride_px=stride_px)
        )
        out.append((res.heatmap, read_truth(t, res.heatmap)))
    return out


def pipeline_mask(heatmap: Heatmap, threshold: float, params: Params | None = None) -> np.ndarray:
    """The IDC mask the pipeline draws from ``heatmap`` (already smoothed or refined) at
    ``threshold``: small regions removed and small holes filled as ``params`` (default
    :class:`~idcmap.params.Params`) says."""
    p = Params() if params is None else params
    return idc_mask(
        heatmap, threshold, min_region_um2=p.min_region_um2, min_hole_um2=p.min_hole_um2
    )


def pooled_mask_dice(
    cases: Sequence[Case], thresholds: Sequence[float], params: Params | None = None
) -> list[float]:
    """Pooled Dice over ``cases`` of :func:`pipeline_mask` at each threshold."""
    out = []
    for thr in thresholds:
        inter = pred = true = 0
        for hm, truth in cases:
            mask = pipeline_mask(hm, float(thr), params)
            inter += int((mask & truth).sum())
            pred += int(mask.sum())
            true += int(truth.sum())
        out.append(dice_from_counts(inter, pred, true)[0])
    return out
