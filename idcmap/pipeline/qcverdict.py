"""What the QC stage found (:class:`QCMasks`) and its per-slide verdict: the areas excluded or
flagged per kind, the colour distance and glass tint of the slide from the training data, and
``review`` with its reasons (re-exported by :mod:`idcmap.pipeline.qc`, which finds the
artefacts)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from idcmap.pipeline.ink import InkResult
from idcmap.pipeline.qcblur import SOFT_P90
from idcmap.pipeline.qcpixel import REF_GLASS_OD, REF_OD, optical_density
from idcmap.pipeline.stain import glass_od

__all__ = [
    "COLOUR_FAR",
    "EXCLUDE",
    "GLASS_FAR_OD",
    "GLASS_WHITE_OD",
    "REVIEW_BLUR_NEAR_UM",
    "REVIEW_EXCLUDED",
    "REVIEW_EXCLUDED_NEAR_IDC_MM2",
    "REVIEW_FLAGGED",
    "REVIEW_INK_NEAR_IDC",
    "QCMasks",
    "QCVerdict",
    "colour_distance",
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
#: The slide's own glass (as scanned, before any glass gain) below this OD in a channel is at
#: white there: a channel at 255 hides how much brighter the scanner (or a paler stain) made the
#: slide, so the glass gain can take off only part of it. Measured: the 28 mosaics' glass is
#: 0.028–0.061 OD per channel, CMU-1-Small-Region.svs 0.036–0.040; under "haematoxylin −0.01"
#: of the shift table it is 0.000 in red and green on all 28 (idc-v4-glass: −0.042 pooled Dice
#: in CV, −0.021 on the test mosaics), under "eosin −0.01" 0–0.004 in green.
GLASS_WHITE_OD = 0.01

#: Kinds removed from the tissue; the others (fold, blur) are reported and flagged only.
#: Measured on the test mosaics with painted artefacts (benchmarks/artefacts.py): excluding
#: folds cost 0.014 pooled Dice and excluding blur bands 0.081 (they lie over IDC the model
#: still finds), while excluding ink gained 0.075 and debris 0.007.
EXCLUDE = frozenset({"ink", "debris", "border"})
#: Review when folds or blur cover more than this fraction of the tissue.
REVIEW_FLAGGED = 0.05
#: Review when the excluded artefacts cover more than this fraction of the tissue.
REVIEW_EXCLUDED = 0.10
#: Review when blurred tissue lies within this distance (µm) of the IDC mask.
REVIEW_BLUR_NEAR_UM = 400.0
#: Review when more tissue than this (mm²) is excluded (debris, border) within
#: :data:`REVIEW_BLUR_NEAR_UM` of the IDC mask: IDC under it is not counted.
REVIEW_EXCLUDED_NEAR_IDC_MM2 = 0.1
#: Review when ink over tissue within :data:`REVIEW_BLUR_NEAR_UM` of the IDC mask covers more
#: than this share of the IDC area (and more than :data:`REVIEW_EXCLUDED_NEAR_IDC_MM2`): the
#: IDC there was read through the ink, and un-inked tissue is read less reliably (issue 17's
#: tolerance for ink's change of the IDC area is 15 %; the test battery's inked slides moved
#: −42 … +29 %: docs/qc.md#ink-in-or-next-to-the-idc).
REVIEW_INK_NEAR_IDC = 0.15


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
    #: the px whose OD is halved (:mod:`idcmap.pipeline.correct`): the folds found and the
    #: paler parts of their bands (:data:`idcmap.pipeline.qc.FOLD_LOW`); None: no fold
    unfold: np.ndarray | None = None
    #: the thumbnail's glass OD as scanned (:func:`~idcmap.pipeline.stain.glass_od`; None: no
    #: glass found or not measured), measured once for the glass balance and the verdict
    glass_od: np.ndarray | None = None

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
        return _count(m) * self.mpp * self.mpp_y / 1e6


def colour_distance(rgb: np.ndarray, tissue: np.ndarray) -> float:
    """How far the slide's tissue colour is from the training data's: the angle (°) between the
    mean tissue OD vector and :data:`REF_OD`, plus 10 × |log of their magnitude ratio| (NaN
    without tissue). 0 = the training mean (see :data:`COLOUR_FAR`)."""
    idx = np.flatnonzero(tissue)
    if len(idx) < 10:
        return math.nan
    # the mean OD from each channel's histogram (exact, in float64; ~4x faster than the OD
    # of every pixel)
    px = np.ascontiguousarray(rgb).reshape(-1, 3).take(idx, axis=0)
    od = optical_density(np.arange(256, dtype=np.uint8)).astype(np.float64)
    m = np.array([np.bincount(px[:, c], minlength=256) @ od for c in range(3)]) / len(idx)
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
    #: pixels), ``filled_mm2`` (over tissue, left: probability from around) and, given an IDC
    #: mask, ``near_idc_mm2`` (over tissue within :data:`REVIEW_BLUR_NEAR_UM` of it) and
    #: ``near_idc_pct_of_idc`` (that area over the IDC area, %); None: no ink
    ink: dict[str, float] | None = None
    #: the glass's OD minus :data:`REF_GLASS_OD` (R, G, B) as the model sees it; None: no glass
    glass_od_offset: tuple[float, float, float] | None = None
    #: the 90th percentile of the tissue cells' sharpness (None: blur not measured)
    sharpness_p90: float | None = None
    #: tissue excluded (debris, border) within :data:`REVIEW_BLUR_NEAR_UM` of the IDC mask, mm²
    #: (None: no IDC mask given)
    excluded_near_idc_mm2: float | None = None
    #: the tissue left after QC, mm², on the same thumbnail grid as ``tissue_mm2`` (the
    #: summary's ``tissue_area_mm2`` counts whole 200-µm cells instead, so it is larger)
    tissue_after_mm2: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tissue_before_qc_mm2": round(self.tissue_mm2, 4),
            **(
                {}
                if self.tissue_after_mm2 is None
                else {"tissue_after_qc_mm2": round(self.tissue_after_mm2, 4)}
            ),
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
            "sharpness_p90": None if self.sharpness_p90 is None else round(self.sharpness_p90, 3),
            "excluded_near_idc_mm2": None
            if self.excluded_near_idc_mm2 is None
            else round(self.excluded_near_idc_mm2, 4),
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
    sharpness_p90: float | None = None,
    own_glass_od: Sequence[float] | np.ndarray | None = None,
) -> QCVerdict:
    """Areas excluded per kind, colour distance, glass tint and ``review`` + reasons.

    ``tissue`` is the tissue mask before QC (thumbnail grid); ``rgb`` the thumbnail as the
    model sees it (after its stain normalisation, if any); ``sharpness_p90`` the slide's sharp
    tissue (:func:`~idcmap.pipeline.qcblur.sharp_p90`); ``blur_cells``/``idc_cells``
    (heatmap grid, cells of ``cell_mm2``) add blur's area and the "blur over/near IDC" check.
    ``own_glass_od`` is the slide's glass as scanned (:func:`~idcmap.pipeline.stain.glass_od`
    of the thumbnail before any gain; None: not measured), for the "glass at white" check.
    Ink/debris/border count where they cover tissue *or* would have been taken for tissue.
    """
    px_mm2 = qc.mpp * qc.mpp_y / 1e6
    tissue_mm2 = _count(tissue) * px_mm2
    area = {
        k: _count(m) * px_mm2 if k != "fold" else _count(m & tissue) * px_mm2
        for k, m in qc.masks.items()
    }
    area_on_tissue = {k: _count(m & tissue) * px_mm2 for k, m in qc.masks.items()}
    if blur_cells is not None:
        area["blur"] = area_on_tissue["blur"] = _count(blur_cells) * cell_mm2
    pct = {k: 100 * v / tissue_mm2 if tissue_mm2 else 0.0 for k, v in area_on_tissue.items()}
    reasons: list[str] = []
    # tissue lost: what is removed where the tissue stage saw tissue, but ink on glass was
    # never tissue (it only looked like it to the tissue stage)
    removed = qc.union(EXCLUDE - {"ink"}) if qc.ink is not None else qc.excluded
    excl_on_tissue = _count(removed & tissue) * px_mm2
    if "blur" in EXCLUDE:
        excl_on_tissue += area_on_tissue.get("blur", 0.0)
    after = qc.tissue_after(tissue)
    after_mm2 = _count(after) * px_mm2
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
    elif tissue_mm2 > 0 and _count(seen) * px_mm2 < 0.02 * tissue_mm2:
        reasons.append("no tissue left after QC to evaluate (all under ink)")
    for k in sorted(set(pct) - EXCLUDE):
        if pct[k] > 100 * REVIEW_FLAGGED:
            reasons.append(f"{k} over {pct[k]:.0f} % of the tissue (kept, not excluded)")
    near_mm2 = None if idc_cells is None else 0.0
    if idc_cells is not None and idc_cells.any():
        d = np.asarray(ndimage.distance_transform_edt(~idc_cells)) * cell_um
        if blur_cells is not None and (d[blur_cells] <= REVIEW_BLUR_NEAR_UM).any():
            reasons.append("out-of-focus tissue over or near the IDC regions")
        near_mm2 = _near_mm2(removed & tissue, qc, d, cell_um)
        if ink is not None and qc.ink is not None:
            idc_mm2 = _count(idc_cells) * cell_mm2
            ink_near = _near_mm2(qc.ink.over_tissue, qc, d, cell_um)
            ink["near_idc_mm2"] = ink_near
            ink["near_idc_pct_of_idc"] = 100 * ink_near / idc_mm2
            if ink_near > max(REVIEW_INK_NEAR_IDC * idc_mm2, REVIEW_EXCLUDED_NEAR_IDC_MM2):
                reasons.append(
                    f"ink over {ink_near:.2f} mm² in or next to the IDC regions "
                    f"({ink['near_idc_pct_of_idc']:.0f} % of the IDC area): IDC read through "
                    "ink, its area may be off"
                )
        if near_mm2 > REVIEW_EXCLUDED_NEAR_IDC_MM2:
            reasons.append(
                f"{near_mm2:.2f} mm² of tissue excluded over or next to the IDC regions "
                "(debris, border): IDC under it is not counted"
            )
    # the tissue's own colour: not under ink (nor where ink was taken off)
    plain = after & ~qc.masks.get("ink", np.zeros(after.shape, bool))
    cd = colour_distance(rgb, plain)  # NaN when no tissue is free of ink
    if not math.isnan(cd) and cd > COLOUR_FAR:
        reasons.append(
            f"tissue colour far from the training data (distance {cd:.1f} > {COLOUR_FAR})"
        )
    if sharpness_p90 is not None and sharpness_p90 < SOFT_P90:
        reasons.append(
            f"the whole slide is softer than the slides the model was validated on "
            f"(sharpness {sharpness_p90:.2f} < {SOFT_P90})"
        )
    own = glass_od(rgb)
    offset = None if own is None else tuple(float(v) for v in own - np.asarray(REF_GLASS_OD))
    if offset is not None and max(abs(v) for v in offset) > GLASS_FAR_OD:
        rgb_off = ", ".join(f"{v:+.2f}" for v in offset)
        reasons.append(
            f"scanner white balance off the training data's (glass OD {rgb_off} in R, G, B; "
            f"> {GLASS_FAR_OD})"
        )
    white = [] if own_glass_od is None else [v < GLASS_WHITE_OD for v in own_glass_od]
    if any(white):
        names = [c for c, w in zip(("red", "green", "blue"), white, strict=True) if w]
        where = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        reasons.append(
            f"the glass is at white in {where} (OD < {GLASS_WHITE_OD}): how much paler the "
            "slide is than the training data cannot be measured on it"
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
        sharpness_p90,
        near_mm2,
        after_mm2,
    )


def _near_mm2(mask: np.ndarray, qc: QCMasks, dist_um: np.ndarray, cell_um: float) -> float:
    """Area (mm²) of ``mask`` (thumbnail grid) whose pixels lie within
    :data:`REVIEW_BLUR_NEAR_UM` of the IDC mask, given its distance map ``dist_um`` (heatmap
    grid, cells of ``cell_um``; both grids start at the slide's origin)."""
    ys, xs = np.divmod(np.flatnonzero(mask), mask.shape[1])  # (2-D nonzero is ~10x slower)
    if not len(ys):
        return 0.0
    rows = np.minimum(((ys + 0.5) * qc.mpp_y / cell_um).astype(int), dist_um.shape[0] - 1)
    cols = np.minimum(((xs + 0.5) * qc.mpp / cell_um).astype(int), dist_um.shape[1] - 1)
    near = dist_um[rows, cols] <= REVIEW_BLUR_NEAR_UM
    return _count(near) * qc.mpp * qc.mpp_y / 1e6


def _count(mask: np.ndarray) -> float:
    """The pixels of a bool mask (count_nonzero: ~10× faster than a sum of bools)."""
    return float(np.count_nonzero(mask))


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
    after_px = _count(after)
    return {
        "on_glass_mm2": _count(found & ~over) * px_mm2,
        "over_tissue_mm2": _count(over) * px_mm2,
        "over_tissue_pct": 100 * _count(over) / after_px if after_px else 0.0,
        "uninked_mm2": _count(over & ~filled) * px_mm2,
        "filled_mm2": _count(filled) * px_mm2,
    }
