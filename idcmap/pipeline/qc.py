"""QC stage: artefacts (ink, folds, blur, debris, scanner borders) and a per-slide verdict.

Sits between the tissue stage and the tiles stage. It works on the tissue stage's thumbnail
(~16 µm/px; 0.06–0.27 s per IDC mosaic on a loaded 2-core CPU, docs/qc.md), except blur,
which a 16-µm thumbnail cannot see: blur is found from per-cell *sharpness* that the tiles
pass computes on the 4-µm blocks it decodes anyway (:class:`SharpnessGrid`, an ``on_block``
hook of :func:`idcmap.infer.predict_grid`), so it is known only after the model ran.

What is done with each kind (:data:`EXCLUDE`, by measurement in ``benchmarks/artefacts.py``):
ink, debris and border are removed from the tissue (not tissue, no tiles, NaN = glass for the
aggregator); folds and blur are reported (area, ``review``) but kept, because removing them
cost Dice where they lay over IDC that the model still finds.

Methods (the classifier trained on artefacts painted onto the training mosaics):

* **ink, fold, debris** — a small per-pixel MLP (numpy forward, weights in
  ``idcmap/model/weights/qc/qc-v1.json``, trained by ``benchmarks/qc_train.py`` on artefacts
  painted by :mod:`idcmap.train.artefacts` onto the 22 training mosaics) over colour features of
  each thumbnail pixel and of its neighbourhood: optical density (OD) per channel, OD chromaticity,
  OD relative to the slide's own tissue median (folds are "more of the same stain"), luminance,
  local contrast. Its probabilities are cleaned with a small opening and a minimum area.
* **border** — near-black (max channel < 40) pixels connected to the image edge.
* **blur** — tissue cells whose sharpness (fine detail ÷ medium detail of the grey image,
  contrast-free) is below ``BLUR_RATIO`` × the slide's 90th percentile of tissue cells.

The verdict (:func:`verdict`) gives the area of each kind (mm², % of tissue), the colour
distance of the slide's tissue from the training data (:data:`REF_OD`), and ``review`` with
its reasons.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from idcmap.params import QC_KINDS as KINDS
from idcmap.params import parse_qc_kinds as parse_kinds
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.regions import mask_to_regions

__all__ = [
    "KINDS",
    "QCMasks",
    "QCVerdict",
    "SharpnessGrid",
    "colour_distance",
    "find_artefacts",
    "find_blur",
    "parse_kinds",
    "pixel_features",
    "verdict",
]

#: classes of the pixel classifier, in its output order
CLASSES = ("clean", "ink", "fold", "debris")

#: Mean tissue optical density (R, G, B) of the 22 training mosaics at 16 µm/px (the mean of the
#: per-mosaic means; tissue mask of :func:`idcmap.pipeline.tissue.tissue_mask_from_rgb`).
#: Computed by ``PYTHONPATH=. python benchmarks/qc_train.py --reference``.
REF_OD = (0.2533, 0.5507, 0.3559)
#: Colour distance (see :func:`colour_distance`) above which a slide gets ``review``. Measured:
#: 0.7–6.8 on the 28 shared mosaics (train and test), 9.8–20.9 on the nine BreaKHis images of
#: ../shared/data/stain-refs (another laboratory), reduced 4:1.
COLOUR_FAR = 8.5

#: A tissue cell is blurred when its sharpness is below this fraction of the slide's 90th
#: percentile of tissue cells (the sharp tissue; a median moves when blur covers half a slide).
#: Measured: clean tissue cells ≥ 0.26 × p90 at their 0.5th percentile (8863, 9035, 9077, 9124);
#: cells under a σ = 10 µm band: median 0.18–0.24 × p90.
BLUR_RATIO = 0.25
#: Kinds removed from the tissue; the others (fold, blur) are reported and flagged only.
#: Measured on the test mosaics with painted artefacts (benchmarks/artefacts.py): excluding
#: folds cost 0.014 pooled Dice and excluding blur bands 0.081 (they lie over IDC the model
#: still finds), while excluding ink gained 0.075 and debris 0.007.
EXCLUDE = frozenset({"ink", "debris", "border"})
#: Review when folds or blur cover more than this fraction of the tissue.
REVIEW_FLAGGED = 0.05
#: Border: max channel below this (0–255) and connected to the image edge.
BORDER_DARK = 40
#: Review when the excluded artefacts cover more than this fraction of the tissue.
REVIEW_EXCLUDED = 0.10
#: Review when blurred tissue lies within this distance (µm) of the IDC mask.
REVIEW_BLUR_NEAR_UM = 400.0
#: Pixel classifier threshold (probability of the artefact class) and minimum piece (mm²).
P_THRESHOLD = {"ink": 0.7, "fold": 0.95, "debris": 0.9}
#: The classifier runs on pixels whose summed optical density is above this.
CANDIDATE_OD = 0.25
MIN_PIECE_MM2 = {"ink": 0.05, "fold": 0.1, "debris": 0.005, "border": 0.02}

_MODEL_PATH = Path(__file__).parents[1] / "model" / "weights" / "qc" / "qc-v1.json"


@dataclass(frozen=True)
class QCMasks:
    """Artefact masks on the tissue thumbnail's grid (bool rows×cols per kind found).

    ``blur`` is absent unless sharpness was given (it lives on the heatmap's cell grid: see
    :class:`SharpnessGrid`; :func:`find_blur` returns it).
    """

    masks: dict[str, np.ndarray]
    mpp: float
    mpp_y: float
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def excluded(self) -> np.ndarray:
        """Union of the masks of the kinds removed from the tissue (:data:`EXCLUDE`)."""
        return self.union(EXCLUDE)

    def union(self, kinds: Iterable[str] | None = None) -> np.ndarray:
        """Union of the masks of ``kinds`` (default: every kind found)."""
        shape = next(iter(self.masks.values())).shape if self.masks else (0, 0)
        out = np.zeros(shape, bool)
        for k, m in self.masks.items():
            if kinds is None or k in kinds:
                out |= m
        return out

    def area_mm2(self, kind: str, within: np.ndarray | None = None) -> float:
        m = self.masks.get(kind)
        if m is None:
            return 0.0
        if within is not None:
            m = m & within
        return float(m.sum()) * self.mpp * self.mpp_y / 1e6


# ---- features and the pixel classifier ---------------------------------------------------------


def _od(rgb: np.ndarray) -> np.ndarray:
    return -np.log((rgb.astype(np.float32) + 1.0) / 256.0)


def pixel_features(
    rgb: np.ndarray, tissue: np.ndarray, where: np.ndarray | None = None
) -> np.ndarray:
    """float32 rows×cols×F colour features of a ~16-µm/px thumbnail (see the module doc), or
    N×F of the N pixels of ``where`` only.

    ``tissue``: the tissue stage's mask; its median OD is the slide's own reference.
    """
    od = _od(rgb)
    r, g, b = od[..., 0], od[..., 1], od[..., 2]
    s = r + g + b  # (axis reductions over a 3-long last axis are slow in numpy)
    inv = 1.0 / np.maximum(s, 1e-3)
    chrom = (r * inv, g * inv, b * inv)
    sample = od[tissue][::7]  # the slide's own tissue: a subsample is enough for a median
    ref = np.median(sample, axis=0) if len(sample) > 50 else np.asarray(REF_OD, np.float32)
    ref_s = float(max(ref.sum(), 0.05))
    c8 = [rgb[..., i] for i in range(3)]
    lum = (c8[0].astype(np.float32) + c8[1] + c8[2]) / 765.0
    mx = np.maximum(np.maximum(c8[0], c8[1]), c8[2]).astype(np.float32) / 255.0
    mn = np.minimum(np.minimum(c8[0], c8[1]), c8[2]).astype(np.float32) / 255.0
    sat = (mx - mn) / np.maximum(mx, 1e-3)
    base = [
        r,
        g,
        b,
        np.log(s + 0.05),
        chrom[0],
        chrom[1],
        chrom[2],
        lum,
        mx,
        sat,
        np.log((s + 0.05) / ref_s),
        chrom[0] - ref[0] / ref_s,
        chrom[2] - ref[2] / ref_s,
    ]
    feats = list(base)
    # neighbourhood (~100 µm): the same maps smoothed on a 2:1 reduction (cheap), and the
    # local contrast of the density (ink and folds are smooth, tissue is textured)
    for f in (base[3], base[4], base[6], base[8], base[10]):
        feats.append(_smooth(f, 3.0))
    ls = base[3]
    m1 = _smooth(ls, 1.5)
    feats.append(np.sqrt(np.maximum(_smooth(ls * ls, 1.5) - m1 * m1, 0)))
    if where is not None:
        out = np.empty((int(where.sum()), len(feats)), np.float32)
        for i, f in enumerate(feats):
            out[:, i] = f[where]
        return out
    return np.stack(feats, -1).astype(np.float32)


def _smooth(f: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian of ``sigma`` px, computed at half resolution and upsampled (nearest)."""
    h, w = f.shape
    if min(h, w) < 8:
        return ndimage.gaussian_filter(f, sigma, mode="nearest")
    f2 = f[: h - h % 2, : w - w % 2]
    small = (f2[0::2, 0::2] + f2[1::2, 0::2] + f2[0::2, 1::2] + f2[1::2, 1::2]) * 0.25
    small = ndimage.gaussian_filter(small, sigma / 2, mode="nearest")
    out = np.empty((h, w), small.dtype)
    hh, ww = 2 * small.shape[0], 2 * small.shape[1]
    for dy in (0, 1):
        for dx in (0, 1):
            out[dy:hh:2, dx:ww:2] = small
    if hh < h:
        out[hh:, :ww] = out[hh - 1 : hh, :ww]
    if ww < w:
        out[:, ww:] = out[:, ww - 1 : ww]
    return out


def _one_blas_thread() -> Any:
    """threadpoolctl's limit to one BLAS thread when it is installed, else nothing."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


@dataclass(frozen=True)
class PixelMLP:
    """A one-hidden-layer MLP over standardised :func:`pixel_features` (numpy forward)."""

    mean: np.ndarray
    std: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    classes: tuple[str, ...]
    training: dict[str, Any]

    def proba(self, x: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """rows×cols×C class probabilities of rows×cols×F features (only at ``where``, if
        given: elsewhere "clean" with probability 1)."""
        sh = x.shape[:-1]
        if where is not None:
            out = np.zeros((*sh, len(self.classes)), np.float32)
            out[..., 0] = 1.0
            if where.any():
                out[where] = self.proba(x[where])
            return out
        # standardisation folded into the first layer: one matmul
        w1 = (self.w1 / self.std[:, None]).astype(np.float32)
        b1 = (self.b1 - (self.mean / self.std) @ self.w1).astype(np.float32)
        with _one_blas_thread():  # these small matmuls only lose to BLAS threads spin-waiting
            h = np.maximum(x.reshape(-1, x.shape[-1]) @ w1 + b1, 0)
            o = h @ self.w2.astype(np.float32) + self.b2.astype(np.float32)
        cols = [o[:, i] for i in range(o.shape[1])]  # softmax column by column (C is small)
        top = cols[0]
        for c in cols[1:]:
            top = np.maximum(top, c)
        e = [np.exp(c - top) for c in cols]
        tot = e[0]
        for c in e[1:]:
            tot = tot + c
        return np.stack([c / tot for c in e], -1).reshape(*sh, -1)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "qc-pixel-mlp/1",
            "classes": list(self.classes),
            "training": self.training,
            **{
                k: np.asarray(getattr(self, k)).round(6).tolist()
                for k in ("mean", "std", "w1", "b1", "w2", "b2")
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PixelMLP:
        arr = {k: np.asarray(d[k], np.float32) for k in ("mean", "std", "w1", "b1", "w2", "b2")}
        return cls(classes=tuple(d["classes"]), training=d.get("training", {}), **arr)


_MODEL: PixelMLP | None = None


def load_pixel_model(path: str | Path | None = None) -> PixelMLP:
    global _MODEL
    if path is None and _MODEL is not None:
        return _MODEL
    m = PixelMLP.from_json(json.loads(Path(path or _MODEL_PATH).read_text()))
    if path is None:
        _MODEL = m
    return m


# ---- the stage ----------------------------------------------------------------------------------


def _clean(mask: np.ndarray, min_px: float, open_r: int = 1) -> np.ndarray:
    if open_r > 0 and mask.any():
        mask = ndimage.binary_opening(mask, structure=np.ones((2 * open_r + 1,) * 2, bool))
    if not mask.any():
        return mask
    lab, _n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel())
    keep = sizes >= max(min_px, 1)
    keep[0] = False
    return keep[lab]


def find_artefacts(
    rgb: np.ndarray,
    mpp: float,
    tissue: np.ndarray,
    *,
    kinds: Iterable[str] | str | None = None,
    mpp_y: float | None = None,
    model: PixelMLP | None = None,
) -> QCMasks:
    """Artefact masks of a low-resolution RGB thumbnail (~16 µm/px) and its tissue mask.

    Args:
        rgb: uint8 rows×cols×3, the tissue stage's thumbnail.
        mpp: µm per thumbnail px (x); ``mpp_y`` along y (default: the same).
        tissue: bool rows×cols, the tissue stage's mask (before QC).
        kinds: which kinds to look for (:func:`parse_kinds`); ``blur`` is ignored here (see
            :func:`find_blur`).

    Returns masks for each asked kind among ink, fold, debris, border. Ink and debris are
    reported wherever they are (on glass too); folds only on tissue.
    """
    import time

    t0 = time.perf_counter()
    want = parse_kinds(kinds)
    mpp_y = mpp_y or mpp
    px_mm2 = mpp * mpp_y / 1e6
    shape = rgb.shape[:2]
    masks: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    if rgb.size == 0:
        return QCMasks({k: np.zeros(shape, bool) for k in want - {"blur"}}, mpp, mpp_y)
    tissue = np.asarray(tissue, bool)
    if "border" in want:
        dark = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) < BORDER_DARK
        lab, n = ndimage.label(dark)
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        keep = np.zeros(n + 1, bool)
        keep[edge] = True
        keep[0] = False
        border = ndimage.binary_dilation(keep[lab], iterations=2)
        masks["border"] = _clean(border, MIN_PIECE_MM2["border"] / px_mm2, 0)
    model_kinds = want & {"ink", "fold", "debris"}
    if model_kinds:
        net = model or load_pixel_model()
        # only where something absorbs light (glass and pale tissue edges are clean)
        c8 = rgb.astype(np.float32)
        od_sum = -np.log((c8[..., 0] + 1) * (c8[..., 1] + 1) * (c8[..., 2] + 1) / 256.0**3)
        cand = od_sum > CANDIDATE_OD
        p = np.zeros((*shape, len(net.classes)), np.float32)
        p[..., 0] = 1.0
        if cand.any():
            p[cand] = net.proba(pixel_features(rgb, tissue, where=cand))
        timings["classifier"] = time.perf_counter() - t0
        other = masks.get("border", np.zeros(shape, bool))
        for kind in ("ink", "fold", "debris"):
            if kind not in model_kinds:
                continue
            pk = p[..., net.classes.index(kind)]
            m = (pk > P_THRESHOLD[kind]) & ~other
            if kind == "fold":
                m &= tissue
            m = _clean(m, MIN_PIECE_MM2[kind] / px_mm2, 1 if kind != "debris" else 0)
            if kind in ("ink", "debris") and m.any():  # the soft, mixed edge of the mark
                grow = ndimage.binary_dilation(m, iterations=2) & (pk > 0.2)
                m = m | grow
            masks[kind] = m
    timings["total"] = time.perf_counter() - t0
    return QCMasks(masks, mpp, mpp_y, timings)


# ---- blur: per-cell sharpness from the tile pass ------------------------------------------------


def block_sharpness(pixels: np.ndarray, cell_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Per ``cell_px`` cell of a 4-µm/px block: (fine detail, medium detail) of its grey image:
    mean |g − B₁(g)| and mean |B₁(g) − B₄(g)| (B_r: PIL box blur of radius r px, fast C).
    Their ratio is the cell's sharpness, free of contrast: a blur of σ ≥ 6 µm removes the fine
    detail far more than the medium one."""
    from PIL import Image, ImageFilter

    # the central half of each cell (4× fewer pixels; the filters barely cross cell seams)
    r, c = pixels.shape[0] // cell_px, pixels.shape[1] // cell_px
    q = cell_px // 4
    win = cell_px - 2 * q
    cells = pixels[: r * cell_px, : c * cell_px].reshape(r, cell_px, c, cell_px, -1)
    centre = cells[:, q : q + win, :, q : q + win].reshape(r * win, c * win, -1)
    img = Image.fromarray(np.ascontiguousarray(centre)).convert("L")
    g = np.asarray(img, np.int16)
    b1i = img.filter(ImageFilter.BoxBlur(1))
    b1 = np.asarray(b1i, np.int16)
    b4 = np.asarray(b1i.filter(ImageFilter.BoxBlur(4)), np.int16)
    fine, med = np.abs(g - b1), np.abs(b1 - b4)

    def pool(a: np.ndarray) -> np.ndarray:
        return a.reshape(r, win, c, win).mean((1, 3), dtype=np.float32)

    return pool(fine), pool(med)


class SharpnessGrid:
    """Per heatmap cell fine/medium detail, filled block by block (an ``on_block`` hook)."""

    def __init__(self, shape: tuple[int, int], stride_px: int, patch_px: int) -> None:
        """``shape``: the tile grid's; the sharpness grid is the heatmap's (one more cell per
        axis per extra cell of a tile)."""
        k = patch_px // stride_px
        self.stride = stride_px
        self.fine = np.full((shape[0] + k - 1, shape[1] + k - 1), np.nan, np.float32)
        self.med = self.fine.copy()

    def add(self, block: Any) -> None:
        f, m = block_sharpness(block.pixels, self.stride)
        r0, c0 = block.row0, block.col0
        hh = min(f.shape[0], self.fine.shape[0] - r0)
        ww = min(f.shape[1], self.fine.shape[1] - c0)
        self.fine[r0 : r0 + hh, c0 : c0 + ww] = f[:hh, :ww]
        self.med[r0 : r0 + hh, c0 : c0 + ww] = m[:hh, :ww]

    @property
    def ratio(self) -> np.ndarray:
        """float32 sharpness on the heatmap's grid (NaN where no block was read)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.fine / np.maximum(self.med, 0.5)


def find_blur(sharpness: np.ndarray, tissue_cells: np.ndarray, *, min_cells: int = 4) -> np.ndarray:
    """bool cells: tissue cells whose sharpness is < :data:`BLUR_RATIO` × the slide's 90th
    percentile of tissue cells, smoothed (3×3 majority) and in pieces of ≥ ``min_cells``."""
    t = tissue_cells & np.isfinite(sharpness)
    if t.sum() < 10:
        return np.zeros(sharpness.shape, bool)
    ref = float(np.percentile(sharpness[t], 90))
    low = t & (sharpness < BLUR_RATIO * ref)
    maj = ndimage.uniform_filter(low.astype(np.float32), 3, mode="constant") >= 0.5
    low = (low | (maj & t)) & maj
    return _clean(low, min_cells, 0)


# ---- verdict ------------------------------------------------------------------------------------


def colour_distance(rgb: np.ndarray, tissue: np.ndarray) -> float:
    """How far the slide's tissue colour is from the training data's: the angle (°) between the
    mean tissue OD vector and :data:`REF_OD`, plus 10 × |log of their magnitude ratio| (NaN
    without tissue). 0 = the training mean (see :data:`COLOUR_FAR`)."""
    if tissue.sum() < 10:
        return math.nan
    m = _od(rgb[tissue]).mean(0)
    r = np.asarray(REF_OD, np.float64)
    nm, nr = float(np.linalg.norm(m)), float(np.linalg.norm(r))
    cos = float(np.dot(m, r)) / max(nm * nr, 1e-9)
    ang = math.degrees(math.acos(min(1.0, max(-1.0, cos))))
    return ang + 10 * abs(math.log(max(nm, 1e-6) / nr))


@dataclass(frozen=True)
class QCVerdict:
    """Per-slide QC verdict (goes into summary.json)."""

    tissue_mm2: float
    excluded_mm2: dict[str, float]
    excluded_pct_of_tissue: dict[str, float]
    colour_distance: float
    review: bool
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tissue_before_qc_mm2": round(self.tissue_mm2, 4),
            "excluded_mm2": {k: round(v, 4) for k, v in self.excluded_mm2.items()},
            "excluded_pct_of_tissue": {
                k: round(v, 2) for k, v in self.excluded_pct_of_tissue.items()
            },
            "colour_distance": None
            if math.isnan(self.colour_distance)
            else round(self.colour_distance, 3),
            "review": self.review,
            "reasons": list(self.reasons),
        }


def verdict(
    qc: QCMasks,
    tissue: np.ndarray,
    rgb: np.ndarray,
    *,
    blur_cells: np.ndarray | None = None,
    cell_mm2: float = 0.04,
    idc_cells: np.ndarray | None = None,
    cell_um: float = 200.0,
) -> QCVerdict:
    """Areas excluded per kind, colour distance and ``review`` + reasons.

    ``tissue`` is the tissue mask before QC (thumbnail grid); ``blur_cells``/``idc_cells``
    (heatmap grid, cells of ``cell_mm2``) add blur's area and the "blur over/near IDC" check.
    Ink/debris/border count where they cover tissue *or* would have been taken for tissue.
    """
    px_mm2 = qc.mpp * qc.mpp_y / 1e6
    tissue_mm2 = float(tissue.sum()) * px_mm2
    area = {
        k: float(m.sum()) * px_mm2 if k != "fold" else float((m & tissue).sum()) * px_mm2
        for k, m in qc.masks.items()
    }
    area_on_tissue = {k: float((m & tissue).sum()) * px_mm2 for k, m in qc.masks.items()}
    if blur_cells is not None:
        area["blur"] = area_on_tissue["blur"] = float(blur_cells.sum()) * cell_mm2
    pct = {k: 100 * v / tissue_mm2 if tissue_mm2 else 0.0 for k, v in area_on_tissue.items()}
    reasons: list[str] = []
    excl_on_tissue = float((qc.excluded & tissue).sum()) * px_mm2
    if "blur" in EXCLUDE:
        excl_on_tissue += area_on_tissue.get("blur", 0.0)
    if tissue_mm2 <= 0:
        reasons.append("no tissue found")
    elif excl_on_tissue > REVIEW_EXCLUDED * tissue_mm2:
        what = ", ".join(f"{k} {v:.1f} %" for k, v in pct.items() if v >= 0.05)
        reasons.append(f"{100 * excl_on_tissue / tissue_mm2:.0f} % of the tissue excluded ({what})")
    if tissue_mm2 > 0 and excl_on_tissue >= 0.98 * tissue_mm2:
        reasons.append("no tissue left after QC")
    for k in sorted(set(pct) - EXCLUDE):
        if pct[k] > 100 * REVIEW_FLAGGED:
            reasons.append(f"{k} over {pct[k]:.0f} % of the tissue (kept, not excluded)")
    if blur_cells is not None and blur_cells.any() and idc_cells is not None and idc_cells.any():
        d = ndimage.distance_transform_edt(~idc_cells) * cell_um
        if (d[blur_cells] <= REVIEW_BLUR_NEAR_UM).any():
            reasons.append("out-of-focus tissue over or near the IDC regions")
    cd = colour_distance(rgb, tissue & ~qc.excluded) if tissue.any() else math.nan
    if not math.isnan(cd) and cd > COLOUR_FAR:
        reasons.append(
            f"tissue colour far from the training data (distance {cd:.1f} > {COLOUR_FAR})"
        )
    return QCVerdict(tissue_mm2, area, pct, cd, bool(reasons), reasons)


def artefact_polygons(
    masks: dict[str, np.ndarray], thumbnail_grid: Heatmap, cell_grid: Heatmap
) -> dict[str, list[Any]]:
    """Outlines of each kind found (shapely polygons in level-0 px, QuPath frame): ``blur``
    on the heatmap's cells (``cell_grid``), the others on the tissue thumbnail's pixels
    (``thumbnail_grid``: a heatmap-shaped description of that grid)."""
    out: dict[str, list[Any]] = {}
    for kind in KINDS:
        m = masks.get(kind)
        if m is None or not m.any():
            continue
        grid = cell_grid if kind == "blur" else thumbnail_grid
        out[kind] = [r.polygon for r in mask_to_regions(m, grid)]
    return out
