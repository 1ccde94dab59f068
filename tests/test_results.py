"""What a run hands to people: measurements in the GeoJSON and summary, readable pictures, the
cohort table, slide lists, recursive folders and log-friendly progress lines (real slides
written with tifffile, real torch stand-in models)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from geojson_check import validate_qupath_geojson
from PIL import Image
from pipeline_helpers import colour_model, tiny_model_file
from tiffgen import cell_image, write_pyramid_tiff

from idcmap.cli.main import main
from idcmap.params import Params
from idcmap.pipeline.segment import segment_slide


def block_slide(path: Path, mpp: float = 4.0) -> Path:
    """12×14 cells of 200 µm: a red (IDC for the colour model) 5×6 block, an L-shaped red
    focus, the rest pale; glass on the last row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    red = np.full((12, 14), 90, np.uint8)
    red[2:7, 2:8] = 240
    red[8:10, 9:13] = 240
    red[6:10, 11:13] = 240
    img = cell_image(red, round(200 / mpp), green=60, glass_rows=1)
    return write_pyramid_tiff(path, img, mpp, downsamples=(1,), compression="zlib")


def test_measurements_in_geojson_and_summary(tmp_path: Path) -> None:
    slide = block_slide(tmp_path / "s.tiff")
    # qc none: flat synthetic colours look like ink to the QC stage
    params = Params(smooth_um=0, qc="none")
    res = segment_slide(slide, model=colour_model(threshold=0.6), progress=False, params=params)
    out = res.save(tmp_path / "out")
    gj = json.loads((out / "s.geojson").read_text())
    validate_qupath_geojson(gj)
    s = json.loads((out / "summary.json").read_text())
    m = s["measurements"]
    assert m["foci"] == len(gj["features"]) == 2
    assert "not a pT stage" in m["note"]
    for k, (f, r) in enumerate(zip(gj["features"], m["regions"], strict=True), start=1):
        meas = f["properties"]["measurements"]
        assert f["properties"]["name"] == r["name"] == f"IDC {k}"
        assert meas["Area mm^2"] == pytest.approx(r["area_mm2"], abs=1e-4)
        assert meas["Area mm^2"] == pytest.approx(meas["Area µm^2"] / 1e6)
        assert meas["Greatest dimension mm"] >= meas["Least dimension mm"] > 0
        poly = shapely.geometry.shape(f["geometry"])
        assert meas["Area mm^2"] == pytest.approx(poly.area * 16 / 1e6)
    # the 5×6-cell block (1.0 × 1.2 mm) is the first focus. Its outline crosses each edge
    # between an IDC cell (p = 240/255) and a pale one (90/255) where p = threshold: delta
    # cells beyond the cell edge; its corners are cut
    p_in, p_out = 240 / 255, 90 / 255
    delta = (p_in - res.threshold) / (p_in - p_out) - 0.5
    w_mm, h_mm = (6 + 2 * delta) * 0.2, (5 + 2 * delta) * 0.2
    big = m["regions"][0]
    assert big["least_dimension_mm"] == pytest.approx(h_mm, abs=1e-3)
    assert w_mm < big["greatest_dimension_mm"] < np.hypot(w_mm, h_mm)
    assert 0.95 * w_mm * h_mm < big["area_mm2"] < w_mm * h_mm
    assert m["largest_focus_greatest_dimension_mm"] == max(
        r["greatest_dimension_mm"] for r in m["regions"]
    )
    assert m["idc_percent_of_tissue"] == pytest.approx(
        100 * m["idc_area_mm2"] / m["tissue_area_mm2"], rel=1e-3
    )
    # pictures: a mask a person can open, a heatmap with the font's glyphs
    k = s["mask_png_px_per_cell"]
    mask = Image.open(out / "mask.png")
    assert k > 1 and mask.size == (14 * k, 12 * k)
    assert f"{k}×{k} px per heatmap cell" in mask.info["Comment"]
    np.testing.assert_array_equal(np.asarray(mask)[::k, ::k] == 255, res.mask)
    heat = Image.open(out / "heatmap.png")
    assert max(heat.size) >= 1000


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["slide"]: r for r in csv.DictReader(f)}


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_list_recursive_cohort_and_log_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_model_file(tmp_path)
    data = tmp_path / "data"
    a = block_slide(data / "site1" / "a.tiff")
    b = block_slide(data / "site2" / "deep" / "b.tiff")
    lst = write_list(
        tmp_path / "slides.txt",
        ["# cohort", "", "data/site1/a.tiff  # first", "data/missing.svs"],
    )
    out = tmp_path / "out"
    args = ["--out", str(out), "--model", str(model), "--workers", "0"]
    rc = main(["run", "--list", str(lst), *args])
    assert rc == 1  # the missing slide failed, the batch went on
    text = capsys.readouterr().out
    # stderr is not a terminal under pytest: one numbered line per slide, no bars
    lines = [ln for ln in text.splitlines() if ln.endswith("/2]")]
    assert len(lines) == 2
    assert lines[0].startswith("✓") and lines[0].endswith(" [1/2]")
    assert lines[1].startswith("✗") and lines[1].endswith(" [2/2]")
    assert "\r" not in text
    rows = read_rows(out / "cohort.csv")
    assert rows["a"]["status"] == "done" and rows["missing"]["status"] == "failed"
    assert rows["missing"]["reason"] and rows["missing"]["idc_area_mm2"] == ""
    assert rows["a"]["model_name"] and rows["a"]["output"] == str(out / "a")
    figures_a = rows["a"]["idc_area_mm2"], rows["a"]["foci"]

    # recursive over the data folder: b is new, a is skipped and keeps its figures
    rc = main(["run", str(data), "--recursive", *args])
    assert rc == 0
    rows = read_rows(out / "cohort.csv")
    assert [r for r in rows] == ["a", "missing", "b"]  # a keeps its place, b is appended
    assert rows["a"]["status"] == "skipped" and (rows["a"]["idc_area_mm2"], rows["a"]["foci"]) == (
        figures_a
    )
    assert rows["b"]["status"] == "done" and (out / "b" / "summary.json").is_file()
    assert not list(out.glob(".*lock"))
    assert b.is_file() and a.is_file()


def test_cli_outline_cells_and_input_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_model_file(tmp_path)
    slide = block_slide(tmp_path / "c.tiff")
    out = tmp_path / "out"
    base = ["--out", str(out), "--model", str(model), "--workers", "0", "--simplify-um", "0"]
    base += ["--qc", "none"]  # flat synthetic colours: no QC (they look like ink)
    assert main(["run", str(slide), "--outline", "cells", *base]) == 0
    s = json.loads((out / "c" / "summary.json").read_text())
    assert s["parameters"]["outline"] == "cells"
    gj = json.loads((out / "c" / "c.geojson").read_text())
    coords = np.concatenate(
        [shapely.get_coordinates(shapely.geometry.shape(f["geometry"])) for f in gj["features"]]
        or [np.zeros((0, 2))]
    )
    np.testing.assert_allclose(coords % 50, 0, atol=0.01)  # cell edges (50 level-0 px)
    capsys.readouterr()
    assert main(["run", *base]) == 2
    assert "no slides" in capsys.readouterr().err
    assert main(["run", "--list", str(tmp_path / "nope.txt"), *base]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", str(slide), "--outline", "wiggly", *base])
    with pytest.raises(Exception, match="outline"):
        Params(outline="wiggly").validate()
