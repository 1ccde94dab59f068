"""What per-slide stain normalisation costs: the same model with and without its ``stain_norm``
section (``Params(stain_norm="none")``), end to end in one process, alternating, on each slide.

Prints per slide the median over ``--rounds`` of :func:`segment_slide`'s total, its tile pass
(``tiles_wall``) and the stain stage (``stain_norm``: glass, mask redraw), in seconds.

    PYTHONPATH=. python benchmarks/stain_cost.py --model MODEL_WITH_STAIN_NORM.json \\
        --slides ../shared/data/idc/slides/8975.tiff SLIDE-40x.tiff --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, help="a model .json with a stain_norm section")
    ap.add_argument("--slides", nargs="+", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)

    from idcmap.model.runtime import load_model
    from idcmap.params import Params
    from idcmap.pipeline.infer import threads_beside_readers
    from idcmap.pipeline.segment import segment_slide

    model = load_model(a.model, device="cpu")
    if not model.config.stain_norm:
        ap.error(f"{a.model} carries no stain_norm section")
    threads = threads_beside_readers(2)
    print("| slide | stain norm | total s | tile pass s | stain stage s |")
    print("|---|---|---|---|---|")
    for slide in a.slides:
        times: dict[str, list[tuple[float, float, float]]] = {"none": [], "auto": []}
        segment_slide(slide, model=model, progress=False)  # warm the caches once
        for _ in range(a.rounds):
            for mode in ("none", "auto"):
                p = Params(stain_norm=mode, torch_threads=threads)  # type: ignore[arg-type]
                t = segment_slide(slide, model=model, progress=False, params=p).summary.timings_s
                times[mode].append((t["total"], t["tiles_wall"], t.get("stain_norm", 0.0)))
        for mode, rows in times.items():
            med = [statistics.median(r[i] for r in rows) for i in range(3)]
            print(f"| {slide.name} | {mode} | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
