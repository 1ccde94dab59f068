"""Compare two output trees of `idcmap run`: every file byte- or array-identical, except what
changes run to run (summary timings, version, model path; GeoJSON feature ids, uuid4 by design)
and the keys a newer version adds (``--allow-new``: summary ``slide.level_read_scale``,
``slide.colour_mpp``, ``parameters.qc``, ``parameters.decode``; npz ``slide_mpp_y``). Prints the
files that differ.

    python benchmarks/compare_outputs.py OLD_OUT NEW_OUT [--allow-new]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

NEW_SLIDE_KEYS = {"level_read_scale", "colour_mpp"}
NEW_PARAMETERS = {"qc", "decode"}
NEW_ARRAYS = {"slide_mpp_y"}


def _summary(d: dict[str, Any], allow_new: bool) -> dict[str, Any]:
    d = {k: v for k, v in d.items() if k not in ("idcmap_version", "timings_s")}
    d["model"] = {k: v for k, v in d["model"].items() if k != "path"}
    if allow_new:
        d["slide"] = {k: v for k, v in d["slide"].items() if k not in NEW_SLIDE_KEYS}
        d["parameters"] = {k: v for k, v in d["parameters"].items() if k not in NEW_PARAMETERS}
    return d


def _no_ids(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _no_ids(v) for k, v in o.items() if k != "id"}
    if isinstance(o, list):
        return [_no_ids(v) for v in o]
    return o


def same(fa: Path, fb: Path, allow_new: bool) -> bool:
    if fa.suffix == ".npz":
        with np.load(fa) as za, np.load(fb) as zb:
            extra = set(zb.files) - set(za.files) - (NEW_ARRAYS if allow_new else set())
            return not extra and all(
                k in zb.files and np.array_equal(za[k], zb[k], equal_nan=True) for k in za.files
            )
    if fa.name == "summary.json":
        a, b = (json.loads(f.read_text()) for f in (fa, fb))
        return _summary(a, allow_new) == _summary(b, allow_new)
    if fa.suffix == ".geojson":
        return _no_ids(json.loads(fa.read_text())) == _no_ids(json.loads(fb.read_text()))
    return fa.read_bytes() == fb.read_bytes()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--allow-new", action="store_true", help="ignore keys 0.3 adds")
    a = ap.parse_args()
    n = bad = 0
    for fa in sorted(a.old.rglob("*")):
        if fa.is_dir() or fa.name == "cohort.csv":  # cohort.csv: times and dates
            continue
        n += 1
        fb = a.new / fa.relative_to(a.old)
        if not fb.exists() or not same(fa, fb, a.allow_new):
            print(f"differs: {fa.relative_to(a.old)}")
            bad += 1
    print(f"{n} files compared, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
