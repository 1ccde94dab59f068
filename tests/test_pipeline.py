"""End-to-end pipeline tests on real slides and on pyramidal TIFFs written here.

The geometry is checked exactly with ColourNet (IDC probability = mean red / 255): every
heatmap cell must equal the mean red of the slide pixels it covers, read independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
from geojson_check import validate_qupath_geojson
from pipeline_helpers import colour_model, tiny_model_file
from shared_data import SHARED, needs_shared
from tiffgen import cell_image, write_pyramid_tiff

from idcmap.cli.main import main
from idcmap.params import Params
from idcmap.pipeline.regions import rasterize
from idcmap.pipeline.segment import segment_slide

MOSAIC = SHARED / "idc" / "slides" / "8863.tiff"


def cell_slide(
    tmp_path: Path,
    mpp: float,
    downsamples: tuple[float, ...],
    cells: tuple[int, int] = (7, 9),
    seed: int = 0,
    name: str = "cells.tiff",
) -> tuple[Path, np.ndarray]:
    """A lossless pyramid of 200-µm cells, each a uniform H&E-like colour with a random red
    value, with one glass (white) row at the bottom. Returns (path, red value per cell)."""
    rng = np.random.default_rng(seed)
    rows, cols = cells
    red = rng.integers(60, 250, size=(rows, cols)).astype(np.uint8)
    img = cell_image(red, round(200 / mpp), glass_rows=1)
    path = write_pyramid_tiff(
        tmp_path / name, img, mpp, downsamples=downsamples, compression="zlib"
    )
    return path, red


@pytest.mark.parametrize(
    ("mpp", "downsamples"),
    [
        (4.0, (1,)),  # model resolution at level 0
        (1.0, (1, 4)),  # a level exactly at 4 µm/px
        (1.0, (1, 2)),  # no level near 4 µm/px: read 2 µm/px, resize 2:1
        (0.5, (1, 3.2)),  # non-integer downsample: read 1.6 µm/px, resize 2.5:1
    ],
)
@pytest.mark.parametrize("dense", [False, True])
def test_heatmap_cells_match_slide_cells(
    tmp_path: Path, mpp: float, downsamples: tuple[float, ...], dense: bool
) -> None:
    path, red = cell_slide(tmp_path, mpp, downsamples)
    res = segment_slide(path, model=colour_model(dense=dense), progress=False)
    hm = res.heatmap
    assert hm.shape == red.shape
    assert hm.cell_level0_px == pytest.approx((200 / mpp, 200 / mpp))
    tissue = hm.tissue
    assert tissue[:-1].all() and not tissue[-1].any(), "the glass row is not tissue, the rest is"
    np.testing.assert_allclose(hm.prob[:-1], red[:-1] / 255.0, atol=1.5 / 255)
    level = res.summary["slide"]["level_read"]
    assert res.summary["slide"]["level_read_mpp"] <= 4.0 * 1.01
    assert level == len(downsamples) - 1


def test_stride_smaller_than_patch_averages_overlapping_tiles(tmp_path: Path) -> None:
    path, red = cell_slide(tmp_path, 4.0, (1,))
    tiles = segment_slide(path, model=colour_model(dense=False), stride=25, progress=False).heatmap
    dense = segment_slide(path, model=colour_model(dense=True), stride=25, progress=False).heatmap
    assert tiles.shape == (2 * red.shape[0], 2 * red.shape[1])
    np.testing.assert_allclose(tiles.prob, dense.prob, atol=1e-5, equal_nan=True)
    # interior 25-px cell: mean of the 4 tiles covering it; each tile straddles 1-4 cells
    r, c = 5, 5  # cell (2, 2) top-left quarter... covered by tiles at cells (4..5, 4..5)
    padded = np.kron(red / 255.0, np.ones((2, 2)))
    expect = np.mean(
        [padded[rr : rr + 2, cc : cc + 2].mean() for rr in (r - 1, r) for cc in (c - 1, c)]
    )
    assert tiles.prob[r, c] == pytest.approx(expect, abs=2 / 255)


@needs_shared
@pytest.mark.parametrize("dense", [False, True])
def test_mosaic_heatmap_lines_up_with_cells_csv(dense: bool) -> None:
    # QC off: it un-folds a part of this mosaic it takes for a fold (pixels change on purpose)
    res = segment_slide(
        MOSAIC, model=colour_model(dense=dense), progress=False, params=Params(qc="none")
    )
    hm = res.heatmap
    osr = openslide.OpenSlide(str(MOSAIC))
    w, h = osr.dimensions
    assert hm.shape == (int(np.ceil(h / 50)), int(np.ceil(w / 50)))
    level0 = np.asarray(osr.read_region((0, 0), 0, (w, h)).convert("RGB"))
    cells = np.genfromtxt(
        MOSAIC.with_suffix("").with_suffix(".cells.csv"), delimiter=",", names=True
    )
    checked = 0
    for x, y, cw, ch in zip(cells["x"], cells["y"], cells["width"], cells["height"], strict=True):
        r, c = int(y) // 50, int(x) // 50
        if np.isnan(hm.prob[r, c]) or cw < 50 or ch < 50:
            continue
        expect = level0[int(y) : int(y) + 50, int(x) : int(x) + 50, 0].mean() / 255.0
        assert hm.prob[r, c] == pytest.approx(expect, abs=1e-3), (x, y)
        checked += 1
    assert checked > 0.8 * len(cells)


@needs_shared
def test_cmu_svs_geometry() -> None:
    path = SHARED / "wsi" / "CMU-1-Small-Region.svs"
    res = segment_slide(path, model=colour_model(dense=True), progress=False)
    assert res.slide.backend == "openslide"
    assert res.slide.mpp == pytest.approx(0.499, abs=1e-3)
    f = 4.0 / res.slide.mpp
    assert res.heatmap.cell_level0_px[0] == pytest.approx(50 * f)
    assert res.heatmap.shape == (
        int(np.ceil((2967 / f - 50) / 50)) + 1,
        int(np.ceil((2220 / f - 50) / 50)) + 1,
    )
    assert res.summary["slide"]["level_read"] == 0


def test_no_tissue_gives_valid_empty_feature_collection(tmp_path: Path) -> None:
    img = np.full((1000, 1200, 3), 245, np.uint8)
    path = write_pyramid_tiff(tmp_path / "blank.tiff", img, 4.0, downsamples=(1, 4))
    res = segment_slide(path, model=colour_model(), progress=False)
    assert not res.heatmap.tissue.any()
    assert res.regions == []
    gj = res.to_geojson()
    validate_qupath_geojson(gj)
    assert gj["features"] == []
    out = res.save(tmp_path / "out")
    assert json.loads((out / "blank.geojson").read_text())["features"] == []
    assert json.loads((out / "summary.json").read_text())["regions"] == 0


@pytest.mark.parametrize("outline", ["cells", "smooth"])
def test_regions_geojson_round_trip_matches_mask(tmp_path: Path, outline: str) -> None:
    path, red = cell_slide(tmp_path, 1.0, (1, 4), cells=(12, 14), seed=3)
    res = segment_slide(
        path,
        model=colour_model(threshold=0.6),
        progress=False,
        params=Params(min_region_um2=0, min_hole_um2=0, simplify_um=0, outline=outline),
    )
    assert res.mask.any() and not res.mask.all()
    out = res.save(tmp_path / "out")
    gj = json.loads((out / "cells.geojson").read_text())
    validate_qupath_geojson(gj)
    polys = [shapely.geometry.shape(f["geometry"]) for f in gj["features"]]
    # either outline holds exactly the mask's cell centres
    np.testing.assert_array_equal(rasterize(polys, res.heatmap), res.mask)
    coords = np.concatenate([shapely.get_coordinates(p) for p in polys])
    on_lattice = np.all(np.isclose(coords % 200, 0, atol=0.01) | np.isclose(coords % 200, 200))
    # cells: every vertex on the 200-µm (= 200 level-0 px) cell lattice; smooth: sub-cell
    assert on_lattice == (outline == "cells")
    expect = red >= 0.6 * 255
    expect[-1] = False  # glass row
    np.testing.assert_array_equal(res.mask, expect)


def test_outputs_written(tmp_path: Path) -> None:
    path, _ = cell_slide(tmp_path, 4.0, (1,))
    res = segment_slide(path, model=colour_model(), progress=False)
    out = res.save(tmp_path / "out", tiles_geojson=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "cells.geojson",
            "cells.tiles.geojson",
            "heatmap.npz",
            "heatmap.png",
            "mask.png",
            "summary.json",
        ]
    )
    s = json.loads((out / "summary.json").read_text())
    for key in (
        "slide",
        "model",
        "parameters",
        "tissue_area_mm2",
        "idc_area_mm2",
        "idc_fraction_of_tissue",
        "regions",
        "timings_s",
        "idcmap_version",
    ):
        assert key in s
    assert s["slide"]["mpp"] == 4.0
    assert not list((tmp_path / "out").glob(".cells.tmp-*"))


def test_outputs_table_and_save_errors_speak_api(tmp_path: Path) -> None:
    from idcmap.errors import OutputError
    from idcmap.output.folder import OUTPUT_FILES, OUTPUTS

    assert tuple(o.file_name for o in OUTPUTS if o.option is None) == OUTPUT_FILES
    assert OUTPUTS[-1].file_name == "summary.json"  # written last: it marks the slide done
    path, _ = cell_slide(tmp_path, 4.0, (1,))
    res = segment_slide(path, model=colour_model(), progress=False)
    out = res.save(tmp_path / "out", extra_outputs={"tiles_geojson"})
    assert (out / "cells.tiles.geojson").is_file()
    with pytest.raises(OutputError, match="overwrite=True") as e:
        res.save(tmp_path / "out", overwrite=False)
    assert "--" not in str(e.value)  # the library speaks API; the CLI translates
    with pytest.raises(ValueError, match="unknown extra outputs"):
        res.save(tmp_path / "out", extra_outputs={"nonsense"})


def test_keyword_arguments_override_params(tmp_path: Path) -> None:
    path, _ = cell_slide(tmp_path, 4.0, (1,))
    model = tiny_model_file(tmp_path)
    params = Params(device="cpu", stride_px=25, workers=0)
    res = segment_slide(path, model=model, progress=False, params=params, device="auto")
    assert res.summary["parameters"]["device"] == "auto"  # "auto" is a value, not "unset"
    assert res.summary["parameters"]["stride_px"] == 25
    res = segment_slide(path, model=model, progress=False, params=params, stride=50)
    assert res.summary["parameters"]["device"] == "cpu"
    assert res.summary["parameters"]["stride_px"] == 50


def test_library_leaves_torch_threads_alone_unless_asked(tmp_path: Path) -> None:
    import torch

    path, _ = cell_slide(tmp_path, 4.0, (1,))
    model = tiny_model_file(tmp_path)
    before = torch.get_num_threads()
    segment_slide(path, model=model, progress=False, params=Params(workers=2))
    assert torch.get_num_threads() == before
    res = segment_slide(path, model=model, progress=False, params=Params(torch_threads=1))
    assert torch.get_num_threads() == before  # set for the call, restored after
    assert res.summary["parameters"]["torch_threads"] == 1


def test_cli_run_batch_continues_after_bad_slides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_model_file(tmp_path)
    good, _ = cell_slide(tmp_path, 4.0, (1,))
    bad = tmp_path / "not-a-slide.svs"
    bad.write_bytes(b"this is not a TIFF")
    missing = tmp_path / "missing.svs"
    out = tmp_path / "out"
    rc = main(
        [
            "run",
            str(bad),
            str(missing),
            str(good),
            "--out",
            str(out),
            "--model",
            str(model),
            "--quiet",
        ]
    )
    assert rc == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert (out / "cells" / "summary.json").is_file()
    assert "2 failed" in captured.out and "1 done" in captured.out
    # the failures are named again at the end, above the totals, so they do not scroll away
    tail = captured.out.strip().splitlines()[-4:]
    assert tail[0].startswith("idcmap: 2 slide(s) failed"), tail
    assert tail[1:3] == [f"  {bad}", f"  {missing}"], tail
    # rerun: the good slide is skipped, the bad ones fail again
    rc = main(["run", str(good), "--out", str(out), "--model", str(model), "--quiet"])
    assert rc == 0
    assert "1 skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["--stride", "0"],
        ["--stride", "30"],
        ["--threshold", "1.5"],
        ["--device", "tpu"],
        ["--mpp", "-1"],
        ["--batch-size", "0"],
    ],
)
def test_cli_rejects_nonsense_options(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    good, _ = cell_slide(tmp_path, 4.0, (1,))
    model = tiny_model_file(tmp_path)
    with (
        pytest.raises(SystemExit)
        if args[0] in ("--stride", "--batch-size") and args[1] == "0"
        else _nullctx()
    ):
        rc = main(
            [
                "run",
                str(good),
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(model),
                "--quiet",
                *args,
            ]
        )
        assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()
    assert not (tmp_path / "o" / "cells").exists()


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def test_non_square_pixels_give_one_area_everywhere(tmp_path: Path) -> None:
    """1 × 2 µm pixels: every stage measures cells of 200 × 200 µm, and the mask's IDC area,
    the drawn regions' areas and the summary's measurements agree."""
    rows, cols = 8, 10
    red = np.full((rows, cols), 60, np.uint8)
    red[2:6, 3:8] = 240  # a 4×5-cell IDC block (the colour model: p = red / 255)
    red[-1] = 255
    img = cell_image(red, (200, 100), glass_rows=1)  # 200 µm = 200 px in x, 100 in y
    path = write_pyramid_tiff(
        tmp_path / "aniso.tiff", img, 1.0, downsamples=(1,), compression="zlib", mpp_y=2.0
    )
    # QC off: the flat, untextured colour of these synthetic cells is what the QC stage takes
    # for ink (it would blend their probabilities with the cells around)
    res = segment_slide(
        path,
        model=colour_model(),
        params=Params(outline="cells", smooth_um=0, qc="none"),
        progress=False,
    )
    hm = res.heatmap
    assert hm.cell_um == pytest.approx((200.0, 200.0))
    assert hm.cell_area_um2 == pytest.approx(40_000.0)
    assert int(res.mask.sum()) == 20
    s = res.summary
    assert s.idc_area_mm2 == pytest.approx(20 * 0.04)
    assert s.measurement("idc_area_mm2") == pytest.approx(20 * 0.04, rel=1e-3)
    assert sum(r.area_um2 for r in res.regions) / 1e6 == pytest.approx(20 * 0.04, rel=1e-3)
    (reg,) = s.measurement("regions")
    assert reg["greatest_dimension_mm"] == pytest.approx(np.hypot(1.0, 0.8), rel=1e-3)
