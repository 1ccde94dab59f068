"""Staircase vs smooth region outlines on the test mosaics: cell Dice and area Dice.

For each mosaic the bundled model runs once (idcmap.pipeline.segment.segment_slide with default
parameters); the same mask is then outlined twice: cell edges
(idcmap.pipeline.regions.mask_to_regions) and the threshold contour of the smoothed surface
(idcmap.pipeline.contours.contour_regions). Figures:

* cell Dice: the polygons rasterised at the cell centres (idcmap.pipeline.regions.rasterize)
  against the truth of ``cells.csv`` on the same grid (idcmap.train.truth.truth_from_cells) — what
  ``idcmap evaluate slides`` measures;
* area Dice: polygon areas against the union of the truth's IDC rectangles (sub-cell; the truth
  itself is a 200-µm staircase, which favours staircase outlines);
* IDC area in mm² of each outline.

Usage: python benchmarks/contour_dice.py [--slides 8865,8913,...] [--data ../shared/data/idc/slides]
       python benchmarks/contour_dice.py --timing   (outline time on a 1000×1000-cell heatmap)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import shapely

from idcmap.model.runtime import load_model
from idcmap.pipeline.contours import contour_regions
from idcmap.pipeline.regions import mask_to_regions, rasterize
from idcmap.pipeline.segment import segment_slide
from idcmap.train.data import read_cells
from idcmap.train.truth import truth_from_cells

TEST_SLIDES = "8865,8913,8955,8984,9035,14082"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", default=TEST_SLIDES)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/idc/slides"))
    ap.add_argument("--model", default=None, help="model name or .json (default: the bundled)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--timing", action="store_true", help="time both outlines on a big heatmap")
    args = ap.parse_args()
    if args.timing:
        timing()
        return
    model = load_model(args.model, device="cpu")
    print(f"model {model.config.name} {model.config.version}")
    rows = []
    tot = {k: [0.0, 0.0, 0.0] for k in ("cell_stair", "cell_smooth", "area_stair", "area_smooth")}
    for name in args.slides.split(","):
        slide = args.data / f"{name}.tiff"
        cells = args.data / f"{name}.cells.csv"
        res = segment_slide(slide, model=model, progress=False)
        hm = res.heatmap
        truth = truth_from_cells(cells, hm)
        simplify = float(res.summary["parameters"]["simplify_um"])
        t = time.perf_counter()
        stair = mask_to_regions(res.mask, hm, simplify_um=simplify)
        t_stair = time.perf_counter() - t
        t = time.perf_counter()
        smooth = contour_regions(
            res.mask, res.smoothed, res.threshold, stats=hm, simplify_um=simplify
        )
        t_smooth = time.perf_counter() - t
        truth_poly = shapely.union_all(
            [shapely.box(x, y, x + w, y + h) for x, y, w, h, lab in read_cells(cells) if lab == 1]
        )
        row = {"slide": name}
        for key, regs in (("stair", stair), ("smooth", smooth)):
            polys = [r.polygon for r in regs]
            pred = rasterize(polys, hm)
            inter = int((pred & truth).sum())
            n_p, n_t = int(pred.sum()), int(truth.sum())
            tot[f"cell_{key}"] = [
                a + b for a, b in zip(tot[f"cell_{key}"], (inter, n_p, n_t), strict=True)
            ]
            u = shapely.union_all(polys) if polys else shapely.Polygon()
            a_i = shapely.intersection(u, truth_poly).area
            a_p, a_t = u.area, truth_poly.area
            tot[f"area_{key}"] = [
                a + b for a, b in zip(tot[f"area_{key}"], (a_i, a_p, a_t), strict=True)
            ]
            row[f"cell_dice_{key}"] = 2 * inter / (n_p + n_t) if n_p + n_t else 1.0
            row[f"area_dice_{key}"] = 2 * a_i / (a_p + a_t) if a_p + a_t else 1.0
            row[f"idc_mm2_{key}"] = a_p * hm.slide_mpp**2 / 1e6
            row[f"vertices_{key}"] = int(sum(shapely.get_num_coordinates(polys))) if polys else 0
        row["regions"] = len(stair)
        row["seconds_stair"] = t_stair
        row["seconds_smooth"] = t_smooth
        rows.append(row)
        print(
            f"{name:>6}  regions {len(stair):>3}  cell Dice stair {row['cell_dice_stair']:.4f} "
            f"smooth {row['cell_dice_smooth']:.4f}  area Dice stair {row['area_dice_stair']:.4f} "
            f"smooth {row['area_dice_smooth']:.4f}  IDC mm² stair {row['idc_mm2_stair']:.2f} "
            f"smooth {row['idc_mm2_smooth']:.2f}  outline s stair {t_stair:.3f} "
            f"smooth {t_smooth:.3f}",
            flush=True,
        )
    pooled = {k: 2 * i / (p + t) if p + t else 1.0 for k, (i, p, t) in tot.items()}
    print(
        "pooled  cell Dice stair {cell_stair:.4f} smooth {cell_smooth:.4f}  "
        "area Dice stair {area_stair:.4f} smooth {area_smooth:.4f}".format(**pooled)
    )
    if args.json:
        args.json.write_text(json.dumps({"per_slide": rows, "pooled": pooled}, indent=2) + "\n")


def timing() -> None:
    """Both outlines of a 1000×1000-cell heatmap of smoothed noise (≈1150 regions)."""
    from scipy import ndimage

    from idcmap.pipeline.heatmap import Heatmap
    from idcmap.pipeline.regions import idc_mask

    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.random((1000, 1000)), 3).astype(np.float32)
    thr = float(np.quantile(noise, 0.6))
    hm = Heatmap(noise, (0.0, 0.0), (50.0, 50.0), 4.0, 4.0, 50, 50)
    mask = idc_mask(hm, thr, min_region_um2=0, min_hole_um2=0)
    for name, run in (
        ("staircase", lambda: mask_to_regions(mask, hm, simplify_um=2.0)),
        ("smooth", lambda: contour_regions(mask, hm, thr, simplify_um=2.0)),
    ):
        t = time.perf_counter()
        n = len(run())
        print(f"{name:>9}: {n} regions in {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
