"""How fast ``idcmap view`` answers: Deep Zoom tiles (one client, and six at once as a browser
opens them), the batch table, a thumbnail and the heatmap overlay.

Makes its own slide once in ``benchmarks/_work/viewer/``: ``examples/8955.tiff`` (a real IDC
mosaic, 4 µm/px) enlarged 4x to 11600 × 7800 px at 1 µm/px, tiled JPEG with levels 1x/4x/16x,
then ``idcmap run`` on it. Prints figures; not a test.

    .venv/bin/python benchmarks/viewer.py [--tiles 60]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiffgen import write_pyramid_tiff  # noqa: E402

from idcmap.cli.main import main as idcmap_main  # noqa: E402
from idcmap.viewer.server import make_server  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "viewer"


def make_outputs() -> Path:
    slide = WORK / "8955x4.tiff"
    out = WORK / "out"
    if not slide.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        with Image.open(ROOT / "examples" / "8955.tiff") as im:
            rgb = im.convert("RGB")
            big = np.asarray(rgb.resize((rgb.width * 4, rgb.height * 4), Image.Resampling.BICUBIC))
        write_pyramid_tiff(slide, big, 1.0, (1, 4, 16))
    if not (out / "8955x4" / "summary.json").exists():
        assert idcmap_main(["run", str(slide), "-o", str(out), "-q"]) == 0
    return out


def fetch(port: int, path: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{path}: HTTP {resp.status}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=60, help="tiles per case (default: 60)")
    args = ap.parse_args()
    out = make_outputs()
    srv = make_server(out, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = int(srv.server_address[1])
    try:
        fetch(port, "/api/slides/8955x4")  # opens the slide
        dz = srv.slides.get("8955x4", srv.catalog.slide_path(srv.catalog.get("8955x4")), {}).dz
        assert dz is not None
        top = dz.level_count - 1
        print("case                                   ms/request (median, p90)")
        for name, level in (
            ("tile, full resolution", top),
            ("tile, 1/4 (slide level 1)", top - 2),
            ("tile, 1/8 (level 1, resized)", top - 3),
        ):
            cols, rows = dz.level_tiles[level]
            # tiles spread over the slide (tissue and glass), each read once
            step = max(1, cols * rows // args.tiles)
            addrs = [(i % cols, (i // cols) % rows) for i in range(0, cols * rows, step)][
                : args.tiles
            ]
            one = [fetch(port, f"/slides/8955x4/tiles/{level}/{c}_{r}.jpeg") for c, r in addrs]
            addrs = [(c, (r + rows // 2) % rows) for c, r in addrs]  # not the tiles read just now
            urls = [f"/slides/8955x4/tiles/{level}/{c}_{r}.jpeg" for c, r in addrs]
            with ThreadPoolExecutor(6) as pool:
                six = list(pool.map(lambda u: fetch(port, u), urls))
            for label, ts in ((f"{name}, 1 client", one), (f"{name}, 6 at once", six)):
                p90 = sorted(ts)[int(0.9 * len(ts))]
                print(f"{label:38s} {1e3 * statistics.median(ts):6.1f} {1e3 * p90:6.1f}")
        for label, path in (
            ("batch table (/api/slides)", "/api/slides"),
            ("thumbnail, first", "/slides/8955x4/thumbnail.jpeg"),
            ("heatmap overlay, first", "/slides/8955x4/overlay.png?layer=smoothed"),
        ):
            print(f"{label:38s} {1e3 * fetch(port, path):6.1f}")
    finally:
        srv.shutdown()
        srv.server_close()


if __name__ == "__main__":
    main()
