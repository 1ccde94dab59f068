"""The tissue mask from the tile pass itself, for slides whose tissue read would be the tile
read (the same level at the same scale, e.g. a PNG or a level-0-only slide read at 1/8: there
:func:`~idcmap.pipeline.tissue.detect_tissue` would decode that whole level a second time; see
:func:`idcmap.pipeline.front.tissue_from_tile_pass`)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from idcmap.io.slide import SlideInfo
from idcmap.pipeline.tiles import Block, TileGrid
from idcmap.pipeline.tissue import TissueMask, tissue_mask_from_rgb

__all__ = ["BlockThumbnail"]


class BlockThumbnail:
    """The tissue mask from the tile pass itself, for slides whose tissue read would be the
    tile read (there :func:`detect_tissue` would decode that whole level a second time).

    The tile pass evaluates every tile of a grid laid without a tissue mask and hands each
    decoded block (model px) to :meth:`add`, which box-averages it onto a thumbnail of k×k model
    px per pixel (k = tissue µm/px ÷ model µm/px, rounded); :meth:`tissue` then draws the mask
    from that thumbnail with :func:`tissue_mask_from_rgb`, as :func:`detect_tissue` would from a
    low-resolution read.
    """

    def __init__(self, grid: TileGrid, tissue_mpp: float) -> None:
        self.grid = grid
        self.k = max(1, round(tissue_mpp / grid.model_mpp))
        rows, cols = grid.shape
        h_m = (rows - 1) * grid.stride_px + grid.patch_px
        w_m = (cols - 1) * grid.stride_px + grid.patch_px
        self.thumbnail = np.full((-(-h_m // self.k), -(-w_m // self.k), 3), 255, np.uint8)

    def add(self, block: Block) -> None:
        """Box-average one decoded block onto the thumbnail (blocks may overlap)."""
        k, st, thumb = self.k, self.grid.stride_px, self.thumbnail
        x0, y0 = block.col0 * st, block.row0 * st
        sx, sy = (-x0) % k, (-y0) % k  # start on the thumbnail's k-px lattice
        piece = np.ascontiguousarray(block.pixels[sy:, sx:])
        if piece.size:
            small = np.asarray(Image.fromarray(piece).reduce(k))
            ty, tx = (y0 + sy) // k, (x0 + sx) // k
            hh = min(small.shape[0], thumb.shape[0] - ty)
            ww = min(small.shape[1], thumb.shape[1] - tx)
            thumb[ty : ty + hh, tx : tx + ww] = small[:hh, :ww]

    def tissue(self, info: SlideInfo) -> TissueMask:
        """The tissue mask of the thumbnail, cropped to the slide's bounds."""
        k = self.k
        fx, fy = self.grid.level0_per_model_px
        _, _, bw, bh = self.grid.bounds_level0_px
        rows = max(1, math.ceil(bh / (k * fy)))
        cols = max(1, math.ceil(bw / (k * fx)))
        thumb = self.thumbnail[:rows, :cols]
        mpp_x, mpp_y = k * fx * info.mpp, k * fy * info.mpp_y
        return TissueMask(
            mask=tissue_mask_from_rgb(thumb, mpp_x, mpp_y),
            origin_level0_px=(0.0, 0.0),
            px_level0=(k * fx, k * fy),
            mpp=mpp_x,
            thumbnail=thumb,
            mpp_y=mpp_y,
        )
