"""Run the model over a tile grid, block by block, while background workers read the next blocks."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from idcmap.io.jpegtiff import TileDecoder
from idcmap.io.slide import ReadLevel, Slide
from idcmap.model.runtime import IDCModel
from idcmap.model.runtime import torch_threads as use_torch_threads
from idcmap.pipeline.tiles import Block, BlockReader, TileGrid, plan_blocks

#: Largest side, in model px, of one dense forward pass (bounds activation memory on the CPU:
#: about 0.3 GB for 1024² px with the default widths).
MAX_DENSE_PX = 1024
#: Blocks the readers that :func:`start_reads` starts may decode ahead of the model (a block
#: is at most 1024² model px, 3.1 MB: 38 MB in all). They start before the QC stage, which
#: runs on one thread, and keep the other core busy through it. At the usual ``workers + 1``
#: they stalled after 3 blocks and the QC stage's time added to the slide's (measured in
#: docs/performance.md).
READ_AHEAD_BLOCKS = 12


@dataclass
class InferenceStats:
    """Where the time went (seconds). ``read_s``/``resize_s`` are summed over the worker
    threads, so they overlap ``model_s``; ``wait_s`` is the time the model waited for pixels."""

    level: int = 0
    level_mpp: float = 0.0
    scale: int = 1
    chroma_mpp: float | None = None
    blocks: int = 0
    tiles: int = 0
    dense_blocks: int = 0
    read_s: float = 0.0
    resize_s: float = 0.0
    model_s: float = 0.0
    wait_s: float = 0.0
    wall_s: float = 0.0


def predict_grid(
    slide: Slide,
    grid: TileGrid,
    model: IDCModel,
    *,
    batch_size: int = 512,
    workers: int = 2,
    progress: bool = True,
    desc: str = "tiles",
    on_block: Callable[[Block], None] | None = None,
    torch_threads: int | None = None,
    decoder: TileDecoder | None = None,
    transform: Callable[[int, int, np.ndarray], np.ndarray] | None = None,
    read_tiles: np.ndarray | None = None,
    pixel_map: Callable[[np.ndarray], np.ndarray] | None = None,
    reader: BlockReader | None = None,
) -> tuple[np.ndarray, InferenceStats]:
    """IDC probability of every kept tile of ``grid``.

    Reads the pyramid level nearest-finer to the model's µm/px in large blocks (see
    :mod:`idcmap.pipeline.tiles`). Where the model's architecture declares dense evaluation at the
    grid's stride (IDCNet: multiples of 5 px), a block is evaluated fully convolutionally, so
    overlapping tiles share their computation; otherwise the kept tiles are cut out and batched.

    ``on_block`` (optional) sees every block's pixels after the model (e.g. to build a
    thumbnail from the same decode), as read: whole, or with ``read_tiles`` (bool, the grid's
    shape) the px of the kept tiles and of those only (the rest white), all that it needs.

    ``pixel_map`` (optional) maps each block's uint8 pixels before the model (the per-slide
    stain normalisation, :class:`~idcmap.pipeline.stain.StainMap`).

    ``transform`` (optional) maps a block's pixels before the model: ``transform(row0, col0,
    pixels)`` (e.g. :class:`idcmap.pipeline.correct.PixelCorrector`, which takes pen ink off
    and un-folds folds); its time counts as the model's. Each output px must depend on that
    px's value and place only (blocks are read for their kept tiles only, as without it).

    ``torch_threads`` (optional, CPU only) runs the model with that many torch threads for this
    call and restores torch's process-wide setting afterwards; ``None`` leaves it alone. Give
    the reader workers their cores with :func:`threads_beside_readers` (what the CLI does):
    torch's threads spin-wait for each other, so one pre-empted by a reader stalls the rest.
    Once every block is read the readers' threads go to torch (``torch_threads`` + the
    readers, at most the cores): the call never runs more threads than it was given, and the
    model does not compute on one core while the other idles (the QC stage's reads end
    before the model starts).

    ``decoder`` (optional): the readers decode JPEG tiles with it in batches
    (:class:`~idcmap.io.jpegtorch.TorchTileDecoder`: nvjpeg on CUDA); None: Pillow.

    ``reader`` (optional): blocks already being read (:func:`start_reads`, e.g. while the QC
    stage ran) for a grid whose kept tiles include every tile this call reads; taken over and
    closed. One that does not cover them is closed and the blocks are read afresh.

    Returns:
        (float32 rows×cols probabilities, NaN where the tile was not kept; statistics).
    """
    rl = slide.read_level_for_mpp(grid.model_mpp)
    stats = InferenceStats(
        level=rl.level,
        level_mpp=slide.level_mpp(rl.level),
        scale=rl.scale,
        chroma_mpp=rl.chroma_mpp,
    )
    prob = np.full(grid.shape, np.nan, dtype=np.float32)
    dense_ok = model.supports_dense(grid.stride_px)
    t_start = time.perf_counter()
    bar = tqdm(
        total=grid.n_tiles,
        desc=desc,
        unit="tile",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    with bar, use_torch_threads(torch_threads if model.device.type == "cpu" else None):
        t_wait = time.perf_counter()
        # tiles no kept tile needs are skipped unless a hook looks at every px (a transform,
        # per px, leaves the kept tiles' px what they would be after a whole read)
        kept_only = on_block is None or read_tiles is not None
        read_grid = grid if read_tiles is None else replace(grid, keep=grid.keep | read_tiles)
        if reader is not None and not _covers(reader, read_grid, rl, kept_only):
            reader.close()
            reader = None
        if reader is None:
            reader = BlockReader(
                slide,
                read_grid,
                rl,
                plan_blocks(read_grid, rl.downsample),
                workers=workers,
                decoder=decoder,
                kept_only=kept_only,
            )
        stats.blocks = len(reader.blocks)
        more_threads = _threads_after_reads(torch_threads, reader.workers, model)
        with reader, contextlib.ExitStack() as after_reads:
            for block in reader:
                if more_threads is not None and reader.reads_done:
                    after_reads.enter_context(use_torch_threads(more_threads))
                    more_threads = None
                t0 = time.perf_counter()
                stats.wait_s += t0 - t_wait
                if transform is not None:
                    block = replace(block, pixels=transform(block.row0, block.col0, block.pixels))
                stats.read_s += block.read_s
                stats.resize_s += block.resize_s
                keep = grid.keep[block.row0 : block.row1, block.col0 : block.col1]
                n_keep = int(keep.sum())
                # dense costs about the block's area in tiles (overlapping tiles share their
                # computation); cutting tiles costs one patch per kept tile
                h, w = block.pixels.shape[:2]
                tile_px = n_keep * grid.patch_px**2
                if dense_ok and h * w <= 1.1 * tile_px:
                    seen = block
                    if pixel_map is not None:
                        seen = replace(block, pixels=pixel_map(block.pixels))
                    p = _predict_dense(model, seen, grid)
                    stats.dense_blocks += 1
                else:  # the colour map on whichever is smaller: the block or its kept tiles
                    seen, tile_map = block, pixel_map
                    if pixel_map is not None and h * w < tile_px:
                        seen, tile_map = replace(block, pixels=pixel_map(block.pixels)), None
                    p = _predict_tiles(model, seen, grid, keep, batch_size, tile_map)
                prob[block.row0 : block.row1, block.col0 : block.col1] = np.where(keep, p, np.nan)
                stats.tiles += n_keep
                if on_block is not None:
                    on_block(block)
                t_wait = time.perf_counter()
                stats.model_s += t_wait - t0
                bar.update(n_keep)
    stats.wall_s = time.perf_counter() - t_start
    return prob, stats


def start_reads(
    slide: Slide,
    grid: TileGrid,
    model_mpp: float,
    *,
    workers: int = 2,
    decoder: TileDecoder | None = None,
    on_read: Callable[[Block], None] | None = None,
) -> BlockReader:
    """Start reading the kept tiles of ``grid`` (as :func:`predict_grid` would, kept tiles
    only) before the model is ready for them; hand the reader to :func:`predict_grid`.
    ``on_read``: see :class:`BlockReader`."""
    rl = slide.read_level_for_mpp(model_mpp)
    blocks = plan_blocks(grid, rl.downsample)
    return BlockReader(
        slide,
        grid,
        rl,
        blocks,
        workers=workers,
        decoder=decoder,
        kept_only=True,
        prefetch=max(READ_AHEAD_BLOCKS, workers + 1),
        on_read=on_read,
    )


def _covers(reader: BlockReader, grid: TileGrid, rl: ReadLevel, kept_only: bool) -> bool:
    """Whether ``reader``'s blocks hold every px :func:`predict_grid` needs for ``grid``."""
    r = reader.grid
    return (
        reader.rl == rl
        and r.shape == grid.shape
        and r.level0_per_model_px == grid.level0_per_model_px
        and r.bounds_level0_px == grid.bounds_level0_px
        and (r.patch_px, r.stride_px) == (grid.patch_px, grid.stride_px)
        and (kept_only or not reader.kept_only)
        and not (grid.keep & ~r.keep).any()
    )


def _threads_after_reads(torch_threads: int | None, workers: int, model: IDCModel) -> int | None:
    """The torch threads once the readers are done (their threads added, at most the cores);
    None: no change (torch's own setting, no readers, a GPU model, or no core to gain)."""
    if torch_threads is None or workers <= 0 or model.device.type != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = min(torch_threads + workers, cores or 1)
    return n if n > torch_threads else None


def threads_beside_readers(workers: int) -> int | None:
    """The torch thread count that leaves ``workers`` reader threads their cores: the cores
    this process may use minus ``workers``, at least 1 (None when ``workers`` is 0: nothing to
    leave). Pass it as ``predict_grid(torch_threads=...)``.

    Sharing cores hurts more than it seems: torch's threads wait for each other at every
    operation (spinning), so one of them pre-empted by a reader stalls the others — on 2 cores
    with 2 readers, 2 torch threads made the model 5x slower than 1 (benchmarks/README.md).
    """
    if workers <= 0:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(torch.get_num_threads(), (cores or 1) - workers))


def _predict_dense(model: IDCModel, block: Block, grid: TileGrid) -> np.ndarray:
    st, p = grid.stride_px, grid.patch_px
    nr, nc = block.row1 - block.row0, block.col1 - block.col0
    n = max(1, (MAX_DENSE_PX - p) // st + 1)  # tiles per side of one forward pass
    out = np.empty((nr, nc), dtype=np.float32)
    for r in range(0, nr, n):
        for c in range(0, nc, n):
            r1, c1 = min(r + n, nr), min(c + n, nc)
            sub = block.pixels[r * st : (r1 - 1) * st + p, c * st : (c1 - 1) * st + p]
            out[r:r1, c:c1] = model.predict_dense(sub, st)
    return out


def _predict_tiles(
    model: IDCModel,
    block: Block,
    grid: TileGrid,
    keep: np.ndarray,
    batch_size: int,
    pixel_map: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    st, p = grid.stride_px, grid.patch_px
    out = np.full(keep.shape, np.nan, dtype=np.float32)
    rr, cc = np.nonzero(keep)
    if len(rr) == 0:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(block.pixels, (p, p), axis=(0, 1))[
        ::st, ::st
    ]
    tiles = np.ascontiguousarray(windows[rr, cc].transpose(0, 2, 3, 1))  # n×p×p×3
    if pixel_map is not None:  # per px: the same as mapping the block first
        tiles = pixel_map(tiles)
    out[rr, cc] = model.predict(tiles, batch_size=batch_size)
    return out
