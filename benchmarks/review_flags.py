"""How many slides the QC verdict flags for review, per shift of ``benchmarks/shifts.py``: the
test mosaics as they are and every shifted copy in its cache (``--cache``, made by a
``shifts.py --cache DIR`` run), each model with its defaults (QC on). One line per model and
shift: flagged / slides, then each flagged slide's reasons (short).

    PYTHONPATH=. python benchmarks/review_flags.py --cache DIR --models idc-v4-glass idc-v2
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT.parent / "shared" / "data" / "idc" / "slides"
TEST = ("8865", "8913", "8955", "8984", "9035", "14082")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, required=True, help="shifts.py's folder of shifted TIFFs")
    ap.add_argument("--models", nargs="+", default=["idc-v4-glass"])
    ap.add_argument("--slides", nargs="+", default=list(TEST), help="mosaic ids")
    a = ap.parse_args()
    from idcmap.model.runtime import load_model
    from idcmap.pipeline.segment import segment_slide

    folders = [("as-is", SLIDES)] + [(d.name, d) for d in sorted(a.cache.iterdir()) if d.is_dir()]
    for name in a.models:
        model = load_model(name, device="cpu")
        total = 0
        for label, folder in folders:
            flagged = []
            for sid in a.slides:
                res = segment_slide(folder / f"{sid}.tiff", model=model, progress=False)
                qc = res.summary.to_json()["qc"]
                if qc["review"]:
                    why = "; ".join(r.split(" (")[0] for r in qc["reasons"])
                    flagged.append(f"{sid}: {why}")
            total += len(flagged)
            print(f"{name} | {label} | {len(flagged)}/{len(a.slides)} | {' / '.join(flagged)}")
        print(f"{name} | all | {total}/{len(a.slides) * len(folders)}", flush=True)


if __name__ == "__main__":
    main()
