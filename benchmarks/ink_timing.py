"""What the ink network's second read costs: ``segment_slide`` on the test mosaics painted with
the ink battery's seed-0 ink (benchmarks/artefacts.py's painter), the bundled default against
the same model without its ``ink_model`` section, interleaved, models loaded once; median wall
and the summary's ``qc_fill`` (the ink network's load, on the first slide, and its pass).

    PYTHONPATH=. python benchmarks/ink_timing.py [--blend dye|paint] [--rounds 3] [--out DIR]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from artefacts import SLIDES, SPLIT, idc_region, paint_case
from tiffgen import write_pyramid_tiff

from idcmap import load_model, segment_slide
from idcmap.params import Params
from idcmap.train.data import read_level0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blend", choices=("dye", "paint"), default="dye")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/_work/ink_timing"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    on = load_model(device="cpu")
    off = load_model(device="cpu")
    off.config = off.config.replace(ink_model={})
    # the battery's test mosaics in its order (the marker colours cycle with it)
    test = [s for s in json.loads(SPLIT.read_text())["test"] if (SLIDES / f"{s}.tiff").is_file()]
    print("| slide | ink over tissue mm² | with the ink network, s | without, s | qc_fill, s |")
    print("|---|---|---|---|---|")
    for si, sid in enumerate(test):
        img = read_level0(SLIDES / f"{sid}.tiff")
        painted = paint_case(img, idc_region(sid, img.shape[:2]), "ink", 0, si, a.blend)
        tif = write_pyramid_tiff(a.out / f"{sid}.tiff", painted.rgb, 4.0)
        wall: dict[str, list[float]] = {"on": [], "off": []}
        fill: dict[str, float] = {}
        ink_mm2 = 0.0
        for _ in range(a.rounds):
            for name, model in (("on", on), ("off", off)):
                t = time.perf_counter()
                r = segment_slide(tif, model=model, progress=False, params=Params(torch_threads=2))
                wall[name].append(time.perf_counter() - t)
                fill[name] = r.summary["timings_s"].get("qc_fill", 0.0)
                ink_mm2 = r.summary["qc"]["ink"]["over_tissue_mm2"]
        print(
            f"| {sid} | {ink_mm2:.1f} | {statistics.median(wall['on']):.3f} | "
            f"{statistics.median(wall['off']):.3f} | {fill['on']:.3f} / {fill['off']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
