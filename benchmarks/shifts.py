"""Shift benchmark: cell Dice of whole mosaics under scanner / compression / laboratory shifts.

Each mosaic (a pyramidal TIFF with ``<stem>.cells.csv`` beside it) is read at level 0, shifted as
a whole with :mod:`idcmap.train.degrade`, and written back as a tiled pyramidal JPEG TIFF the way
``tests/tiffgen.py`` writes slides (tifffile; levels 1x / 4x / 16x, 256-px tiles, resolution tags
saying the mosaic's µm/px; tiles encoded by Pillow as ``benchmarks/make_slides.py`` does): the
colour shifts as JPEG q90 4:4:4 (full-resolution colour), the re-encode shifts as JPEG tiles of the
named quality and chroma subsampling (what a scanner's 4-µm level holds). Note: the shared
mosaics themselves hold YCbCr JPEG q90 tiles with 4:2:0 chroma (their JPEG headers say so), so
"as-is" already carries one 4:2:0 encoding. The shifted files are cached (``--cache``, outside
the repository); idcmap reads them like any slide. Every (model, shift, mosaic) goes through
the real pipeline, :func:`idcmap.pipeline.segment.segment_slide` (as ``idcmap evaluate slides``
does), and is scored with :func:`idcmap.train.truth.read_truth` +
:func:`idcmap.train.metrics.dice_iou`. Prints tables: pooled Dice per shift with the change from
"as-is" (models side by side), then per-slide Dice.

    PYTHONPATH=. python benchmarks/shifts.py \\
        --slides ../shared/data/idc/slides/{8917,9037,9076}.tiff \\
        --models idc-v2 /path/idc-v3.json --cache /tmp/shifted --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from idcmap.train import degrade as dg  # noqa: E402

REFS_DIR = HERE.parents[1] / "shared" / "data" / "stain-refs"


def read_level0(path: Path) -> tuple[np.ndarray, float]:
    """Level 0 of a slide (uint8 RGB) and its µm/px, as OpenSlide reads them."""
    import openslide

    osr = openslide.OpenSlide(str(path))
    try:
        w, h = osr.dimensions
        rgb = np.ascontiguousarray(np.asarray(osr.read_region((0, 0), 0, (w, h)))[..., :3])
        mpp = float(osr.properties["openslide.mpp-x"])
    finally:
        osr.close()
    return rgb, mpp


def _tiles(img: np.ndarray, tile: int, quality: int, subsampling: str):
    """Pillow-encoded JPEG tiles of ``img`` (edge tiles padded with white, as scanners do)."""
    import io

    from PIL import Image

    h, w = img.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = img[y : y + tile, x : x + tile]
            t[: part.shape[0], : part.shape[1]] = part
            buf = io.BytesIO()
            Image.fromarray(t).save(
                buf, "JPEG", quality=quality, subsampling=dg.SUBSAMPLING[subsampling]
            )
            yield buf.getvalue()


def write_pyramid(
    path: Path,
    rgb: np.ndarray,
    mpp: float,
    quality: int = 90,
    subsampling: str = "4:4:4",
    downsamples: Sequence[int] = (1, 4, 16),
    tile: int = 256,
) -> None:
    """Tiled pyramidal TIFF of YCbCr JPEG tiles (Pillow-encoded at ``quality`` with that chroma
    subsampling: "4:4:4", "4:2:2" or "4:2:0"), levels box-reduced by ``downsamples``."""
    from PIL import Image

    levels = [rgb]
    for d in downsamples[1:]:
        h, w = rgb.shape[:2]
        size = (max(1, round(w / d)), max(1, round(h / d)))
        levels.append(np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX)))
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    sub = {"4:4:4": (1, 1), "4:2:2": (2, 1), "4:2:0": (2, 2)}[subsampling]
    tmp = path.with_suffix(".tmp.tiff")
    with tifffile.TiffWriter(tmp) as tw:
        for i, lvl in enumerate(levels):
            tw.write(
                _tiles(lvl, tile, quality, subsampling),
                shape=lvl.shape,
                dtype=np.uint8,
                tile=(tile, tile),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=sub,
                subfiletype=0 if i == 0 else 1,
                description=f"{mpp} um/px" if i == 0 else None,
                metadata=None,
                **res,
            )
    tmp.replace(path)


# ---- the shifts ----------------------------------------------------------------------------------

Shift = tuple[Callable[[np.ndarray], np.ndarray], dict]


def _transfer(ref: Path, alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    from PIL import Image

    with Image.open(ref) as im:
        target = dg.lab_stats(np.asarray(im.convert("RGB")))
    return lambda x: dg.reinhard(x, dg.lab_stats(x), target, alpha)


def shifts(refs_dir: Path = REFS_DIR, alphas: Sequence[float] = (0.5,)) -> dict[str, Shift]:
    """name -> (function of the level-0 image, writer keywords)."""

    def same(x: np.ndarray) -> np.ndarray:
        return x

    out: dict[str, Shift] = {
        "as-is (original file)": (same, {"original": True}),
        "as-is, rewritten q90 4:4:4": (same, {}),
        "4:2:0 q80": (same, {"quality": 80, "subsampling": "4:2:0"}),
        "4:2:0 q95": (same, {"quality": 95, "subsampling": "4:2:0"}),
        "4:2:2 q90": (same, {"quality": 90, "subsampling": "4:2:2"}),
        "4:4:4 q80": (same, {"quality": 80, "subsampling": "4:4:4"}),
        "white balance R×0.93 G×0.95 (bluish)": (
            lambda x: dg.white_balance(x, (0.93, 0.95, 1.0)),
            {},
        ),
        "white balance G×0.95 B×0.92 (yellowish)": (
            lambda x: dg.white_balance(x, (1.0, 0.95, 0.92)),
            {},
        ),
        "haematoxylin +0.01": (lambda x: dg.hed_shift(x, h=0.01), {}),
        "haematoxylin −0.01": (lambda x: dg.hed_shift(x, h=-0.01), {}),
        "eosin +0.01": (lambda x: dg.hed_shift(x, e=0.01), {}),
        "eosin −0.01": (lambda x: dg.hed_shift(x, e=-0.01), {}),
        "blur σ 0.7 px": (lambda x: dg.blur(x, 0.7), {}),
    }
    for ref in sorted(Path(refs_dir).glob("*.png")):
        code = ref.stem.split("-")[0].replace("SOB_", "") + "-" + ref.stem.split("-")[2]
        for a in alphas:
            out[f"transfer {code} α {a:g}"] = (_transfer(ref, a), {})
    return out


def _key(name: str) -> str:
    """The cache folder of a shift (signs spelled out: "+0.01" and "−0.01" must not collide)."""
    name = name.replace("+", "plus").replace("−", "minus").replace("-", "_")
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in name).strip("_")


def shifted_slide(slide: Path, name: str, shift: Shift, cache: Path) -> Path:
    """The shifted copy of ``slide`` (cached), with its cells.csv linked beside it."""
    fn, kw = shift
    if kw.get("original"):
        return slide
    d = cache / _key(name)
    d.mkdir(parents=True, exist_ok=True)
    out = d / slide.name
    truth = slide.with_name(slide.name.rsplit(".", 1)[0] + ".cells.csv")
    link = d / truth.name
    if not link.exists():
        link.symlink_to(truth.resolve())
    if not out.exists():
        rgb, mpp = read_level0(slide)
        write_pyramid(out, fn(rgb), mpp, **kw)
    return out


def score(slide: Path, model: object, stride: int | None, qc: str = "none") -> tuple[int, int, int]:
    from idcmap.params import Params
    from idcmap.pipeline.segment import segment_slide
    from idcmap.train.metrics import dice_iou
    from idcmap.train.truth import read_truth

    res = segment_slide(slide, model=model, progress=False, params=Params(stride_px=stride, qc=qc))
    truth = slide.with_name(slide.name.rsplit(".", 1)[0] + ".cells.csv")
    r = dice_iou(np.asarray(res.mask, dtype=bool), read_truth(truth, res.heatmap))
    return r["intersection"], r["pred_cells"], r["truth_cells"]


def _dice(i: int, p: int, t: int) -> float:
    return 2 * i / (p + t) if p + t else 1.0


def tables(results: dict, labels: Sequence[str], stems: Sequence[str]) -> str:
    names = list(next(iter(results.values())))
    pooled = {
        m: {s: _dice(*np.sum([results[m][s][k] for k in stems], axis=0)) for s in names}
        for m in labels
    }
    base = names[0]
    lines = [
        "| shift | " + " | ".join(f"{m} pooled (Δ) | {m} mean" for m in labels) + " |",
        "|---|" + "---|---|" * len(labels),
    ]
    for s in names:
        cells = []
        for m in labels:
            d = pooled[m][s]
            mean = np.mean([_dice(*results[m][s][k]) for k in stems])
            cells.append(f"{d:.3f} ({d - pooled[m][base]:+.3f}) | {mean:.3f}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    worst = {m: min(pooled[m][s] - pooled[m][base] for s in names) for m in labels}
    lines.append("| **worst Δ** | " + " | ".join(f"{worst[m]:+.3f} | " for m in labels) + "|")
    lines += ["", "Per slide (" + " / ".join(labels) + "):", ""]
    lines.append("| shift | " + " | ".join(stems) + " |")
    lines.append("|---|" + "---|" * len(stems))
    for s in names:
        row = [" / ".join(f"{_dice(*results[m][s][k]):.2f}" for m in labels) for k in stems]
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slides", nargs="+", type=Path, default=None)
    ap.add_argument("--models", nargs="+", default=None, help="bundled names or .json paths")
    ap.add_argument(
        "--merge", nargs="+", type=Path, default=None, help="print the tables of --json files"
    )
    ap.add_argument("--labels", nargs="+", default=None, help="column names of the models")
    ap.add_argument("--cache", type=Path, default=None, help="folder for the shifted TIFFs")
    ap.add_argument("--refs", type=Path, default=REFS_DIR, help="stain reference PNGs")
    ap.add_argument("--alphas", nargs="+", type=float, default=[0.5])
    ap.add_argument("--only", nargs="+", default=None, help="substrings of shift names to run")
    ap.add_argument("--stride", type=int, default=None, help="tile step in model px (default 50)")
    ap.add_argument("--json", type=Path, default=None, help="write the counts here")
    ap.add_argument("--qc", default="none", help="the QC stage's kinds (Params.qc), e.g. all")
    a = ap.parse_args(argv)
    if a.merge:  # models side by side from earlier runs on the same slides and shifts
        runs = [json.loads(p.read_text()) for p in a.merge]
        merged: dict = {}
        for r in runs:  # later files override earlier ones, shift by shift
            for k, v in r["counts"].items():
                merged.setdefault(k, {}).update(v)
        shared = [
            s
            for s in runs[0]["counts"][next(iter(runs[0]["counts"]))]
            if all(s in v for v in merged.values())
        ]
        merged = {k: {s: v[s] for s in shared} for k, v in merged.items()}
        print(tables(merged, list(merged), runs[0]["slides"]))
        return 0
    if not (a.slides and a.models and a.cache):
        ap.error("--slides, --models and --cache are needed (or --merge)")

    from idcmap.model.runtime import load_model

    labels = a.labels or [Path(m).stem for m in a.models]
    all_shifts = shifts(a.refs, a.alphas)
    if a.only:
        all_shifts = {
            k: v
            for i, (k, v) in enumerate(all_shifts.items())
            if i == 0 or any(o in k for o in a.only)
        }
    stems = [s.name.rsplit(".", 1)[0] for s in a.slides]
    models = [load_model(m, device="cpu") for m in a.models]
    results: dict = {lab: {} for lab in labels}
    t0 = time.perf_counter()
    for name, sh in all_shifts.items():
        paths = [shifted_slide(s, name, sh, a.cache) for s in a.slides]
        for lab, m in zip(labels, models, strict=True):
            results[lab][name] = {
                k: score(p, m, a.stride, a.qc) for k, p in zip(stems, paths, strict=True)
            }
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    text = tables(results, labels, stems)
    print(text)
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "models": dict(zip(labels, a.models, strict=True)),
                    "slides": stems,
                    "stride": a.stride,
                    "counts": results,
                    "table": text,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
