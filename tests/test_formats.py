"""Every slide format path that can be produced here, through the real backends, end to end.

Slides are written by the tests: lossless or JPEG pyramids of 200-µm cells of flat H&E-like
colours, so that with ColourNet (IDC probability = mean red / 255) every heatmap cell can be
checked against the red value of the slide cell under it — which also checks the geometry
(levels, downsamples, bounds) of each path. Formats:

* OpenSlide: generic tiled TIFF (zlib, JPEG, BigTIFF, one level, non-integer downsample),
  Aperio-style SVS, Leica SCN with a main image offset in its frame (OpenSlide reports
  ``openslide.bounds-*``), DICOM WSI (written with pydicom: a file, and a folder of one series);
* tiffslide: OME-TIFF, SubIFD pyramid, striped single-level TIFF;
* PIL: PNG and JPEG with ``--mpp``.

Also: slides without usable µm/px, non-RGB images, no tissue / all tissue / smaller than one
tile, and a hypothesis end-to-end property (cell slide → GeoJSON → rasterised = mask).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import tifffile
from geojson_check import validate_qupath_geojson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pipeline_helpers import colour_model, tiny_model_file
from shared_data import SHARED, needs_shared
from tiffgen import (
    cell_image as cells_of,
)
from tiffgen import (
    write_image,
    write_ome_tiff,
    write_pyramid_tiff,
    write_striped_tiff,
    write_svs_like,
)

from idcmap.cli.main import main
from idcmap.io.open import open_slide
from idcmap.output.export import read_geojson_polygons
from idcmap.params import Params
from idcmap.pipeline.regions import rasterize
from idcmap.pipeline.segment import segment_slide

warnings.filterwarnings("ignore", module="tiffslide")


G, B = 40, 150  # green and blue of every tissue cell: saturated pink-purple


def cell_image(
    mpp: float, rows: int = 4, cols: int = 5, seed: int = 0, glass_row: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image of rows×cols 200-µm cells with random red, red per cell); the last row is
    glass (white) when ``glass_row``."""
    red = np.random.default_rng(seed).integers(60, 250, size=(rows, cols)).astype(np.uint8)
    return cells_of(red, round(200 / mpp), green=G, blue=B, glass_rows=int(glass_row)), red


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(args)
    except SystemExit as e:
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def marks(stdout: str, mark: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if ln.startswith(f"{mark} ")]


# --------------------------------------------------------------------------- writers


def write_leica_scn(
    path: Path,
    img: np.ndarray,
    mpp: float,
    offset_px: tuple[int, int],
    frame_px: tuple[int, int],
    downsamples: tuple[int, ...] = (1, 4),
) -> Path:
    """A Leica SCN (BigTIFF, XML ImageDescription in the 2010/10/01 namespace): one brightfield
    main image placed at ``offset_px`` in a ``frame_px`` collection. OpenSlide's leica driver
    makes the frame its level 0 and reports the main image as ``openslide.bounds-*``."""
    h, w = img.shape[:2]
    nm = mpp * 1000  # the XML counts in nanometres ("clicks")
    levels = [img] + [
        np.asarray(Image.fromarray(img).resize((round(w / d), round(h / d)), Image.Resampling.BOX))
        for d in downsamples[1:]
    ]
    dims = "".join(
        f'<dimension sizeX="{lv.shape[1]}" sizeY="{lv.shape[0]}" r="{i}" ifd="{i}"/>'
        for i, lv in enumerate(levels)
    )
    xml = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
        f'<collection name="t" uuid="c" sizeX="{round(frame_px[0] * nm)}" '
        f'sizeY="{round(frame_px[1] * nm)}">'
        '<image name="main" uuid="i"><creationDate>2024-01-01T00:00:00Z</creationDate>'
        '<device model="Leica SCN400;Leica SCN" version="1.5"/>'
        f'<pixels sizeX="{w}" sizeY="{h}">{dims}</pixels>'
        f'<view sizeX="{round(w * nm)}" sizeY="{round(h * nm)}" '
        f'offsetX="{round(offset_px[0] * nm)}" offsetY="{round(offset_px[1] * nm)}" '
        'spacingZ="0"/>'
        "<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings>"
        "<illuminationSettings><numericalAperture>0.4</numericalAperture>"
        "<illuminationSource>brightfield</illuminationSource></illuminationSettings>"
        "</scanSettings></image></collection></scn>"
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, lv in enumerate(levels):
            res = 1e4 / (mpp * downsamples[i])
            tif.write(
                lv,
                tile=(128, 128),
                compression="zlib",
                photometric="rgb",
                description=xml if i == 0 else None,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return path


def write_dicom_wsi(
    folder: Path,
    img: np.ndarray,
    mpp: float,
    downsamples: tuple[int, ...] = (1, 4),
    tile: int = 128,
) -> list[Path]:
    """A DICOM VL Whole Slide Microscopy series (one TILED_FULL instance per level, native RGB,
    explicit VR little endian), written with pydicom. Returns the files, level 0 first."""
    pydicom = pytest.importorskip("pydicom", reason="pydicom writes the DICOM WSI test files")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    h0, w0 = img.shape[:2]
    paths = []
    for i, d in enumerate(downsamples):
        lv = (
            img
            if d == 1
            else np.asarray(
                Image.fromarray(img).resize((round(w0 / d), round(h0 / d)), Image.Resampling.BOX)
            )
        )
        h, w = lv.shape[:2]
        th, tw = -(-h // tile), -(-w // tile)
        padded = np.full((th * tile, tw * tile, 3), 255, np.uint8)
        padded[:h, :w] = lv
        frames = padded.reshape(th, tile, tw, tile, 3).transpose(0, 2, 1, 3, 4)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame
        ds.Modality, ds.Manufacturer = "SM", "idcmap tests"
        ds.PatientID, ds.PatientName = "test", "test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        ds.InstanceNumber, ds.SeriesNumber = i + 1, 1
        ds.ContentDate, ds.ContentTime = "20240101", "000000"
        ds.Rows = ds.Columns = tile
        ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = h, w
        ds.TotalPixelMatrixFocalPlanes = 1
        ds.NumberOfFrames = th * tw
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w0 * mpp / 1000, h0 * mpp / 1000
        ds.ImagedVolumeDepth = 0.001
        measures = Dataset()
        measures.PixelSpacing = [mpp * w0 / w / 1000, mpp * h0 / h / 1000]  # mm
        measures.SliceThickness = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        path_ds = Dataset()
        path_ds.OpticalPathIdentifier = "1"
        ds.OpticalPathSequence = Sequence([path_ds])
        ds.NumberOfOpticalPaths = 1
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem = origin.YOffsetInSlideCoordinateSystem = 0
        ds.TotalPixelMatrixOriginSequence = Sequence([origin])
        ds.PixelData = np.ascontiguousarray(frames).tobytes()
        path = folder / f"level{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    del pydicom
    return paths


# --------------------------------------------------------------------------- formats

# name → (writer(folder, img, mpp) → path, mpp, expected backend, vendor, levels, tolerance)
FORMATS: dict[str, tuple[Any, float, str, str | None, int, float]] = {
    "tiled-tiff-zlib": (
        lambda d, im, m: write_pyramid_tiff(
            d / "s.tiff", im, m, downsamples=(1, 4), compression="zlib"
        ),
        2.0,
        "openslide",
        "generic-tiff",
        2,
        1.5,
    ),
    "tiled-tiff-jpeg": (
        lambda d, im, m: write_pyramid_tiff(d / "s.tiff", im, m),
        1.0,
        "openslide",
        "generic-tiff",
        3,
        4,
    ),
    "bigtiff": (
        lambda d, im, m: write_pyramid_tiff(
            d / "s.tiff", im, m, downsamples=(1, 4), compression="zlib", bigtiff=True
        ),
        2.0,
        "openslide",
        "generic-tiff",
        2,
        1.5,
    ),
    "one-level": (
        lambda d, im, m: write_pyramid_tiff(
            d / "s.tiff", im, m, downsamples=(1,), compression="zlib"
        ),
        1.0,
        "openslide",
        "generic-tiff",
        1,
        1.5,
    ),
    # level 1 at 2.5 µm/px: read it and resize 1.6:1 (cells stay whole model px)
    "non-integer-downsample": (
        lambda d, im, m: write_pyramid_tiff(
            d / "s.tiff", im, m, downsamples=(1, 2.5), compression="zlib"
        ),
        1.0,
        "openslide",
        "generic-tiff",
        2,
        1.5,
    ),
    "aperio-svs": (
        lambda d, im, m: write_svs_like(d / "s.svs", im, mpp=m, downsamples=(1, 4)),
        1.0,
        "openslide",
        "aperio",
        2,
        4,
    ),
    "ome-tiff": (
        lambda d, im, m: write_ome_tiff(d / "s.ome.tiff", im, m),
        1.0,
        "tiffslide",
        "ome",
        2,
        1.5,
    ),
    "subifd-pyramid": (
        lambda d, im, m: write_pyramid_tiff(d / "s.tiff", im, m, compression="zlib", subifds=True),
        1.0,
        "tiffslide",
        None,
        3,
        1.5,
    ),
    "striped-tiff": (
        lambda d, im, m: write_striped_tiff(d / "s.tiff", im, m),
        2.0,
        "tiffslide",
        None,
        1,
        1.5,
    ),
    "png": (lambda d, im, m: write_image(d / "s.png", im), 2.0, "image", "png", 1, 1.5),
    "jpeg": (lambda d, im, m: write_image(d / "s.jpg", im, quality=95), 2.0, "image", "jpeg", 1, 4),
    "dicom-file": (
        lambda d, im, m: write_dicom_wsi(d / "series", im, m)[0],
        2.0,
        "openslide",
        "dicom",
        2,
        1.5,
    ),
    "dicom-folder": (
        lambda d, im, m: write_dicom_wsi(d / "series", im, m)[0].parent,
        2.0,
        "openslide",
        "dicom",
        2,
        1.5,
    ),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_heatmap_matches_cells(tmp_path: Path, name: str) -> None:
    writer, mpp, backend, vendor, levels, tol = FORMATS[name]
    img, red = cell_image(mpp, seed=len(name))
    path = writer(tmp_path, img, mpp)
    user_mpp = mpp if backend == "image" else None
    res = segment_slide(path, model=colour_model(dense=True), mpp=user_mpp, progress=False)
    info = res.slide
    assert (info.backend, info.level_count) == (backend, levels), info
    if vendor is not None:
        assert info.vendor == vendor
    assert info.mpp == pytest.approx(mpp, rel=1e-6)
    assert info.mpp_source == ("user" if user_mpp else info.mpp_source)
    hm = res.heatmap
    assert hm.shape == red.shape
    assert hm.tissue[:-1].all() and not hm.tissue[-1].any()
    np.testing.assert_allclose(hm.prob[:-1], red[:-1] / 255.0, atol=tol / 255)
    assert res.summary["slide"]["level_read_mpp"] <= 4.0 * 1.01
    validate_qupath_geojson(json.loads(json.dumps(res.to_geojson())))


def test_leica_bounds_put_regions_in_qupaths_frame(tmp_path: Path) -> None:
    """OpenSlide's level 0 of this SCN is a 1000×600 px frame with the image at (100, 50):
    the heatmap and the regions are in QuPath's frame (bounds origin subtracted), so cell
    (r, c) is slide cell (r, c) and every region vertex lies on the 100-px cell lattice."""
    img, red = cell_image(2.0, rows=4, cols=6, seed=7)
    path = write_leica_scn(tmp_path / "s.scn", img, 2.0, offset_px=(100, 50), frame_px=(1000, 600))
    with open_slide(path) as s:
        assert (s.info.backend, s.info.vendor) == ("openslide", "leica")
        assert s.info.dimensions == (1000, 600)
        assert s.info.bounds_level0_px == (100, 50, 600, 400)
    res = segment_slide(
        path,
        model=colour_model(dense=True, threshold=0.5),
        progress=False,
        params=Params(min_region_um2=0, min_hole_um2=0, simplify_um=0, outline="cells"),
    )
    hm = res.heatmap
    assert hm.shape == red.shape and hm.origin_level0_px == (0.0, 0.0)
    np.testing.assert_allclose(hm.prob[:-1], red[:-1] / 255.0, atol=1.5 / 255)
    assert not hm.tissue[-1].any()
    expect = red >= 128
    expect[-1] = False
    np.testing.assert_array_equal(res.mask, expect)
    polys = read_geojson_polygons(json.loads(json.dumps(res.to_geojson())))
    assert polys
    coords = np.concatenate([shapely.get_coordinates(p) for p in polys])
    np.testing.assert_allclose(coords % 100, 0, atol=0.01)
    assert coords.min() >= 0 and coords[:, 0].max() <= 600 and coords[:, 1].max() <= 400
    np.testing.assert_array_equal(rasterize(polys, hm), res.mask)


def test_cli_dicom_folder_is_one_slide_and_leica_info(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img, _ = cell_image(2.0, rows=3, cols=3)
    series = write_dicom_wsi(tmp_path / "series", img, 2.0)[0].parent
    scn = write_leica_scn(tmp_path / "s.scn", img, 2.0, (40, 20), (700, 500))
    model = tiny_model_file(tmp_path)
    rc, out, _ = run_cli(
        ["run", str(series), "--out", str(tmp_path / "o"), "--model", str(model), "-q"], capsys
    )
    assert rc == 0 and "1 done" in out
    summary = json.loads((tmp_path / "o" / "series" / "summary.json").read_text())
    assert summary["slide"]["vendor"] == "dicom"
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")) == [
        "cohort.csv",
        "series",
    ]
    rc, out, _ = run_cli(
        ["run", str(series), "--out", str(tmp_path / "o"), "--model", str(model), "-q"], capsys
    )
    assert rc == 0 and "1 skipped" in out  # the same name for is_done and the outputs
    rc, out, _ = run_cli(["info", str(scn), "--json"], capsys)
    assert rc == 0
    info = json.loads(out)
    assert info["vendor"] == "leica" and info["bounds_level0_px"] == [40, 20, 300, 300]


# --------------------------------------------------------------------------- resolution


@needs_shared
def test_no_usable_mpp_is_an_error_naming_mpp_and_mpp_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img, _ = cell_image(2.0, rows=3, cols=3)
    slides = [
        write_pyramid_tiff(
            tmp_path / "no-unit.tiff", img, 2.0, resolution_unit=None, compression="zlib"
        ),
        write_pyramid_tiff(tmp_path / "dpi72.tiff", img, None, dpi=72, compression="zlib"),
        write_striped_tiff(tmp_path / "dpi96.tiff", img, 25400 / 96, resolution_unit="inch"),
        write_image(tmp_path / "plain.png", img),
        SHARED / "wsi" / "boxes.tiff",  # a real 72-dpi TIFF
    ]
    model = tiny_model_file(tmp_path)
    args = ["--out", str(tmp_path / "o"), "--model", str(model), "-q"]
    rc, out, _ = run_cli(["run", *map(str, slides), *args], capsys)
    assert rc == 1
    fails = marks(out, "✗")
    assert len(fails) == len(slides) and all("--mpp" in ln for ln in fails), out
    assert not any((tmp_path / "o").glob("*/summary.json")), "nothing may run on a guess"
    rc, out, _ = run_cli(["run", *map(str, slides), *args, "--mpp", "2.0"], capsys)
    assert rc == 0 and len(marks(out, "✓")) == len(slides), out
    for p in slides:
        stem = p.name.split(".")[0]
        s = json.loads((tmp_path / "o" / stem / "summary.json").read_text())
        assert (s["slide"]["mpp"], s["slide"]["mpp_source"]) == (2.0, "user")


# --------------------------------------------------------------------------- non-RGB


def test_non_rgb_is_refused_naming_force_rgb_and_force_rgb_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img, _ = cell_image(2.0, rows=3, cols=3)
    rng = np.random.default_rng(0)
    fl = (rng.random((4, 300, 300)) * 3000).astype(np.uint16)
    fl[:, 100:200, 100:200] += 20000
    png16 = tmp_path / "gray16.png"
    Image.fromarray(img[..., 0].astype(np.uint16) * 257).save(png16)
    slides = [
        write_pyramid_tiff(
            tmp_path / "rgb16.tiff", img.astype(np.uint16) * 257, 2.0, compression="zlib"
        ),
        write_pyramid_tiff(tmp_path / "gray.tiff", img[..., 0].copy(), 2.0, compression="zlib"),
        write_ome_tiff(tmp_path / "fluo.ome.tiff", fl, 2.0, axes="CYX"),
        png16,
    ]
    model = tiny_model_file(tmp_path)
    args = ["--out", str(tmp_path / "o"), "--model", str(model), "-q", "--mpp", "2.0"]
    rc, out, _ = run_cli(["run", *map(str, slides), *args], capsys)
    assert rc == 1
    fails = marks(out, "✗")
    assert len(fails) == len(slides) and all("--force-rgb" in ln for ln in fails), out
    rc, out, _ = run_cli(["run", *map(str, slides), *args, "--force-rgb"], capsys)
    assert rc == 0 and len(marks(out, "✓")) == len(slides), out
    for stem in ("rgb16", "gray", "fluo", "gray16"):
        s = json.loads((tmp_path / "o" / stem / "summary.json").read_text())
        assert s["slide"]["converted_from"], stem
        validate_qupath_geojson(json.loads((tmp_path / "o" / stem / f"{stem}.geojson").read_text()))


# --------------------------------------------------------------------------- tissue extremes


def test_no_tissue_all_tissue_and_smaller_than_a_tile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blank = write_pyramid_tiff(
        tmp_path / "blank.tiff",
        np.full((400, 500, 3), 245, np.uint8),
        2.0,
        downsamples=(1, 4),
        compression="zlib",
    )
    full_img, full_red = cell_image(2.0, rows=3, cols=4, seed=5, glass_row=False)
    full = write_pyramid_tiff(
        tmp_path / "full.tiff", full_img, 2.0, downsamples=(1, 4), compression="zlib"
    )
    tiny_img = np.empty((30, 45, 3), np.uint8)  # 120×180 µm: under one 200-µm tile
    tiny_img[:] = (200, G, B)
    tiny = write_pyramid_tiff(
        tmp_path / "tiny.tiff", tiny_img, 4.0, downsamples=(1,), compression="zlib", tile=16
    )

    params = Params(min_region_um2=0, min_hole_um2=0, simplify_um=0)
    res = segment_slide(full, model=colour_model(dense=True), progress=False, params=params)
    assert res.heatmap.tissue.all()
    np.testing.assert_allclose(res.heatmap.prob, full_red / 255.0, atol=1.5 / 255)
    np.testing.assert_array_equal(res.mask, full_red >= 128)
    polys = read_geojson_polygons(json.loads(json.dumps(res.to_geojson())))
    np.testing.assert_array_equal(rasterize(polys, res.heatmap), res.mask)

    res = segment_slide(tiny, model=colour_model(dense=False), progress=False, params=params)
    assert res.heatmap.shape == (1, 1)
    assert res.heatmap.tissue.all()  # 120×180 µm of tissue: 54 % of the padded tile
    # the tile is the slide padded with white: mean red = (200·30·45 + 255·(2500−1350)) / 2500
    assert res.heatmap.prob[0, 0] == pytest.approx(
        (200 * 1350 + 255 * 1150) / 2500 / 255, abs=1.5 / 255
    )

    # the CLI writes valid outputs for all three (the empty one: an empty FeatureCollection)
    model = tiny_model_file(tmp_path)
    rc, out, _ = run_cli(
        [
            "run",
            str(blank),
            str(full),
            str(tiny),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(model),
            "-q",
        ],
        capsys,
    )
    assert rc == 0 and len(marks(out, "✓")) == 3, out
    for stem in ("blank", "full", "tiny"):
        gj = json.loads((tmp_path / "o" / stem / f"{stem}.geojson").read_text())
        validate_qupath_geojson(gj)
    assert json.loads((tmp_path / "o" / "blank" / "blank.geojson").read_text()) == {
        "type": "FeatureCollection",
        "features": [],
    }
    s = json.loads((tmp_path / "o" / "blank" / "summary.json").read_text())
    assert (s["regions"], s["tissue_area_mm2"], s["tiles"]["evaluated"]) == (0, 0, 0)


# --------------------------------------------------------------------------- property


red_values = st.one_of(st.integers(60, 115), st.integers(140, 250))  # clear of the threshold


@st.composite
def cell_slides(draw: st.DrawFn) -> dict[str, Any]:
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    red = np.array(
        draw(st.lists(red_values, min_size=rows * cols, max_size=rows * cols)), np.uint8
    ).reshape(rows, cols)
    glass = draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols))
    return {
        "red": red,
        "glass": np.array(glass).reshape(rows, cols) & draw(st.booleans()),
        "mpp": draw(st.sampled_from([1.0, 2.0, 4.0])),
        "downsamples": draw(st.sampled_from([(1,), (1, 2), (1, 4)])),
        "dense": draw(st.booleans()),
    }


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cell_slides())
def test_property_cell_slide_to_geojson_round_trips_to_the_mask(case: dict[str, Any]) -> None:
    """Random cell slides (some cells glass) → segment_slide → QuPath GeoJSON that validates,
    and whose polygons rasterise back to the IDC mask, which is red ≥ 0.5 on tissue cells."""
    red, glass, mpp = case["red"], case["glass"], case["mpp"]
    cell = round(200 / mpp)
    img = np.empty((red.shape[0] * cell, red.shape[1] * cell, 3), np.uint8)
    img[..., 0] = np.kron(red, np.ones((cell, cell), np.uint8))
    img[..., 1], img[..., 2] = G, B
    img[np.kron(glass, np.ones((cell, cell), bool))] = 255
    with tempfile.TemporaryDirectory() as d:
        path = write_pyramid_tiff(
            Path(d) / "p.tiff",
            img,
            mpp,
            downsamples=case["downsamples"],
            compression="zlib",
            tile=64,
        )
        res = segment_slide(
            path,
            model=colour_model(dense=case["dense"]),
            progress=False,
            params=Params(min_region_um2=0, min_hole_um2=0, simplify_um=0),
        )
    hm = res.heatmap
    assert hm.shape == red.shape
    tissue = hm.tissue
    # a glass cell enclosed by tissue is a small hole that the tissue mask fills: it is evaluated,
    # and its white pixels read as red 255
    red_seen = np.where(glass, 255, red)
    idc = (red_seen >= 128) & tissue
    np.testing.assert_array_equal(res.mask, idc)
    gj = json.loads(json.dumps(res.to_geojson()))
    validate_qupath_geojson(gj)
    polys = read_geojson_polygons(gj)
    assert len(polys) == len(res.regions)
    np.testing.assert_array_equal(rasterize(polys, hm), res.mask)
