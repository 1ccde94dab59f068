"""Cell Dice of `idcmap` on `make_slides.py` pyramids of the shared mosaics (e.g. the 40x ones,
YCbCr 4:2:0, levels 1/4/16/64x): the mosaic's ``cells.csv`` scaled by the upsampling (16 for
40x) is the truth. Prints per-slide and pooled Dice, and the level and scale read.

    python benchmarks/pyramid_dice.py --slides DIR/{8865,8913,8955,8984,9035,14082}-40x.tiff \\
        --cells-dir ../shared/data/idc/slides [--model idc-v2] [--upsample 16]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from idcmap import load_model, segment_slide
from idcmap.train.truth import truth_from_cells


def scaled_cells(cells: Path, factor: float, out: Path) -> Path:
    with cells.open() as f, out.open("w", newline="") as g:
        r = csv.DictReader(f)
        w = csv.writer(g)
        w.writerow(["x", "y", "width", "height", "label"])
        for row in r:
            xywh = [round(float(row[k]) * factor) for k in ("x", "y", "width", "height")]
            w.writerow([*xywh, row["label"]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=Path, nargs="+", required=True)
    ap.add_argument("--cells-dir", type=Path, required=True, help="folder of <id>.cells.csv")
    ap.add_argument("--upsample", type=float, default=16.0)
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    model = load_model(a.model)
    tot = [0, 0, 0]
    print("| slide | level read | scale | Dice | IDC cells found / true |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for s in a.slides:
            pid = s.name.split("-")[0]
            truth_csv = scaled_cells(
                a.cells_dir / f"{pid}.cells.csv", a.upsample, Path(tmp) / f"{pid}.csv"
            )
            res = segment_slide(s, model=model, progress=False)
            truth = truth_from_cells(truth_csv, res.heatmap)
            n = [int((res.mask & truth).sum()), int(res.mask.sum()), int(truth.sum())]
            tot = [x + y for x, y in zip(tot, n, strict=True)]
            rec = res.summary.slide
            dice = 2 * n[0] / max(n[1] + n[2], 1)
            print(
                f"| {s.name} | {rec['level_read']} | {rec.get('level_read_scale', 1)} | "
                f"{dice:.3f} | {n[1]} / {n[2]} |"
            )
    print(f"pooled Dice {2 * tot[0] / max(tot[1] + tot[2], 1):.3f}")


if __name__ == "__main__":
    main()
