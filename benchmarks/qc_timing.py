"""Time the QC stage against the pipeline on the test mosaics (CPU), interleaved runs.

    PYTHONPATH=. python benchmarks/qc_timing.py --repeats 3

For each mosaic: median end-to-end ``segment_slide`` time with ``qc="none"`` (0.2.0) and
``qc="all"`` (QC on the thumbnail + sharpness in the tile pass + blur cells), and the QC
stage's own time from ``summary.timings_s`` (``qc`` + ``qc_blur``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from idcmap.model.runtime import load_model  # noqa: E402
from idcmap.params import Params  # noqa: E402
from idcmap.pipeline.segment import segment_slide  # noqa: E402

SLIDES = ROOT.parent / "shared" / "data" / "idc" / "slides"
SPLIT = ROOT / "idcmap" / "model" / "weights" / "idc-v1.split.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slides", nargs="*")
    ap.add_argument("--paths", nargs="*", type=Path, help="slide files instead of mosaics")
    a = ap.parse_args()
    model = load_model(None, device="cpu")
    test = json.loads(SPLIT.read_text())["test"]
    ids = a.slides or [s for s in test if (SLIDES / f"{s}.tiff").is_file()]
    paths = a.paths or [SLIDES / f"{sid}.tiff" for sid in ids]
    print("| mosaic | 0.2.0 total s | QC total s | Δ % | QC stage s (qc + qc_blur) | % of 0.2.0 |")
    print("|---|---|---|---|---|---|")
    tot = {"none": [], "all": [], "stage": []}
    for path in paths:
        sid = path.stem
        t: dict[str, list[float]] = {"none": [], "all": [], "stage": []}
        segment_slide(path, model=model, progress=False)  # warm
        for _ in range(a.repeats):
            for mode in ("none", "all"):
                r = segment_slide(path, model=model, progress=False, params=Params(qc=mode))
                ts = r.summary["timings_s"]
                t[mode].append(ts["total"])
                if mode == "all":
                    stage = ts.get("qc", 0.0) + ts.get("qc_blur", 0.0) + ts.get("qc_fill", 0.0)
                    t["stage"].append(stage)
        m = {k: statistics.median(v) for k, v in t.items()}
        for k in tot:
            tot[k].append(m[k])
        print(
            f"| {sid} | {m['none']:.2f} | {m['all']:.2f} | {100 * (m['all'] / m['none'] - 1):+.1f} "
            f"| {m['stage']:.3f} | {100 * m['stage'] / m['none']:.1f} |",
            flush=True,
        )
    s = {k: sum(v) for k, v in tot.items()}
    print(
        f"| all | {s['none']:.2f} | {s['all']:.2f} | {100 * (s['all'] / s['none'] - 1):+.1f} | "
        f"{s['stage']:.3f} | {100 * s['stage'] / s['none']:.1f} |"
    )


if __name__ == "__main__":
    main()
