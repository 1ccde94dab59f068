"""Grid search of the region stage: the heatmap smoothing (µm) and region threshold that
maximise the pooled Dice on slides with ground truth, scored on the mask the pipeline draws
(:func:`idcmap.train.cases.pipeline_mask`), not on the raw ``p >= threshold``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idcmap.params import Params
from idcmap.pipeline.heatmap import smooth
from idcmap.train.cases import pooled_mask_dice, slide_heatmaps

__all__ = ["SMOOTH_UM", "THRESHOLDS", "tune_regions"]

#: smoothing (µm) and region thresholds tried by default
SMOOTH_UM: tuple[float, ...] = (0, 100, 150, 200, 250, 300, 400)
THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.40, 0.905, 0.02), 2))


def tune_regions(
    slides: Sequence[str | Path],
    truths: Sequence[str | Path],
    model: Any = None,
    *,
    smooth_um: Sequence[float] = SMOOTH_UM,
    thresholds: Sequence[float] = THRESHOLDS,
    device: str = "auto",
    params: Params | None = None,
) -> dict[str, Any]:
    """Choose the heatmap smoothing (µm) and region threshold that maximise the pooled Dice on
    slides with ground truth — run it on VALIDATION slides, never on test slides.

    The tiles are evaluated once per slide; every (smoothing, threshold) pair reuses them. Each
    pair is scored on the pipeline's cleaned mask (small regions removed, small holes filled as
    ``params``, default :class:`~idcmap.params.Params`, says).
    """
    from idcmap.model.runtime import IDCModel, load_model  # imports torch

    m = model if isinstance(model, IDCModel) else load_model(model, device=device)
    cases = slide_heatmaps(slides, truths, m)
    table = []
    for sigma in smooth_um:
        smoothed = [(smooth(hm, float(sigma)), truth) for hm, truth in cases]
        dice = pooled_mask_dice(smoothed, thresholds, params)
        table += [
            {"smooth_um": float(sigma), "threshold": float(thr), "dice": d}
            for thr, d in zip(thresholds, dice, strict=True)
        ]
    best = max(table, key=lambda r: r["dice"])
    return {
        "best": best,
        "table": table,
        "slides": [str(s) for s in slides],
        "model": {"path": str(m.path), "sha256": m.sha256},
    }
