"""Evaluation loops: patch-level classification metrics and slide-level Dice / IoU of IDC masks,
with their printed tables.

Patch level works on folders in the data set's layout (see :mod:`idcmap.train.data`); slide level
on a slide with ground truth (a mosaic's ``cells.csv`` or a QuPath GeoJSON of IDC annotations:
:mod:`idcmap.train.truth`), compared on the heatmap's cell grid. The scores are in
:mod:`idcmap.train.metrics`, the comparison picture in :mod:`idcmap.train.figures` and the
region-stage grid search in :mod:`idcmap.train.tune`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idcmap.errors import UsageError
from idcmap.params import Aggregator, Params
from idcmap.pipeline.heatmap import Heatmap, smooth
from idcmap.train import data
from idcmap.train.cases import pipeline_mask
from idcmap.train.figures import comparison_png
from idcmap.train.metrics import dice_iou, patch_report, pooled_dice_iou
from idcmap.train.truth import read_truth

__all__ = [
    "evaluate_patches",
    "evaluate_slides",
    "format_patch_table",
    "format_slide_table",
    "mosaic_probabilities",
    "slide_prediction",
]

# --------------------------------------------------------------------------------------------
# Patch level
# --------------------------------------------------------------------------------------------


def evaluate_patches(
    data_dirs: Sequence[str | Path],
    model: Any = None,
    patients: Sequence[str] | None = None,
    threshold: float | None = None,
    device: str = "auto",
    batch_size: int = 512,
) -> dict[str, Any]:
    """Predict every patch in ``data_dirs`` (optionally only ``patients``) and report metrics."""
    from idcmap.model.runtime import IDCModel, load_model  # imports torch

    m = model if isinstance(model, IDCModel) else load_model(model, device=device)
    recs = [r for d in data_dirs for r in data.list_patches(d)]
    if patients is not None:
        recs = data.select(recs, patients)
        if not recs:
            raise UsageError("none of the requested patients has patches in the data folders")
    x = data.load_patches(recs)
    p = m.predict(x, batch_size=batch_size)
    y = np.array([r.label for r in recs])
    thr = m.config.tile_threshold if threshold is None else threshold
    rep = patch_report(y, p, [r.patient for r in recs], thr)
    rep["model"] = {"path": str(m.path), "sha256": m.sha256, "version": m.config.version}
    rep["data"] = [str(d) for d in data_dirs]
    return rep


def format_patch_table(rep: dict[str, Any]) -> str:
    """The printed table of :func:`evaluate_patches`: one row per patient, then pooled."""
    cols = (
        "n",
        "n_idc",
        "roc_auc",
        "f1",
        "balanced_accuracy",
        "accuracy",
        "sensitivity",
        "specificity",
    )
    head = f"{'patient':>10} " + " ".join(f"{c[:8]:>8}" for c in cols)
    lines = [head, "-" * len(head)]

    def row(name: str, m: dict[str, Any]) -> str:
        vals = [f"{m[c]:>8d}" if isinstance(m[c], int) else f"{m[c]:>8.3f}" for c in cols]
        return f"{name:>10} " + " ".join(vals)

    lines += [row(k, v) for k, v in rep["per_patient"].items()]
    lines += ["-" * len(head), row("pooled", rep["pooled"])]
    tn, fp = rep["pooled"]["confusion"][0]
    fn, tp = rep["pooled"]["confusion"][1]
    lines.append(
        f"threshold {rep['threshold']:.2f}; confusion [[tn fp] [fn tp]] = [[{tn} {fp}] [{fn} {tp}]]"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Slide level
# --------------------------------------------------------------------------------------------


def mosaic_probabilities(
    slide: str | Path, model: Any, cell: int = 50, batch_size: int = 512
) -> Heatmap:
    """Without the pipeline: predict every ``cell``-px cell of a mosaic at the model's µm/px
    (glass included; edge cells padded); the heatmap has one tile per cell."""
    img = data.read_level0(slide)
    h, w = img.shape[:2]
    rows, cols = math.ceil(h / cell), math.ceil(w / cell)
    tiles = np.stack(
        [
            data.pad_patch(img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell], cell)
            for r in range(rows)
            for c in range(cols)
        ]
    )
    prob = model.predict(tiles, batch_size=batch_size).reshape(rows, cols)
    mpp = float(model.config.mpp)
    return Heatmap(prob, (0.0, 0.0), (float(cell), float(cell)), mpp, mpp, cell, cell)


def slide_prediction(
    slide: str | Path,
    model: Any,
    threshold: float | None,
    use_pipeline: bool = True,
    aggregator: Aggregator = "auto",
) -> tuple[np.ndarray, Heatmap, str]:
    """Predicted IDC mask of a slide on its heatmap grid, via
    :func:`idcmap.pipeline.segment.segment_slide` (``use_pipeline``; ``aggregator`` as
    :attr:`idcmap.params.Params.aggregator`), else by tiling the mosaic directly. Returns
    (mask, raw heatmap, method)."""
    if use_pipeline:
        from idcmap.pipeline.segment import segment_slide  # imports torch

        res = segment_slide(
            slide,
            model=model,
            threshold=threshold,
            progress=False,
            params=Params(aggregator=aggregator),
        )
        stage = res.aggregator
        how = f"aggregator {stage}" if stage != "none" else f"Gaussian {res.smooth_um:g} µm"
        return (
            np.asarray(res.mask, dtype=bool),
            res.heatmap,
            f"idcmap.pipeline.segment.segment_slide ({how})",
        )
    hm = mosaic_probabilities(slide, model)
    thr = model.config.tile_threshold if threshold is None else threshold
    return hm.prob >= thr, hm, "direct mosaic tiling (50-px cells, no smoothing)"


def evaluate_slides(
    slides: Sequence[str | Path],
    truths: Sequence[str | Path],
    model: Any = None,
    threshold: float | None = None,
    device: str = "auto",
    png_dir: str | Path | None = None,
    use_pipeline: bool = True,
    aggregator: Aggregator = "auto",
) -> dict[str, Any]:
    """Dice / IoU of the predicted IDC mask against the truth, per slide and pooled.

    When the model's learned aggregator draws the masks, the same heatmaps are also scored
    with the fixed Gaussian (the model's ``smooth_um`` and ``region_threshold``), reported as
    ``fixed_gaussian``: both region stages from one pass over the tiles.
    """
    from idcmap.model.runtime import IDCModel, load_model  # imports torch

    if len(slides) != len(truths):
        raise UsageError(f"{len(slides)} slides but {len(truths)} truth files; pass one per slide")
    m = model if isinstance(model, IDCModel) else load_model(model, device=device)
    cfg = m.config
    # the pipeline's mask uses the region threshold (of the smoothed heatmap); direct tiling
    # classifies each tile at the tile threshold
    agg = m.aggregator if use_pipeline and aggregator == "auto" else None
    default = cfg.tile_threshold
    if use_pipeline:
        default = agg.threshold if agg is not None else cfg.region_threshold
    thr = default if threshold is None else threshold
    per: dict[str, Any] = {}
    masks: list[tuple[np.ndarray, np.ndarray]] = []
    gauss: list[tuple[np.ndarray, np.ndarray]] = []
    gauss_per: dict[str, float] = {}
    for s, t in zip(slides, truths, strict=True):
        pred, grid, method = slide_prediction(
            s, m, threshold, use_pipeline=use_pipeline, aggregator=aggregator
        )
        truth = read_truth(t, grid)
        masks.append((pred, truth))
        r = dice_iou(pred, truth)
        if agg is not None:
            g_mask = pipeline_mask(smooth(grid, cfg.smooth_um), cfg.region_threshold)
            gauss.append((g_mask, truth))
            gauss_per[Path(s).stem] = dice_iou(g_mask, truth)["dice"]
        r.update(
            {
                "truth": str(t),
                "method": method,
                "grid": list(grid.shape),
                "cell_level0_px": list(grid.cell_level0_px),
            }
        )
        if png_dir is not None:
            png = Path(png_dir) / f"{Path(s).stem}.pred_vs_truth.png"
            comparison_png(
                pred,
                truth,
                png,
                slide=s,
                title=f"{Path(s).stem}: predicted vs truth, Dice {r['dice']:.3f} "
                f"(one square = one heatmap cell)",
            )
            r["png"] = str(png)
        per[Path(s).stem] = r
    pooled = {
        **pooled_dice_iou(masks),
        "mean_dice": float(np.mean([v["dice"] for v in per.values()])),
    }
    smooth_um = cfg.smooth_um if use_pipeline and agg is None else 0.0
    rep: dict[str, Any] = {
        "threshold": thr,
        "smooth_um": smooth_um,
        "aggregator": agg.kind_name if agg is not None else "none",
        "per_slide": per,
        "pooled": pooled,
        "model": {"path": str(m.path), "sha256": m.sha256, "version": m.config.version},
    }
    if agg is not None:
        rep["fixed_gaussian"] = {
            "smooth_um": cfg.smooth_um,
            "threshold": cfg.region_threshold,
            "pooled": pooled_dice_iou(gauss),
            "mean_dice": float(np.mean(list(gauss_per.values()))),
            "per_slide_dice": gauss_per,
        }
    return rep


def format_slide_table(rep: dict[str, Any]) -> str:
    """The printed table of :func:`evaluate_slides`: one row per slide, then pooled."""
    head = f"{'slide':>12} {'dice':>7} {'iou':>7} {'pred':>6} {'truth':>6} {'both':>6}"
    lines = [head, "-" * len(head)]

    def row(name: str, v: dict[str, Any]) -> str:
        return (
            f"{name:>12} {v['dice']:>7.3f} {v['iou']:>7.3f} {v['pred_cells']:>6d} "
            f"{v['truth_cells']:>6d} {v['intersection']:>6d}"
        )

    lines += [row(k, v) for k, v in rep["per_slide"].items()]
    lines += [
        "-" * len(head),
        row("pooled", rep["pooled"]),
        f"mean Dice over slides {rep['pooled']['mean_dice']:.3f}; threshold {rep['threshold']:.2f}"
        + (
            f"; region stage: aggregator {rep['aggregator']}"
            if rep.get("aggregator", "none") != "none"
            else ""
        ),
    ]
    g = rep.get("fixed_gaussian")
    if g:
        lines.append(
            f"same heatmaps, fixed Gaussian {g['smooth_um']:g} µm at {g['threshold']:.2f}: pooled "
            f"Dice {g['pooled']['dice']:.3f}, mean over slides {g['mean_dice']:.3f}"
        )
    return "\n".join(lines)
