"""The QC stage's blur: per-cell sharpness from the tile pass (a 16-µm thumbnail cannot see
blur), and the out-of-focus cells (used by :mod:`idcmap.pipeline.qc`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "BLUR_LOGIT_SHIFT",
    "BLUR_RATIO",
    "FLAT_DETAIL",
    "SOFT_LOGIT_SHIFT",
    "SOFT_P90",
    "SharpnessGrid",
    "block_sharpness",
    "find_blur",
    "lift_blurred",
    "sharp_p90",
]

#: A tissue cell is blurred when its sharpness is below this fraction of the slide's 90th
#: percentile of tissue cells (the sharp tissue; a median moves when blur covers half a slide).
#: Measured: clean tissue cells ≥ 0.26 × p90 at their 0.5th percentile (8863, 9035, 9077, 9124);
#: cells under a σ = 10 µm band: median 0.18–0.24 × p90.
BLUR_RATIO = 0.25

#: A slide whose sharp tissue (the 90th percentile of its tissue cells' sharpness) is below this
#: is softer as a whole than the slides the model was validated on: ``find_blur``'s relative
#: test cannot see a slide blurred all over. Measured (the default read, stride 50): the 28
#: mosaics 1.44–2.36, their 4:2:0 q80 copies 1.69–2.37, seven 40x pyramids 1.10–1.59 (1x/4x
#: only: 1.56–1.59), CMU-1-Small-Region.svs 1.84; the 6 test mosaics blurred by σ 0.7 px (2.8 µm,
#: −0.028 Dice) 0.63–0.85.
SOFT_P90 = 0.95

#: A cell whose medium detail (:func:`block_sharpness`, grey levels) is below this has no
#: texture to judge focus by: flat glass that a tinted slide got counted as tissue (a colour
#: transfer of the shift table: 60 % of 8913's "tissue" had exactly 0), not blurred tissue (the
#: painted battery's blurred cells: ≥ 0.3 on 9 slides). Its sharpness is undefined (NaN).
FLAT_DETAIL = 0.1

#: Blur takes the detail the network reads IDC from, so its probability falls on blurred IDC
#: (a painted band over IDC: −0.079 pooled Dice with ``idc-v4-glass``); the cells
#: :func:`find_blur` finds get this much added to their logit before the aggregator
#: (:func:`lift_blurred`). Fitted on the 3 VALID mosaics' painted-blur battery (0, 1, 2, 3:
#: pooled Dice 0.729, 0.791, 0.808, 0.780; clean 0.819); the command and the TEST figures are
#: in docs/qc.md#blur-lift.
BLUR_LOGIT_SHIFT = 2.0

#: A slide softer as a whole than :data:`SOFT_P90` reads paler everywhere (the shift table's
#: σ 0.7 px blur: −0.028 pooled Dice on TEST): its other tissue cells get this much added to
#: their logit. Fitted on the 22 TRAIN+VALID mosaics blurred by σ 0.7 px (0, 0.25, 0.5, 0.75,
#: 1, 1.5: pooled Dice 0.815, 0.837, 0.844, 0.837, 0.820, 0.767; unblurred 0.840); the command
#: and the TEST figures are in docs/qc.md#blur-lift.
SOFT_LOGIT_SHIFT = 0.5


def block_sharpness(
    pixels: np.ndarray, cell_px: int, cells: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per ``cell_px`` cell of a 4-µm/px block: (fine detail, medium detail) of its grey image:
    mean |g − B₁(g)| and mean |B₁(g) − B₄(g)| (B_r: PIL box blur of radius r px, fast C).
    Their ratio is the cell's sharpness, free of contrast: a blur of σ ≥ 6 µm removes the fine
    detail far more than the medium one.

    Measured on the central half of each cell (4× fewer pixels), each centre padded with its
    own edge pixels as far as the two blurs reach (:data:`_REACH_PX`): a cell's figures depend on
    its own pixels only, so the tile pass reads no neighbours for them. ``cells`` (bool, the
    block's rows × cols of cells): measure those only (NaN elsewhere; the same figures)."""
    from PIL import Image, ImageFilter

    r, c = pixels.shape[0] // cell_px, pixels.shape[1] // cell_px
    q = cell_px // 4
    win = cell_px - 2 * q
    grid = pixels[: r * cell_px, : c * cell_px].reshape(r, cell_px, c, cell_px, -1)
    centre = grid[:, q : q + win, :, q : q + win].transpose(0, 2, 1, 3, 4)  # r×c×win×win×ch
    if cells is None:
        cells = np.ones((r, c), bool)
    rr, cc = np.nonzero(cells[:r, :c])
    fine_out = np.full((r, c), np.nan, np.float32)
    med_out = fine_out.copy()
    if len(rr) == 0:
        return fine_out, med_out
    # the cells asked for, one under the other: a strip n·win px tall (gathered from the view:
    # only their px are copied)
    strip = centre[rr, cc].reshape(len(rr) * win, win, -1)
    grey = np.asarray(Image.fromarray(np.ascontiguousarray(strip)).convert("L"))
    e = _REACH_PX
    padded = np.pad(grey.reshape(-1, win, win), ((0, 0), (e, e), (e, e)), mode="edge")
    side = win + 2 * e
    img = Image.fromarray(np.ascontiguousarray(padded.reshape(-1, side)))
    b1i = img.filter(ImageFilter.BoxBlur(1))
    b4i = b1i.filter(ImageFilter.BoxBlur(4))

    def inner(im: Image.Image) -> np.ndarray:
        return np.asarray(im, np.int16).reshape(-1, side, side)[:, e : e + win, e : e + win]

    g, b1, b4 = inner(img), inner(b1i), inner(b4i)
    fine_out[rr, cc] = np.abs(g - b1).mean((1, 2), dtype=np.float32)
    med_out[rr, cc] = np.abs(b1 - b4).mean((1, 2), dtype=np.float32)
    return fine_out, med_out


#: How far (px) the two box blurs of :func:`block_sharpness` reach together (radius 1 + 4).
_REACH_PX = 5


class SharpnessGrid:
    """Per heatmap cell fine/medium detail, filled block by block (an ``on_block`` hook)."""

    def __init__(self, shape: tuple[int, int], stride_px: int, patch_px: int) -> None:
        """``shape``: the tile grid's; the sharpness grid is the heatmap's (one more cell per
        axis per extra cell of a tile)."""
        k = patch_px // stride_px
        self.stride = stride_px
        self.fine = np.full((shape[0] + k - 1, shape[1] + k - 1), np.nan, np.float32)
        self.med = self.fine.copy()
        self.k = k
        #: the cells whose sharpness is measured and the tiles read (:meth:`tiles_needed` sets
        #: them; None: every cell of every block)
        self.need: np.ndarray | None = None
        self.read: np.ndarray | None = None
        #: figures :meth:`measure_ahead` measured, by block corner: (its px, fine, medium)
        self._ahead: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def measure_ahead(self, block: Any, keep: np.ndarray) -> None:
        """Measure ``block``'s cells that its ``keep`` tiles cover, ahead of :meth:`add` (a
        reader thread's ``on_read`` hook: it runs while the QC stage decides which tiles stay,
        off the model's path). :meth:`add` takes these figures for the same pixels; a block
        the QC stage corrects since is measured again."""
        tiles = keep[block.row0 : block.row1, block.col0 : block.col1]
        f, m = block_sharpness(block.pixels, self.stride, self._cover(tiles))
        self._ahead[(block.row0, block.col0)] = (block.pixels, f, m)  # (atomic: one store)

    def _cover(self, tiles: np.ndarray) -> np.ndarray:
        """The cells ``tiles`` (a block's) cover: one more per axis per extra cell of a tile."""
        rows, cols = tiles.shape
        cover = np.zeros((rows + self.k - 1, cols + self.k - 1), bool)
        for dy in range(self.k):
            for dx in range(self.k):
                cover[dy : dy + rows, dx : dx + cols] |= tiles
        return cover

    def add(self, block: Any) -> None:
        want = None
        if self.read is not None and self.need is not None:
            # the cells this block's read tiles cover (their px are the slide's, not white)
            # and find_blur looks at: measured there only, and only written there
            cover = self._cover(self.read[block.row0 : block.row1, block.col0 : block.col1])
            need = self.need[block.row0 : block.row0 + cover.shape[0], block.col0 :][
                :, : cover.shape[1]
            ]
            want = cover[: need.shape[0], : need.shape[1]] & need
        ahead = self._ahead.pop((block.row0, block.col0), None)
        if want is not None and ahead is not None and ahead[0] is block.pixels:
            # measured ahead on a superset of these cells (the tiles read then ⊇ those read
            # now): a cell's figures depend on its own px only, so they are the same
            f, m = ahead[1], ahead[2]
        else:
            f, m = block_sharpness(block.pixels, self.stride, want)
        r0, c0 = block.row0, block.col0
        hh = min(f.shape[0], self.fine.shape[0] - r0)
        ww = min(f.shape[1], self.fine.shape[1] - c0)
        if want is None:
            self.fine[r0 : r0 + hh, c0 : c0 + ww] = f[:hh, :ww]
            self.med[r0 : r0 + hh, c0 : c0 + ww] = m[:hh, :ww]
            return
        w = want[:hh, :ww]
        self.fine[r0 : r0 + hh, c0 : c0 + ww][w] = f[:hh, :ww][w]
        self.med[r0 : r0 + hh, c0 : c0 + ww][w] = m[:hh, :ww][w]

    def tiles_needed(self, keep: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
        """bool, ``keep``'s shape: the tiles whose px the sharpness of every cell that
        :func:`find_blur` looks at needs (:func:`~idcmap.pipeline.infer.predict_grid`'s
        ``read_tiles``): the kept tiles and those covering the ``fill`` cells (the heatmap's
        tissue cells). A cell's sharpness depends on its own px only (:func:`block_sharpness`),
        so read for those tiles only, those cells' sharpness is a whole read's."""
        rows, cols = keep.shape
        k = self.k
        need = self._cover(keep)  # the cells find_blur looks at (the heatmap grid's shape)
        tiles = keep.copy()  # and every tile covering a fill cell
        if fill is not None and fill.any():
            need |= fill
            for dy in range(k):
                for dx in range(k):
                    tiles |= fill[dy : dy + rows, dx : dx + cols]
        # from now on :meth:`add` measures those cells only, where a read tile covers them
        self.need, self.read = need, tiles
        return tiles

    @property
    def ratio(self) -> np.ndarray:
        """float32 sharpness on the heatmap's grid (NaN where no block was read, and where a
        cell has no detail to measure it by: :data:`FLAT_DETAIL`)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self.fine / np.maximum(self.med, 0.5)
        return np.where(self.med >= FLAT_DETAIL, r, np.nan).astype(np.float32)


def find_blur(
    sharpness: np.ndarray,
    tissue_cells: np.ndarray,
    *,
    min_cells: int = 4,
    p90: float | None = None,
) -> np.ndarray:
    """bool cells: tissue cells whose sharpness is < :data:`BLUR_RATIO` × the slide's 90th
    percentile of tissue cells (``p90``, when the caller has :func:`sharp_p90` already),
    smoothed (3×3 majority) and in pieces of ≥ ``min_cells``."""
    ref = p90 if p90 is not None else sharp_p90(sharpness, tissue_cells)
    if ref is None:
        return np.zeros(sharpness.shape, bool)
    t = tissue_cells & np.isfinite(sharpness)
    low = t & (sharpness < BLUR_RATIO * ref)
    maj = ndimage.uniform_filter(low.astype(np.float32), 3, mode="constant") >= 0.5
    low = (low | (maj & t)) & maj
    lab, _n = ndimage.label(low, structure=np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel())
    keep = sizes >= max(min_cells, 1)
    keep[0] = False
    return keep[lab]


def sharp_p90(sharpness: np.ndarray, tissue_cells: np.ndarray) -> float | None:
    """The slide's sharp tissue: the 90th percentile of its tissue cells' sharpness (None with
    fewer than 10 measured tissue cells); see :data:`SOFT_P90`."""
    t = tissue_cells & np.isfinite(sharpness)
    if t.sum() < 10:
        return None
    return float(np.percentile(sharpness[t], 90))


def lift_blurred(
    prob: np.ndarray, cells: np.ndarray, shift: float = BLUR_LOGIT_SHIFT
) -> np.ndarray:
    """float32 ``prob`` (rows×cols heatmap, NaN off tissue) with ``shift`` added to the logit
    of the ``cells`` (:func:`find_blur`'s, or a soft slide's tissue); the other cells unchanged."""
    out = np.array(prob, dtype=np.float32, copy=True)
    sel = cells & np.isfinite(out)
    if shift and sel.any():
        p = np.clip(out[sel].astype(np.float64), 1e-6, 1 - 1e-6)
        out[sel] = 1.0 / (1.0 + (1.0 - p) / p * math.exp(-shift))
    return out
