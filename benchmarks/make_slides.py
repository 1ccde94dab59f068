"""Make the benchmark slides from one shared IDC mosaic (4 µm/px); nothing made here is committed.

Writes, into ``--out`` (default ``benchmarks/_data/``):

* ``<id>-40x.tiff``: the mosaic upsampled 16x to 0.25 µm/px (a "40x" scan, tens of thousands of
  pixels a side), written like a scanner writes: a tiled JPEG pyramid (YCbCr 4:2:0, tiles of
  ``--tile`` px) with levels at 1x, 4x, 16x and 64x, resolution tags in pixels per cm (OpenSlide
  and tiffslide report 0.25 µm/px), BigTIFF;
* ``<id>-40x-l1l4.tiff``: the same with levels 1x and 4x only (no level near 4 µm/px: the
  pipeline must read 1 µm/px and resize 4:1);
* ``<id>-40x-2x2.tiff``: 2x2 copies of the mosaic, then as ``-40x`` (4x the area: the memory
  check);
* ``<id>.tiff``: the mosaic as it is (copied).

The 40x levels are made tile by tile in worker processes (the whole 40x image is never in
memory): each tile is a bicubic upsampling of the few mosaic pixels under it, plus a small
deterministic luminance texture (σ = ``--texture``) so that the JPEG tiles carry about as many
bits as a real scan's (a bare 16x upsampling is so smooth that it would decode unrealistically
fast). Levels coarser than the mosaic are box averages of it. JPEG tiles are encoded by Pillow and
written as they are by tifffile, so neither imagecodecs nor the whole image is needed.

    python benchmarks/make_slides.py --mosaic /work/shared/data/idc/slides/8975.tiff
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

HERE = Path(__file__).resolve().parent
DEFAULT_MOSAIC = HERE.parents[1] / "shared" / "data" / "idc" / "slides" / "8975.tiff"
MOSAIC_MPP = 4.0
UPSAMPLE = 16  # 4 µm/px → 0.25 µm/px
PAD = 260  # edge padding of the mosaic in the workers (> one tile in mosaic px, + margin)

# set in each worker (inherited through fork, or by the initializer)
_SRC: np.ndarray | None = None


def read_mosaic(path: Path) -> np.ndarray:
    """Level 0 of the mosaic, uint8 RGB."""
    try:
        import openslide

        osr = openslide.OpenSlide(str(path))
        w, h = osr.dimensions
        rgba = np.asarray(osr.read_region((0, 0), 0, (w, h)))
        osr.close()
        return np.ascontiguousarray(rgba[..., :3])
    except ImportError:
        return np.ascontiguousarray(tifffile.imread(path)[..., :3])


def _init(src: np.ndarray) -> None:
    global _SRC
    _SRC = src


def _texture(seed: tuple[int, ...], shape: tuple[int, int], sigma: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, sigma, shape).astype(np.float32)


def _encode(tile: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, "JPEG", quality=quality, subsampling=2)  # 4:2:0
    return buf.getvalue()


def _tile_task(args: tuple) -> bytes:
    """Encode tile (ty, tx) of a level ``scale`` times finer than the mosaic (scale ≥ 1)."""
    (scale, lw, lh, tile, ty, tx, quality, sigma, seed) = args
    src = _SRC
    assert src is not None
    x0, y0 = tx * tile, ty * tile
    # mosaic region under the tile; ``src`` is edge-padded by PAD px on every side, so the
    # bicubic support and the last partial tiles stay inside it
    sx0, sy0 = x0 / scale + PAD, y0 / scale + PAD
    sx1, sy1 = (x0 + tile) / scale + PAD, (y0 + tile) / scale + PAD
    cx0, cy0 = math.floor(sx0) - 3, math.floor(sy0) - 3
    cx1, cy1 = math.ceil(sx1) + 3, math.ceil(sy1) + 3
    crop = Image.fromarray(src[cy0:cy1, cx0:cx1])
    box = (sx0 - cx0, sy0 - cy0, sx1 - cx0, sy1 - cy0)
    out = np.asarray(crop.resize((tile, tile), Image.Resampling.BICUBIC, box=box))
    if sigma > 0:
        tex = _texture((seed, int(scale), ty, tx), (tile, tile), sigma)
        out = np.clip(out.astype(np.float32) + tex[..., None], 0, 255).astype(np.uint8)
    else:
        out = out.copy()
    # outside the level: white, like a scanner's padding
    vw, vh = min(tile, lw - x0), min(tile, lh - y0)
    out[vh:, :] = 255
    out[:, vw:] = 255
    return _encode(out, quality)


def _coarse_level(src: np.ndarray, k: int, lw: int, lh: int) -> np.ndarray:
    """The mosaic box-averaged k:1 (k = 1: itself), cropped to lw×lh."""
    if k == 1:
        return src[:lh, :lw]
    h, w = src.shape[0] // k * k, src.shape[1] // k * k
    m = src[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))
    return np.round(m).astype(np.uint8)[:lh, :lw]


def _coarse_tiles(img: np.ndarray, tile: int, quality: int):
    lh, lw = img.shape[:2]
    for y in range(0, lh, tile):
        for x in range(0, lw, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = img[y : y + tile, x : x + tile]
            t[: part.shape[0], : part.shape[1]] = part
            yield _encode(t, quality)


def _allow_preencoded_jpeg() -> None:
    """tifffile looks up a JPEG encoder even for tiles that come encoded; without imagecodecs
    (e.g. on the GPU machine) give it one that is never called."""
    try:
        import imagecodecs  # noqa: F401
    except ImportError:

        def never(*args: object, **kw: object) -> bytes:
            raise RuntimeError("JPEG tiles are encoded by Pillow in make_slides.py")

        tifffile.TIFF.COMPRESSORS._codecs[7] = never  # type: ignore[attr-defined]


def write_40x(
    src: np.ndarray,
    path: Path,
    *,
    downsamples: tuple[int, ...] = (1, 4, 16, 64),
    tile: int = 256,
    quality: int = 80,
    texture: float = 5.0,
    jobs: int = 1,
    seed: int = 0,
) -> Path:
    """Write ``src`` (4 µm/px) upsampled 16x as a tiled JPEG pyramid at 0.25 µm/px."""
    mpp0 = MOSAIC_MPP / UPSAMPLE
    w0, h0 = src.shape[1] * UPSAMPLE, src.shape[0] * UPSAMPLE
    tmp = path.with_suffix(".tiff.part")
    _allow_preencoded_jpeg()
    ctx = mp.get_context("fork")
    res = {"resolution": (1e4 / mpp0, 1e4 / mpp0), "resolutionunit": "CENTIMETER"}
    desc = (
        f"idcmap benchmark slide: {w0}x{h0} px at {mpp0} um/px (16x upsampled IDC mosaic), "
        f"levels {'/'.join(str(d) for d in downsamples)}, JPEG Q={quality}, tile {tile}"
    )
    padded = np.pad(src, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="edge")
    with (
        ctx.Pool(jobs, initializer=_init, initargs=(padded,)) as pool,
        tifffile.TiffWriter(tmp, bigtiff=True) as tw,
    ):
        for i, d in enumerate(downsamples):
            lw, lh = w0 // d, h0 // d
            scale = UPSAMPLE / d  # level px per mosaic px
            if scale >= 1 and scale != 1:
                tasks = [
                    (scale, lw, lh, tile, ty, tx, quality, texture, seed)
                    for ty in range(math.ceil(lh / tile))
                    for tx in range(math.ceil(lw / tile))
                ]
                data = pool.imap(_tile_task, tasks, chunksize=16)
            else:
                k = round(1 / scale)
                data = _coarse_tiles(_coarse_level(src, k, lw, lh), tile, quality)
            tw.write(
                data,
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=(2, 2),
                subfiletype=0 if i == 0 else 1,
                description=desc if i == 0 else None,
                metadata=None,
                **res,
            )
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mosaic", type=Path, default=DEFAULT_MOSAIC)
    ap.add_argument("--out", type=Path, default=HERE / "_data")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--quality", type=int, default=80)
    ap.add_argument("--texture", type=float, default=5.0, help="luminance texture σ (0: none)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--which",
        default="mosaic,40x,l1l4,2x2",
        help="comma-separated subset of: mosaic, 40x, l1l4, 2x2",
    )
    ap.add_argument("--force", action="store_true", help="rewrite slides that exist")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    sid = a.mosaic.stem
    src = read_mosaic(a.mosaic)
    print(f"mosaic {a.mosaic} {src.shape[1]}x{src.shape[0]} px at {MOSAIC_MPP} um/px", flush=True)
    which = [w.strip() for w in a.which.split(",") if w.strip()]
    kw = {"tile": a.tile, "quality": a.quality, "texture": a.texture, "jobs": a.jobs}
    for w in which:
        t0 = time.perf_counter()
        if w == "mosaic":
            path = a.out / f"{sid}.tiff"
            if a.force or not path.exists():
                shutil.copyfile(a.mosaic, path)
        elif w == "40x":
            path = a.out / f"{sid}-40x.tiff"
            if a.force or not path.exists():
                write_40x(src, path, **kw)
        elif w == "l1l4":
            path = a.out / f"{sid}-40x-l1l4.tiff"
            if a.force or not path.exists():
                write_40x(src, path, downsamples=(1, 4), **kw)
        elif w == "2x2":
            path = a.out / f"{sid}-40x-2x2.tiff"
            if a.force or not path.exists():
                write_40x(np.tile(src, (2, 2, 1)), path, **kw)
        else:
            print(f"unknown slide kind {w!r}", file=sys.stderr)
            return 2
        with tifffile.TiffFile(path) as tf:
            dims = [f"{p.shape[1]}x{p.shape[0]}" for p in tf.pages]
        print(
            f"{path.name}: levels {', '.join(dims)}; {path.stat().st_size / 2**20:.0f} MiB; "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
