"""The Python API on the demo slide: segment, look at the result, save it for QuPath.

Usage: python examples/python_api.py [SLIDE] [OUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

from idcmap import load_model, segment_slide


def main(slide: Path, out: Path) -> None:
    model = load_model(device="auto")  # load once, reuse for many slides
    result = segment_slide(slide, model=model, progress=False)
    s = result.summary
    m = s["measurements"]  # the drawn regions' figures, as the CLI's done line and cohort.csv
    print(
        f"{slide.name}: {len(result.regions)} IDC region(s), "
        f"{m['idc_area_mm2']:.2f} mm² IDC ({m['idc_percent_of_tissue']:.1f} % of the tissue)"
    )
    for i, region in enumerate(result.regions, 1):
        print(
            f"  region {i}: {region.area_um2 / 1e6:.2f} mm², mean probability "
            f"{region.mean_prob:.2f}, level-0 px bounds {[round(v) for v in region.polygon.bounds]}"
        )
    folder = result.save(out)  # atomic: a complete folder or none
    print(f"outputs in {folder}")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else here / "8955.tiff",
        Path(sys.argv[2]) if len(sys.argv) > 2 else Path("api-out"),
    )
