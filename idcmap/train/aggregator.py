"""Training of the learned aggregation stage (:mod:`idcmap.pipeline.aggregate`) on whole-slide
mosaics.

The patch network is frozen: every slide goes through the pipeline once (tissue, tiles, model,
stitched heatmap), the logistic regression is fitted on the tissue cells of the *training*
slides, and the region threshold of its output is the one that maximises the pooled Dice of the
cleaned masks (:func:`idcmap.train.cases.pipeline_mask`: the pipeline's own mask) on the
*validation* slides. The result is a new model file: the same network weights plus
``aggregator.*`` tensors in the safetensors, and the ``aggregator`` section in the JSON.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idcmap.errors import UsageError
from idcmap.model.modelfile import ModelConfig, save_model
from idcmap.pipeline.aggregate import FEATURE_KINDS, Aggregator, fit_aggregator
from idcmap.train.cases import Case, pooled_mask_dice, slide_heatmaps

#: Region thresholds tried on the validation slides.
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.20, 0.905, 0.02), 2))


def _refined(agg: Aggregator, cases: Sequence[Case]) -> list[Case]:
    return [(agg.refine(hm), truth) for hm, truth in cases]


def train_aggregator(
    train_slides: Sequence[str | Path],
    train_truths: Sequence[str | Path],
    valid_slides: Sequence[str | Path],
    valid_truths: Sequence[str | Path],
    out: str | Path,
    *,
    model: Any = None,
    kinds: Sequence[str] = ("logit_p", "logit_smooth", "logit_max"),
    sigmas_um: Sequence[float] = (200.0, 400.0, 800.0, 1600.0),
    l2: float = 1e-3,
    stride_px: int | None = None,
    device: str = "auto",
    name: str | None = None,
    version: str | None = None,
    command: str | None = None,
    log: Callable[[str], Any] = print,
) -> ModelConfig:
    """Fit the aggregator of ``model`` (a path, a loaded model or ``None``: the bundled one) on
    the training slides, choose its threshold on the validation slides and write the model
    with it to ``out`` (.json + .safetensors). Returns the config as written."""
    from idcmap.model.runtime import IDCModel, load_model

    if not train_slides or not valid_slides:
        raise UsageError("train_aggregator needs training and validation slides")
    bad = [k for k in kinds if k not in FEATURE_KINDS]
    if bad or not kinds or len(set(kinds)) != len(kinds):
        raise UsageError(f"kinds={list(kinds)}: use distinct names among {list(FEATURE_KINDS)}")
    if not sigmas_um or any(not (s > 0) for s in sigmas_um):
        raise UsageError(f"sigmas_um={list(sigmas_um)} must be µm > 0")
    t0 = time.perf_counter()
    m = model if isinstance(model, IDCModel) else load_model(model, device=device)
    train = slide_heatmaps(train_slides, train_truths, m, stride_px)
    valid = slide_heatmaps(valid_slides, valid_truths, m, stride_px)
    log(f"heatmaps of {len(train)} + {len(valid)} slides in {time.perf_counter() - t0:.1f} s")
    agg = fit_aggregator(
        [h for h, _ in train], [t for _, t in train], kinds=kinds, sigmas_um=sigmas_um, l2=l2
    )
    dice = pooled_mask_dice(_refined(agg, valid), THRESHOLDS)
    best = int(np.argmax(dice))
    thr = THRESHOLDS[best]
    train_dice = pooled_mask_dice(_refined(agg, train), [thr])[0]
    log(
        f"aggregator: threshold {thr:.2f} (validation pooled Dice {dice[best]:.4f}; "
        f"training {train_dice:.4f})"
    )
    record = {
        **agg.training,
        "train_slides": [Path(s).stem for s in train_slides],
        "valid_slides": [Path(s).stem for s in valid_slides],
        "threshold_criterion": "max pooled Dice of the cleaned masks on the validation slides",
        "valid_pooled_dice": round(dice[best], 4),
        "train_pooled_dice": round(train_dice, 4),
        "stride_px": stride_px or m.config.patch_px,
        "base_model_sha256": m.config.weights_sha256,
        "seconds": round(time.perf_counter() - t0, 1),
        "command": command,
    }
    agg = dataclasses.replace(agg, threshold=thr, training=record)
    cfg = m.config.replace(
        name=name or m.config.name,
        version=version or m.config.version,
        aggregator=agg.config(),
    )
    return save_model(m.net, cfg, out, extra_tensors=agg.tensors())
