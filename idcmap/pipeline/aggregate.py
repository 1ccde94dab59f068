"""Aggregation stage: the learned context model between the heatmap and the region mask.

One 200-µm patch sees little context, while IDC regions are contiguous over hundreds of µm: the
neighbourhood of a cell carries much of the signal its own tile misses. The aggregator turns the
stitched heatmap (tile probabilities per cell, NaN outside tissue) into a refined IDC
probability per cell from a few multi-scale context features, all measured in µm so that one
aggregator serves every stride:

* ``logit_p`` — the logit of the cell's own probability;
* ``logit_smooth`` — for each sigma, the logit of the tissue-normalised Gaussian mean of the
  probability (non-tissue cells neither count nor pull towards 0);
* ``tissue`` — for each sigma, the Gaussian-weighted tissue fraction (edges, small fragments);
* ``logit_max`` — for each sigma, the logit of the largest probability within ±sigma (a small
  focus next to a cell).

The model is a logistic regression over the standardised features — chosen by cross-validation
over the training mosaics against a small fully convolutional net and a per-cell MLP, which
overfit the 22 mosaics (see MODEL_CARD.md). Its numbers (mean, std, coefficients, bias) live in
the model's safetensors as ``aggregator.*`` tensors and its description in the model JSON's
``aggregator`` section: nothing is unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from idcmap.errors import ModelError, UsageError
from idcmap.pipeline.heatmap import Heatmap

__all__ = [
    "FEATURE_KINDS",
    "KIND",
    "Aggregator",
    "features",
    "fit_aggregator",
]

#: The one aggregator kind this version runs (the JSON's ``aggregator.kind``).
KIND = "multiscale-logistic/1"
#: Feature families an aggregator may use; per-sigma families give one feature per sigma.
FEATURE_KINDS = ("logit_p", "logit_smooth", "tissue", "logit_max")
#: Probabilities are clipped to [EPS, 1 - EPS] before the logit (a tile at exactly 0 or 1).
EPS = 1e-4
#: Prefix of the aggregator's tensors in the model's safetensors.
PREFIX = "aggregator."


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _cell_um(heatmap: Heatmap) -> tuple[float, float]:
    """(height, width) of one cell in µm: the (rows, cols) order of the filters."""
    w, h = heatmap.cell_um
    return h, w


def _feature_maps(
    heatmap: Heatmap, kinds: Sequence[str], sigmas_um: Sequence[float]
) -> Iterator[np.ndarray]:
    """The feature maps (float64 rows×cols), one at a time, in the aggregator's order:
    ``logit_p``, then for each sigma ``logit_smooth``, ``tissue``, ``logit_max`` (those in
    ``kinds``). One at a time so that :meth:`Aggregator.refine` holds a few grids, not F."""
    from scipy import ndimage

    unknown = [k for k in kinds if k not in FEATURE_KINDS]
    if unknown:
        raise ModelError(f"unknown aggregator feature(s) {unknown}; known: {FEATURE_KINDS}")
    if not kinds or (set(kinds) != {"logit_p"} and not sigmas_um):
        raise ModelError("an aggregator needs at least one feature (and sigmas for per-σ ones)")
    prob = np.asarray(heatmap.prob, dtype=np.float64)
    tissue = ~np.isnan(prob)
    p0 = np.where(tissue, prob, 0.0)
    ch_um, cw_um = _cell_um(heatmap)
    if "logit_p" in kinds:
        yield _logit(p0)
    for s_um in sigmas_um:
        sigma = (s_um / ch_um, s_um / cw_um)
        if "logit_smooth" in kinds or "tissue" in kinds:
            den = ndimage.gaussian_filter(tissue.astype(np.float64), sigma, mode="constant")
            if "logit_smooth" in kinds:
                num = ndimage.gaussian_filter(p0, sigma, mode="constant")
                yield _logit(num / np.maximum(den, 1e-12))
            if "tissue" in kinds:
                yield den
        if "logit_max" in kinds:
            size = (2 * max(1, round(sigma[0])) + 1, 2 * max(1, round(sigma[1])) + 1)
            yield _logit(ndimage.maximum_filter(p0, size=size, mode="constant"))


def features(
    heatmap: Heatmap, kinds: Sequence[str], sigmas_um: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The aggregator's features of every cell, float64 rows×cols×F, and the tissue mask.

    Features of non-tissue cells are computed but meaningless (the aggregator returns NaN
    there). Sigmas are in µm, converted to cells per axis, so strides 50, 25, 10... and
    non-square cells get the same physical neighbourhood.
    """
    maps = list(_feature_maps(heatmap, kinds, sigmas_um))
    return np.stack(maps, axis=-1), heatmap.tissue


@dataclass(frozen=True)
class Aggregator:
    """A multi-scale logistic regression over heatmap context features.

    Attributes:
        kinds: feature families, in order (:data:`FEATURE_KINDS`).
        sigmas_um: Gaussian / window scales of the per-sigma families, µm.
        mean, std: standardisation of each feature (from the training cells).
        coef, bias: the logistic regression on the standardised features.
        threshold: region threshold of the refined probability, chosen on validation mosaics.
        training: free-form record (slides, Dice, command).
    """

    kinds: tuple[str, ...]
    sigmas_um: tuple[float, ...]
    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    bias: float
    threshold: float = 0.5
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in FEATURE_KINDS]
        if unknown or len(set(self.kinds)) != len(self.kinds) or not self.kinds:
            raise ModelError(
                f"aggregator features {list(self.kinds)} must be distinct names among "
                f"{list(FEATURE_KINDS)}; re-export the model"
            )
        n = self.n_features
        for name in ("mean", "std", "coef"):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.shape != (n,) or not np.isfinite(v).all():
                raise ModelError(
                    f"aggregator {name} has shape {v.shape} (or non-finite values), expected "
                    f"({n},) for features {list(self.kinds)} × sigmas {list(self.sigmas_um)}; "
                    "re-export the model"
                )
            object.__setattr__(self, name, v)
        if np.any(self.std <= 0):
            raise ModelError("aggregator std must be > 0; re-export the model")
        if not (math.isfinite(self.bias) and 0.0 <= self.threshold <= 1.0):
            raise ModelError("aggregator bias/threshold are not valid numbers; re-export it")
        if any(not (math.isfinite(s) and s > 0) for s in self.sigmas_um):
            raise ModelError(f"aggregator sigmas_um {self.sigmas_um} must be > 0")

    @property
    def kind_name(self) -> str:
        return KIND

    @property
    def n_features(self) -> int:
        per_sigma = sum(k != "logit_p" for k in self.kinds)
        return int("logit_p" in self.kinds) + per_sigma * len(self.sigmas_um)

    def refine(self, heatmap: Heatmap) -> Heatmap:
        """The heatmap with each tissue cell's refined IDC probability (float32; NaN stays
        NaN outside tissue). Deterministic: float64 numpy and scipy filters only."""
        if heatmap.prob.size == 0 or not heatmap.tissue.any():
            return replace(heatmap, prob=np.asarray(heatmap.prob, dtype=np.float32))
        z = np.full(heatmap.shape, self.bias, dtype=np.float64)
        maps = _feature_maps(heatmap, self.kinds, self.sigmas_um)
        for i, f in enumerate(maps):  # streamed: a few grids in memory at any stride
            z += (f - self.mean[i]) * (self.coef[i] / self.std[i])
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))
        return replace(heatmap, prob=np.where(heatmap.tissue, p, np.nan).astype(np.float32))

    # ---- model-file form ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The JSON ``aggregator`` section (the numbers go to the safetensors)."""
        return {
            "kind": KIND,
            "features": list(self.kinds),
            "sigmas_um": [float(s) for s in self.sigmas_um],
            "threshold": float(self.threshold),
            "training": self.training,
        }

    def tensors(self) -> dict[str, Any]:
        """The ``aggregator.*`` tensors (float64) for the model's safetensors."""
        import torch

        return {
            PREFIX + "mean": torch.from_numpy(self.mean.copy()),
            PREFIX + "std": torch.from_numpy(self.std.copy()),
            PREFIX + "coef": torch.from_numpy(self.coef.copy()),
            PREFIX + "bias": torch.tensor([self.bias], dtype=torch.float64),
        }

    @classmethod
    def from_model_file(cls, section: dict[str, Any], tensors: dict[str, Any]) -> Aggregator:
        """Build from the JSON section and the ``aggregator.*`` tensors of a model file."""
        if not isinstance(section, dict) or section.get("kind") != KIND:
            kind = section.get("kind") if isinstance(section, dict) else section
            raise ModelError(
                f"aggregator kind {kind!r} is unknown to this idcmap (expected {KIND!r}); "
                "upgrade idcmap or use aggregator='none'"
            )
        names = ("mean", "std", "coef", "bias")
        missing = [n for n in names if PREFIX + n not in tensors]
        if missing:
            raise ModelError(
                f"the model's weights lack the aggregator tensors {missing}; re-export the model"
            )
        try:
            arr = {n: tensors[PREFIX + n].detach().cpu().double().numpy().ravel() for n in names}
            return cls(
                kinds=tuple(str(k) for k in section["features"]),
                sigmas_um=tuple(float(s) for s in section["sigmas_um"]),
                mean=arr["mean"],
                std=arr["std"],
                coef=arr["coef"],
                bias=float(arr["bias"][0]) if arr["bias"].size == 1 else math.nan,
                threshold=float(section["threshold"]),
                training=dict(section.get("training", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"aggregator section is malformed ({e!r}); re-export it") from e


# ---- training -----------------------------------------------------------------------------------


def fit_aggregator(
    heatmaps: Sequence[Heatmap],
    truths: Sequence[np.ndarray],
    *,
    kinds: Sequence[str] = ("logit_p", "logit_smooth", "logit_max"),
    sigmas_um: Sequence[float] = (200.0, 400.0, 800.0, 1600.0),
    l2: float = 1e-3,
) -> Aggregator:
    """Fit the logistic regression on the tissue cells of ``heatmaps`` against the boolean
    ``truths`` (same shapes). Full-batch L-BFGS in float64 from zeros: deterministic.

    ``l2`` is the penalty on the standardised coefficients (mean loss + l2·|w|²).
    """
    import torch

    if len(heatmaps) != len(truths) or not heatmaps:
        raise UsageError("fit_aggregator needs one truth mask per heatmap, and at least one")
    xs, ys = [], []
    for hm, truth in zip(heatmaps, truths, strict=True):
        if np.shape(truth) != hm.shape:
            raise UsageError(f"truth shape {np.shape(truth)} differs from heatmap {hm.shape}")
        x, tissue = features(hm, kinds, sigmas_um)
        xs.append(x[tissue])
        ys.append(np.asarray(truth, dtype=bool)[tissue])
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    if len(np.unique(y_all)) < 2:
        raise UsageError("the training slides need both IDC and non-IDC tissue cells")
    mean = x_all.mean(0)
    std = x_all.std(0)
    std = np.where(std > 1e-9, std, 1.0)
    xt = torch.from_numpy((x_all - mean) / std)
    yt = torch.from_numpy(y_all.astype(np.float64))
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt)
        loss = loss + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Aggregator(
        kinds=tuple(kinds),
        sigmas_um=tuple(float(s) for s in sigmas_um),
        mean=mean,
        std=std,
        coef=w.detach().numpy().copy(),
        bias=float(b.detach()[0]),
        training={"cells": len(y_all), "idc_cells": int(y_all.sum()), "l2": l2},
    )
