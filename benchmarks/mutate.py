"""A small mutation check of the geometry modules (slide, tiles, heatmap, regions).

Each mutation below is one realistic one-line bug (an operator swap, an off-by-one, swapped
units, a wrong stride...). For each, in a temporary copy of ``idcmap/`` and ``tests/``, the
mutation is applied alone and the tests that cover that module run (``pytest -x``): the mutant
is *killed* when they fail, *survived* when they pass. Prints one line per mutant and the
score (killed / all). Not part of ``make test``: ``make mutate`` runs it (about 5 min on this
machine, 2 shared cores, when it is otherwise idle).

Why not mutmut / cosmic-ray: they mutate every operator of a module (hundreds of mutants per
module here, most of them equivalent or absurd) and rerun the tests for each; with the ~40 s of
tests per module on this machine that is hours. A fixed list of the bugs one would really
write keeps the check minutes long and its score comparable from run to run.

Usage: python benchmarks/mutate.py [--only NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Tests run for a mutant of each module (the ones that exercise it).
TESTS = {
    "slide": ["test_slide.py", "test_formats.py", "test_pipeline.py"],
    "tiles": ["test_geometry.py", "test_pipeline.py", "test_tissue.py"],
    "heatmap": ["test_geometry.py", "test_pipeline.py", "test_export.py", "test_regions.py"],
    "regions": ["test_regions.py", "test_export.py", "test_pipeline.py"],
}


@dataclass(frozen=True)
class Mutation:
    name: str
    module: str  # slide | tiles | heatmap | regions
    old: str  # must occur exactly once in idcmap/<module>.py
    new: str
    what: str


MUTATIONS = [
    # ---- slide.py
    Mutation(
        "unit-cm-inch",
        "slide",
        "{2: 25400.0, 3: 10000.0}",
        "{2: 10000.0, 3: 25400.0}",
        "TIFF resolution unit: cm and inch swapped",
    ),
    Mutation(
        "level-tolerance",
        "slide",
        "if m <= target_mpp * 1.01 and m > best_mpp:",
        "if m <= target_mpp and m > best_mpp:",
        "best level: the 1 % tolerance dropped",
    ),
    Mutation(
        "level-finest",
        "slide",
        "if m <= target_mpp * 1.01 and m > best_mpp:",
        "if m <= target_mpp * 1.01 and m < best_mpp:",
        "best level: the finest instead of the coarsest fitting level",
    ),
    Mutation(
        "qupath-frame",
        "slide",
        "return x_level0_px - info.bounds_level0_px[0], y_level0_px - info.bounds_level0_px[1]",
        "return x_level0_px + info.bounds_level0_px[0], y_level0_px + info.bounds_level0_px[1]",
        "QuPath frame: bounds origin added instead of subtracted",
    ),
    Mutation(
        "read-floor",
        "slide",
        "lx, ly = math.floor(x0 / d + PX_EPS), math.floor(y0 / d + PX_EPS)",
        "lx, ly = round(x0 / d), round(y0 / d)",
        "read_region: level px rounded instead of floored",
    ),
    Mutation(
        "thumb-size-units",
        "slide",
        "out_w = max(1, round(bw * self.info.mpp / target_mpp))",
        "out_w = max(1, round(bw * target_mpp / self.info.mpp))",
        "read_at_mpp: output width with the µm/px ratio inverted",
    ),
    Mutation(
        "mpp-y-from-x",
        "slide",
        'my = _float(reader.properties.get(f"{backend}.mpp-y")) or mx',
        "my = mx",
        "backend µm/px: y taken from x",
    ),
    Mutation(
        "alpha-black",
        "slide",
        "return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)",
        "return ((rgb * a + 127) // 255).astype(np.uint8)",
        "transparent pixels flattened over black instead of white",
    ),
    Mutation(
        "thumb-block-max",
        "slide",
        "k = max(1, min(lw // out_w, lh // out_h))",
        "k = max(1, max(lw // out_w, lh // out_h))",
        "read_at_mpp: the larger of the two reduction factors",
    ),
    # ---- tiles.py
    Mutation(
        "block-origin",
        "tiles",
        "mx0, my0 = c0 * st, r0 * st",
        "mx0, my0 = c0 * p, r0 * p",
        "block origin stepped by the patch instead of the stride",
    ),
    Mutation(
        "grid-last-tile",
        "tiles",
        "cols = max(1, math.ceil(max(width_m - patch_px, 0) / stride_px) + 1)",
        "cols = max(1, math.floor(max(width_m - patch_px, 0) / stride_px) + 1)",
        "tile grid: the partial last column dropped",
    ),
    Mutation(
        "model-px-units",
        "tiles",
        "fx, fy = model_mpp / info.mpp, model_mpp / info.mpp_y",
        "fx, fy = info.mpp / model_mpp, info.mpp_y / model_mpp",
        "level-0 px per model px inverted",
    ),
    Mutation(
        "tile-fraction-k",
        "tiles",
        "tile_frac /= k * k",
        "tile_frac /= k",
        "tile tissue fraction divided by k instead of k²",
    ),
    Mutation(
        "keep-strict",
        "tiles",
        "keep=tile_frac >= max(min_tissue, 1e-6),",
        "keep=tile_frac > max(min_tissue, 1e-6),",
        "a tile exactly at min_tissue dropped (>= → >)",
    ),
    Mutation(
        "block-size",
        "tiles",
        "n = max(1, (side_m - grid.patch_px) // grid.stride_px + 1)",
        "n = max(1, side_m // grid.stride_px)",
        "tiles per block: the patch overhang not subtracted (reads beyond the limit)",
    ),
    Mutation(
        "mask-centre",
        "tiles",
        "e = np.ceil((np.arange(n + 1) * cell - origin) / pxs - 0.5).astype(np.int64)",
        "e = np.ceil((np.arange(n + 1) * cell - origin) / pxs + 0.5).astype(np.int64)",
        "tissue fraction: mask pixel centres off by one pixel",
    ),
    Mutation(
        "bounds-limit",
        "tiles",
        "lim_x1, lim_y1 = min((bx + bw) / d, lw), min((by + bh) / d, lh)",
        "lim_x1, lim_y1 = lw, lh",
        "block reads not clipped to the slide's bounds rectangle",
    ),
    Mutation(
        "subpixel-trunc",
        "tiles",
        "dx, dy = round(ox), round(oy)",
        "dx, dy = int(ox), int(oy)",
        "block placement offset truncated instead of rounded",
    ),
    # ---- heatmap.py
    Mutation(
        "stitch-k2",
        "heatmap",
        "out = total / count",
        "out = total / (k * k)",
        "stitch averaged by k² instead of the covering tiles",
    ),
    Mutation(
        "stitch-count-all",
        "heatmap",
        "count[dy : dy + rows, dx : dx + cols] += v",
        "count[dy : dy + rows, dx : dx + cols] += 1",
        "stitch counts tiles that were not evaluated",
    ),
    Mutation(
        "cell-area",
        "heatmap",
        "return self.cell_level0_px[0] * self.cell_level0_px[1] * self.slide_mpp**2",
        "return self.cell_level0_px[0] * self.cell_level0_px[1] * self.slide_mpp",
        "cell area: µm/px not squared",
    ),
    Mutation(
        "sigma-units",
        "heatmap",
        "sigma = (sigma_um / cell_um[0], sigma_um / cell_um[1])",
        "sigma = (sigma_um * cell_um[0], sigma_um * cell_um[1])",
        "smoothing sigma: µm times cell size instead of divided",
    ),
    Mutation(
        "smooth-not-tissue-aware",
        "heatmap",
        "out = np.where(tissue, num / np.maximum(den, 1e-12), np.nan)",
        "out = np.where(tissue, num, np.nan)",
        "smoothing not normalised by the tissue weight (glass pulls towards 0)",
    ),
    Mutation(
        "smooth-reflect",
        "heatmap",
        'np.where(tissue, heatmap.prob, 0.0).astype(np.float64), sigma, mode="constant"',
        'np.where(tissue, heatmap.prob, 0.0).astype(np.float64), sigma, mode="reflect"',
        "smoothing numerator reflects at the grid edge, its weight does not",
    ),
    # ---- regions.py
    Mutation(
        "hole-size-inclusive",
        "regions",
        "fill = sizes * cell_um2 < min_hole_um2 * (1 - _REL_EPS)",
        "fill = sizes * cell_um2 <= min_hole_um2",
        "a hole of exactly min_hole_um2 filled",
    ),
    Mutation(
        "connectivity-8",
        "regions",
        "_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)",
        "_CROSS = np.ones((3, 3), dtype=bool)",
        "regions 8-connected instead of 4",
    ),
    Mutation(
        "threshold-strict",
        "regions",
        "mask = prob >= threshold  # NaN compares False",
        "mask = prob > threshold  # NaN compares False",
        "a cell exactly at the threshold is not IDC",
    ),
    Mutation(
        "border-holes",
        "regions",
        "        fill[border] = False\n        mask = mask | fill[labels]",
        "        mask = mask | fill[labels]",
        "background touching the grid border filled as a hole",
    ),
    Mutation(
        "polygon-axes",
        "regions",
        "return np.column_stack([ox + xy[:, 0] * cw, oy + xy[:, 1] * ch])",
        "return np.column_stack([ox + xy[:, 0] * ch, oy + xy[:, 1] * cw])",
        "polygons: cell width and height swapped",
    ),
    Mutation(
        "region-area-mpp",
        "regions",
        "areas = shapely.area(polys) * mpp * mpp",
        "areas = shapely.area(polys) * mpp",
        "region area: µm/px not squared",
    ),
]


def run_tests(repo: Path, module: str, timeout_s: float) -> tuple[bool, float]:
    """True when the module's tests pass in ``repo``; and the seconds they took."""
    tests = [str(repo / "tests" / t) for t in TESTS[module]]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s,
        )
        passed = proc.returncode == 0
    except subprocess.TimeoutExpired:
        passed = False  # a mutant that hangs the tests is caught by them
    return passed, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="names of the mutations to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per test run")
    args = ap.parse_args()
    todo = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in todo:
            print(f"{m.name:<24} {m.module:<8} {m.what}")
        return 0
    shared = ROOT.parent / "shared"
    with tempfile.TemporaryDirectory(prefix="idcmap-mutate-") as tmp:
        base = Path(tmp)
        repo = base / "repo"
        for part in ("idcmap", "tests"):
            shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
        if shared.is_dir():  # the tests find ../shared beside the checkout
            (base / "shared").symlink_to(shared)
        for m in todo:  # every mutation must still match the code (one place each)
            n = (repo / "idcmap" / f"{m.module}.py").read_text().count(m.old)
            if n != 1:
                print(f"mutation {m.name}: its line occurs {n} times in {m.module}.py; update it")
                return 2
        for module in sorted({m.module for m in todo}):
            ok, secs = run_tests(repo, module, args.timeout)
            print(f"baseline {module:<8} {'pass' if ok else 'FAIL'} ({secs:.0f} s)", flush=True)
            if not ok:
                print("the unmutated tests fail: fix them first")
                return 2
        killed = []
        for m in todo:
            path = repo / "idcmap" / f"{m.module}.py"
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            try:
                passed, secs = run_tests(repo, m.module, args.timeout)
            finally:
                path.write_text(original)
            verdict = "survived" if passed else "killed"
            if not passed:
                killed.append(m)
            print(f"{verdict:<8} {m.name:<24} {m.module:<8} {secs:5.0f} s  {m.what}", flush=True)
    print(
        f"mutation score: {len(killed)}/{len(todo)} killed ({100 * len(killed) / len(todo):.0f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
