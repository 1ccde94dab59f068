"""The output folder's atomic save (``--overwrite`` never loses the old output) and the
summary's measurements on a slide with non-square pixels.

Real slides written with tifffile (``tiffgen.write_cell_slide``), the colour stand-in model (a
real torch module), real files; a failure is made real (a summary value JSON cannot write) or,
for the one step no input can make fail, a rename that fails like a full disk or a kill.
"""

from __future__ import annotations

import errno
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely
from pipeline_helpers import colour_model
from tiffgen import write_cell_slide

from idcmap.batch.runner import remove_leftovers
from idcmap.errors import OutputError
from idcmap.params import Params
from idcmap.pipeline.measure import caliper_diameters_um
from idcmap.pipeline.result import SlideResult
from idcmap.pipeline.segment import segment_slide

#: 10 × 16 cells of 200 µm: a compact 3 × 6 focus (18 cells) and a long 1 × 12 strip (12
#: cells, the longest); pale tissue around; glass below.
RED = np.full((10, 16), 90, np.uint8)
RED[2:5, 2:8] = 240
RED[7, 3:15] = 240


def _result(path: Path, mpp_y: float | None = None, threshold: float = 0.6) -> SlideResult:
    slide = write_cell_slide(path, RED, 4.0, mpp_y=mpp_y)
    return segment_slide(
        slide,
        model=colour_model(threshold=threshold),
        progress=False,
        params=Params(smooth_um=0, outline="cells"),
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[SlideResult, SlideResult]:
    """Two results of the same slide name (``s``) with different figures: old and new."""
    base = tmp_path_factory.mktemp("folder")
    old = _result(base / "a" / "s.tiff", threshold=0.6)
    new = _result(base / "b" / "s.tiff", threshold=0.3)  # every tissue cell is IDC
    assert old.summary["regions"] != new.summary["regions"]
    return old, new


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_overwrite_keeps_the_old_output_when_the_new_write_fails_midway(
    tmp_path: Path, results: tuple[SlideResult, SlideResult]
) -> None:
    """The new outputs are written one by one; summary.json (the last) cannot be written: the
    old folder is still there, whole, and no temporary folder is left."""
    old, new = results
    out = tmp_path / "out"
    final = old.save(out)
    before = _snapshot(final)
    assert "summary.json" in before
    good = new.summary
    # json cannot write it: fails after the other files
    new.summary = replace(good, parameters={**good.parameters, "not json": 1 + 2j})
    try:
        with pytest.raises(TypeError):
            new.save(out, overwrite=True)
    finally:
        new.summary = good
    assert _snapshot(final) == before
    assert sorted(p.name for p in out.iterdir()) == ["s"]
    # and without the fault, the new output replaces the old one
    new.save(out, overwrite=True)
    assert json.loads((final / "summary.json").read_text())["regions"] == new.summary.regions
    assert sorted(p.name for p in out.iterdir()) == ["s"]


def test_overwrite_interrupted_at_the_swap_leaves_the_old_output_recoverable(
    tmp_path: Path, results: tuple[SlideResult, SlideResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything new is written; renaming it into place fails (a full disk, a kill between
    the two renames). The old output has only been moved aside: the next run's clean-up
    (:func:`remove_leftovers`, under the slide's lock) puts it back whole."""
    old, new = results
    out = tmp_path / "out"
    final = old.save(out)
    before = _snapshot(final)
    real_rename = Path.rename

    def rename(self: Path, target: str | os.PathLike[str]) -> Path:
        if self.name.startswith(".s.tmp-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OutputError):
        new.save(out, overwrite=True)
    monkeypatch.undo()
    remove_leftovers(out, "s")
    assert _snapshot(final) == before
    assert sorted(p.name for p in out.iterdir()) == ["s"]


def test_without_overwrite_an_existing_output_is_refused_and_kept(
    tmp_path: Path, results: tuple[SlideResult, SlideResult]
) -> None:
    old, new = results
    final = old.save(tmp_path / "out")
    before = _snapshot(final)
    with pytest.raises(OutputError, match="overwrite=True"):
        new.save(tmp_path / "out", overwrite=False)
    assert _snapshot(final) == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s"]


@pytest.mark.parametrize("mpp_y", [2.0, 8.0])
def test_summary_measurements_use_the_slide_y_resolution(tmp_path: Path, mpp_y: float) -> None:
    """On a slide with non-square pixels (4 µm/px along x, ``mpp_y`` along y) the cells are
    still 200 × 200 µm, so the regions measure what they measure on a square-pixel slide: the
    compact focus 18 cells = 0.72 mm², the strip 12 cells = 0.48 mm² and 2.4 × 0.2 mm."""
    res = _result(tmp_path / "s.tiff", mpp_y=mpp_y)
    assert (res.slide.mpp, res.slide.mpp_y) == (pytest.approx(4.0), pytest.approx(mpp_y))
    m = res.summary["measurements"]
    assert [r["area_mm2"] for r in m["regions"]] == pytest.approx([0.72, 0.48], abs=1e-4)
    strip = m["regions"][1]
    assert strip["greatest_dimension_mm"] == pytest.approx(math.hypot(2.4, 0.2), abs=1e-4)
    assert strip["least_dimension_mm"] == pytest.approx(0.2, abs=1e-4)
    assert m["regions"][0]["greatest_dimension_mm"] == pytest.approx(math.hypot(1.2, 0.6), abs=1e-4)
    # the largest focus is the longest region (the strip), not the first (the compact one)
    assert m["largest_focus_greatest_dimension_mm"] == pytest.approx(strip["greatest_dimension_mm"])
    assert m["idc_area_mm2"] == pytest.approx(1.2, abs=1e-4)
    # the polygons are level-0 px: their measurements use x and y µm/px
    for reg, poly in zip(m["regions"], [r.polygon for r in res.regions], strict=True):
        assert reg["area_mm2"] == pytest.approx(shapely.area(poly) * 4.0 * mpp_y / 1e6, abs=1e-4)
        big, _ = caliper_diameters_um(poly, 4.0, mpp_y)
        assert reg["greatest_dimension_mm"] == pytest.approx(big / 1e3, abs=1e-4)


def test_summary_areas_are_those_of_the_region_mask(tmp_path: Path) -> None:
    """The summary's IDC area counts the cells of the region mask (what the regions cover), not
    every cell whose tile probability passes 0.5: a row of cells at p = 0.55 stays out at the
    region threshold 0.6. Square pixels: tissue 10 × 16 cells = 6.4 mm², IDC 30 cells."""
    red = RED.copy()
    red[0, :] = 140  # p = 0.55: above 0.5, below the threshold
    slide = write_cell_slide(tmp_path / "s.tiff", red, 4.0)
    res = segment_slide(
        slide,
        model=colour_model(threshold=0.6),
        progress=False,
        params=Params(smooth_um=0, outline="cells", qc="none"),  # flat colours look like ink
    )
    s = res.summary
    assert int(res.mask.sum()) == 30
    assert s["idc_area_mm2"] == pytest.approx(1.2, abs=1e-4)
    assert s["tissue_area_mm2"] == pytest.approx(6.4, abs=1e-4)
    assert s["idc_fraction_of_tissue"] == pytest.approx(1.2 / 6.4, abs=1e-4)
    assert s["measurements"]["idc_area_mm2"] == pytest.approx(s["idc_area_mm2"], abs=1e-4)
    assert s["regions"] == s["measurements"]["foci"] == 2
