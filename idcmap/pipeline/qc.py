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
lay over IDC that the model still finds; a fold's optical density is halved before the network
sees it (two layers of the section: :mod:`idcmap.pipeline.correct`, over :attr:`QCMasks.unfold`);
blurred cells get their logit raised by
:data:`BLUR_LOGIT_SHIFT` (:func:`lift_blurred`: blurred IDC reads paler), and every tissue
cell of a slide soft all over (below :data:`SOFT_P90`) :data:`SOFT_LOGIT_SHIFT`.

Methods (the classifier trained on artefacts painted onto the training mosaics):

* **ink, fold, debris** — a small per-pixel MLP (:mod:`idcmap.pipeline.qcpixel`, weights in
  ``idcmap/model/weights/qc/qc-v2.json``, trained by ``benchmarks/qc_train.py`` on artefacts
  painted by :mod:`idcmap.train.artefacts` onto the 19 training mosaics) over colour features
  of each thumbnail pixel and of its neighbourhood. Its probabilities are cleaned with a small
  opening and a minimum area; ink grows by hysteresis into the paler parts of a mark. A pixel
  that absorbs green least (:data:`GREEN_INK_OD`) is green ink whatever the MLP says: H&E
  never is.
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
from idcmap.pipeline.inkfield import ink_field, paint_opacity
from idcmap.pipeline.qcblur import (
    BLUR_LOGIT_SHIFT,
    SOFT_LOGIT_SHIFT,
    SOFT_P90,
    SharpnessGrid,
    block_sharpness,
    find_blur,
    lift_blurred,
    sharp_p90,
)
from idcmap.pipeline.qcpixel import (
    REF_GLASS_OD,
    PixelMLP,
    load_pixel_model,
    pixel_features,
    tissue_reference_rgb,
)
from idcmap.pipeline.qcverdict import (
    COLOUR_FAR,
    EXCLUDE,
    GLASS_FAR_OD,
    GLASS_WHITE_OD,
    REVIEW_BLUR_NEAR_UM,
    REVIEW_EXCLUDED,
    REVIEW_EXCLUDED_NEAR_IDC_MM2,
    REVIEW_FLAGGED,
    REVIEW_INK_NEAR_IDC,
    QCMasks,
    QCVerdict,
    colour_distance,
    verdict,
)
from idcmap.pipeline.regions import mask_to_regions
from idcmap.pipeline.stain import balance_glass, glass_od
from idcmap.pipeline.tissue import TissueMask, tissue_mask_from_rgb

__all__ = [
    "BLUR_LOGIT_SHIFT",
    "COLOUR_FAR",
    "EXCLUDE",
    "GLASS_FAR_OD",
    "GLASS_WHITE_OD",
    "KINDS",
    "REVIEW_BLUR_NEAR_UM",
    "REVIEW_EXCLUDED",
    "REVIEW_EXCLUDED_NEAR_IDC_MM2",
    "REVIEW_FLAGGED",
    "REVIEW_INK_NEAR_IDC",
    "SOFT_LOGIT_SHIFT",
    "SOFT_P90",
    "QCMasks",
    "QCVerdict",
    "SharpnessGrid",
    "artefact_outlines",
    "artefact_polygons",
    "block_sharpness",
    "colour_distance",
    "find_artefacts",
    "find_blur",
    "lift_blurred",
    "parse_kinds",
    "pixel_features",
    "sharp_p90",
    "verdict",
]

#: Border: max channel below this (0–255) and connected to the image edge.
BORDER_DARK = 40
#: Pixel classifier threshold (probability of the artefact class) and minimum piece (mm²).
#: Folds: 0.8 finds 0.64 of the painted folds on 9 TRAIN/VALID mosaics (0.95: 0.42) and flags
#: none of the 28 clean ones (docs/qc.md#artefact-battery); what it finds is also un-folded
#: (:data:`FOLD_LOW`; seeded at 0.6 instead, the same dev Dice).
P_THRESHOLD = {"ink": 0.7, "fold": 0.8, "debris": 0.9}
#: The classifier runs on pixels whose summed optical density is above this.
CANDIDATE_OD = 0.25
#: H&E absorbs green most (eosin almost only green, haematoxylin red and green alike): a
#: candidate px whose green OD is below both its red and its blue OD by this much is not H&E
#: but green ink, however pale. Its ink probability is 1. The classifier misses green marks of
#: α ≲ 0.35 where they are as translucent on glass as over tissue (docs/qc.md). On the 28 clean
#: mosaics at 16 µm/px 0–88 candidate px pass this (0.02: up to 393).
GREEN_INK_OD = 0.05
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
#: Folds are un-folded (:mod:`idcmap.pipeline.correct`) over the fold found and the tissue
#: above this probability connected to it: the classifier finds a fold's darkest part, rarely
#: its whole band (0.10–0.87 of the painted band on the test mosaics), and the part not found
#: would keep its doubled OD. Chosen on 27 painted folds of 9 TRAIN/VALID mosaics: pooled Dice
#: 0.8213 un-folding the mask found only, 0.8229 with 0.3, 0.8172 with 0.1. The fold reported
#: (area, ``review``) is the mask found: grown so, a dark, dense tumour on one of the 28 clean
#: mosaics (9035) reads as a fold over 6 % of its tissue.
FOLD_LOW = 0.3
#: Folds within this (thumbnail px) of ink are not un-folded: on the test mosaics' painted
#: ink, the only "folds" found lay along a translucent mark's edge (8984 seed 0: 0.24 mm²,
#: un-folded there its IDC area went 7.28 → 6.04 mm², clean 7.76).
FOLD_INK_GAP_PX = 2
#: Gaps in an ink mark narrower than about twice this (µm) are closed.
INK_CLOSE_UM = 48.0
#: The ink is resolved on its bounding box and this margin (µm): what its field, texture and
#: rim look at (the field spreads over 3 × 320 µm).
INK_MARGIN_UM = 1000.0
#: Take the ink off the pixels where it lies over tissue (:mod:`idcmap.pipeline.ink`); else
#: all ink over tissue is filled from around.
UNINK = True


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
    unfold: np.ndarray | None = None
    if rgb.size == 0:
        masks = {k: np.zeros(shape, bool) for k in want - {"blur"}}
        return QCMasks(masks, mpp, mpp_y, shape=(int(shape[0]), int(shape[1])))
    tissue = np.asarray(tissue, bool)
    scanned_glass = glass_od(rgb)  # (kept for the verdict: measured once)
    if scanned_glass is not None:  # no glass to go by: the slide keeps its own
        rgb = balance_glass(rgb, REF_GLASS_OD, own=scanned_glass)
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
        if "ink" in model_kinds:
            view = p[..., net.classes.index("ink")]
            np.maximum(view, _green(rgb), out=view)
        timings["classifier"] = time.perf_counter() - t0
        other = masks.get("border", np.zeros(shape, bool))
        for kind in ("ink", "fold", "debris"):
            if kind in model_kinds:
                pk = p[..., net.classes.index(kind)]
                masks[kind] = _kind_mask(kind, pk, other, tissue, px_mm2)
                if kind == "fold" and masks[kind].any():
                    unfold = masks[kind] | _connected(masks[kind], (pk > FOLD_LOW) & tissue)
        if "ink" in masks and masks["ink"].any():
            t1 = time.perf_counter()
            ink = _resolve_ink(
                net, rgb, tissue, masks["ink"], other, mpp, mpp_y, unink=unink and UNINK
            )
            timings["ink"] = time.perf_counter() - t1
    if unfold is not None and "ink" in masks and masks["ink"].any():
        # a "fold" touching ink is the mark's own dark edge: ink is un-inked, not un-folded
        near_ink = ndimage.binary_dilation(masks["ink"], iterations=FOLD_INK_GAP_PX)
        unfold &= ~_connected(unfold & near_ink, unfold)
    if unfold is not None and not unfold.any():
        unfold = None
    timings["total"] = time.perf_counter() - t0
    return QCMasks(
        masks, mpp, mpp_y, timings, ink, (int(shape[0]), int(shape[1])), unfold, scanned_glass
    )


def _classify(
    net: PixelMLP, rgb: np.ndarray, tissue: np.ndarray, within: np.ndarray | None = None
) -> np.ndarray:
    """rows×cols×C class probabilities of the thumbnail's pixels: those that absorb light
    (glass and pale tissue edges are clean) and lie ``within``, if given, else those a first
    look on a 2:1 reduction flags (:data:`SCREEN_P`: most of a slide is clean tissue, and
    artefacts worth finding are many pixels across). Features are computed on the bounding
    boxes of those pixels and :data:`CONTEXT_PX` around them (what their neighbourhood
    features see)."""
    cand = _candidates(rgb)
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


def _candidates(rgb: np.ndarray) -> np.ndarray:
    """bool: the px whose summed OD is above :data:`CANDIDATE_OD`, as the product of the
    transmitted fractions (whole numbers: exact, and ~3x faster than the logarithm of every
    px)."""
    c = [rgb[..., i].astype(np.int32) + 1 for i in range(3)]
    return np.asarray(c[0] * c[1] * c[2] <= _CANDIDATE_PRODUCT)


def _green(rgb: np.ndarray) -> np.ndarray:
    """float32 1 where a candidate px absorbs green least, by :data:`GREEN_INK_OD` (as
    transmitted fractions: (G + 1) > (R + 1)·e^m and (B + 1)·e^m), else 0."""
    c = [rgb[..., i].astype(np.float32) + 1 for i in range(3)]
    k = math.exp(GREEN_INK_OD)
    return (_candidates(rgb) & (c[1] > c[0] * k) & (c[1] > c[2] * k)).astype(np.float32)


def _candidate_product() -> int:
    """The largest (R + 1)·(G + 1)·(B + 1) whose summed OD, −log(product / 256³) in float32,
    is above :data:`CANDIDATE_OD` (the test as float32 on the whole numbers near it)."""
    centre = int(256.0**3 * math.exp(-CANDIDATE_OD))
    near = np.arange(centre - 64, centre + 65)
    above = -np.log(near.astype(np.float32) / np.float32(256.0**3)) > CANDIDATE_OD
    k = int(above.sum())
    assert 0 < k < len(near) and above[:k].all()  # one threshold, inside the window
    return int(near[k - 1])


_CANDIDATE_PRODUCT = _candidate_product()


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
        m |= _connected(m, (pk > INK_LOW) & ~other)
    if kind in ("ink", "debris") and m.any():
        r = max(1, round(INK_CLOSE_UM / math.sqrt(px_mm2 * 1e6))) if kind == "ink" else 0
        box = _box(m, r + 4)
        mb, pb = m[box], pk[box]
        mb = mb | (ndimage.binary_dilation(mb, iterations=2) & (pb > 0.2))
        if r:  # thin gaps in a mark (paler streaks) are ink too
            mb = ndimage.binary_closing(np.pad(mb, r), structure=_disk(r))[r:-r, r:-r]
        m[box] = mb
    return m


def _connected(seed: np.ndarray, low: np.ndarray) -> np.ndarray:
    """The parts of ``low`` (8-connected) that hold a px of ``seed`` (which lies inside it)."""
    out = np.zeros(low.shape, bool)
    if not seed.any():
        return out
    box = _box(low, 0)  # most of a slide is clean
    lab, n = ndimage.label(low[box], structure=np.ones((3, 3), bool))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[seed[box]])] = True
    keep[0] = False
    out[box] = keep[lab]
    return out


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
    # ink that behaves like paint flattens the tissue under it: not glass for that
    opacity = paint_opacity(rgb_b, ink_b, tissue_b & ~ink_b, mpp)
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
    over = ink_over_tissue(rgb_b, found, mpp, opacity)
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


def artefact_outlines(
    masks: dict[str, np.ndarray], tissue: TissueMask, heatmap: Heatmap
) -> dict[str, list[Any]]:
    """:func:`artefact_polygons` of a slide's QC masks (the thumbnail's kinds on ``tissue``'s
    grid, ``blur`` on ``heatmap``'s cells): what the GeoJSON draws and what each IDC region's
    share under an artefact is measured against."""
    thumb = Heatmap(
        prob=np.zeros(tissue.mask.shape, np.float32),
        origin_level0_px=tissue.origin_level0_px,
        cell_level0_px=tissue.px_level0,
        slide_mpp=heatmap.slide_mpp,
        model_mpp=heatmap.model_mpp,
        stride_px=heatmap.stride_px,
        patch_px=heatmap.patch_px,
        slide_mpp_y=heatmap.slide_mpp_y,
    )
    return artefact_polygons(masks, thumb, heatmap)
