"""Randomly shifted copies of whole mosaics, for fitting an aggregator that holds across shifts.

Each copy of a mosaic is "the same tissue from another lab and scanner": a random stain amount
(HED), maybe a colour transfer to one of the given references, a white balance, and last a JPEG
re-encode of the 4-µm image with random quality and chroma subsampling, written as a pyramidal
JPEG TIFF (:func:`shifts.write_pyramid`) with the mosaic's ``cells.csv`` linked beside it, so
``idcmap train-aggregator --train/--valid`` takes them like the originals. Seeded.

    PYTHONPATH=. python benchmarks/shift_copies.py --slides ../shared/data/idc/slides/8863.tiff \\
        --refs ../shared/data/stain-refs/SOB_B_A-*.png --copies 4 --out /tmp/copies
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from shifts import read_level0, write_pyramid  # noqa: E402

from idcmap.train import degrade as dg  # noqa: E402


def draw(rng: np.random.Generator, n_refs: int) -> dict:
    """One random whole-slide shift (the parameters, JSON-able)."""
    p: dict = {
        "h": float(rng.uniform(-0.012, 0.012)),
        "e": float(rng.uniform(-0.012, 0.012)),
        "gains": [float(g) for g in rng.uniform(0.91, 1.05, 3)],
        "quality": int(rng.integers(60, 96)),
        "subsampling": str(rng.choice(["4:2:0", "4:2:0", "4:2:2", "4:4:4"])),
    }
    if n_refs and rng.random() < 0.4:
        p["ref"] = int(rng.integers(n_refs))
        p["alpha"] = float(rng.uniform(0.3, 1.0))
    return p


def apply(rgb: np.ndarray, p: dict, refs: Sequence[dg.LabStats]) -> np.ndarray:
    x = dg.hed_shift(rgb, h=p["h"], e=p["e"])
    if "ref" in p:
        x = dg.reinhard(x, dg.lab_stats(x), refs[p["ref"]], p["alpha"])
    return dg.white_balance(x, p["gains"])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slides", nargs="+", type=Path, required=True)
    ap.add_argument("--refs", nargs="*", type=Path, default=[])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    refs = list(dg.load_refs(a.refs).values())
    rng = np.random.default_rng(a.seed)
    log = {}
    for s in a.slides:
        rgb, mpp = read_level0(s)
        truth = s.with_name(s.name.rsplit(".", 1)[0] + ".cells.csv")
        for k in range(a.copies):
            p = draw(rng, len(refs))
            d = a.out / f"copy{k}"
            d.mkdir(parents=True, exist_ok=True)
            if not (d / truth.name).exists():
                (d / truth.name).symlink_to(truth.resolve())
            write_pyramid(d / s.name, apply(rgb, p, refs), mpp, p["quality"], p["subsampling"])
            log[f"copy{k}/{s.name}"] = p
            print(f"copy{k}/{s.name}: {p}", flush=True)
    (a.out / "copies.json").write_text(json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
