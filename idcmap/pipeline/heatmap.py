"""Heatmap stage: tile probabilities stitched onto the stride grid.

Coordinates: level-0 pixels of the slide in the frame QuPath draws in, i.e. relative to
OpenSlide's ``bounds-x/-y`` origin when the slide has one (0 otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Heatmap:
    """IDC probability on a regular grid of cells (one cell = ``stride_px`` model pixels).

    Attributes:
        prob: float32 rows×cols; NaN where the cell is outside tissue (not evaluated).
        origin_level0_px: (x, y) of the top-left corner of cell (0, 0), level-0 px.
        cell_level0_px: (width, height) of one cell in level-0 px.
        slide_mpp: µm per level-0 pixel of the slide along x.
        model_mpp: µm per model pixel.
        stride_px: cell side in model pixels (the tile stride).
        patch_px: tile side in model pixels.
        slide_mpp_y: µm per level-0 pixel along y (None: square pixels, ``slide_mpp``).

    Every length and area derives from :attr:`cell_um` (x and y apart), so slides with
    non-square pixels get the same figures in every stage.
    """

    prob: np.ndarray
    origin_level0_px: tuple[float, float]
    cell_level0_px: tuple[float, float]
    slide_mpp: float
    model_mpp: float
    stride_px: int
    patch_px: int
    slide_mpp_y: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.prob.shape

    @property
    def tissue(self) -> np.ndarray:
        """bool rows×cols: cells that were evaluated."""
        return ~np.isnan(self.prob)

    @property
    def mpp_xy(self) -> tuple[float, float]:
        """µm per level-0 pixel (x, y)."""
        return self.slide_mpp, self.slide_mpp if self.slide_mpp_y is None else self.slide_mpp_y

    @property
    def cell_um(self) -> tuple[float, float]:
        """(width, height) of one cell in µm."""
        mx, my = self.mpp_xy
        return self.cell_level0_px[0] * mx, self.cell_level0_px[1] * my

    @property
    def cell_area_um2(self) -> float:
        w, h = self.cell_um
        return w * h

    def cell_centres_level0(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 (x, y) of every cell's centre, each rows×cols (cell (r, c) covers
        x ∈ [ox + c·w, ox + (c+1)·w), y likewise)."""
        rows, cols = self.shape
        ox, oy = self.origin_level0_px
        cw, ch = self.cell_level0_px
        cx = ox + (np.arange(cols) + 0.5) * cw
        cy = oy + (np.arange(rows) + 0.5) * ch
        gx, gy = np.meshgrid(cx, cy)
        return gx, gy


def stitch(
    tile_prob: np.ndarray,
    tile_valid: np.ndarray,
    cells_per_tile: int,
) -> np.ndarray:
    """Average overlapping tiles onto the stride grid.

    Args:
        tile_prob: float rows_t×cols_t, probability of the tile whose top-left cell is (r, c).
        tile_valid: bool rows_t×cols_t, tiles that were evaluated (in tissue).
        cells_per_tile: tile side in cells (``patch_px / stride_px``, an integer ≥ 1).

    Returns:
        float32 (rows_t + k - 1)×(cols_t + k - 1) with ``k = cells_per_tile``: the mean of every
        evaluated tile covering the cell, NaN where no evaluated tile covers it.
    """
    k = int(cells_per_tile)
    rows, cols = tile_prob.shape
    total = np.zeros((rows + k - 1, cols + k - 1), dtype=np.float64)
    count = np.zeros_like(total)
    p = np.where(tile_valid, tile_prob, 0.0)
    v = tile_valid.astype(np.float64)
    for dy in range(k):
        for dx in range(k):
            total[dy : dy + rows, dx : dx + cols] += p
            count[dy : dy + rows, dx : dx + cols] += v
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[count == 0] = np.nan
    return out.astype(np.float32)


def smooth(heatmap: Heatmap, sigma_um: float) -> Heatmap:
    """Tissue-aware Gaussian smoothing of the probabilities (cells outside tissue stay NaN and
    do not pull their neighbours towards 0).

    IDC regions are contiguous over hundreds of µm while a single 200-µm tile sees little
    context; averaging neighbours removes isolated false positives and fills gaps.

    Args:
        heatmap: the stitched heatmap.
        sigma_um: Gaussian sigma in µm (0 returns ``heatmap`` unchanged).
    """
    if sigma_um <= 0 or heatmap.prob.size == 0:
        return heatmap
    from scipy import ndimage

    cw, ch = heatmap.cell_um
    sigma = (sigma_um / ch, sigma_um / cw)  # (rows, cols)
    tissue = heatmap.tissue
    weight = tissue.astype(np.float64)
    num = ndimage.gaussian_filter(
        np.where(tissue, heatmap.prob, 0.0).astype(np.float64), sigma, mode="constant"
    )
    den = ndimage.gaussian_filter(weight, sigma, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        # den > 0 on every tissue cell (it weighs itself); the guard only avoids 0/0 elsewhere
        out = np.where(tissue, num / np.maximum(den, 1e-12), np.nan)
    return replace(heatmap, prob=out.astype(np.float32))
