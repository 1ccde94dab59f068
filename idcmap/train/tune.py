"""Grid search of the region stage: the heatmap smoothing (µm) and region threshold that
maximise the pooled Dice on slides with ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idcmap.pipeline.heatmap import smooth
from idcmap.train.cases import slide_heatmaps
from idcmap.train.metrics import dice_from_counts

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
) -> dict[str, Any]:
    """Choose the heatmap smoothing (µm) and region threshold that maximise the pooled Dice on
    slides with ground truth — run it on VALIDATION slides, never on test slides.

    The tiles are evaluated once per slide; every (smoothing, threshold) pair reuses them.
    """
    from idcmap.model.runtime import IDCModel, load_model  # imports torch

    m = model if isinstance(model, IDCModel) else load_model(model, device=device)
    cases = slide_heatmaps(slides, truths, m)
    table = []
    for sigma in smooth_um:
        probs = [(np.nan_to_num(smooth(hm, float(sigma)).prob, nan=0.0), t) for hm, t in cases]
        for thr in thresholds:
            inter = pred = true = 0
            for p, truth in probs:
                mask = p >= thr
                inter += int((mask & truth).sum())
                pred += int(mask.sum())
                true += int(truth.sum())
            dice, _ = dice_from_counts(inter, pred, true)
            table.append({"smooth_um": float(sigma), "threshold": float(thr), "dice": dice})
    best = max(table, key=lambda r: r["dice"])
    return {
        "best": best,
        "table": table,
        "slides": [str(s) for s in slides],
        "model": {"path": str(m.path), "sha256": m.sha256},
    }
