"""Time the opt-in OME-TIFF output (``--ome-tiff``) on ``examples/8955.tiff``, and its size.

    PYTHONPATH=. python benchmarks/ome_tiff.py --repeats 20

For each stride: the heatmap's shape, the number of pyramid levels, the median time of building
the image (:func:`idcmap.output.ometiff.heatmap_image`, QC codes included, ``--qc all``) and
writing it (:func:`~idcmap.output.ometiff.write_ome_tiff`), and the file's size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tifffile  # noqa: E402

from idcmap.output.ometiff import heatmap_image, write_ome_tiff  # noqa: E402
from idcmap.params import Params  # noqa: E402
from idcmap.pipeline.segment import segment_slide  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slide", type=Path, default=ROOT / "examples" / "8955.tiff")
    ap.add_argument("--strides", type=int, nargs="+", default=[50, 25, 10])
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.heatmap.ome.tif"
        for stride in a.strides:
            res = segment_slide(
                a.slide, progress=False, device="cpu", params=Params(qc="all", stride_px=stride)
            )
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                image = heatmap_image(
                    heatmap=res.heatmap,
                    smoothed=res.smoothed,
                    qc_masks=res.qc_masks,
                    thumbnail=res.tissue,
                    name=res.stem,
                    threshold=res.threshold,
                )
                write_ome_tiff(image, path)
                times.append(time.perf_counter() - t)
            with tifffile.TiffFile(path) as tif:
                levels = len(tif.series[0].levels)
            rows, cols = res.heatmap.shape
            print(
                f"stride {stride}: {cols} x {rows} cells, {levels} levels, "
                f"median {1000 * statistics.median(times):.1f} ms, {path.stat().st_size} bytes"
            )


if __name__ == "__main__":
    main()
