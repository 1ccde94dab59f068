"""Scores: patch-level classification metrics and the Dice / IoU of IDC masks.

Pure NumPy on arrays already in memory; nothing here reads files or runs a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from idcmap.errors import UsageError

__all__ = [
    "best_threshold",
    "binary_metrics",
    "dice_from_counts",
    "dice_iou",
    "patch_report",
    "pooled_dice_iou",
    "roc_auc",
]


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties averaged); NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy.stats import rankdata  # scipy.stats is slow to import; only AUC needs it

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


def dice_from_counts(intersection: int, pred: int, truth: int) -> tuple[float, float]:
    """(Dice, IoU) from cell counts: both masks empty counts as perfect agreement (1.0)."""
    union = pred + truth - intersection
    dice = 2 * intersection / (pred + truth) if pred + truth else 1.0
    return dice, (intersection / union if union else 1.0)


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Dice and IoU of two boolean masks of the same shape (1.0 when both are empty), with the
    cell counts (``intersection``, ``pred_cells``, ``truth_cells``) that pool over slides."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    inter = int((pred & truth).sum())
    p, t = int(pred.sum()), int(truth.sum())
    dice, iou = dice_from_counts(inter, p, t)
    return {"dice": dice, "iou": iou, "intersection": inter, "pred_cells": p, "truth_cells": t}


def pooled_dice_iou(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """:func:`dice_iou` pooled over (pred, truth) mask pairs: counts summed, then one Dice."""
    tot = {"intersection": 0, "pred_cells": 0, "truth_cells": 0}
    for pred, truth in pairs:
        r = dice_iou(pred, truth)
        for k in tot:
            tot[k] += r[k]
    dice, iou = dice_from_counts(tot["intersection"], tot["pred_cells"], tot["truth_cells"])
    return {**tot, "dice": dice, "iou": iou}
