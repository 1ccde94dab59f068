"""QC stage: artefacts (ink, folds, blur, debris, scanner borders) and a per-slide verdict.

Sits between the tissue stage and the tiles stage. It works on the tissue stage's thumbnail
(~16 µm/px; timings in docs/qc.md), its glass first brought to the training mosaics' glass
(:data:`REF_GLASS_OD`: a scanner's white balance is a gain per channel, and the classifier
would take a tinted slide's tissue for ink), except blur,
which a 16-µm thumbnail cannot see: blur is found from per-cell *sharpness* that the tiles
pass computes on the 4-µm blocks it decodes anyway (:class:`SharpnessGrid`, an ``on_block``
hook of :func:`idcmap.infer.predict_grid`), so it is known only after the model ran.

What is done with each kind (:data:`EXCLUDE`, by measurement in ``benchmarks/artefacts.py``):
debris, border and ink on glass are removed from the tissue (not tissue, no tiles, NaN = glass
for the aggregator); ink over tissue stays tissue — its optical density is taken off the
pixels before the network sees them, and where ink is left after that, its cells get the
probability of the tissue around them (:mod:`idcmap.pipeline.ink`, :mod:`~.inkfield`); folds
and blur are reported (area, ``review``) but kept, because removing them cost Dice where they
lay over IDC that the model still finds.

Methods (the classifier trained on artefacts painted onto the training mosaics):

* **ink, fold, debris** — a small per-pixel MLP (:mod:`idcmap.pipeline.qcpixel`, weights in
  ``idcmap/model/weights/qc/qc-v2.json``, trained by ``benchmarks/qc_train.py`` on artefacts
  painted by :mod:`idcmap.train.artefacts` onto the 19 training mosaics) over colour features
  of each thumbnail pixel and of its neighbourhood. Its probabilities are cleaned with a small
  opening and a minimum area; ink grows by hysteresis into the paler parts of a mark.
* **border** — near-black (max channel < 40) pixels connected to the image edge.
* **blur** — tissue cells whose sharpness (fine detail ÷ medium detail of the grey image,
  contrast-free) is below ``BLUR_RATIO`` × the slide's 90th percentile of tissue cells
  (:mod:`idcmap.pipeline.qcblur`).

The verdict (:func:`verdict`) gives the area of each kind (mm², % of tissue), the colour
distance of the slide's tissue from the training data (:data:`REF_OD`), and ``review`` with
its reasons.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from idcmap.params import QC_KINDS as KINDS
from idcmap.params import parse_qc_kinds as parse_kinds
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.ink import (
    InkResult,
    glass_rim,
    ink_over_tissue,
    remove_ink,
    soft_field,
)
from idcmap.pipeline.inkfield import ink_field
from idcmap.pipeline.qcblur import SharpnessGrid, block_sharpness, find_blur
from idcmap.pipeline.qcpixel import (
    REF_GLASS_OD,
    REF_OD,
    PixelMLP,
    load_pixel_model,
    optical_density,
    pixel_features,
    tissue_reference_rgb,
)
from idcmap.pipeline.regions import mask_to_regions
from idcmap.pipeline.stain import balance_glass, glass_od
from idcmap.pipeline.tissue import tissue_mask_from_rgb

__all__ = [
    "KINDS",
    "QCMasks",
    "QCVerdict",
    "SharpnessGrid",
    "block_sharpness",
    "colour_distance",
    "find_artefacts",
    "find_blur",
    "parse_kinds",
    "pixel_features",
    "verdict",
]

#: Colour distance (see :func:`colour_distance`) above which a slide gets ``review``. Measured:
#: 0.7–6.8 on the 28 shared mosaics (train and test), 9.8–20.9 on the nine BreaKHis images of
#: ../shared/data/stain-refs (another laboratory), reduced 4:1.
COLOUR_FAR = 8.5
#: Glass OD offset from the training mosaics' glass (:data:`REF_GLASS_OD`, any channel) above
#: which a slide gets ``review``: a scanner white balance the model was not validated on (the
#: 22 training and validation mosaics: within ±0.014; a 7 % gain is 0.03). A model with the
#: ``glass`` stain normalisation sees the corrected colour, and so does this test.
GLASS_FAR_OD = 0.03

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
#: First look on a 2:1 reduction: pixels whose artefact probability there is above this,
#: grown by SCREEN_GROW_PX (of the reduction), are classified at full resolution.
SCREEN_P = 0.2
SCREEN_GROW_PX = 3
#: Context (px) around the pixels classified: what their neighbourhood features see (the
#: widest, :func:`~idcmap.pipeline.qcpixel.pixel_features`' σ 10 px on a 4:1 reduction, reaches
#: 44 px), so that a pixel's features on a box are its features on the whole thumbnail.
CONTEXT_PX = 48
#: Boxes start on multiples of this: the features' 2:1 and 4:1 reductions then fall on the
#: whole thumbnail's grid (boxes off that grid, with 24 px of context, gave pixels up to 0.8
#: other probabilities than the whole thumbnail's, so the screen's threshold moved the masks).
BOX_ALIGN_PX = 4
MIN_PIECE_MM2 = {"ink": 0.05, "fold": 0.1, "debris": 0.005, "border": 0.02}
#: Ink: pixels above this probability connected to a mark found (above ``P_THRESHOLD``) are
#: ink too (measured on painted VALID/TRAIN mosaics: recall 0.90 → 0.96, precision 0.99,
#: clean mosaics unchanged).
INK_LOW = 0.1
#: Gaps in an ink mark narrower than about twice this (µm) are closed.
INK_CLOSE_UM = 48.0
#: The ink is resolved on its bounding box and this margin (µm): what its field, texture and
#: rim look at (the field spreads over 3 × 320 µm).
INK_MARGIN_UM = 1000.0
#: Take the ink off the pixels where it lies over tissue (:mod:`idcmap.pipeline.ink`); else
#: all ink over tissue is filled from around.
UNINK = True


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
    #: what became of the ink found (un-inked, over tissue or on glass; None when no ink was
    #: found or looked for): :mod:`idcmap.pipeline.ink`
    ink: InkResult | None = None
    #: the thumbnail's (rows, cols), for the masks of a run that looked for none (blur only)
    shape: tuple[int, int] = (0, 0)

    @property
    def excluded(self) -> np.ndarray:
        """What is removed from the tissue stage's mask: debris, border (:data:`EXCLUDE`) and
        ink on glass. Ink over tissue stays tissue (un-inked, or filled where ink is left)."""
        if self.ink is None:
            return self.union(EXCLUDE)
        return self.union(EXCLUDE - {"ink"}) | (self.masks["ink"] & ~self.ink.tissue)

    @property
    def untrusted(self) -> np.ndarray:
        """Where the network is not shown the pixels: the excluded areas and the ink left
        after un-inking."""
        if self.ink is None:
            return self.excluded
        return self.excluded | self.ink.left

    def tissue_after(self, before: np.ndarray) -> np.ndarray:
        """The tissue after QC, from the tissue stage's mask ``before``."""
        if self.ink is None:
            return before & ~self.excluded
        return self.ink.tissue & ~self.union(EXCLUDE - {"ink"})

    def union(self, kinds: Iterable[str] | None = None) -> np.ndarray:
        """Union of the masks of ``kinds`` (default: every kind found)."""
        shape = next(iter(self.masks.values())).shape if self.masks else self.shape
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
    unink: bool = True,
) -> QCMasks:
    """Artefact masks of a low-resolution RGB thumbnail (~16 µm/px) and its tissue mask.

    Args:
        rgb: uint8 rows×cols×3, the tissue stage's thumbnail.
        mpp: µm per thumbnail px (x); ``mpp_y`` along y (default: the same).
        tissue: bool rows×cols, the tissue stage's mask (before QC).
        kinds: which kinds to look for (:func:`parse_kinds`); ``blur`` is ignored here (see
            :func:`find_blur`).
        unink: measure the ink's OD to take it off the pixels (:mod:`idcmap.pipeline.ink`);
            False: all ink over tissue is left (filled), e.g. when the tiles were evaluated.

    Returns masks for each asked kind among ink, fold, debris, border. Ink and debris are
    reported wherever they are (on glass too); folds only on tissue. ``rgb``'s glass is
    brought to :data:`REF_GLASS_OD` first (:func:`~idcmap.pipeline.stain.balance_glass`).
    """
    import time

    t0 = time.perf_counter()
    want = parse_kinds(kinds)
    mpp_y = mpp_y or mpp
    px_mm2 = mpp * mpp_y / 1e6
    shape = rgb.shape[:2]
    masks: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    ink: InkResult | None = None
    if rgb.size == 0:
        masks = {k: np.zeros(shape, bool) for k in want - {"blur"}}
        return QCMasks(masks, mpp, mpp_y, shape=(int(shape[0]), int(shape[1])))
    tissue = np.asarray(tissue, bool)
    rgb = balance_glass(rgb, REF_GLASS_OD)
    if "border" in want:
        dark = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) < BORDER_DARK
        if dark[0].any() or dark[-1].any() or dark[:, 0].any() or dark[:, -1].any():
            lab, n = ndimage.label(dark)
            edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
            keep = np.zeros(n + 1, bool)
            keep[edge] = True
            keep[0] = False
            border = ndimage.binary_dilation(keep[lab], iterations=2)
            masks["border"] = _clean(border, MIN_PIECE_MM2["border"] / px_mm2, 0)
        else:  # nothing dark touches the edge (most slides): no border
            masks["border"] = np.zeros(shape, bool)
    model_kinds = want & {"ink", "fold", "debris"}
    if model_kinds:
        net = model or load_pixel_model()
        p = _classify(net, rgb, tissue)
        timings["classifier"] = time.perf_counter() - t0
        other = masks.get("border", np.zeros(shape, bool))
        for kind in ("ink", "fold", "debris"):
            if kind in model_kinds:
                pk = p[..., net.classes.index(kind)]
                masks[kind] = _kind_mask(kind, pk, other, tissue, px_mm2)
        if "ink" in masks and masks["ink"].any():
            t1 = time.perf_counter()
            ink = _resolve_ink(
                net, rgb, tissue, masks["ink"], other, mpp, mpp_y, unink=unink and UNINK
            )
            timings["ink"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    return QCMasks(masks, mpp, mpp_y, timings, ink, (int(shape[0]), int(shape[1])))


def _classify(
    net: PixelMLP, rgb: np.ndarray, tissue: np.ndarray, within: np.ndarray | None = None
) -> np.ndarray:
    """rows×cols×C class probabilities of the thumbnail's pixels: those that absorb light
    (glass and pale tissue edges are clean) and lie ``within``, if given, else those a first
    look on a 2:1 reduction flags (:data:`SCREEN_P`: most of a slide is clean tissue, and
    artefacts worth finding are many pixels across). Features are computed on the bounding
    boxes of those pixels and :data:`CONTEXT_PX` around them (what their neighbourhood
    features see)."""
    c8 = rgb.astype(np.float32)
    od_sum = -np.log((c8[..., 0] + 1) * (c8[..., 1] + 1) * (c8[..., 2] + 1) / 256.0**3)
    cand = od_sum > CANDIDATE_OD
    h, w = cand.shape
    if within is not None:
        cand &= within
    elif min(h, w) >= 4 * SCREEN_GROW_PX:
        from PIL import Image

        small = np.asarray(Image.fromarray(rgb).reduce(2))
        t_small = tissue[: 2 * small.shape[0] : 2, : 2 * small.shape[1] : 2]
        p_small = _classify(net, small, t_small, within=np.ones(small.shape[:2], bool))
        flag = _grow(p_small[..., 0] < 1 - SCREEN_P, SCREEN_GROW_PX)
        up = np.zeros((h, w), bool)
        big = np.repeat(np.repeat(flag, 2, axis=0), 2, axis=1)
        up[: big.shape[0], : big.shape[1]] = big[:h, :w]
        cand &= up
    p = np.zeros((h, w, len(net.classes)), np.float32)
    p[..., 0] = 1.0
    if not cand.any():
        return p
    ref = tissue_reference_rgb(rgb, tissue)
    # grown and labelled on the candidates' bounding box and CONTEXT_PX around it only: the
    # growth cannot reach further (the same boxes as on the whole thumbnail)
    a = BOX_ALIGN_PX
    crop = tuple(  # on the grid of a too: the boxes below stay inside it
        slice(sl.start // a * a, min(-(-sl.stop // a) * a, n))
        for sl, n in zip(_box(cand, CONTEXT_PX), (h, w), strict=True)
    )
    lab, _n = ndimage.label(_grow(cand[crop], CONTEXT_PX))
    oy, ox = crop[0].start, crop[1].start
    for i, sl in enumerate(ndimage.find_objects(lab), 1):
        if sl is None:
            continue
        # the box on the thumbnail's grid of a: its features are the whole thumbnail's
        box = (
            slice((sl[0].start + oy) // a * a, min(-(-(sl[0].stop + oy) // a) * a, h)),
            slice((sl[1].start + ox) // a * a, min(-(-(sl[1].stop + ox) // a) * a, w)),
        )
        lab_box = lab[box[0].start - oy : box[0].stop - oy, box[1].start - ox : box[1].stop - ox]
        sub = cand[box] & (lab_box == i)
        if sub.any():
            frame = (box[0].start, box[1].start, h, w)
            x = pixel_features(
                rgb[box], tissue[box], where=sub, version=net.features, ref=ref, frame=frame
            )
            view = p[box]
            view[sub] = net.proba(x)
    return p


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` grown by a (2·px + 1)² square (one separable pass, fast for wide growth)."""
    return ndimage.maximum_filter(mask, size=2 * px + 1) if mask.any() else mask


def _kind_mask(
    kind: str, pk: np.ndarray, other: np.ndarray, tissue: np.ndarray, px_mm2: float
) -> np.ndarray:
    """The mask of ``kind`` from its probability: threshold, opening, minimum piece, and for
    ink and debris the soft, mixed rim of the mark. Morphology runs on the bounding box of
    what was found (most of a slide has none)."""
    m = (pk > P_THRESHOLD[kind]) & ~other
    if kind == "fold":
        m &= tissue
    if not m.any():
        return m
    box = _box(m, 4)
    m[box] = _clean(m[box], MIN_PIECE_MM2[kind] / px_mm2, 1 if kind != "debris" else 0)
    if kind == "ink" and m.any():  # hysteresis: the paler parts of a mark found
        low = (pk > INK_LOW) & ~other
        box = _box(low, 0)  # (m lies inside it; most of a slide is clean)
        lab, n = ndimage.label(low[box], structure=np.ones((3, 3), bool))
        keep = np.zeros(n + 1, bool)
        keep[np.unique(lab[m[box]])] = True
        keep[0] = False
        m[box] |= keep[lab]
    if kind in ("ink", "debris") and m.any():
        r = max(1, round(INK_CLOSE_UM / math.sqrt(px_mm2 * 1e6))) if kind == "ink" else 0
        box = _box(m, r + 4)
        mb, pb = m[box], pk[box]
        mb = mb | (ndimage.binary_dilation(mb, iterations=2) & (pb > 0.2))
        if r:  # thin gaps in a mark (paler streaks) are ink too
            mb = ndimage.binary_closing(np.pad(mb, r), structure=_disk(r))[r:-r, r:-r]
        m[box] = mb
    return m


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of ``mask`` grown by ``margin`` px (clipped to the image)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (
        slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
        slice(max(cols[0] - margin, 0), cols[-1] + margin + 1),
    )


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= r * r + r


def _resolve_ink(
    net: PixelMLP,
    rgb: np.ndarray,
    tissue: np.ndarray,
    ink: np.ndarray,
    other: np.ndarray,
    mpp: float,
    mpp_y: float,
    *,
    unink: bool,
) -> InkResult:
    """Un-ink the thumbnail, look for ink again on it, and split what is left into over
    tissue and on glass (:mod:`idcmap.pipeline.ink`); on the ink's bounding box and
    :data:`INK_MARGIN_UM` around it (the rest of the slide does not change)."""
    box = _box(ink, math.ceil(INK_MARGIN_UM / min(mpp, mpp_y)))
    rgb_b, tissue_b, ink_b, other_b = rgb[box], tissue[box], ink[box], other[box]
    od = ink_field(rgb_b, ink_b, tissue_b & ~ink_b, mpp) if unink else None
    tissue2 = tissue
    if od is not None and od.any():
        od = soft_field(od, ink_b)
        rgb2 = rgb.copy()
        rgb2[box] = remove_ink(rgb_b, od)
        if rgb_b.size < 0.25 * rgb.size:  # a small mark: the tissue rule around it only
            tissue2 = tissue.copy()
            tissue2[box] = tissue_mask_from_rgb(rgb2[box], mpp, mpp_y)
        else:  # the rule's threshold is the slide's, which much ink had moved
            tissue2 = tissue_mask_from_rgb(rgb2, mpp, mpp_y)
        near = ndimage.binary_dilation(ink_b, iterations=2)
        # on the whole thumbnail: the slide's reference and the boxes' grid of the first look
        p2 = _classify(net, rgb2, tissue2, within=_paste(near, box, ink.shape))
        p2b = p2[box][..., net.classes.index("ink")]
        left = _kind_mask("ink", p2b, other_b, tissue2[box], mpp * mpp_y / 1e6) & near
    else:
        od, left = None, ink_b
    # over tissue or on glass: by the texture under the ink (un-inked ink on glass, where the
    # ink was darker than over tissue, can keep a tissue-like tint)
    found = ink_b | left
    over = ink_over_tissue(rgb_b, found, mpp)
    if od is not None:  # pale tissue under ink is tissue only if the tissue rule says so too
        over &= tissue2[box] | left
    rim = glass_rim(rgb_b, found, found & ~over, mpp)
    after = tissue2.copy()
    after[box] = ((tissue2[box] & ~found) | over) & ~rim
    full_od = None
    if od is not None:
        full_od = np.zeros((*ink.shape, 3), np.float32)
        full_od[box] = od
    return InkResult(od=full_od, tissue=after, over_tissue=_paste(over, box, ink.shape),
                     left=_paste(left, box, ink.shape))  # fmt: skip


def _paste(m: np.ndarray, box: tuple[slice, slice], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape[:2], bool)
    out[box] = m
    return out


# ---- verdict ------------------------------------------------------------------------------------


def colour_distance(rgb: np.ndarray, tissue: np.ndarray) -> float:
    """How far the slide's tissue colour is from the training data's: the angle (°) between the
    mean tissue OD vector and :data:`REF_OD`, plus 10 × |log of their magnitude ratio| (NaN
    without tissue). 0 = the training mean (see :data:`COLOUR_FAR`)."""
    if tissue.sum() < 10:
        return math.nan
    m = optical_density(rgb[tissue]).mean(0)
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
    #: the ink's areas (mm²) and shares of the tissue after QC (%): ``on_glass_mm2``,
    #: ``over_tissue_mm2``, ``over_tissue_pct``, ``uninked_mm2`` (over tissue, taken off the
    #: pixels), ``filled_mm2`` (over tissue, left: probability from around); None: no ink
    ink: dict[str, float] | None = None
    #: the glass's OD minus :data:`REF_GLASS_OD` (R, G, B) as the model sees it; None: no glass
    glass_od_offset: tuple[float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tissue_before_qc_mm2": round(self.tissue_mm2, 4),
            **({} if self.ink is None else {"ink": {k: round(v, 4) for k, v in self.ink.items()}}),
            "excluded_mm2": {k: round(v, 4) for k, v in self.excluded_mm2.items()},
            "excluded_pct_of_tissue": {
                k: round(v, 2) for k, v in self.excluded_pct_of_tissue.items()
            },
            "colour_distance": None
            if math.isnan(self.colour_distance)
            else round(self.colour_distance, 3),
            "glass_od_offset": None
            if self.glass_od_offset is None
            else [round(v, 4) for v in self.glass_od_offset],
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
    """Areas excluded per kind, colour distance, glass tint and ``review`` + reasons.

    ``tissue`` is the tissue mask before QC (thumbnail grid); ``rgb`` the thumbnail as the
    model sees it (after its stain normalisation, if any); ``blur_cells``/``idc_cells``
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
    # tissue lost: what is removed where the tissue stage saw tissue, but ink on glass was
    # never tissue (it only looked like it to the tissue stage)
    removed = qc.union(EXCLUDE - {"ink"}) if qc.ink is not None else qc.excluded
    excl_on_tissue = float((removed & tissue).sum()) * px_mm2
    if "blur" in EXCLUDE:
        excl_on_tissue += area_on_tissue.get("blur", 0.0)
    after = qc.tissue_after(tissue)
    after_mm2 = float(after.sum()) * px_mm2
    ink = _ink_areas(qc, after, px_mm2)
    if tissue_mm2 <= 0:
        reasons.append("no tissue found")
    elif excl_on_tissue > REVIEW_EXCLUDED * tissue_mm2:
        what = ", ".join(f"{k} {v:.1f} %" for k, v in pct.items() if v >= 0.05 and k != "ink")
        reasons.append(f"{100 * excl_on_tissue / tissue_mm2:.0f} % of the tissue excluded ({what})")
    if ink is not None and ink["over_tissue_pct"] > 100 * REVIEW_EXCLUDED:
        reasons.append(
            f"ink over {ink['over_tissue_pct']:.0f} % of the tissue ("
            f"{_pct(ink['uninked_mm2'], after_mm2)} % un-inked, "
            f"{_pct(ink['filled_mm2'], after_mm2)} % filled from the tissue around it)"
        )
    seen = after & ~qc.untrusted
    if tissue_mm2 > 0 and after_mm2 < 0.02 * tissue_mm2:
        reasons.append("no tissue left after QC")
    elif tissue_mm2 > 0 and float(seen.sum()) * px_mm2 < 0.02 * tissue_mm2:
        reasons.append("no tissue left after QC to evaluate (all under ink)")
    for k in sorted(set(pct) - EXCLUDE):
        if pct[k] > 100 * REVIEW_FLAGGED:
            reasons.append(f"{k} over {pct[k]:.0f} % of the tissue (kept, not excluded)")
    if blur_cells is not None and blur_cells.any() and idc_cells is not None and idc_cells.any():
        d = ndimage.distance_transform_edt(~idc_cells) * cell_um
        if (d[blur_cells] <= REVIEW_BLUR_NEAR_UM).any():
            reasons.append("out-of-focus tissue over or near the IDC regions")
    # the tissue's own colour: not under ink (nor where ink was taken off)
    plain = after & ~qc.masks.get("ink", np.zeros(after.shape, bool))
    cd = colour_distance(rgb, plain)  # NaN when no tissue is free of ink
    if not math.isnan(cd) and cd > COLOUR_FAR:
        reasons.append(
            f"tissue colour far from the training data (distance {cd:.1f} > {COLOUR_FAR})"
        )
    own = glass_od(rgb)
    offset = None if own is None else tuple(float(v) for v in own - np.asarray(REF_GLASS_OD))
    if offset is not None and max(abs(v) for v in offset) > GLASS_FAR_OD:
        rgb_off = ", ".join(f"{v:+.2f}" for v in offset)
        reasons.append(
            f"scanner white balance off the training data's (glass OD {rgb_off} in R, G, B; "
            f"> {GLASS_FAR_OD})"
        )
    return QCVerdict(
        tissue_mm2,
        area,
        pct,
        cd,
        bool(reasons),
        reasons,
        ink,
        (offset[0], offset[1], offset[2]) if offset is not None else None,
    )


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}" if whole > 0 else "0"


def _ink_areas(qc: QCMasks, after: np.ndarray, px_mm2: float) -> dict[str, float] | None:
    """The ink's areas: on glass, over tissue (un-inked or filled), in mm², and the share of
    the tissue after QC it lies over (%)."""
    if qc.ink is None:
        return None
    found = qc.masks["ink"]
    over = qc.ink.over_tissue
    filled = over & qc.ink.left
    after_px = float(after.sum())
    return {
        "on_glass_mm2": float((found & ~over).sum()) * px_mm2,
        "over_tissue_mm2": float(over.sum()) * px_mm2,
        "over_tissue_pct": 100 * float(over.sum()) / after_px if after_px else 0.0,
        "uninked_mm2": float((over & ~filled).sum()) * px_mm2,
        "filled_mm2": float(filled.sum()) * px_mm2,
    }


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
