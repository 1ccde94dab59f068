"""Pixel corrections of the QC stage, applied to every block the tile pass decodes before the
network sees it (a ``transform`` of :func:`idcmap.pipeline.infer.predict_grid`).

Both work in optical density (OD = −log of the transmitted fraction, per channel), on fields
measured on the tissue thumbnail's grid (~16 µm/px) and upsampled bilinearly to the block:

* **Ink** (:mod:`idcmap.pipeline.ink`): a dye *adds* its OD to the tissue under it, so the
  ink's field is subtracted.
* **Folds**: a fold lays the section over itself, so the light crosses twice the tissue and
  its OD is :data:`FOLD_OD_FACTOR` times the single layer's. The fold's OD is divided by it
  (:func:`fold_gain`). Measured with ``benchmarks/artefacts.py`` (docs/qc.md#folds-un-folded): the
  network read folded IDC as not IDC (a painted fold over the tumour: IDC area −14 … −24 %).

``rgb' = (rgb + 1) · exp(OD · (1 − gain) + ink) − 1``: the fold's excess OD and the ink's OD
come off together.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["FOLD_OD_FACTOR", "PixelCorrector", "fold_gain"]

#: A fold's OD over the single layer's: two layers of the section. Chosen on 27 painted folds
#: of 9 TRAIN/VALID mosaics (factors 1.6–2.3): pooled Dice 0.8194 as read, 0.8229 with 2.0,
#: 0.8227 with 1.8, 0.8232 with 2.2 (clean 0.8241).
FOLD_OD_FACTOR = 2.0
#: The fold mask's edge is softened by a Gaussian of this sigma (thumbnail px): a fold's edge
#: is good to a pixel, and a hard step would draw an edge into the tissue.
FOLD_EDGE_SIGMA_PX = 1.0


def fold_gain(fold: np.ndarray, factor: float = FOLD_OD_FACTOR) -> np.ndarray:
    """float32 rows×cols: what each thumbnail px's OD is multiplied by to undo a fold —
    1 / ``factor`` inside ``fold`` (bool, the thumbnail's grid), 1 outside, soft at the edge."""
    soft = ndimage.gaussian_filter(np.asarray(fold, np.float32), FOLD_EDGE_SIGMA_PX)
    return (1.0 / (1.0 + (factor - 1.0) * soft)).astype(np.float32)


class PixelCorrector:
    """Takes the ink's OD off, and divides a fold's OD by its factor, on the blocks of the
    tile pass.

    Args:
        px_level0: (x, y) level-0 px per thumbnail px.
        level0_per_model_px: (x, y) level-0 px per model px (the grid's).
        stride_px: the tile grid's stride, model px.
        ink_od: float32 rows×cols×3, the ink's OD on the thumbnail's grid
            (:func:`idcmap.pipeline.ink.soft_field`); None: no ink.
        gain: float32 rows×cols, the OD gain on the thumbnail's grid (:func:`fold_gain`);
            None: no fold.
    """

    def __init__(
        self,
        px_level0: tuple[float, float],
        level0_per_model_px: tuple[float, float],
        stride_px: int,
        *,
        ink_od: np.ndarray | None = None,
        gain: np.ndarray | None = None,
    ) -> None:
        if ink_od is None and gain is None:
            raise ValueError("PixelCorrector needs an ink field, a fold gain or both")
        self.ink_od = ink_od
        self.gain = gain
        shape = (ink_od if ink_od is not None else gain).shape[:2]  # type: ignore[union-attr]
        self.any = np.zeros(shape, bool)
        if ink_od is not None:
            self.any |= (ink_od[..., 0] > 0) | (ink_od[..., 1] > 0) | (ink_od[..., 2] > 0)
        if gain is not None:
            self.any |= gain < 1.0
        self.scale = (level0_per_model_px[0] / px_level0[0], level0_per_model_px[1] / px_level0[1])
        self.stride = stride_px

    def __call__(self, row0: int, col0: int, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` (a block at model px whose top-left is tile (row0, col0)) corrected; the
        block itself where no correction reaches it."""
        h, w = pixels.shape[:2]
        sx, sy = self.scale
        bx, by = col0 * self.stride, row0 * self.stride  # the block's corner, model px
        th, tw = self.any.shape
        # thumbnail px under the block (edge convention: px i spans [i, i + 1))
        x0, x1 = max(0, int(bx * sx) - 1), min(tw, int(np.ceil((bx + w) * sx)) + 1)
        y0, y1 = max(0, int(by * sy) - 1), min(th, int(np.ceil((by + h) * sy)) + 1)
        if x0 >= x1 or y0 >= y1:
            return pixels
        touched = self.any[y0:y1, x0:x1]
        if not touched.any():
            return pixels
        rows, cols = np.flatnonzero(touched.any(1)), np.flatnonzero(touched.any(0))
        ty0, ty1 = max(y0 + rows[0] - 1, 0), min(y0 + rows[-1] + 2, th)  # + bilinear reach
        tx0, tx1 = max(x0 + cols[0] - 1, 0), min(x0 + cols[-1] + 2, tw)
        # the block's px whose centres fall there
        i0, i1 = max(math.ceil(ty0 / sy - by), 0), min(math.floor(ty1 / sy - by), h)
        j0, j1 = max(math.ceil(tx0 / sx - bx), 0), min(math.floor(tx1 / sx - bx), w)
        if i0 >= i1 or j0 >= j1:
            return pixels
        box = (
            (bx + j0) * sx - tx0,
            (by + i0) * sy - ty0,
            (bx + j1) * sx - tx0,
            (by + i1) * sy - ty0,
        )
        size = (j1 - j0, i1 - i0)
        add = np.zeros((i1 - i0, j1 - j0, 3), np.float32)  # OD taken off each px
        sub = pixels[i0:i1, j0:j1].astype(np.float32) + 1.0
        if self.gain is not None:
            g = _upsample(self.gain[ty0:ty1, tx0:tx1], size, box)
            od = -np.log(sub / 256.0)
            add += od * (1.0 - g)[..., None]
        if self.ink_od is not None:
            for c in range(3):
                add[..., c] += _upsample(self.ink_od[ty0:ty1, tx0:tx1, c], size, box)
        out = pixels.copy()
        out[i0:i1, j0:j1] = np.clip(np.rint(sub * np.exp(add) - 1.0), 0, 255).astype(np.uint8)
        return out


def _upsample(
    field: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]
) -> np.ndarray:
    """``field`` (float32 2-D, thumbnail px) resampled bilinearly to ``size`` (w, h) over
    ``box`` (its part, in thumbnail px, that the block's px span)."""
    from PIL import Image

    crop = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32), mode="F")
    return np.asarray(crop.resize(size, Image.Resampling.BILINEAR, box=box))
