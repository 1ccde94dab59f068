"""Tissue stage: a tissue mask from a low-resolution read of the slide.

Method, per mask pixel at ~16 µm/px (:meth:`Slide.read_at_mpp`, already box-averaged; read by
the tile pass's rule, :meth:`Slide.read_level_for_mpp`: the coarsest level whose *colour* is at
least that fine, decoded at 1/2, 1/4 or 1/8 where it is tiled JPEG; e.g. a 40x 4:2:0 pyramid's
4-µm level at 1/4, not its 16-µm level whose colour is at 32 µm/px):

1. HSV saturation ``(max - min) / max`` of the RGB; near-black pixels (max < 0.1: scanner
   padding, dust) get 0. Glass is grey: saturation ≤ 0.03 on the IDC mosaics and on scans;
   H&E tissue is ≥ 0.15, pale tissue (fat, loose stroma, tissue edges) 0.05–0.15.
2. Hysteresis threshold: seeds above ``high`` = Otsu's threshold clamped to
   [``SAT_FLOOR``, ``SAT_CEIL``], grown over 8-connected pixels above ``SAT_LOW``. The clamp
   keeps a flat glass / blank slide from being split by Otsu into "tissue" and "glass" (nothing
   reaches the floor) and an all-tissue slide from being split into dark and pale tissue; the
   growth keeps the pale tissue edges that hold IDC patches on the mosaics.
3. A small closing (disk of ~40 µm diameter), removal of pieces smaller than
   ``min_object_um2`` (never more than a tenth of the image, so a tiny slide keeps its tissue)
   and filling of holes (not touching the border) smaller than ``min_hole_um2``; µm² are
   converted to pixels with the mask's µm/px.

Measured on the 28 IDC mosaics of ``../shared/data/idc/slides`` with the defaults (their 4-µm
level at 1/4): 99.90 % of the 6,998 IDC cells are ≥ 20 % tissue (the tile stage's default
``min_tissue``), ≥ 99.2 % on every mosaic; none of the glass filler away from cells is tissue
(the 16-µm level read before: 99.93 %, ≥ 99.4 %, 163 mask px of 7.3 million on the filler).

Coordinates: the mask covers the slide's bounds rectangle; ``origin_level0_px`` is in the
QuPath frame (bounds origin subtracted, see :mod:`idcmap.io.slide`), so it is (0, 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from idcmap.errors import UsageError
from idcmap.io.slide import Slide

__all__ = [
    "SAT_CEIL",
    "SAT_FLOOR",
    "TissueMask",
    "detect_tissue",
    "tissue_mask_from_rgb",
]

SAT_FLOOR = 0.05
"""Lowest saturation threshold: anything at or below is glass, whatever Otsu says."""
SAT_CEIL = 0.15
"""Highest saturation threshold: anything above is tissue, whatever Otsu says."""
SAT_LOW = 0.05
"""Pale tissue: saturation above this counts when connected to tissue above the threshold."""
_DARK = 0.1
_CLOSE_UM = 40.0


@dataclass(frozen=True)
class TissueMask:
    """Tissue on a regular grid over the slide's bounds rectangle.

    Attributes:
        mask: bool rows×cols, True where tissue.
        origin_level0_px: (x, y) of the mask's top-left corner, level-0 px, QuPath frame.
        px_level0: level-0 px per mask px (x, y).
        mpp: µm per mask px along x.
        thumbnail: uint8 rows×cols×3 RGB of the same grid (for the heatmap PNG).
        mpp_y: µm per mask px along y (None: same as ``mpp``).
    """

    mask: np.ndarray
    origin_level0_px: tuple[float, float]
    px_level0: tuple[float, float]
    mpp: float
    thumbnail: np.ndarray
    mpp_y: float | None = None

    @property
    def area_um2(self) -> float:
        """Tissue area in µm²."""
        return float(self.mask.sum()) * self.mpp * (self.mpp_y or self.mpp)

    @property
    def fraction(self) -> float:
        """Fraction of the mask that is tissue (0–1)."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def detect_tissue(
    slide: Slide,
    *,
    target_mpp: float = 16.0,
    min_object_um2: float = 50_000.0,
    min_hole_um2: float = 20_000.0,
    recolour: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TissueMask:
    """Tissue mask of ``slide`` at ~``target_mpp`` µm/px (see the module docstring).

    Args:
        target_mpp: µm per mask pixel wanted (read as :meth:`Slide.read_level_for_mpp` says).
        min_object_um2: tissue pieces smaller than this (µm²) are dropped.
        min_hole_um2: holes in tissue smaller than this (µm²) are filled.
        recolour: a colour map of the thumbnail the mask is drawn on (the per-slide glass
            gain of :mod:`idcmap.pipeline.stain`: a tinted glass is not tissue); the thumbnail
            kept is the one read.
    """
    for name, v in (
        ("target_mpp", target_mpp),
        ("min_object_um2", min_object_um2),
        ("min_hole_um2", min_hole_um2),
    ):
        if not (math.isfinite(v) and v >= 0) or (name == "target_mpp" and v <= 0):
            raise UsageError(f"tissue {name} must be a positive number, got {v}")
    rgb, (sx, sy) = slide.read_at_mpp(target_mpp)
    mpp_x, mpp_y = sx * slide.info.mpp, sy * slide.info.mpp_y
    mask = tissue_mask_from_rgb(
        rgb if recolour is None else recolour(rgb),
        mpp_x,
        mpp_y,
        min_object_um2=min_object_um2,
        min_hole_um2=min_hole_um2,
    )
    return TissueMask(
        mask=mask,
        origin_level0_px=(0.0, 0.0),
        px_level0=(sx, sy),
        mpp=mpp_x,
        thumbnail=rgb,
        mpp_y=mpp_y,
    )


def saturation(rgb: np.ndarray) -> np.ndarray:
    """float32 rows×cols HSV saturation in [0, 1]; 0 for near-black pixels."""
    # the channels' max and min on the 8-bit values, then scaled: the same floats as scaling
    # first (x / 255 is monotonic) at a tenth of the time of a max over a 3-long last axis
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b).astype(np.float32) / 255.0
    mn = np.minimum(np.minimum(r, g), b).astype(np.float32) / 255.0
    sat = (mx - mn) / np.maximum(mx, 1e-6)  # any guard > 0: pixels this dark get 0 below
    sat[mx < _DARK] = 0.0
    return sat


def tissue_threshold(sat: np.ndarray) -> float:
    """Otsu threshold of ``sat`` clamped to [SAT_FLOOR, SAT_CEIL] (flat images: the floor)."""
    if sat.size == 0 or float(sat.max() - sat.min()) < 1e-3:
        return SAT_FLOOR
    from skimage.filters import threshold_otsu

    return float(np.clip(threshold_otsu(sat), SAT_FLOOR, SAT_CEIL))


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    mpp_x: float,
    mpp_y: float | None = None,
    *,
    min_object_um2: float = 50_000.0,
    min_hole_um2: float = 20_000.0,
) -> np.ndarray:
    """bool rows×cols tissue mask of a low-resolution RGB image of ``mpp_x`` µm/px."""
    mpp_y = mpp_y or mpp_x
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        return np.zeros(rgb.shape[:2], bool)
    sat = saturation(rgb)  # no smoothing: read_at_mpp already box-averaged each pixel
    high = tissue_threshold(sat)
    mask = sat > high
    if high > SAT_LOW and mask.any():  # hysteresis: pale tissue connected to tissue
        lab, _n = ndimage.label(sat > SAT_LOW, structure=np.ones((3, 3), bool))
        keep = np.zeros(lab.max() + 1, bool)
        keep[np.unique(lab[mask])] = True
        keep[0] = False
        mask = keep[lab]
    r = max(1, round(_CLOSE_UM / max(mpp_x, mpp_y) / 2))
    if min(mask.shape) > 2 * r:
        structure = _disk(r)
        padded = np.pad(mask, r, mode="edge")
        mask = ndimage.binary_closing(padded, structure=structure)[r:-r, r:-r]
    px_um2 = mpp_x * mpp_y
    # never drop a piece bigger than a tenth of the image (a slide smaller than the minimum)
    mask = _remove_small(mask, min(min_object_um2 / px_um2, 0.1 * mask.size))
    holes = ~mask
    lab, n = ndimage.label(holes)
    if n:
        sizes = np.bincount(lab.ravel())
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        fill = sizes < min_hole_um2 / px_um2
        fill[0] = False
        fill[border] = False
        mask = mask | fill[lab]
    return mask


def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop 8-connected True components smaller than ``min_px`` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    lab, _n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= r * r + r
