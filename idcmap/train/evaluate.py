"""Evaluation: patch-level classification metrics and slide-level Dice / IoU of IDC masks.

Patch level works on folders in the data set's layout (see :mod:`idcmap.train.data`); slide level on a
slide with ground truth (a mosaic's ``cells.csv`` or a QuPath GeoJSON of IDC annotations),
compared on the heatmap's cell grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from idcmap.errors import UsageError
from idcmap.output.export import write_json
from idcmap.pipeline.heatmap import Heatmap

__all__ = [
    "binary_metrics",
    "dice_from_counts",
    "dice_iou",
    "evaluate_patches",
    "evaluate_slides",
    "read_truth",
    "truth_from_cells",
    "truth_from_geojson",
    "tune_regions",
    "write_json",
]

# --------------------------------------------------------------------------------------------
# Patch level
# --------------------------------------------------------------------------------------------


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties averaged); NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(p, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """Metrics of IDC probabilities ``p`` against labels ``y`` (1 = IDC) at ``threshold``.

    Returns n, n_idc, roc_auc, f1 (of IDC), balanced_accuracy, accuracy, sensitivity,
    specificity, precision and the confusion matrix ``[[tn, fp], [fn, tp]]``.
    """
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p) >= threshold
    tp = int((pred & y).sum())
    tn = int((~pred & ~y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    prec = _ratio(tp, tp + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    bac = (sens + spec) / 2 if not (math.isnan(sens) or math.isnan(spec)) else math.nan
    return {
        "n": len(y),
        "n_idc": int(y.sum()),
        "threshold": float(threshold),
        "roc_auc": roc_auc(y, p),
        "f1": f1,
        "balanced_accuracy": bac,
        "accuracy": _ratio(tp + tn, len(y)),
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "confusion": [[tn, fp], [fn, tp]],
    }


def best_threshold(y: np.ndarray, p: np.ndarray, criterion: str = "f1") -> float:
    """The threshold in [0.05, 0.95] (step 0.01) maximising ``criterion`` (f1 or
    balanced_accuracy) of ``p`` against ``y``."""
    if criterion not in ("f1", "balanced_accuracy"):
        raise UsageError(f"unknown threshold criterion {criterion!r}; use f1 or balanced_accuracy")
    best_t, best_v = 0.5, -1.0
    for t in np.round(np.arange(0.05, 0.951, 0.01), 2):
        v = binary_metrics(y, p, float(t))[criterion]
        if not math.isnan(v) and v > best_v:
            best_t, best_v = float(t), v
    return best_t


def patch_report(
    y: np.ndarray, p: np.ndarray, patients: Sequence[str], threshold: float
) -> dict[str, Any]:
    """Pooled metrics plus one entry per patient."""
    patients_arr = np.asarray(patients)
    per = {}
    for pt in sorted(set(patients_arr.tolist()), key=lambda s: (len(s), s)):
        m = patients_arr == pt
        per[pt] = binary_metrics(y[m], p[m], threshold)
    return {"threshold": threshold, "pooled": binary_metrics(y, p, threshold), "per_patient": per}


def evaluate_patches(
    data_dirs: Sequence[str | Path],
    model: Any = None,
    patients: Sequence[str] | None = None,
    threshold: float | None = None,
    device: str = "auto",
    batch_size: int = 512,
) -> dict[str, Any]:
    """Predict every patch in ``data_dirs`` (optionally only ``patients``) and report metrics."""
    from idcmap.model.runtime import IDCModel, load_model
    from idcmap.train import data

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


def dice_from_counts(intersection: int, pred: int, truth: int) -> tuple[float, float]:
    """(Dice, IoU) from cell counts: both masks empty counts as perfect agreement (1.0)."""
    union = pred + truth - intersection
    dice = 2 * intersection / (pred + truth) if pred + truth else 1.0
    return dice, (intersection / union if union else 1.0)


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Dice and IoU of two boolean masks of the same shape (1.0 when both are empty)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    inter = int((pred & truth).sum())
    p, t = int(pred.sum()), int(truth.sum())
    dice, iou = dice_from_counts(inter, p, t)
    return {"dice": dice, "iou": iou, "intersection": inter, "pred_cells": p, "truth_cells": t}


def truth_from_cells(cells_csv: str | Path, grid: Heatmap) -> np.ndarray:
    """IDC truth on the heatmap's grid: a cell is IDC when its centre lies in a ``cells.csv``
    cell labelled 1 (cells absent from the file — glass — are not IDC)."""
    from idcmap.train.data import read_cells

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
    :func:`idcmap.output.export.read_geojson_polygons`: unclassified and other classes are not IDC)."""
    import shapely

    from idcmap.output.export import read_geojson_polygons

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
    path = Path(path)
    if path.name.endswith(".csv"):
        return truth_from_cells(path, grid)
    if path.suffix.lower() in (".geojson", ".json"):
        return truth_from_geojson(path, grid)
    raise UsageError(f"unknown truth format {path}; pass a cells.csv or a QuPath .geojson")


def mosaic_probabilities(
    slide: str | Path, model: Any, cell: int = 50, batch_size: int = 512
) -> Heatmap:
    """Without the pipeline: predict every ``cell``-px cell of a mosaic at the model's µm/px
    (glass included; edge cells padded); the heatmap has one tile per cell."""
    from idcmap.train.data import pad_patch, read_level0

    img = read_level0(slide)
    h, w = img.shape[:2]
    rows, cols = math.ceil(h / cell), math.ceil(w / cell)
    tiles = np.stack(
        [
            pad_patch(img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell], cell)
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
    aggregator: str = "auto",
) -> tuple[np.ndarray, Heatmap, str]:
    """Predicted IDC mask of a slide on its heatmap grid, via :func:`idcmap.pipeline.segment.segment_slide`
    (``use_pipeline``; ``aggregator`` as :attr:`idcmap.params.Params.aggregator`), else by
    tiling the mosaic directly. Returns (mask, raw heatmap, method)."""
    if use_pipeline:
        from idcmap.params import Params
        from idcmap.pipeline.segment import segment_slide

        res = segment_slide(
            slide,
            model=model,
            threshold=threshold,
            progress=False,
            params=Params(aggregator=aggregator),
        )
        stage = res.summary["parameters"].get("aggregator", "none")
        how = (
            f"aggregator {stage}"
            if stage != "none"
            else f"Gaussian {res.summary['parameters']['smooth_um']:g} µm"
        )
        return (
            np.asarray(res.mask, dtype=bool),
            res.heatmap,
            f"idcmap.pipeline.segment.segment_slide ({how})",
        )
    hm = mosaic_probabilities(slide, model)
    thr = model.config.tile_threshold if threshold is None else threshold
    return hm.prob >= thr, hm, "direct mosaic tiling (50-px cells, no smoothing)"


#: colours of the comparison picture: both IDC, predicted only, truth only
TP_COLOR = (0, 170, 0)
FP_COLOR = (220, 30, 30)
FN_COLOR = (30, 80, 230)


def comparison_png(
    pred: np.ndarray,
    truth: np.ndarray,
    out: str | Path,
    slide: str | Path | None = None,
    scale: int | None = None,
    title: str | None = None,
) -> None:
    """A PNG of the cell grid: green = both IDC (TP), red = predicted only (FP), blue = truth
    only (FN), over a grey thumbnail of the slide when it can be read, with a legend below.

    ``scale`` is the picture px per cell (default: enough for a ~1000-px long side, 2–32).
    """
    from PIL import Image

    from idcmap.output.render import legend_panel

    rows, cols = pred.shape
    if scale is None:
        scale = int(np.clip(math.ceil(1000 / max(rows, cols, 1)), 2, 32))
    base = np.full((rows * scale, cols * scale, 3), 235, dtype=np.uint8)
    if slide is not None:
        try:
            import tiffslide

            with tiffslide.TiffSlide(str(slide)) as s:
                th = np.asarray(s.get_thumbnail((cols * scale, rows * scale)).convert("L"))
            gh, gw = min(th.shape[0], base.shape[0]), min(th.shape[1], base.shape[1])
            base[:gh, :gw] = (th[:gh, :gw, None] * 0.6 + 100).clip(0, 255).astype(np.uint8)
        except Exception:  # the PNG is still useful without a background
            pass
    col = np.zeros((rows, cols, 4), dtype=np.float32)
    col[pred & truth] = (*TP_COLOR, 0.65)
    col[pred & ~truth] = (*FP_COLOR, 0.65)
    col[~pred & truth] = (*FN_COLOR, 0.65)
    col = col.repeat(scale, 0).repeat(scale, 1)
    a = col[..., 3:]
    img = Image.fromarray((base * (1 - a) + col[..., :3] * a).astype(np.uint8))
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    legend = legend_panel(
        max(img.width, 480),
        [
            (TP_COLOR, f"IDC in both (true positive, {tp} cells)"),
            (FP_COLOR, f"predicted only (false positive, {fp})"),
            (FN_COLOR, f"truth only (false negative, {fn})"),
            ((235, 235, 235), "neither"),
        ],
        title=title,
    )
    canvas = Image.new("RGB", (max(img.width, legend.width), img.height + legend.height), "white")
    canvas.paste(legend, (0, 0))
    canvas.paste(img, (0, legend.height))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def evaluate_slides(
    slides: Sequence[str | Path],
    truths: Sequence[str | Path],
    model: Any = None,
    threshold: float | None = None,
    device: str = "auto",
    png_dir: str | Path | None = None,
    use_pipeline: bool = True,
    aggregator: str = "auto",
) -> dict[str, Any]:
    """Dice / IoU of the predicted IDC mask against the truth, per slide and pooled.

    When the model's learned aggregator draws the masks, the same heatmaps are also scored
    with the fixed Gaussian (the model's ``smooth_um`` and ``region_threshold``), reported as
    ``fixed_gaussian``: both region stages from one pass over the tiles.
    """
    from idcmap.model.runtime import IDCModel, load_model
    from idcmap.pipeline.heatmap import smooth
    from idcmap.pipeline.regions import idc_mask

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
    tot = {"intersection": 0, "pred_cells": 0, "truth_cells": 0}
    gauss = {"intersection": 0, "pred_cells": 0, "truth_cells": 0}
    gauss_per: dict[str, float] = {}
    for s, t in zip(slides, truths, strict=True):
        pred, grid, method = slide_prediction(
            s, m, threshold, use_pipeline=use_pipeline, aggregator=aggregator
        )
        truth = read_truth(t, grid)
        r = dice_iou(pred, truth)
        if agg is not None:
            g = dice_iou(idc_mask(smooth(grid, cfg.smooth_um), cfg.region_threshold), truth)
            gauss_per[Path(s).stem] = g["dice"]
            for k in gauss:
                gauss[k] += g[k]
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
        for k in tot:
            tot[k] += r[k]
    dice, iou = dice_from_counts(tot["intersection"], tot["pred_cells"], tot["truth_cells"])
    pooled = {
        **tot,
        "dice": dice,
        "iou": iou,
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
        g_dice, g_iou = dice_from_counts(
            gauss["intersection"], gauss["pred_cells"], gauss["truth_cells"]
        )
        rep["fixed_gaussian"] = {
            "smooth_um": cfg.smooth_um,
            "threshold": cfg.region_threshold,
            "pooled": {**gauss, "dice": g_dice, "iou": g_iou},
            "mean_dice": float(np.mean(list(gauss_per.values()))),
            "per_slide_dice": gauss_per,
        }
    return rep


def tune_regions(
    slides: Sequence[str | Path],
    truths: Sequence[str | Path],
    model: Any = None,
    *,
    smooth_um: Sequence[float] = (0, 100, 150, 200, 250, 300, 400),
    thresholds: Sequence[float] = tuple(np.round(np.arange(0.40, 0.905, 0.02), 2)),
    device: str = "auto",
) -> dict[str, Any]:
    """Choose the heatmap smoothing (µm) and region threshold that maximise the pooled Dice on
    slides with ground truth — run it on VALIDATION slides, never on test slides.

    The tiles are evaluated once per slide; every (smoothing, threshold) pair reuses them.
    """
    from idcmap.model.runtime import IDCModel, load_model
    from idcmap.params import Params
    from idcmap.pipeline.heatmap import smooth
    from idcmap.pipeline.segment import segment_slide

    m = model if isinstance(model, IDCModel) else load_model(model, device=device)
    cases = []
    for s, t in zip(slides, truths, strict=True):
        res = segment_slide(s, model=m, progress=False, params=Params(smooth_um=0.0))
        cases.append((res.heatmap, read_truth(t, res.heatmap)))
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


def format_slide_table(rep: dict[str, Any]) -> str:
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
