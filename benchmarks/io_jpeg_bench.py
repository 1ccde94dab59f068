"""Scaled-IDCT reads (idcmap.io.jpegtiff) on a make_slides 40x pyramid: speed and colour error.

Prints (nothing is asserted):

1. a 4096² px region of the 1-µm level (YCbCr 4:2:0) read at scale 4 by io_jpeg (1 thread, and
   an executor of 2 threads), against io_jpeg's full decode + PIL reduce(4) and OpenSlide's
   read_region + reduce(4); and the 4-µm level (4:2:0) 1024² px as today's path reads it;
2. the whole slide at 4 µm/px in chunks of 2048 level px, the same ways;
3. the colour error (mean |ΔY|, |ΔCb|, |ΔCr|, all px and tissue px Y < 220) at 4 µm/px against
   the mosaic the slide was made from: 1-µm level at scale 4, 1-µm level full decode + box 4:1,
   the 4-µm level (4:2:0).

    python benchmarks/make_slides.py --mosaic ../shared/data/idc/slides/9035.tiff \\
        --out /tmp/slides --which 40x,l1l4
    python benchmarks/io_jpeg_bench.py /tmp/slides/9035-40x.tiff \\
        ../shared/data/idc/slides/9035.tiff
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openslide
import tifffile
from PIL import Image

from idcmap.io.colour import choose_level
from idcmap.io.jpegtiff import JpegTiffReader


def interleaved(methods: list[tuple[str, Callable[[], object]]], rounds: int) -> None:
    """Time each method ``rounds`` times, round-robin (a competing load hits all alike)."""
    times: dict[str, list[float]] = {m: [] for m, _ in methods}
    for _, f in methods:
        f()  # warm: page cache, first calls
    for _ in range(rounds):
        for m, f in methods:
            t0 = time.perf_counter()
            f()
            times[m].append(time.perf_counter() - t0)
    for m, _ in methods:
        ts = times[m]
        print(
            f"  {m}: median {statistics.median(ts) * 1e3:.0f} ms, min {min(ts) * 1e3:.0f} ms "
            f"(n={rounds})"
        )


def ycc(a: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(a).convert("YCbCr")).astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slide")
    ap.add_argument("mosaic")
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    r = JpegTiffReader(a.slide)
    osr = openslide.OpenSlide(a.slide)
    for lv in r.levels:
        print(lv.describe())
    print("choose_level(levels, 4.0) ->", choose_level(r.levels, 4.0))
    l1 = next(lv.level for lv in r.levels if lv.mpp is not None and abs(lv.mpp - 1) < 0.01)
    l4 = next((lv.level for lv in r.levels if lv.mpp is not None and abs(lv.mpp - 4) < 0.04), None)
    pool = ThreadPoolExecutor(2)
    x, y, n = 512, 1024, 4096

    def osl(level: int, lx: int, ly: int, w: int, h: int, k: int) -> np.ndarray:
        d = osr.level_downsamples[level]
        im = osr.read_region((int(lx * d), int(ly * d)), level, (w, h)).convert("RGB")
        return np.asarray(im.reduce(k) if k > 1 else im)

    s4 = r.read_region(l1, x, y, n, n, 4)
    full = np.asarray(Image.fromarray(r.read_region(l1, x, y, n, n, 1)).reduce(4))
    dd = np.abs(s4.astype(int) - full.astype(int))
    print(
        f"\n1. region {n}² px of level {l1} at ({x}, {y}); scale 4 vs full decode + box 4:1: "
        f"max {dd.max()}, mean {dd.mean():.3f}"
    )
    methods: list[tuple[str, Callable[[], object]]] = [
        ("io_jpeg scale 4, 1 thread", lambda: r.read_region(l1, x, y, n, n, 4)),
        ("io_jpeg scale 4, 2 threads", lambda: r.read_region(l1, x, y, n, n, 4, executor=pool)),
        (
            "io_jpeg full decode + reduce(4)",
            lambda: Image.fromarray(r.read_region(l1, x, y, n, n, 1)).reduce(4),
        ),
        ("OpenSlide read_region + RGB + reduce(4)", lambda: osl(l1, x, y, n, n, 4)),
    ]
    if l4 is not None:
        methods.append(
            ("OpenSlide 4-um level 1024² + RGB", lambda: osl(l4, x // 4, y // 4, n // 4, n // 4, 1))
        )
    interleaved(methods, a.rounds)

    w1, h1 = r.levels[l1].width, r.levels[l1].height
    c = 2048

    def whole(pool_: ThreadPoolExecutor | None) -> None:
        for cy in range(0, h1, c):
            for cx in range(0, w1, c):
                r.read_region(l1, cx, cy, c, c, 4, executor=pool_)

    def whole_osl(level: int, k: int) -> None:
        lw, lh = r.levels[level].width, r.levels[level].height
        step = c // (4 // k) if k < 4 else c
        for cy in range(0, lh, step):
            for cx in range(0, lw, step):
                osl(level, cx, cy, min(step, lw - cx), min(step, lh - cy), k)

    print(f"\n2. whole slide at 4 um/px ({w1}x{h1} px of level {l1}), chunks of {c} level px")
    methods = [
        ("io_jpeg level 1 um scale 4, 1 thread", lambda: whole(None)),
        ("io_jpeg level 1 um scale 4, 2 threads", lambda: whole(pool)),
        ("OpenSlide level 1 um + RGB + reduce(4)", lambda: whole_osl(l1, 4)),
    ]
    if l4 is not None:
        methods.append(("OpenSlide 4-um level + RGB", lambda: whole_osl(l4, 1)))
    interleaved(methods, max(3, a.rounds // 5))

    truth = tifffile.imread(a.mosaic, key=0)
    hh, ww = truth.shape[:2]
    t = ycc(truth)
    tissue = t[..., 0] < 220
    cands = {
        "level 1 um, io_jpeg scale 4": r.read_region(l1, 0, 0, w1, h1, 4),
        "level 1 um, full decode + box 4:1": np.asarray(
            Image.fromarray(r.read_region(l1, 0, 0, w1, h1, 1)).reduce(4)
        ),
    }
    if l4 is not None:
        lv = r.levels[l4]
        cands["level 4 um (4:2:0), full decode"] = r.read_region(l4, 0, 0, lv.width, lv.height, 1)
    print(f"\n3. colour error against {a.mosaic} ({ww}x{hh}; tissue Y<220: {tissue.mean():.0%})")
    for name, arr in cands.items():
        e = np.abs(ycc(arr[:hh, :ww]) - t)
        print(
            f"  {name}: all px |dY| {e[..., 0].mean():.2f} |dCb| {e[..., 1].mean():.2f} "
            f"|dCr| {e[..., 2].mean():.2f}; tissue |dCb| {e[..., 1][tissue].mean():.2f} "
            f"|dCr| {e[..., 2][tissue].mean():.2f}"
        )


if __name__ == "__main__":
    main()
