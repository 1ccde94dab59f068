"""What ``kept_only`` reads save: JPEG tiles decoded and read time, whole blocks vs only the
tiles under kept tiles (:func:`idcmap.pipeline.tiles.read_block`), on the slides given.

Each slide: the model's grid (idc-v2, stride 50, the slide's own tissue mask), its blocks read
one after the other in one thread, both ways alternated, best of ``--repeat``; the tiles are
counted by wrapping the JPEG reader's tile decode (this script only). Whole processes are
measured by ``run.py``; this isolates the read.

    python benchmarks/kept_only.py SLIDE [SLIDE ...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from idcmap.io import jpegtiff
from idcmap.io.open import open_slide
from idcmap.model.runtime import load_model
from idcmap.params import Params
from idcmap.pipeline.tiles import make_grid, plan_blocks, read_block
from idcmap.pipeline.tissue import detect_tissue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slides", nargs="+", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stride", type=int, default=50)
    a = ap.parse_args()
    decoded = [0]
    tile = jpegtiff.JpegTiffReader._tile

    def counting(*args, **kw):  # type: ignore[no-untyped-def]
        decoded[0] += 1
        return tile(*args, **kw)

    jpegtiff.JpegTiffReader._tile = staticmethod(counting)  # type: ignore[method-assign]
    cfg = load_model("idc-v2", device="cpu").config
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "| slide | kept tiles | blocks | JPEG tiles decoded, whole blocks / kept only "
        "| read s (1 thread), whole / kept only |"
    )
    print("|---|---|---|---|---|")
    tot = [0, 0]
    for path in a.slides:
        with open_slide(path) as slide:
            tissue = detect_tissue(slide)
            grid = make_grid(
                slide,
                tissue,
                model_mpp=cfg.mpp,
                patch_px=cfg.patch_px,
                stride_px=a.stride,
                min_tissue=Params().min_tissue,
            )
            rl = slide.read_level_for_mpp(cfg.mpp)
            blocks = plan_blocks(grid, rl.downsample)
            n: dict[bool, int] = {}
            best = {False: float("inf"), True: float("inf")}
            for _ in range(a.repeat):
                for kept in (False, True):
                    decoded[0] = 0
                    t0 = time.perf_counter()
                    for r0, r1, c0, c1 in blocks:
                        read_block(slide, grid, rl, (r0, r1), (c0, c1), kept_only=kept)
                    best[kept] = min(best[kept], time.perf_counter() - t0)
                    n[kept] = decoded[0]
        tot[0] += n[False]
        tot[1] += n[True]
        print(
            f"| {path.name} | {grid.n_tiles} | {len(blocks)} | {n[False]} / {n[True]} "
            f"| {best[False]:.2f} / {best[True]:.2f} |"
        )
    print(f"| all | | | {tot[0]} / {tot[1]} ({1 - tot[1] / max(tot[0], 1):.0%} fewer) | |")


if __name__ == "__main__":
    main()
