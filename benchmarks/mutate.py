"""A small mutation check of idcmap: geometry (io, tiles, heatmap, regions), the region stage
(aggregate, contours, measure, summary) and the batch / output / model / viewer plumbing.

Each mutation below is one realistic one-line bug (an operator swap, an off-by-one, swapped
units, a wrong stride, a missing close or check...). For each, in a temporary copy of
``idcmap/`` and ``tests/``, the mutation is applied alone and the tests that cover that module
run (``pytest -x``, the most specific file first): the mutant is *killed* when they fail,
*survived* when they pass. Prints one line per mutant and the score (killed / all). Not part
of ``make test``: ``make mutate`` runs it (about 20 min on this machine, 2 shared cores;
``--module`` or ``--only`` runs a part).

Why not mutmut / cosmic-ray: they mutate every operator of a module (hundreds of mutants per
module here, most of them equivalent or absurd) and rerun the tests for each; with the ~40 s of
tests per module on this machine that is hours. A fixed list of the bugs one would really
write keeps the check minutes long and its score comparable from run to run.

Usage: python benchmarks/mutate.py [--only NAME ...] [--module PATH ...] [--list] [--check]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SLIDE = ["test_slide.py", "test_formats.py", "test_pipeline.py"]

#: Tests run for a mutant of each module (path under ``idcmap/``; the ones that exercise it,
#: the most specific first: ``-x`` stops at the first failure).
TESTS: dict[str, list[str]] = {
    "io/mpp.py": _SLIDE,
    "io/slide.py": _SLIDE,
    "io/info.py": _SLIDE,
    "io/readers.py": _SLIDE,
    "io/remote.py": ["test_remote.py", "test_distributed.py"],
    "pipeline/tiles.py": ["test_geometry.py", "test_pipeline.py", "test_tissue.py"],
    "pipeline/heatmap.py": [
        "test_geometry.py",
        "test_pipeline.py",
        "test_export.py",
        "test_regions.py",
    ],
    "pipeline/regions.py": ["test_regions.py", "test_export.py", "test_pipeline.py"],
    "pipeline/aggregate.py": ["test_aggregate.py", "test_pipeline.py"],
    "pipeline/contours.py": [
        "test_contours.py",
        "test_regions.py",
        "test_results.py",
        "test_pipeline.py",
    ],
    "pipeline/measure.py": ["test_measure.py", "test_output_folder.py", "test_results.py"],
    "pipeline/summary.py": ["test_output_folder.py", "test_results.py", "test_pipeline.py"],
    "pipeline/segment.py": ["test_output_folder.py", "test_results.py", "test_pipeline.py"],
    "output/cohort.py": ["test_cohort.py", "test_results.py", "test_runner.py"],
    "output/folder.py": ["test_output_folder.py", "test_runner.py", "test_results.py"],
    "batch/runner.py": ["test_runner.py", "test_output_folder.py", "test_results.py"],
    "output/locking.py": ["test_runner.py", "test_cohort.py"],
    "batch/inputs.py": ["test_inputs.py", "test_results.py"],
    "batch/cluster.py": ["test_distributed.py"],
    "model/modelfile.py": ["test_model.py", "test_aggregate.py"],
    "viewer/server.py": ["test_viewer.py", "test_viewer_qc.py"],
    "viewer/catalog.py": ["test_viewer_qc.py", "test_viewer.py"],
    "output/ometiff.py": ["test_ometiff.py"],
}


@dataclass(frozen=True)
class Mutation:
    name: str
    module: str  # a path under idcmap/, a key of TESTS
    old: str  # must occur exactly once in idcmap/<module>
    new: str
    what: str


MUTATIONS = [
    # ---- io/ (mpp.py, slide.py, info.py, readers.py)
    Mutation(
        "unit-cm-inch",
        "io/mpp.py",
        "{2: 25400.0, 3: 10000.0}",
        "{2: 10000.0, 3: 25400.0}",
        "TIFF resolution unit: cm and inch swapped",
    ),
    Mutation(
        "level-tolerance",
        "io/slide.py",
        "if m <= target_mpp * 1.01 and m > best_mpp:",
        "if m <= target_mpp and m > best_mpp:",
        "best level: the 1 % tolerance dropped",
    ),
    Mutation(
        "level-finest",
        "io/slide.py",
        "if m <= target_mpp * 1.01 and m > best_mpp:",
        "if m <= target_mpp * 1.01 and m < best_mpp:",
        "best level: the finest instead of the coarsest fitting level",
    ),
    Mutation(
        "qupath-frame",
        "io/slide.py",
        "return x_level0_px - info.bounds_level0_px[0], y_level0_px - info.bounds_level0_px[1]",
        "return x_level0_px + info.bounds_level0_px[0], y_level0_px + info.bounds_level0_px[1]",
        "QuPath frame: bounds origin added instead of subtracted",
    ),
    Mutation(
        "read-floor",
        "io/slide.py",
        "lx, ly = math.floor(x0 / d + PX_EPS), math.floor(y0 / d + PX_EPS)",
        "lx, ly = round(x0 / d), round(y0 / d)",
        "read_region: level px rounded instead of floored",
    ),
    Mutation(
        "thumb-size-units",
        "io/slide.py",
        "out_w = max(1, round(bw * self.info.mpp / target_mpp))",
        "out_w = max(1, round(bw * target_mpp / self.info.mpp))",
        "read_at_mpp: output width with the µm/px ratio inverted",
    ),
    Mutation(
        "mpp-y-from-x",
        "io/info.py",
        'my = to_float(reader.properties.get(f"{backend}.mpp-y")) or mx',
        "my = mx",
        "backend µm/px: y taken from x",
    ),
    Mutation(
        "alpha-black",
        "io/readers.py",
        "return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)",
        "return ((rgb * a + 127) // 255).astype(np.uint8)",
        "transparent pixels flattened over black instead of white",
    ),
    Mutation(
        "thumb-block-max",
        "io/slide.py",
        "k = max(1, min(lw // out_w, lh // out_h))",
        "k = max(1, max(lw // out_w, lh // out_h))",
        "read_at_mpp: the larger of the two reduction factors",
    ),
    # ---- pipeline/tiles.py
    Mutation(
        "block-origin",
        "pipeline/tiles.py",
        "mx0, my0 = c0 * st, r0 * st",
        "mx0, my0 = c0 * p, r0 * p",
        "block origin stepped by the patch instead of the stride",
    ),
    Mutation(
        "grid-last-tile",
        "pipeline/tiles.py",
        "cols = max(1, math.ceil(max(width_m - patch_px, 0) / stride_px) + 1)",
        "cols = max(1, math.floor(max(width_m - patch_px, 0) / stride_px) + 1)",
        "tile grid: the partial last column dropped",
    ),
    Mutation(
        "model-px-units",
        "pipeline/tiles.py",
        "fx, fy = model_mpp / info.mpp, model_mpp / info.mpp_y",
        "fx, fy = info.mpp / model_mpp, info.mpp_y / model_mpp",
        "level-0 px per model px inverted",
    ),
    Mutation(
        "tile-fraction-k",
        "pipeline/tiles.py",
        "tile_frac /= k * k",
        "tile_frac /= k",
        "tile tissue fraction divided by k instead of k²",
    ),
    Mutation(
        "keep-strict",
        "pipeline/tiles.py",
        "keep=tile_frac >= max(min_tissue, 1e-6),",
        "keep=tile_frac > max(min_tissue, 1e-6),",
        "a tile exactly at min_tissue dropped (>= → >)",
    ),
    Mutation(
        "block-size",
        "pipeline/tiles.py",
        "n = max(1, (side_m - grid.patch_px) // grid.stride_px + 1)",
        "n = max(1, side_m // grid.stride_px)",
        "tiles per block: the patch overhang not subtracted (reads beyond the limit)",
    ),
    Mutation(
        "mask-centre",
        "pipeline/tiles.py",
        "e = np.ceil((np.arange(n + 1) * cell - origin) / pxs - 0.5).astype(np.int64)",
        "e = np.ceil((np.arange(n + 1) * cell - origin) / pxs + 0.5).astype(np.int64)",
        "tissue fraction: mask pixel centres off by one pixel",
    ),
    Mutation(
        "bounds-limit",
        "pipeline/tiles.py",
        "lim_x1, lim_y1 = min((bx + bw) / d, lw), min((by + bh) / d, lh)",
        "lim_x1, lim_y1 = lw, lh",
        "block reads not clipped to the slide's bounds rectangle",
    ),
    Mutation(
        "subpixel-trunc",
        "pipeline/tiles.py",
        "dx, dy = round(ox), round(oy)",
        "dx, dy = int(ox), int(oy)",
        "block placement offset truncated instead of rounded",
    ),
    # ---- pipeline/heatmap.py
    Mutation(
        "stitch-k2",
        "pipeline/heatmap.py",
        "out = total / count",
        "out = total / (k * k)",
        "stitch averaged by k² instead of the covering tiles",
    ),
    Mutation(
        "stitch-count-all",
        "pipeline/heatmap.py",
        "count[dy : dy + rows, dx : dx + cols] += v",
        "count[dy : dy + rows, dx : dx + cols] += 1",
        "stitch counts tiles that were not evaluated",
    ),
    Mutation(
        "cell-area",
        "pipeline/heatmap.py",
        "return w * h",
        "return w * w",
        "cell area: the width squared (non-square cells)",
    ),
    Mutation(
        "sigma-units",
        "pipeline/heatmap.py",
        "sigma = (sigma_um / ch, sigma_um / cw)  # (rows, cols)",
        "sigma = (sigma_um * ch, sigma_um * cw)  # (rows, cols)",
        "smoothing sigma: µm times cell size instead of divided",
    ),
    Mutation(
        "smooth-not-tissue-aware",
        "pipeline/heatmap.py",
        "out = np.where(tissue, num / np.maximum(den, 1e-12), np.nan)",
        "out = np.where(tissue, num, np.nan)",
        "smoothing not normalised by the tissue weight (glass pulls towards 0)",
    ),
    Mutation(
        "smooth-reflect",
        "pipeline/heatmap.py",
        'np.where(tissue, heatmap.prob, 0.0).astype(np.float64), sigma, mode="constant"',
        'np.where(tissue, heatmap.prob, 0.0).astype(np.float64), sigma, mode="reflect"',
        "smoothing numerator reflects at the grid edge, its weight does not",
    ),
    # ---- pipeline/regions.py
    Mutation(
        "hole-size-inclusive",
        "pipeline/regions.py",
        "fill = sizes * cell_um2 < min_hole_um2 * (1 - _REL_EPS)",
        "fill = sizes * cell_um2 <= min_hole_um2",
        "a hole of exactly min_hole_um2 filled",
    ),
    Mutation(
        "connectivity-8",
        "pipeline/regions.py",
        "CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)",
        "CROSS = np.ones((3, 3), dtype=bool)",
        "regions 8-connected instead of 4",
    ),
    Mutation(
        "threshold-strict",
        "pipeline/regions.py",
        "mask = prob >= threshold  # NaN compares False",
        "mask = prob > threshold  # NaN compares False",
        "a cell exactly at the threshold is not IDC",
    ),
    Mutation(
        "border-holes",
        "pipeline/regions.py",
        "        fill[border] = False\n        mask = mask | fill[labels]",
        "        mask = mask | fill[labels]",
        "background touching the grid border filled as a hole",
    ),
    Mutation(
        "polygon-axes",
        "pipeline/regions.py",
        "return np.column_stack([ox + xy[:, 0] * cw, oy + xy[:, 1] * ch])",
        "return np.column_stack([ox + xy[:, 0] * ch, oy + xy[:, 1] * cw])",
        "polygons: cell width and height swapped",
    ),
    Mutation(
        "region-area-mpp",
        "pipeline/regions.py",
        "areas = shapely.area(polys) * mx * my",
        "areas = shapely.area(polys) * mx",
        "region area: µm/px not squared",
    ),
    # ---- pipeline/regions.py (outlines)
    Mutation(
        "regions-simplify-units",
        "pipeline/regions.py",
        "tol_px = simplify_um / max(mx, my) if simplify_um > 0 else 0.0",
        "tol_px = simplify_um * max(mx, my) if simplify_um > 0 else 0.0",
        "cell outlines: simplification tolerance µm × µm/px instead of ÷",
    ),
    # ---- pipeline/aggregate.py
    Mutation(
        "agg-sigma-y-from-width",
        "pipeline/aggregate.py",
        "    return h, w",
        "    return w, w",
        "aggregator: σ along y from the cell width (non-square cells)",
    ),
    Mutation(
        "agg-feature-order",
        "pipeline/aggregate.py",
        "    for s_um in sigmas_um:",
        "    for s_um in reversed(sigmas_um):",
        "aggregator: features in another order than the stored coefficients",
    ),
    Mutation(
        "agg-glass-pulls-mean",
        "pipeline/aggregate.py",
        "yield _logit(num / np.maximum(den, 1e-12))",
        "yield _logit(num)",
        "aggregator: smoothed mean not tissue-normalised (glass pulls it towards 0)",
    ),
    Mutation(
        "agg-not-standardised",
        "pipeline/aggregate.py",
        "z += (f - self.mean[i]) * (self.coef[i] / self.std[i])",
        "z += (f - self.mean[i]) * self.coef[i]",
        "aggregator: features not divided by their std",
    ),
    Mutation(
        "agg-max-window",
        "pipeline/aggregate.py",
        "size = (2 * max(1, round(sigma[0])) + 1, 2 * max(1, round(sigma[1])) + 1)",
        "size = (max(1, round(sigma[0])) + 1, max(1, round(sigma[1])) + 1)",
        "aggregator: logit_max window ±σ/2 instead of ±σ",
    ),
    Mutation(
        "agg-nan-outside",
        "pipeline/aggregate.py",
        "prob=np.where(heatmap.tissue, p, np.nan).astype(np.float32)",
        "prob=p.astype(np.float32)",
        "aggregator: glass cells get a probability instead of NaN",
    ),
    # ---- pipeline/contours.py
    Mutation(
        "contour-simplify-units",
        "pipeline/contours.py",
        "shapely.simplify(comp_poly, simplify_um / max(mx, my), preserve_topology=True)",
        "shapely.simplify(comp_poly, simplify_um * max(mx, my), preserve_topology=True)",
        "smooth outlines: simplification tolerance µm × µm/px instead of ÷",
    ),
    Mutation(
        "contour-area-mpp",
        "pipeline/contours.py",
        "areas = shapely.area(comp_poly) * mx * my",
        "areas = shapely.area(comp_poly) * mx",
        "smooth region area: µm/px not squared",
    ),
    Mutation(
        "contour-half-cell",
        "pipeline/contours.py",
        "np.column_stack([ox + (rc[:, 1] - 0.5) * cw, oy + (rc[:, 0] - 0.5) * ch])",
        "np.column_stack([ox + (rc[:, 1] + 0.5) * cw, oy + (rc[:, 0] + 0.5) * ch])",
        "smooth outlines shifted by one cell (padded-grid offset added)",
    ),
    Mutation(
        "contour-cells-unchecked",
        "pipeline/contours.py",
        "        bad |= ~_holds_its_cells(simple, labels, surface)\n",
        "",
        "a simplification that moves the outline across a cell centre is kept",
    ),
    # ---- pipeline/measure.py
    Mutation(
        "measure-largest-first",
        "pipeline/measure.py",
        "largest_focus_greatest_dimension_mm=max(\n"
        "            (r.greatest_dimension_mm for r in regions), default=0.0\n"
        "        ),",
        "largest_focus_greatest_dimension_mm=regions[0].greatest_dimension_mm if regions else 0.0,",
        "largest focus: the first region instead of the longest",
    ),
    Mutation(
        "measure-area-mpp-x2",
        "pipeline/measure.py",
        "area_um2 = float(shapely.area(geom)) * mpp_x * my if geom is not None else 0.0",
        "area_um2 = float(shapely.area(geom)) * mpp_x * mpp_x if geom is not None else 0.0",
        "region area: µm/px along x squared (y ignored)",
    ),
    Mutation(
        "measure-least-max",
        "pipeline/measure.py",
        "least = min(least, float(dist.max(axis=1).min()))",
        "least = min(least, float(dist.max(axis=1).max()))",
        "least dimension: the widest caliper instead of the narrowest",
    ),
    Mutation(
        "measure-percent",
        "pipeline/measure.py",
        "idc_percent_of_tissue=100.0 * idc / tissue if tissue > 0 else 0.0,",
        "idc_percent_of_tissue=idc / tissue if tissue > 0 else 0.0,",
        "IDC % of tissue given as a fraction",
    ),
    # ---- pipeline/summary.py
    Mutation(
        "summary-mpp-y",
        "pipeline/segment.py",
        "[r.polygon for r in regions], tissue_mm2, info.mpp, info.mpp_y",
        "[r.polygon for r in regions], tissue_mm2, info.mpp, info.mpp",
        "summary measurements ignore the slide's y µm/px",
    ),
    Mutation(
        "summary-idc-all-tissue",
        "pipeline/segment.py",
        "idc_mm2 = float(np.count_nonzero(mask) * heatmap.cell_area_um2 / 1e6)",
        "idc_mm2 = float(np.count_nonzero(heatmap.prob >= 0.5) * heatmap.cell_area_um2 / 1e6)",
        "summary IDC area from the raw tiles, not the region mask",
    ),
    # ---- output/cohort.py
    Mutation(
        "cohort-no-merge",
        "output/cohort.py",
        "        for r in read_cohort(out):\n",
        "        for r in []:\n",
        "cohort.csv: an update drops the other slides' rows",
    ),
    Mutation(
        "cohort-lock-nowait",
        "output/cohort.py",
        "with file_lock(out / _LOCK_FILE, wait=True):",
        "with file_lock(out / _LOCK_FILE, wait=False):",
        "cohort.csv: updated without waiting for the lock (lost updates)",
    ),
    Mutation(
        "cohort-percent",
        "output/cohort.py",
        "pct: float | None = 100.0 * idc / tissue if tissue else None",
        "pct: float | None = idc / tissue if tissue else None",
        "cohort.csv: IDC % of old summaries given as a fraction",
    ),
    Mutation(
        "cohort-foci-regions",
        "output/cohort.py",
        'foci=int(_num(s.measurement("foci"), s.regions)),',
        'foci=int(_num(s.measurement("foci"), 0)),',
        "cohort.csv: foci of old summaries lost",
    ),
    # ---- output/folder.py
    Mutation(
        "folder-rm-before-write",
        "output/folder.py",
        "        tmp.mkdir()\n",
        "        tmp.mkdir()\n"
        "        if overwrite and final.exists():\n"
        "            shutil.rmtree(final)\n",
        "--overwrite removes the old output before the new one is written",
    ),
    Mutation(
        "folder-rm-instead-of-move",
        "output/folder.py",
        "            final.rename(old)",
        "            shutil.rmtree(final)",
        "--overwrite removes the old output instead of moving it aside until the swap",
    ),
    Mutation(
        "folder-overwrite-ignored",
        "output/folder.py",
        "            if not overwrite:\n",
        "            if False:\n",
        "an existing output replaced without overwrite",
    ),
    Mutation(
        "folder-tmp-left",
        "output/folder.py",
        "    except BaseException:\n        shutil.rmtree(tmp, ignore_errors=True)\n        raise",
        "    except BaseException:\n        raise",
        "a failed write leaves its temporary folder",
    ),
    # ---- batch/runner.py
    Mutation(
        "runner-overwrite-ignored",
        "batch/runner.py",
        "if is_done(out, s) and not options.overwrite:",
        "if is_done(out, s):",
        "overwrite=True still skips a finished slide",
    ),
    Mutation(
        "runner-old-not-restored",
        "batch/runner.py",
        'if not final.exists() and (d / "summary.json").is_file():',
        'if final.exists() and (d / "summary.json").is_file():',
        "leftovers: an output moved aside by a killed overwrite is not put back",
    ),
    Mutation(
        "runner-busy-dropped",
        "batch/runner.py",
        "            o = process_slide(s, out, model=model, params=params, options=unit)\n",
        '            o = Outcome(s, BUSY, "busy in another run")\n',
        "a slide busy in another run is never taken again",
    ),
    Mutation(
        "runner-same-slide-twice",
        "batch/runner.py",
        "            if not _same(seen[stem], s):",
        "            if True:",
        "the same slide given twice fails as a name clash",
    ),
    Mutation(
        "runner-interrupt-swallowed",
        "batch/runner.py",
        "        _stop_if_interrupted(e)\n        first =",
        "        first =",
        "a signal landing inside a library is reported as an internal error of the slide",
    ),
    # ---- output/locking.py
    Mutation(
        "lock-fd-leak",
        "output/locking.py",
        "        fcntl.flock(fd, fcntl.LOCK_UN)\n        os.close(fd)",
        "        fcntl.flock(fd, fcntl.LOCK_UN)",
        "a lock's file descriptor never closed",
    ),
    Mutation(
        "lock-busy-fd-leak",
        "output/locking.py",
        "        except BlockingIOError:\n            os.close(fd)",
        "        except BlockingIOError:\n            pass",
        "a busy lock's file descriptor never closed",
    ),
    Mutation(
        "lock-no-inode-check",
        "output/locking.py",
        "if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) == "
        "(held.st_dev, held.st_ino):",
        "if True:",
        "a lock on a removed lock file is believed held",
    ),
    Mutation(
        "lock-file-left",
        "output/locking.py",
        "            path.unlink()\n",
        "            pass\n",
        "lock files left behind",
    ),
    # ---- batch/inputs.py
    Mutation(
        "inputs-case",
        "batch/inputs.py",
        "and q.name.lower().endswith(SLIDE_SUFFIXES)",
        "and q.name.endswith(SLIDE_SUFFIXES)",
        "slide suffixes matched case-sensitively (A.SVS skipped)",
    ),
    Mutation(
        "inputs-hidden-folders",
        "batch/inputs.py",
        'if not d.name.startswith(".") and d.is_dir() and not d.is_symlink()',
        "if d.is_dir() and not d.is_symlink()",
        "recursive: hidden folders searched",
    ),
    Mutation(
        "inputs-no-dedupe",
        "batch/inputs.py",
        "        if key not in seen:\n",
        "        if True:\n",
        "a slide given twice is run twice",
    ),
    # ---- batch/cluster.py
    Mutation(
        "cluster-same-slide-twice",
        "batch/runner.py",
        "    if is_url(a) or is_url(b):\n        return a == b\n"
        "    return Path(a).resolve() == Path(b).resolve()",
        "    return a == b",
        "the same slide under two spellings (./a and a) fails as a name clash",
    ),
    Mutation(
        "cluster-overwrite-ignored",
        "batch/runner.py",
        "        if see_out_dir and not overwrite and is_done(out_dir, s):",
        "        if see_out_dir and is_done(out_dir, s):",
        "a planned batch (either runner) still skips finished slides with overwrite=True",
    ),
    Mutation(
        "cluster-bundled-ref",
        "batch/cluster.py",
        "return ModelRef(None if path is None else str(path.resolve()), sha, device)",
        "return ModelRef(None if path is None else str(path), sha, device)",
        "cluster: a relative model path sent to workers as it is",
    ),
    # ---- model/modelfile.py
    Mutation(
        "modelfile-unresolved",
        "model/modelfile.py",
        "if json_path.resolve().is_relative_to(package):",
        "if json_path.is_relative_to(package):",
        "model destination checked on the unresolved path",
    ),
    Mutation(
        "modelfile-sha-unchecked",
        "model/modelfile.py",
        "    if config.weights_sha256 and digest != config.weights_sha256:\n"
        "        raise ModelError(\n"
        '            f"model weights {weights} do not match their config '
        '(sha256 {digest[:12]}… ≠ "\n'
        '            f"{config.weights_sha256[:12]}…): the file is damaged',
        "    if False:\n"
        "        raise ModelError(\n"
        '            f"model weights {weights} do not match their config '
        '(sha256 {digest[:12]}… ≠ "\n'
        '            f"{config.weights_sha256[:12]}…): the file is damaged',
        "damaged weights loaded without a word",
    ),
    # ---- io/remote.py
    Mutation(
        "remote-empty",
        "io/remote.py",
        "    if size == 0:\n",
        "    if size is None:\n",
        "remote: an empty object is not refused",
    ),
    Mutation(
        "remote-openslide",
        "io/remote.py",
        'if backend not in ("auto", "tiffslide"):',
        'if backend not in ("auto", "tiffslide", "openslide"):',
        "remote: backend=openslide accepted for URLs",
    ),
    Mutation(
        "remote-block",
        "io/remote.py",
        "BLOCK_BYTES = 1 << 18",
        "BLOCK_BYTES = 1 << 22",
        "remote: 4 MiB blocks (a worker fetches most of a small slide)",
    ),
    # ---- viewer/
    Mutation(
        "viewer-download-symlink",
        "viewer/catalog.py",
        "return p if p.is_file() and inside(self.folder.parent.resolve(), p) else None",
        "return p if p.is_file() else None",
        "viewer serves a download-named symlink out of OUT",
    ),
    Mutation(
        "viewer-summary-symlink",
        "viewer/catalog.py",
        "if not (summary_path.is_file() and inside(self.root, summary_path)):",
        "if not summary_path.is_file():",
        "viewer lists a folder whose summary.json leads out of OUT",
    ),
    Mutation(
        "viewer-hidden-folders",
        "viewer/catalog.py",
        'if name.startswith("."):  # lock files, a run\'s temporary folders',
        "if False:",
        "viewer lists a run's temporary (.<stem>.tmp-*) and moved-aside folders as slides",
    ),
    Mutation(
        "viewer-artefacts-as-regions",
        "viewer/catalog.py",
        "        if _class_name(feat) in ARTEFACT_CLASSES:\n            continue\n",
        "",
        "viewer numbers the QC stage's Ink/Fold/... annotations as IDC regions",
    ),
    # ---- output/ometiff.py
    Mutation(
        "ome-size-xy",
        "output/ometiff.py",
        '"PhysicalSizeY": um_y,',
        '"PhysicalSizeY": um_x,',
        "OME-TIFF: the cell's width written as its height",
    ),
    Mutation(
        "ome-level-resolution",
        "output/ometiff.py",
        "resolution=(1e4 / (um_x * 2**k), 1e4 / (um_y * 2**k)),",
        "resolution=(1e4 / um_x, 1e4 / um_y),",
        "OME-TIFF: reduced levels keep level 0's pixel size",
    ),
    Mutation(
        "ome-qc-mode-code",
        "output/ometiff.py",
        "best = counts.argmax(0).astype(np.uint8) + 1",
        "best = counts.argmax(0).astype(np.uint8)",
        "OME-TIFF: a reduced level's QC code off by one",
    ),
    Mutation(
        "ome-cell-grid",
        "output/ometiff.py",
        "    cw, ch = heatmap.cell_level0_px\n    best = ",
        "    ch, cw = heatmap.cell_level0_px\n    best = ",
        "OME-TIFF: QC shares measured on cells with width and height swapped",
    ),
]


def run_tests(repo: Path, module: str, timeout_s: float) -> tuple[bool, float, str]:
    """True when the module's tests pass in ``repo``; the seconds they took; pytest's last
    lines (what failed)."""
    tests = [str(repo / "tests" / t) for t in TESTS[module]]  # in order: -x stops early
    env = {**os.environ, "PYTHONPATH": str(repo)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            # Ctrl-C as usual in the tests even when this runs in the background (a shell
            # starts background jobs with SIGINT ignored, which children inherit)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout_s,
        )
        passed, tail = proc.returncode == 0, "\n".join(proc.stdout.splitlines()[-25:])
    except subprocess.TimeoutExpired:
        passed, tail = False, "timed out"  # a mutant that hangs the tests is caught by them
    return passed, time.perf_counter() - t0, tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="names of the mutations to run (default: all)")
    ap.add_argument(
        "--module", nargs="*", help="only the mutations of these modules (io/slide.py...)"
    )
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument(
        "--check", action="store_true", help="check that every mutation still matches, and exit"
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per test run")
    ap.add_argument(
        "--no-baseline", action="store_true", help="skip running the unmutated tests first"
    )
    args = ap.parse_args()
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    unknown |= set(args.module or ()) - set(TESTS)
    if unknown:
        print(f"unknown mutation / module names: {sorted(unknown)}")
        return 2
    todo = [
        m
        for m in MUTATIONS
        if (not args.only or m.name in args.only) and (not args.module or m.module in args.module)
    ]
    if args.list:
        for m in todo:
            print(f"{m.name:<26} {m.module:<22} {m.what}")
        return 0
    bad = [
        (m.name, m.module, (ROOT / "idcmap" / m.module).read_text().count(m.old))
        for m in todo
        if m.module not in TESTS or (ROOT / "idcmap" / m.module).read_text().count(m.old) != 1
    ]
    for name, module, n in bad:
        print(f"mutation {name}: its line occurs {n} times in idcmap/{module}; update it")
    if bad or args.check:
        if not bad:
            print(f"{len(todo)} mutations, each matching one place")
        return 2 if bad else 0
    shared = ROOT.parent / "shared"
    with tempfile.TemporaryDirectory(prefix="idcmap-mutate-") as tmp:
        base = Path(tmp)
        repo = base / "repo"
        for part in ("idcmap", "tests"):
            shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
        (repo / "examples").symlink_to(ROOT / "examples")  # the example mosaic, read only
        if shared.is_dir():  # the tests find ../shared beside the checkout
            (base / "shared").symlink_to(shared)
        baselines: dict[tuple[str, ...], str] = {}  # one baseline per distinct set of tests
        for module in sorted({m.module for m in todo}):
            baselines.setdefault(tuple(TESTS[module]), module)
        for module in [] if args.no_baseline else baselines.values():
            ok, secs, tail = run_tests(repo, module, args.timeout)
            print(f"baseline {module:<22} {'pass' if ok else 'FAIL'} ({secs:.0f} s)", flush=True)
            if not ok:
                print(tail)
                print("the unmutated tests fail: fix them first")
                return 2
        killed = []
        for m in todo:
            path = repo / "idcmap" / m.module
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            try:
                passed, secs, _ = run_tests(repo, m.module, args.timeout)
            finally:
                path.write_text(original)
            verdict = "survived" if passed else "killed"
            if not passed:
                killed.append(m)
            print(f"{verdict:<8} {m.name:<26} {m.module:<22} {secs:5.0f} s  {m.what}", flush=True)
    print(
        f"mutation score: {len(killed)}/{len(todo)} killed ({100 * len(killed) / len(todo):.0f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
