"""Training of the learned aggregation stage (:mod:`idcmap.pipeline.aggregate`) on whole-slide
mosaics.

The patch network is frozen: every slide goes through the pipeline once (tissue, tiles, model,
stitched heatmap), the logistic regression is fitted on the tissue cells of the *training*
slides, and the region threshold of its output is the one that maximises the pooled Dice of the
cleaned masks (:func:`idcmap.pipeline.regions.idc_mask`, the pipeline's defaults) on the
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
from idcmap.pipeline.heatmap import Heatmap
from idcmap.train.truth import read_truth

#: Region thresholds tried on the validation slides.
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.20, 0.905, 0.02), 2))


def slide_heatmaps(
    slides: Sequence[str | Path],
    truths: Sequence[str | Path],
    model: Any,
    stride_px: int | None = None,
) -> list[tuple[Heatmap, np.ndarray]]:
    """(raw heatmap, truth on its grid) of every slide, through the pipeline."""
    from idcmap.params import Params
    from idcmap.pipeline.segment import segment_slide

    if len(slides) != len(truths):
        raise UsageError(f"{len(slides)} slides but {len(truths)} truth files; pass one per slide")
    out = []
    for s, t in zip(slides, truths, strict=True):
        res = segment_slide(
            s, model=model, progress=False, params=Params(smooth_um=0.0, stride_px=stride_px)
        )
        out.append((res.heatmap, read_truth(t, res.heatmap)))
    return out


def pooled_dice(
    agg: Aggregator,
    cases: Sequence[tuple[Heatmap, np.ndarray]],
    thresholds: Sequence[float] = THRESHOLDS,
) -> list[float]:
    """Pooled Dice of the cleaned region masks at each threshold (refined once per slide)."""
    from idcmap.params import Params
    from idcmap.pipeline.regions import idc_mask

    d = Params()
    refined = [(agg.refine(hm), truth) for hm, truth in cases]
    out = []
    for thr in thresholds:
        inter = pred = true = 0
        for hm, truth in refined:
            mask = idc_mask(hm, thr, min_region_um2=d.min_region_um2, min_hole_um2=d.min_hole_um2)
            inter += int((mask & truth).sum())
            pred += int(mask.sum())
            true += int(truth.sum())
        out.append(2 * inter / (pred + true) if pred + true else 1.0)
    return out


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
    dice = pooled_dice(agg, valid)
    best = int(np.argmax(dice))
    thr = THRESHOLDS[best]
    train_dice = pooled_dice(agg, train, [thr])[0]
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
