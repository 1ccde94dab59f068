"""How the network reads tissue that was un-inked *exactly*: the part of ink's IDC-area change
that no better ink field can remove.

For each test mosaic and seed, the artefact battery's ink (``artefacts.py``'s ``paint_case``)
is painted on the 4-µm mosaic and written as the battery writes it (a tiled JPEG TIFF, q90,
YCbCr 4:2:0, as most scanners store it). Its level 0 is read back and the ink is taken off
with the painter's own field, known per pixel: ``OD(painted) − OD(clean)``. The network
(``predict_dense``, no stain normalisation) then scores the 50-px tiles that are mostly inked
tissue, in these versions:

* ``clean`` — the clean mosaic; ``clean, written`` — the clean mosaic through the same TIFF;
* ``un-inked`` — the painted TIFF with the exact field taken off;
* ``un-inked, chroma σ`` — the same with its chroma (Cb, Cr) smoothed by a Gaussian of σ px;
* ``clean, chroma σ`` — what that smoothing does to clean tissue.

Usage::

    PYTHONPATH=. python benchmarks/ink_read.py [--slides 8865 ...] [--seeds 3] [--model M]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from artefacts import SLIDES, idc_region, paint_case  # noqa: E402

from idcmap.model.runtime import load_model  # noqa: E402
from idcmap.pipeline.qcpixel import optical_density as od  # noqa: E402
from idcmap.train.data import read_level0  # noqa: E402

TEST = ("8865", "8913", "8955", "8984", "9035", "14082")
PATCH = 50


def chroma_smoothed(x: np.ndarray, sigma: float) -> np.ndarray:
    """``x`` (uint8 RGB) with Cb and Cr (JFIF) smoothed by a Gaussian of ``sigma`` px."""
    f = x.astype(np.float32)
    y = 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]
    cb = -0.168736 * f[..., 0] - 0.331264 * f[..., 1] + 0.5 * f[..., 2]
    cr = 0.5 * f[..., 0] - 0.418688 * f[..., 1] - 0.081312 * f[..., 2]
    cb, cr = ndimage.gaussian_filter(cb, sigma), ndimage.gaussian_filter(cr, sigma)
    out = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def written(rgb: np.ndarray, tmp: Path) -> np.ndarray:
    """``rgb`` written as the battery writes it and its level 0 read back."""
    from tiffgen import write_pyramid_tiff

    path = write_pyramid_tiff(tmp / "x.tiff", rgb, 4.0)
    out = np.asarray(tifffile.imread(path, key=0))
    path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slides", nargs="+", default=list(TEST))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--model", default="idc-v4-glass")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 2.0])
    a = ap.parse_args()
    model = load_model(a.model, device="cpu")
    names = ["clean", "clean, written", "un-inked"]
    names += [f"un-inked, chroma σ {s:g}" for s in a.sigmas]
    names += [f"clean, chroma σ {s:g}" for s in a.sigmas]
    pooled: dict[str, list[np.ndarray]] = {n: [] for n in names}
    print("| slide | seed | tiles | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for si, sid in enumerate(a.slides):
            img = read_level0(SLIDES / f"{sid}.tiff")
            h, w = img.shape[0] // PATCH * PATCH, img.shape[1] // PATCH * PATCH
            reg = idc_region(sid, img.shape[:2])
            clean = img[:h, :w]
            base: dict[str, np.ndarray] = {
                "clean": model.predict_dense(clean, PATCH),
                "clean, written": model.predict_dense(written(img, tmp)[:h, :w], PATCH),
            }
            for s in a.sigmas:
                base[f"clean, chroma σ {s:g}"] = model.predict_dense(
                    chroma_smoothed(clean, s), PATCH
                )
            tissue = (clean.min(-1) < 200).reshape(h // PATCH, PATCH, w // PATCH, PATCH)
            tissue_share = tissue.mean((1, 3))
            for seed in range(a.seeds):
                p = paint_case(img, reg, "ink", seed, si)
                inked = p.masks["ink"][:h, :w].reshape(h // PATCH, PATCH, w // PATCH, PATCH)
                sel = (inked.mean((1, 3)) > 0.5) & (tissue_share > 0.3)
                field = np.maximum(od(p.rgb) - od(img), 0.0)[:h, :w]
                back = written(p.rgb, tmp)[:h, :w].astype(np.float32)
                un = np.clip(np.rint((back + 1.0) * np.exp(field) - 1.0), 0, 255).astype(np.uint8)
                got: dict[str, Any] = dict(base)
                got["un-inked"] = model.predict_dense(un, PATCH)
                for s in a.sigmas:
                    got[f"un-inked, chroma σ {s:g}"] = model.predict_dense(
                        chroma_smoothed(un, s), PATCH
                    )
                for n in names:
                    pooled[n].append(got[n][sel])
                cells = " | ".join(f"{got[n][sel].mean():.3f}" if sel.any() else "-" for n in names)
                print(f"| {sid} | {seed} | {int(sel.sum())} | {cells} |", flush=True)
    means = " | ".join(f"**{np.concatenate(pooled[n]).mean():.3f}**" for n in names)
    n_all = sum(len(x) for x in pooled["clean"])
    print(f"| all | | {n_all} | {means} |")
    print("(mean p(IDC) of the tiles that are > 50 % inked and > 30 % tissue)")


if __name__ == "__main__":
    main()
