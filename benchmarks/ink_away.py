"""Ink battery: pooled Dice over all cells, over the cells away from the painted ink (painted
fraction < 0.1) and over those under it: how much of the loss is IDC hidden under the ink,
how much damage around it. The painted cases of benchmarks/artefacts.py's ink rows (marker
colours cycle with the mosaic's place in the test list, si = 0..5).

    PYTHONPATH=. python benchmarks/ink_away.py OUT_DIR
"""

import sys
from pathlib import Path as _P

sys.path.insert(0, str(_P(__file__).resolve().parent))
sys.path.insert(0, str(_P(__file__).resolve().parents[1] / "tests"))
from pathlib import Path

import numpy as np
from artefacts import SLIDES, cells_fraction, idc_region, paint_case, run
from tiffgen import write_pyramid_tiff

from idcmap.model.runtime import load_model
from idcmap.train.data import read_level0
from idcmap.train.metrics import dice_from_counts
from idcmap.train.truth import truth_from_cells

m = load_model(None, device="cpu")
ids = ["8865", "8913", "8955", "8984", "9035", "14082"]
tot = {k: [0, 0, 0] for m in ("clean", "none", "all") for k in (m, m + "_out", m + "_under")}
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for si, sid in enumerate(ids):
    img = read_level0(SLIDES / f"{sid}.tiff")
    reg = idc_region(sid, img.shape[:2])
    rc = run(SLIDES / f"{sid}.tiff", m, "none")
    truth = truth_from_cells(SLIDES / f"{sid}.cells.csv", rc.heatmap)
    for seed in range(3):
        p = paint_case(img, reg, "ink", seed, si)
        tif = out / f"{sid}_{seed}.tiff"
        write_pyramid_tiff(tif, p.rgb, 4.0)
        away = cells_fraction(p.masks["ink"], truth.shape) < 0.1
        for mode, res in (
            ("clean", rc),
            ("none", run(tif, m, "none")),
            ("all", run(tif, m, "all")),
        ):
            pred = np.asarray(res.mask, bool)
            every = np.ones_like(away)
            for key, sel in ((mode, every), (mode + "_out", away), (mode + "_under", ~away)):
                pr, tr = pred & sel, truth & sel
                tot[key][0] += int((pr & tr).sum())
                tot[key][1] += int(pr.sum())
                tot[key][2] += int(tr.sum())
        tif.unlink()
        print(sid, seed, {k: round(dice_from_counts(*v)[0], 3) for k, v in tot.items()}, flush=True)
print(
    "FINAL",
    {k: round(dice_from_counts(*v)[0], 4) for k, v in tot.items()},
    "truth cells all/away",
    tot["clean"][2],
    tot["clean_out"][2],
)
