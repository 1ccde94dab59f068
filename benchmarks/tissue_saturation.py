"""The tissue pass with the saturation of 0.3.0.dev0 before issue #18 (channel max/min of the
float image, a reduction over a 3-long last axis) against the current one (max/min of the 8-bit
channels, then scaled): the same floats (checked), the time of ``detect_tissue`` (median of 7,
two alternating rounds).

    python benchmarks/tissue_saturation.py SLIDE [SLIDE ...]
"""

from __future__ import annotations

import sys
import time

import numpy as np

import idcmap.pipeline.tissue as tissue
from idcmap.io.open import open_slide


def old_saturation(rgb: np.ndarray) -> np.ndarray:
    a = rgb.astype(np.float32) / 255.0
    mx, mn = a.max(axis=2), a.min(axis=2)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    sat[mx < tissue._DARK] = 0.0
    return sat


def main(paths: list[str]) -> None:
    new = tissue.saturation
    for path in paths:
        with open_slide(path) as s:
            rgb = s.read_at_mpp(16.0)[0]
            assert old_saturation(rgb).tobytes() == new(rgb).tobytes(), "not the same floats"
            got: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(2):
                for name, f in (("old", old_saturation), ("new", new)):
                    tissue.saturation = f  # what tissue_mask_from_rgb calls
                    ts = []
                    for _ in range(7):
                        t = time.perf_counter()
                        tissue.detect_tissue(s, target_mpp=16.0)
                        ts.append(time.perf_counter() - t)
                    got[name].append(sorted(ts)[3])
            tissue.saturation = new
            print(
                f"{path}: thumbnail {rgb.shape[1]}x{rgb.shape[0]} px; detect_tissue "
                f"old {', '.join(f'{v:.3f}' for v in got['old'])} s, "
                f"new {', '.join(f'{v:.3f}' for v in got['new'])} s; the same floats"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
