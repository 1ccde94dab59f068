"""Tiles stage: the tile grid at the model's µm/px, and block reading in background workers.

The grid lives in *model pixels* (µm/px of the model, e.g. 4.0): tile ``(r, c)`` has its top-left
corner at model px ``(c * stride_px, r * stride_px)`` from the slide's bounds origin. Tiles cover
the whole image; a last, partial tile is padded with white.

Pixels are never read one tile at a time: the grid is cut into large *blocks* of tiles, each block
read in one go from the level :meth:`~idcmap.io.slide.Slide.read_level_for_mpp` chooses (the
coarsest whose colour is at full resolution at the model's µm/px, JPEG-decoded at 1/2, 1/4 or
1/8 where that reaches it), resized with antialiasing (area average) to model pixels, then
handed to the model as a whole. Blocks are
read and resized by a small pool of threads, each with its own slide handle, while the model
computes on the previous ones; at most ``prefetch`` blocks are in memory at once, so memory does
not grow with the slide.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from idcmap.errors import SlideError, UsageError
from idcmap.io.jpegtiff import TileDecoder
from idcmap.io.slide import PX_EPS, ReadLevel, Slide
from idcmap.pipeline.tissue import TissueMask

#: Largest block side, in pixels of the level that is read. Bounds the memory of one read: the
#: reader's RGBA buffers and conversions take about 30 bytes per level px, so 2048² px is about
#: 120 MiB per worker, while a read this size costs little more per pixel than a larger one.
MAX_READ_PX = 2048

#: Largest block side in model px (1024 model px = 20 tiles of 50 px). Blocks this size keep the
#: pipeline busy — the model computes on one block while the workers decode the next ones, and
#: blocks without tissue are never decoded — while the per-read overhead and the overlap between
#: blocks (``patch - stride`` px at each edge) stay small.
BLOCK_MODEL_PX = 1024

#: Margin, in model px, round the kept tiles within which a ``kept_only`` read still decodes
#: (the area resize to model px averages read px at most one model px away).
KEPT_MARGIN_MODEL_PX = 2


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles are, and which of them hold tissue.

    Attributes:
        model_mpp: µm per model px.
        patch_px: tile side, model px.
        stride_px: step between tiles, model px (divides ``patch_px``).
        level0_per_model_px: (x, y) level-0 px per model px.
        bounds_level0_px: (x, y, w, h) of the image region in the full level-0 frame.
        tissue_fraction: float rows×cols, fraction of each tile covered by tissue.
        keep: bool rows×cols, tiles to evaluate (tissue fraction ≥ ``min_tissue``).
    """

    model_mpp: float
    patch_px: int
    stride_px: int
    level0_per_model_px: tuple[float, float]
    bounds_level0_px: tuple[int, int, int, int]
    tissue_fraction: np.ndarray
    keep: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.keep.shape

    @property
    def cells_per_tile(self) -> int:
        return self.patch_px // self.stride_px

    @property
    def n_tiles(self) -> int:
        return int(self.keep.sum())

    @property
    def cell_level0_px(self) -> tuple[float, float]:
        fx, fy = self.level0_per_model_px
        return (self.stride_px * fx, self.stride_px * fy)


def check_stride(stride_px: int, patch_px: int) -> None:
    if not isinstance(stride_px, int) or stride_px <= 0 or patch_px % stride_px:
        divisors = [d for d in range(patch_px, 0, -1) if patch_px % d == 0]
        raise UsageError(
            f"stride_px={stride_px} is not allowed: it must divide the patch size {patch_px} px "
            f"(one of {divisors}) so that overlapping tiles stitch onto one grid"
        )


def make_grid(
    slide: Slide,
    tissue: TissueMask | None,
    *,
    model_mpp: float,
    patch_px: int,
    stride_px: int,
    min_tissue: float = 0.2,
) -> TileGrid:
    """Lay the tile grid over the slide's bounds and measure each tile's tissue fraction.

    Args:
        slide: the open slide (its ``info.mpp`` gives level-0 µm/px).
        tissue: tissue mask of the slide; None counts every tile as all tissue.
        model_mpp: µm per model px (e.g. 4.0).
        patch_px: tile side in model px (e.g. 50).
        stride_px: tile step in model px; must divide ``patch_px``.
        min_tissue: keep tiles whose tissue fraction is at least this (0–1).
    """
    check_stride(stride_px, patch_px)
    if not 0.0 <= min_tissue <= 1.0:
        raise UsageError(f"min_tissue={min_tissue} must lie in [0, 1]")
    info = slide.info
    fx, fy = model_mpp / info.mpp, model_mpp / info.mpp_y
    bx, by, bw, bh = info.bounds_level0_px
    width_m, height_m = bw / fx, bh / fy  # image size in model px
    k = patch_px // stride_px
    cols = max(1, math.ceil(max(width_m - patch_px, 0) / stride_px) + 1)
    rows = max(1, math.ceil(max(height_m - patch_px, 0) / stride_px) + 1)
    if tissue is None:
        cell_frac = np.ones((rows + k - 1, cols + k - 1))
    else:
        cell_frac = cell_fraction(
            tissue, rows + k - 1, cols + k - 1, stride_px * fx, stride_px * fy
        )
    # tile fraction = mean of its k×k cells, as k row sums then k column sums: no summed-area
    # table, whose float cancellation would put a tile at exactly min_tissue on either side of it
    rows_k = np.zeros((rows, cols + k - 1))
    for dy in range(k):
        rows_k += cell_frac[dy : dy + rows]
    tile_frac = np.zeros((rows, cols))
    for dx in range(k):
        tile_frac += rows_k[:, dx : dx + cols]
    tile_frac /= k * k
    return TileGrid(
        model_mpp=model_mpp,
        patch_px=patch_px,
        stride_px=stride_px,
        level0_per_model_px=(fx, fy),
        bounds_level0_px=(bx, by, bw, bh),
        tissue_fraction=tile_frac.astype(np.float32),
        # min_tissue 0 still needs some tissue: 1e-6 is below any real fraction (1 px of 1e6)
        keep=tile_frac >= max(min_tissue, 1e-6),
    )


def cell_fraction(tissue: TissueMask, rows: int, cols: int, cw: float, ch: float) -> np.ndarray:
    """Fraction of ``tissue.mask``'s pixels (by centre) inside each cell of a grid of cw×ch
    level-0 px from the bounds origin (any bool mask on a :class:`TissueMask`'s grid: the QC
    stage's artefact masks too)."""
    m = tissue.mask
    # summed-area table of counts: int32 is exact (and ~5× faster than float64 with its pad)
    sat = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.int32)
    np.cumsum(m, 0, dtype=np.int32, out=sat[1:, 1:])
    np.cumsum(sat[1:, 1:], 1, out=sat[1:, 1:])
    ox, oy = tissue.origin_level0_px
    px, py = tissue.px_level0

    def edges(n: int, cell: float, origin: float, pxs: float, limit: int) -> np.ndarray:
        # mask px i has its centre at origin + (i + .5) * pxs; cell j spans [j*cell, (j+1)*cell)
        e = np.ceil((np.arange(n + 1) * cell - origin) / pxs - 0.5).astype(np.int64)
        return np.clip(e, 0, limit)

    ex = edges(cols, cw, ox, px, m.shape[1])
    ey = edges(rows, ch, oy, py, m.shape[0])
    # cells finer than a mask px would get no centre: widen them to the nearest px
    ex1 = np.maximum(ex[1:], np.minimum(ex[:-1] + 1, m.shape[1]))
    ey1 = np.maximum(ey[1:], np.minimum(ey[:-1] + 1, m.shape[0]))
    x0, y0 = ex[:-1], ey[:-1]
    total = sat[ey1][:, ex1] - sat[y0][:, ex1] - sat[ey1][:, x0] + sat[y0][:, x0]
    area = np.outer(ey1 - y0, ex1 - x0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(area > 0, total / area, 0.0)
    return frac


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A rectangle of tiles ``[row0, row1) × [col0, col1)`` and its pixels at model µm/px.

    ``pixels`` is uint8 H×W×3 with its top-left at tile (row0, col0)'s corner;
    ``H = (row1 - row0 - 1) * stride + patch`` (likewise W).
    """

    row0: int
    row1: int
    col0: int
    col1: int
    pixels: np.ndarray
    read_s: float = 0.0
    resize_s: float = 0.0


def plan_blocks(
    grid: TileGrid,
    level_downsample: float,
    max_read_px: int = MAX_READ_PX,
    block_model_px: int = BLOCK_MODEL_PX,
) -> list[tuple[int, int, int, int]]:
    """Split the grid into blocks of tiles holding at least one kept tile.

    A block is at most ``block_model_px`` model px a side, and its read at the chosen level at
    most ``max_read_px`` level px a side.
    """
    s = max(grid.level0_per_model_px) / level_downsample  # level px per model px (≥ 1)
    side_m = max(grid.patch_px, min(int(max_read_px / s), block_model_px))  # model px per side
    n = max(1, (side_m - grid.patch_px) // grid.stride_px + 1)  # tiles per block side
    rows, cols = grid.shape
    blocks = []
    for r0 in range(0, rows, n):
        for c0 in range(0, cols, n):
            r1, c1 = min(r0 + n, rows), min(c0 + n, cols)
            if grid.keep[r0:r1, c0:c1].any():
                blocks.append((r0, r1, c0, c1))
    return blocks


def read_block(
    slide: Slide,
    grid: TileGrid,
    rl: ReadLevel,
    rows: tuple[int, int],
    cols: tuple[int, int],
    decoder: TileDecoder | None = None,
    kept_only: bool = False,
) -> Block:
    """Read one block of tiles from ``rl`` (:meth:`Slide.read_level_for_mpp`: a level, maybe
    decoded at 1/2, 1/4, 1/8) and resize it to model px (area average). ``decoder``: see
    :meth:`Slide.read_scaled`.

    ``kept_only``: JPEG tiles of the level under none of the block's kept tiles (with a margin
    for the resize) are not decoded and stay white; the kept tiles' pixels are unchanged."""
    (r0, r1), (c0, c1) = rows, cols
    st, p = grid.stride_px, grid.patch_px
    mx0, my0 = c0 * st, r0 * st
    w_m, h_m = (c1 - c0 - 1) * st + p, (r1 - r0 - 1) * st + p
    fx, fy = grid.level0_per_model_px
    bx, by, bw, bh = grid.bounds_level0_px
    d = rl.downsample
    lw, lh = rl.dimensions
    # wanted region in level px (float), clipped to the bounds region and to the level
    fx0, fy0 = (bx + mx0 * fx) / d, (by + my0 * fy) / d
    fx1, fy1 = (bx + (mx0 + w_m) * fx) / d, (by + (my0 + h_m) * fy) / d
    lim_x1, lim_y1 = min((bx + bw) / d, lw), min((by + bh) / d, lh)
    ix0, iy0 = math.floor(fx0 + PX_EPS), math.floor(fy0 + PX_EPS)
    ix1 = min(math.ceil(fx1 - PX_EPS), math.floor(lim_x1 + PX_EPS))
    iy1 = min(math.ceil(fy1 - PX_EPS), math.floor(lim_y1 + PX_EPS))
    out = np.full((h_m, w_m, 3), 255, dtype=np.uint8)
    t0 = time.perf_counter()
    if ix1 <= ix0 or iy1 <= iy0:
        return Block(r0, r1, c0, c1, out)
    sx, sy = d / fx, d / fy  # model px per level px (≤ 1 when the level is finer)
    need = None
    if kept_only:
        keep = grid.keep[r0:r1, c0:c1]
        need = _kept_px(keep, st, p, (ix0 - fx0, iy0 - fy0), (sx, sy))
    region = slide.read_scaled(rl, (ix0, iy0), (ix1 - ix0, iy1 - iy0), decoder=decoder, need=need)
    t1 = time.perf_counter()
    if abs(sx - 1) < PX_EPS and abs(sy - 1) < PX_EPS:  # same scale: no resize
        resized = region
        ox, oy = ix0 - fx0, iy0 - fy0
    else:
        tw = max(1, round((ix1 - ix0) * sx))
        th = max(1, round((iy1 - iy0) * sy))
        resized = _area_resize(region, tw, th)
        ox, oy = (ix0 - fx0) * sx, (iy0 - fy0) * sy
    # place at the (sub-pixel rounded) offset of the block's origin; the rest stays white
    dx, dy = round(ox), round(oy)
    src = resized[max(0, -dy) :, max(0, -dx) :]
    hh, ww = min(src.shape[0], h_m - max(dy, 0)), min(src.shape[1], w_m - max(dx, 0))
    if hh > 0 and ww > 0:
        out[max(dy, 0) : max(dy, 0) + hh, max(dx, 0) : max(dx, 0) + ww] = src[:hh, :ww]
    return Block(r0, r1, c0, c1, out, read_s=t1 - t0, resize_s=time.perf_counter() - t1)


def _kept_px(
    keep: np.ndarray,
    stride_px: int,
    patch_px: int,
    offset: tuple[float, float],
    model_per_read_px: tuple[float, float],
) -> Callable[[int, int, int, int], bool]:
    """``need(x0, y0, x1, y1)`` over a block's read px: does the rectangle touch a kept tile?

    Read px ``v`` lies at model px ``(v + offset) · model_per_read_px``; the rectangle is widened
    by :data:`KEPT_MARGIN_MODEL_PX` so that a resize's filter never reaches a skipped px.
    """
    (ox, oy), (sx, sy) = offset, model_per_read_px
    m = KEPT_MARGIN_MODEL_PX
    rows, cols = keep.shape

    def tiles(a: float, b: float, n: int) -> tuple[int, int]:
        # tiles t with [t·stride, t·stride + patch) meeting [a, b)
        t0 = max(0, math.ceil((a - patch_px) / stride_px + 1e-9))
        return t0, min(n, math.floor((b - 1e-9) / stride_px) + 1)

    def need(x0: int, y0: int, x1: int, y1: int) -> bool:
        c0, c1 = tiles((x0 + ox) * sx - m, (x1 + ox) * sx + m, cols)
        r0, r1 = tiles((y0 + oy) * sy - m, (y1 + oy) * sy + m, rows)
        return c1 > c0 and r1 > r0 and bool(keep[r0:r1, c0:c1].any())

    return need


def _area_resize(region: np.ndarray, tw: int, th: int) -> np.ndarray:
    """uint8 H×W×3 → th×tw×3 by area averaging (PIL box filter); an exact integer factor takes
    PIL's ``reduce``, which gives the same averages about twice as fast."""
    h, w = region.shape[:2]
    region = np.ascontiguousarray(region)
    img = Image.frombuffer("RGB", (w, h), region, "raw", "RGB", 0, 1)  # no copy
    kx, ky = w // tw, h // th
    if kx >= 1 and ky >= 1 and kx * tw == w and ky * th == h:
        out = img.reduce((kx, ky))
    else:
        out = img.resize((tw, th), Image.Resampling.BOX)
    return np.asarray(out)


class BlockReader:
    """The blocks of ``grid`` (``blocks``, in order), read by ``workers`` threads, each with its
    own slide handle, from the moment it is made (``start``; False: at the first block asked
    for): the caller can do other work (the QC stage) while the first blocks are decoded.
    Iterate once; :meth:`close` it when done (or use it as a context manager).

    At most ``prefetch`` blocks (default ``workers + 1``: every worker busy, one block ready)
    are in flight. A read error raises :class:`SlideError` while iterating. ``decoder``: see
    :meth:`Slide.read_scaled`; ``kept_only``: see :func:`read_block`; ``on_read``: called with
    each block in the worker thread that read it (work that needs its px only, done beside the
    model; work ahead: if it fails, its owner must redo it)."""

    def __init__(
        self,
        slide: Slide,
        grid: TileGrid,
        rl: ReadLevel,
        blocks: list[tuple[int, int, int, int]],
        *,
        workers: int = 2,
        prefetch: int | None = None,
        decoder: TileDecoder | None = None,
        kept_only: bool = False,
        start: bool = True,
        on_read: Callable[[Block], None] | None = None,
    ) -> None:
        self.slide, self.grid, self.rl, self.blocks = slide, grid, rl, blocks
        self.workers = workers
        self.prefetch = workers + 1 if prefetch is None else prefetch
        self.decoder, self.kept_only, self.on_read = decoder, kept_only, on_read
        self._local = threading.local()
        self._handles: list[Slide] = []
        self._lock = threading.Lock()
        self._it = iter(blocks)
        self._pending: list[Future[Block]] = []
        self._submitted_all = False  # every block handed to a worker
        self._pool: ThreadPoolExecutor | None = None
        if start:
            self._start()

    def _task(self, b: tuple[int, int, int, int]) -> Block:
        h = getattr(self._local, "slide", None)
        if h is None:
            h = self.slide.reopen()
            self._local.slide = h
            with self._lock:
                self._handles.append(h)
        r0, r1, c0, c1 = b
        block = read_block(h, self.grid, self.rl, (r0, r1), (c0, c1), self.decoder, self.kept_only)
        if self.on_read is not None:
            # work done ahead: its owner redoes what is missing, so a failure here surfaces
            # there as itself, not as a read error of the slide
            with contextlib.suppress(Exception):
                self.on_read(block)
        return block

    def _start(self) -> None:
        if self._pool is not None or self.workers <= 0:
            return
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="idcmap-read")
        for b in self._it:
            self._pending.append(self._pool.submit(self._task, b))
            if len(self._pending) >= self.prefetch:
                break
        else:
            self._submitted_all = True

    @property
    def reads_done(self) -> bool:
        """Whether every block has been read (the workers have nothing left to do)."""
        return self._submitted_all and all(f.done() for f in self._pending)

    def __iter__(self) -> Iterator[Block]:
        if self.workers <= 0:
            for r0, r1, c0, c1 in self._it:
                yield read_block(
                    self.slide, self.grid, self.rl, (r0, r1), (c0, c1), self.decoder, self.kept_only
                )
            return
        self._start()
        assert self._pool is not None
        while self._pending:
            fut = self._pending.pop(0)
            nxt = next(self._it, None)
            if nxt is not None:
                self._pending.append(self._pool.submit(self._task, nxt))
            else:
                self._submitted_all = True
            try:
                yield fut.result()
            except SlideError:
                raise
            except Exception as e:  # decoding errors from deep inside a backend
                name = Path(self.slide.info.path).name
                raise SlideError(
                    f"{name}: cannot read pixels (corrupt or truncated?); re-export or re-scan it",
                    detail=f"{type(e).__name__}: {e}",
                ) from e

    def close(self) -> None:
        """Cancel the reads not started, wait for the others, close the workers' handles."""
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for h in self._handles:
            h.close()
        self._handles.clear()

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
