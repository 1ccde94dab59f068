"""The read rule outside the tile pass: the tissue pass and the viewer's Deep Zoom tiles.

Prints (nothing is asserted), per slide:

1. the tissue pass (``detect_tissue`` at 16 µm/px: the read and the mask), median of
   ``--rounds``, and the level it read; its mask against a *reference* mask drawn the same way
   from the finest level within 4:1 of ``--ref-mpp`` (default 1 µm/px), fully decoded and
   box-reduced: pixels that disagree, and the thumbnail's mean |ΔCb|, |ΔCr| (tissue px) against
   the reference's;
2. ``--remote``: ``segment_slide`` on the slide served over HTTP by ``tests/http_range.py``
   (fsspec range requests), after one warm run: wall time, body bytes and requests the server
   sent, the level and scale read, and whether the heatmap is the local file's;
3. the viewer: ``SlideEntry.tile_jpeg`` latency per Deep Zoom level (``--tiles`` tiles of each
   level over the tissue, in a fixed random order, each read once, so OpenSlide's tile cache
   helps only as much as a user panning would), median and 90th percentile, against the same
   tiles made the way the viewer made them before the rule (OpenSlide's nearest finer level),
   tile by tile in turn.

Runs against whichever idcmap ``PYTHONPATH`` gives (old and new checkouts alike):

    PYTHONPATH=. python benchmarks/read_rules.py /tmp/slides/9035-40x.tiff \\
        /tmp/slides/9035-40x-l1l4.tiff
"""

from __future__ import annotations

import argparse
import inspect
import io
import random
import statistics
import time
from pathlib import Path

import numpy as np
import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from idcmap.io.open import open_slide
from idcmap.io.slide import Slide
from idcmap.pipeline.tissue import detect_tissue, tissue_mask_from_rgb
from idcmap.viewer.imaging import SlideCache, SlideEntry


def reference_thumbnail(path: str, shape: tuple[int, int], ref_mpp: float) -> np.ndarray:
    """The slide at the mask's grid from a full decode of a fine level, box-reduced."""
    with open_slide(path) as s:
        mpps = [s.level_mpp(i) for i in range(s.info.level_count)]
        lvl = max((i for i, m in enumerate(mpps) if m <= ref_mpp * 1.01), key=lambda i: mpps[i])
        w, h = s.info.level_dimensions[lvl]
        full = s.read_region((0, 0), lvl, (w, h))
    rows, cols = shape
    img = Image.fromarray(full)
    return np.asarray(img.resize((cols, rows), Image.Resampling.BOX, reducing_gap=None))


def cbcr(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("YCbCr"), np.float64)[..., 1:]


def tissue_pass(path: str, rounds: int, ref_mpp: float) -> None:
    with open_slide(path) as s:
        if "read_level_for_mpp" in inspect.getsource(type(s).read_at_mpp):  # 0.3: the rule
            how = s.read_level_for_mpp(16.0).reason
        else:  # before: the nearest finer level
            lvl = s.best_level_for_mpp(16.0)
            how = f"level {lvl} ({s.level_mpp(lvl):.4g} µm/px), the nearest finer level"
        detect_tissue(s)  # warm: page cache, first calls
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            tm = detect_tissue(s)
            ts.append(time.perf_counter() - t0)
    print(f"  tissue pass: median {statistics.median(ts) * 1e3:.0f} ms, min {min(ts) * 1e3:.0f} ms")
    print(f"    reads {how}")
    ref = reference_thumbnail(path, tm.mask.shape, ref_mpp)
    ref_mask = tissue_mask_from_rgb(ref, tm.mpp, tm.mpp_y)
    off = int((ref_mask != tm.mask).sum())
    t = ref_mask | tm.mask
    d = np.abs(cbcr(tm.thumbnail) - cbcr(ref))[t]
    print(
        f"    vs the {ref_mpp:g}-µm reference: {off} of {ref_mask.size} mask px differ "
        f"(reference tissue {int(ref_mask.sum())} px); tissue px mean |ΔCb| {d[:, 0].mean():.2f}, "
        f"|ΔCr| {d[:, 1].mean():.2f}"
    )


def nearest_level_tile(entry: SlideEntry, slide: Slide, level: int, col: int, row: int) -> bytes:
    """A Deep Zoom tile as the viewer made it before the rule: OpenSlide's nearest finer level
    (DeepZoomGenerator's choice), box-reduced, Lanczos to the last pixel, JPEG q85."""
    dz = entry.dz
    assert dz is not None
    (loc, slide_level, size), z_size = (
        dz.get_tile_coordinates(level, (col, row)),
        dz.get_tile_dimensions(level, (col, row)),
    )
    img = Image.fromarray(slide.read_region(loc, slide_level, size))
    if img.size != z_size:
        f = min(img.width // max(1, z_size[0]), img.height // max(1, z_size[1]))
        if f >= 2:
            img = img.reduce(f)
        if img.size != z_size:
            img = img.resize(z_size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def tissue_tiles(path: str, dz: DeepZoomGenerator, level: int) -> list[tuple[int, int]]:
    """Tiles of a Deep Zoom level over tissue (saturation of OpenSlide's thumbnail > 0.08)."""
    with openslide.OpenSlide(path) as osr:
        thumb = np.asarray(osr.get_thumbnail((512, 512)).convert("RGB"), np.float32)
    sat = (thumb.max(2) - thumb.min(2)) / np.maximum(thumb.max(2), 1)
    cols, rows = dz.level_tiles[level]
    zw, zh = dz.level_dimensions[level]
    th, tw = sat.shape
    out = []
    for r in range(rows):
        for c in range(cols):
            cx, cy = min(zw - 1, c * 254 + 127) / zw, min(zh - 1, r * 254 + 127) / zh
            if sat[min(th - 1, int(cy * th)), min(tw - 1, int(cx * tw))] > 0.08:
                out.append((c, r))
    return out or [(c, r) for r in range(rows) for c in range(cols)]


def viewer_tiles(path: str, n_tiles: int, seed: int) -> None:
    """Per Deep Zoom level: the viewer's tiles (this version) and the nearest-level way,
    interleaved tile by tile so that the shared machine's load hits both alike."""
    cache = SlideCache(handles_per_slide=1)
    entry = cache.get("s", Path(path), {})
    dz = entry.dz
    assert dz is not None, entry.error
    rng = random.Random(seed)
    print("  viewer tiles (Deep Zoom level, µm/px, tiles; median / p90 ms, nearest level → this)")
    with open_slide(path) as slide:
        mpp = slide.info.mpp
        for level in range(dz.level_count - 1, -1, -1):
            ds = 2 ** (dz.level_count - 1 - level)
            if ds * mpp > 256:
                break
            pick = tissue_tiles(path, dz, level)
            rng.shuffle(pick)
            pick = pick[:n_tiles]
            entry.tile_jpeg(level, *pick[0])  # warm
            nearest_level_tile(entry, slide, level, *pick[0])
            old, new = [], []
            for c, r in pick:
                t0 = time.perf_counter()
                nearest_level_tile(entry, slide, level, c, r)
                t1 = time.perf_counter()
                entry.tile_jpeg(level, c, r)
                t2 = time.perf_counter()
                old.append(t1 - t0)
                new.append(t2 - t1)
            print(
                f"    {level:2d}: {ds * mpp:7.3g} µm/px, {len(pick):3d} tiles: "
                f"{_med_p90(old)} → {_med_p90(new)}"
            )
    cache.close()


def _med_p90(ts: list[float]) -> str:
    ts = sorted(ts)
    p90 = ts[min(len(ts) - 1, int(0.9 * len(ts)))]
    return f"{statistics.median(ts) * 1e3:6.1f} / {p90 * 1e3:6.1f}"


def remote(path: str, rounds: int) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from http_range import serve

    from idcmap.model.runtime import load_model
    from idcmap.pipeline.segment import segment_slide

    model = load_model(None, device="cpu")
    name = Path(path).name
    local = segment_slide(path, model=model, progress=False)
    with serve(Path(path).parent) as srv:
        url = f"{srv.url}/{name}"
        segment_slide(url, model=model, progress=False)  # warm
        rows = []
        for _ in range(rounds):
            b0, r0 = srv.bytes_sent[name], srv.requests[name]
            t0 = time.perf_counter()
            res = segment_slide(url, model=model, progress=False)
            rows.append(
                (time.perf_counter() - t0, srv.bytes_sent[name] - b0, srv.requests[name] - r0)
            )
    wall = statistics.median(r[0] for r in rows)
    rec = res.summary.slide
    same = np.array_equal(res.heatmap.prob, local.heatmap.prob, equal_nan=True)
    print(
        f"  over HTTP: median {wall:.2f} s, {rows[-1][1] / 1e6:.2f} MB in {rows[-1][2]} "
        f"requests of a {Path(path).stat().st_size / 1e6:.1f} MB file; reads level "
        f"{rec['level_read']} at 1/{rec.get('level_read_scale', 1)}; heatmap "
        f"{'=' if same else '≠'} the local file's"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slides", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tiles", type=int, default=40)
    ap.add_argument("--ref-mpp", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", choices=("tissue", "viewer"), action="append", default=[])
    ap.add_argument("--remote", action="store_true", help="also the HTTP case")
    a = ap.parse_args()
    for p in a.slides:
        print(p)
        with open(p, "rb") as fh:  # page cache warm: read the file once
            while fh.read(1 << 24):
                pass
        if "tissue" not in a.skip:
            tissue_pass(p, a.rounds, a.ref_mpp)
        if a.remote:
            remote(p, a.rounds)
        if "viewer" not in a.skip:
            viewer_tiles(p, a.tiles, a.seed)


if __name__ == "__main__":
    main()
