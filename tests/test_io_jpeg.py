"""io.colour, io.jpeg, io.jpegtiff: colour facts and scaled-IDCT reads of tiled-JPEG TIFFs.

Tiles are JPEG-encoded by Pillow and written as they are by tifffile (as
``benchmarks/make_slides.py`` does), in the codings scanners use: YCbCr 4:2:0 / 4:4:4 with a
JFIF marker, abbreviated streams with a ``JPEGTables`` tag, RGB-coded samples with an Adobe APP14
marker (transform 0) or with no marker at all (Photometric RGB decides, as for OpenSlide's
CMU-1 SVS). Reads are pixel-compared against tifffile's full decode of the same level, reduced
with a box filter of the same factor.

The measured differences and the bounds asserted are at ``BOUNDS`` (synthetic H&E, 300x230 px,
tiles of 64 px, q90) and in ``test_aperio_svs_reads`` (the shared SVS).
"""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image
from tiffgen import encode_tile, split_tables, synthetic_he, write_jpeg_tiff, write_pyramid_tiff

from idcmap.io.colour import LevelColour, choose_level, chroma_mpp_per_level, level_colour_facts
from idcmap.io.jpeg import jp2k_sampling, parse_jpeg_header
from idcmap.io.jpegtiff import JpegReadUnsupported, JpegTiffReader
from idcmap.io.open import open_slide

#: max / mean abs difference (uint8 levels, all channels) of a scaled read against the full
#: decode + box, per (coded chroma sampling, scale). Measured on the image below over the four
#: rectangles of test_scaled_read_vs_full_decode_box and all kinds: 4:4:4 (YCbCr or RGB-coded)
#: max 5 / 3 / 2 and mean ≤ 0.49 / 0.40 / 0.42 at s = 2 / 4 / 8; 4:2:0 max 28 / 8 / 4, mean
#: ≤ 1.55 / 0.69 / 0.46. (At 4:2:0 the scaled IDCT makes chroma from the DCT directly while the
#: full decode upsamples it with libjpeg's triangle filter before the box; the image's
#: independent per-pixel colour noise, σ = 8, is the worst case for that.)
BOUNDS = {
    ((1, 1), 2): (6, 0.6),
    ((1, 1), 4): (4, 0.5),
    ((1, 1), 8): (3, 0.5),
    ((2, 2), 2): (32, 1.8),
    ((2, 2), 4): (10, 0.8),
    ((2, 2), 8): (5, 0.6),
}
H, W, TILE, MPP = 230, 300, 64, 0.25  # 300 % 8 = 4, 230 % 8 = 6: partial edge blocks


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return synthetic_he(H, W, seed=3, tissue=0.7)


# name: (writer keywords, expected colour space, expected coded subsampling)
KINDS = {
    "ycbcr420-jfif": ({"subsampling": 2}, "YCbCr", (2, 2)),
    "ycbcr444-jfif": ({"subsampling": 0}, "YCbCr", (1, 1)),
    "ycbcr420-tables": ({"subsampling": 2, "tables": True}, "YCbCr", (2, 2)),
    "ycbcr420-progressive": ({"subsampling": 2, "progressive": True}, "YCbCr", (2, 2)),
    "ycbcr444-tables": ({"subsampling": 0, "tables": True}, "YCbCr", (1, 1)),
    "ycbcr444-tag-says-420": ({"subsampling": 0, "tag_subsampling": (2, 2)}, "YCbCr", (1, 1)),
    "rgb-adobe-tables": (
        {"subsampling": 0, "photometric": "rgb", "rgb_coded": True, "adobe": True, "tables": True},
        "RGB",
        (1, 1),
    ),
    "rgb-no-marker-tables": (
        {"subsampling": 0, "photometric": "rgb", "rgb_coded": True, "tables": True},
        "RGB",
        (1, 1),
    ),
    "rgb-tag-jfif-ycbcr420": ({"subsampling": 2, "photometric": "rgb"}, "YCbCr", (2, 2)),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind_tiff(request, he, tmp_path_factory) -> tuple[str, Path]:
    kw = KINDS[request.param][0]
    path = tmp_path_factory.mktemp("jpegtiff") / f"{request.param}.tif"
    return request.param, write_jpeg_tiff(path, he, **kw)


def box(full: np.ndarray, x: int, y: int, w: int, h: int, s: int) -> np.ndarray:
    """The reference: full decode's px under the output grid, box-reduced s:1, white outside."""
    fh, fw = full.shape[:2]
    ow, oh = -(-w // s), -(-h // s)
    out = np.full((oh, ow, 3), 255, np.uint8)
    ax0, ay0 = max(x, 0), max(y, 0)
    ax1, ay1 = min(x + ow * s, fw), min(y + oh * s, fh)
    if ax1 > ax0 and ay1 > ay0:
        crop = full[ay0:ay1, ax0:ax1]
        red = np.asarray(Image.fromarray(crop).reduce(s)) if s > 1 else crop
        dx, dy = (ax0 - x) // s, (ay0 - y) // s
        out[dy : dy + red.shape[0], dx : dx + red.shape[1]] = red
    return out


def diff(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    assert a.shape == b.shape, (a.shape, b.shape)
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), float(d.mean())


# --------------------------------------------------------------------------- facts


def test_facts_per_kind(kind_tiff):
    name, path = kind_tiff
    kw, colorspace, sampling = KINDS[name]
    (lv,) = level_colour_facts(path)
    assert lv.readable and lv.reason == ""
    assert lv.compression == "JPEG" and lv.jpeg is not None
    assert (lv.colorspace, lv.subsampling) == (colorspace, sampling)
    assert lv.jpeg_tables == bool(kw.get("tables"))
    assert lv.mpp == pytest.approx(MPP)
    assert lv.chroma_mpp == pytest.approx(MPP * sampling[0])
    assert (lv.tile_width, lv.tile_height) == (TILE, TILE)
    assert chroma_mpp_per_level(path) == [pytest.approx(MPP * sampling[0])]
    assert lv.jpeg.sof == (0xC2 if "progressive" in name else 0xC0)
    if name == "ycbcr444-tag-says-420":
        assert lv.tag_subsampling == (2, 2)  # the tag lies; the SOF is believed
    if name == "rgb-no-marker-tables":  # libjpeg alone would guess YCbCr (ids 1, 2, 3)
        assert lv.jpeg.colorspace == "YCbCr" and lv.photometric == "RGB"
    assert "level 0" in lv.describe()


def test_parse_jpeg_header_sampling():
    t = np.zeros((32, 32, 3), np.uint8)
    for sub, want, name in [(0, (1, 1), "4:4:4"), (1, (2, 1), "4:2:2"), (2, (2, 2), "4:2:0")]:
        h = parse_jpeg_header(encode_tile(t, subsampling=sub))
        assert (h.subsampling, h.sampling_name, h.colorspace) == (want, name, "YCbCr")
        assert (h.sof, h.precision, h.width, h.height, h.jfif) == (0xC0, 8, 32, 32, True)
    tables, abbreviated = split_tables(encode_tile(t, subsampling=2))
    h = parse_jpeg_header(abbreviated, tables=tables)
    assert h.subsampling == (2, 2) and not h.jfif
    a = parse_jpeg_header(encode_tile(t, subsampling=0, rgb_coded=True, adobe=True))
    assert (a.adobe_transform, a.colorspace) == (0, "RGB")
    with pytest.raises(ValueError):
        parse_jpeg_header(b"\x89PNG\r\n\x1a\n")


# --------------------------------------------------------------------------- reads


def test_full_decode_matches_tifffile_and_source(kind_tiff, he):
    """Scale 1 equals tifffile's decode (colour handled the same way) and is near the source."""
    pytest.importorskip("imagecodecs")
    name, path = kind_tiff
    full = tifffile.imread(path)
    with JpegTiffReader(path) as r:
        got = r.read_region(0, 0, 0, W, H, 1)
    assert diff(got, full) == (0, 0.0)
    # both decoders right, not both wrong: a colour-space mix-up costs tens of levels
    assert diff(got, he)[1] < 8.0, name  # measured 2.7 (RGB), 4.3 (4:4:4), 6.2 (4:2:0)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_scaled_read_vs_full_decode_box(kind_tiff, scale):
    pytest.importorskip("imagecodecs")
    name, path = kind_tiff
    bmax, bmean = BOUNDS[KINDS[name][2], scale]
    full = tifffile.imread(path)
    with JpegTiffReader(path) as r:
        rects = [
            (0, 0, W, H),  # everything: every tile, both image edges (partial blocks)
            (40, 56, 200, 120),  # across tile edges, inside the image
            (120, 64, W - 120, H - 64),  # to the image's right and bottom edges
            (64, 128, 70, 37),  # sizes not multiples of the scale
        ]
        for x, y, w, h in rects:
            x, y = x // scale * scale, y // scale * scale
            got = r.read_region(0, x, y, w, h, scale)
            assert got.shape == (-(-h // scale), -(-w // scale), 3)
            mx, mean = diff(got, box(full, x, y, w, h, scale))
            assert mx <= bmax and mean <= bmean, (name, scale, (x, y, w, h), mx, mean)


def test_outside_the_level_is_white(kind_tiff):
    pytest.importorskip("imagecodecs")
    name, path = kind_tiff
    full = tifffile.imread(path)
    with JpegTiffReader(path) as r:
        got = r.read_region(0, -16, -8, 64, 48, 4)
        assert got.shape == (12, 16, 3)
        assert (got[:2] == 255).all() and (got[:, :4] == 255).all()
        assert diff(got, box(full, -16, -8, 64, 48, 4))[0] <= BOUNDS[KINDS[name][2], 4][0]
        beyond = r.read_region(0, W + 12, 0, 16, 16, 8)
        assert beyond.shape == (2, 2, 3) and (beyond == 255).all()
        assert r.read_region(0, 8, 8, 0, 5, 2).shape == (3, 0, 3)


def test_read_tile_and_threads(kind_tiff):
    from concurrent.futures import ThreadPoolExecutor

    _, path = kind_tiff
    with JpegTiffReader(path) as r, ThreadPoolExecutor(3) as pool:
        serial = r.read_region(0, 0, 0, W, H, 2)
        assert np.array_equal(r.read_region(0, 0, 0, W, H, 2, executor=pool), serial)
        # one reader shared by threads (os.pread: no shared file position)
        outs = list(pool.map(lambda _: r.read_region(0, 0, 0, W, H, 2), range(6)))
        assert all(np.array_equal(o, serial) for o in outs)
        t = r.read_tile(0, 4, 3, 4)  # the corner tile: 44x38 valid px → 11x10 at 1/4
        assert t.shape == (-(-(H - 3 * TILE) // 4), -(-(W - 4 * TILE) // 4), 3)


def test_read_scaled_virtual_level(kind_tiff):
    """(level, scale) read as a level of its own: any origin, output exactly h×w."""
    _, path = kind_tiff
    with JpegTiffReader(path) as r:
        assert r.scaled_dimensions(0, 4) == (-(-W // 4), -(-H // 4))
        assert r.level_for_size(W, H) == 0 and r.level_for_size(W, H + 1) is None
        whole = r.read_region(0, 0, 0, W, H, 4)
        part = r.read_scaled(0, 4, 7, 5, 30, 21)
        assert part.shape == (21, 30, 3)
        assert np.array_equal(part, whole[5:26, 7:37])
        edge = r.read_scaled(0, 4, 70, 50, 10, 10)  # the scaled level is 75x58
        assert np.array_equal(edge[:8, :5], whole[50:58, 70:75]) and (edge[8:] == 255).all()


def test_bad_arguments(kind_tiff):
    _, path = kind_tiff
    r = JpegTiffReader(path)
    with pytest.raises(ValueError, match="scale"):
        r.read_region(0, 0, 0, 8, 8, 3)
    with pytest.raises(ValueError, match="multiples"):
        r.read_region(0, 2, 0, 8, 8, 4)
    with pytest.raises(ValueError, match="level"):
        r.read_region(1, 0, 0, 8, 8, 1)
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.read_region(0, 0, 0, 8, 8, 1)


def test_pyramid_levels_and_level0_only(he, tmp_path):
    """A 3-level pyramid: facts per level; a single-level slide: level 0 read scaled."""
    p = write_jpeg_tiff(tmp_path / "pyr.tif", he, downsamples=(1, 2, 4), subsampling=2)
    levels = level_colour_facts(p)
    assert [lv.level for lv in levels] == [0, 1, 2]
    assert [lv.width for lv in levels] == [W, W // 2, W // 4]
    assert [lv.chroma_mpp for lv in levels] == pytest.approx([0.5, 1.0, 2.0], rel=0.02)
    one = write_jpeg_tiff(tmp_path / "one.tif", he, subsampling=2)
    levels = level_colour_facts(one)
    assert len(levels) == 1
    level, scale = choose_level(levels, 2.0)  # 0.25 µm/px: chroma 0.5 ≤ 2; 0.25·8 = 2
    assert (level, scale) == (0, 8)
    with JpegTiffReader(one) as r:
        small = r.read_region(level, 0, 0, W, H, scale)
    assert small.shape == (-(-H // 8), -(-W // 8), 3)
    pytest.importorskip("imagecodecs")  # tifffile's JPEG decoder, for the reference
    assert diff(small, box(tifffile.imread(one), 0, 0, W, H, 8))[0] <= BOUNDS[(2, 2), 8][0]


def test_non_jpeg_level_is_refused(he, tmp_path):
    p = tmp_path / "deflate.tif"
    tifffile.imwrite(
        p,
        he,
        tile=(64, 64),
        compression="zlib",
        photometric="rgb",
        resolution=(1e4 / MPP, 1e4 / MPP),
        resolutionunit="CENTIMETER",
    )
    (lv,) = level_colour_facts(p)
    assert not lv.readable and "not JPEG" in lv.reason
    assert (lv.colorspace, lv.subsampling, lv.chroma_mpp) == ("RGB", (1, 1), pytest.approx(MPP))
    with JpegTiffReader(p) as r:
        assert not r.supports(0, 1)
        with pytest.raises(JpegReadUnsupported, match="OpenSlide or tiffslide"):
            r.read_region(0, 0, 0, 16, 16, 1)


@pytest.mark.parametrize("writer", ["pyramid-rgb", "pyramid-subifds", "svs-like", "ome-jpeg"])
def test_tifffile_imagecodecs_files(writer, he, tmp_path):
    """Files tifffile writes with imagecodecs' JPEG encoder (tests/tiffgen.py): generic
    pyramid (Photometric RGB → YCbCr 4:2:0 by tifffile's default), SubIFD levels, an
    Aperio-like SVS, an OME-TIFF pyramid. Every level read at every scale vs tifffile + box."""
    pytest.importorskip("imagecodecs")
    from tiffgen import write_ome_tiff, write_pyramid_tiff, write_svs_like

    img = synthetic_he(520, 600, seed=5, tissue=0.7)
    p = tmp_path / f"{writer}.tif"
    if writer == "pyramid-rgb":
        write_pyramid_tiff(p, img, MPP, downsamples=(1, 2, 4), tile=128)
    elif writer == "pyramid-subifds":
        write_pyramid_tiff(p, img, MPP, downsamples=(1, 2, 4), tile=128, subifds=True)
    elif writer == "svs-like":
        write_svs_like(p, img, mpp=0.499, downsamples=(1, 4), tile=128)
    else:
        write_ome_tiff(p, img, MPP, downsamples=(1, 2), tile=128, compression="jpeg")
    levels = level_colour_facts(p)
    assert len(levels) == {"pyramid-rgb": 3, "pyramid-subifds": 3, "svs-like": 2}.get(writer, 2)
    mpp0 = 0.499 if writer == "svs-like" else MPP
    with tifffile.TiffFile(p) as tf, JpegTiffReader(p) as r:
        pages = [lvl.keyframe for lvl in tf.series[0].levels]
        if writer == "svs-like":  # tifffile takes the SVS's 2nd page for its thumbnail
            pages = list(tf.pages)
        for lv, page in zip(levels, pages, strict=True):
            assert lv.readable and lv.subsampling is not None, lv.reason
            assert lv.mpp == pytest.approx(mpp0 * lv.downsample)
            assert lv.chroma_mpp == pytest.approx(lv.mpp * lv.subsampling[0])
            full = page.asarray()
            fh, fw = full.shape[:2]
            assert diff(r.read_region(lv.level, 0, 0, fw, fh, 1), full) == (0, 0.0)
            sub = lv.subsampling if lv.subsampling in ((1, 1), (2, 2)) else (2, 2)
            for s in (2, 4, 8):
                mx, mean = diff(
                    r.read_region(lv.level, 0, 0, fw, fh, s), box(full, 0, 0, fw, fh, s)
                )
                assert mx <= BOUNDS[sub, s][0] and mean <= BOUNDS[sub, s][1], (lv, s, mx, mean)


def test_striped_jpeg_facts_but_no_read(he, tmp_path):
    """One JPEG strip per level (as NDPI stores levels): facts yes, scaled reads no."""
    p = tmp_path / "strip.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(
            iter([encode_tile(he, subsampling=2)]),
            shape=he.shape,
            dtype=np.uint8,
            rowsperstrip=H,
            compression="jpeg",
            photometric="ycbcr",
            subsampling=(2, 2),
            compressionargs={"outcolorspace": "YCBCR"},
            resolution=(1e4 / MPP, 1e4 / MPP),
            resolutionunit="CENTIMETER",
            metadata=None,
        )
    (lv,) = level_colour_facts(p)
    assert not lv.tiled and not lv.readable and "strips" in lv.reason
    assert (lv.subsampling, lv.chroma_mpp) == ((2, 2), pytest.approx(2 * MPP))
    assert choose_level([lv], 4 * MPP) == (0, 1)  # no scaled decode: read level 0 and resize
    with JpegTiffReader(p) as r, pytest.raises(JpegReadUnsupported, match="strips"):
        r.read_region(0, 0, 0, 8, 8, 2)
    # the slide falls back to its backend, says why, and its tissue pass reads as before
    pytest.importorskip("imagecodecs")  # tiffslide's JPEG decoder for the strip
    with open_slide(p) as slide:
        rl = slide.read_level_for_mpp(4 * MPP)
        assert (rl.level, rl.scale) == (0, 1) and "no scaled decode (strips" in rl.reason
        rgb, _ = slide.read_at_mpp(4 * MPP)
        full = slide.read_region((0, 0), 0, (W, H))
    # the backend's full decode as before: 3:1 blocks (the whole ones that fit), box-resized
    ref = Image.fromarray(full).reduce(3).resize(rgb.shape[1::-1], Image.Resampling.BOX)
    np.testing.assert_array_equal(rgb, np.asarray(ref))


def test_jpeg2000_falls_back_with_a_reason(he, tmp_path):
    """JPEG 2000 tiles: colour facts from the codestream, no scaled decode; the backend reads
    the level whose colour is fine enough, whole, and ``read_at_mpp`` box-reduces it."""
    pytest.importorskip("imagecodecs")
    p = write_pyramid_tiff(tmp_path / "j2k.tiff", he, MPP, (1, 4), 64, compression="jpeg2000")
    with open_slide(p) as slide:
        assert all(c is not None and not c.readable for c in slide.colour)
        rl = slide.read_level_for_mpp(16 * MPP)
        assert (rl.level, rl.scale) == (1, 1)
        assert "no scaled decode (JPEG2000 compression, not JPEG)" in rl.reason
        rgb, _ = slide.read_at_mpp(16 * MPP)
        level1 = slide.read_region((0, 0), 1, slide.info.level_dimensions[1])
    # 75x58 px (downsample 3.98) in 4:1 blocks → 19x15 → 19x14
    ref = Image.fromarray(level1).reduce(4).resize(rgb.shape[1::-1], Image.Resampling.BOX)
    assert diff(rgb, np.asarray(ref))[1] < 0.5


PHILIPS_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<DataObject ObjectType="DPUfsImport">
<Attribute Name="PIM_DP_SCANNED_IMAGES" Group="0x301D" Element="0x1003" PMSVR="IDataObjectArray">
<Array><DataObject ObjectType="DPScannedImage">
<Attribute Name="PIM_DP_IMAGE_TYPE" Group="0x301D" Element="0x1004" PMSVR="IString">WSI</Attribute>
<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" Group="0x1001" Element="0x8B01"
 PMSVR="IDataObjectArray"><Array>
<DataObject ObjectType="PixelDataRepresentation">
<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray"
>"0.00025" "0.00025"</Attribute></DataObject>
<DataObject ObjectType="PixelDataRepresentation">
<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray"
>"0.0005" "0.0005"</Attribute></DataObject>
</Array></Attribute>
</DataObject></Array></Attribute>
</DataObject>
"""


def test_philips_like(he, tmp_path):
    """Philips-like: Software "Philips DP", the XML description, YCbCr 4:2:0 abbreviated
    streams with JPEGTables, a reduced level whose size tags are padded to whole tiles."""
    p = tmp_path / "philips.tiff"
    lvl1 = np.asarray(Image.fromarray(he).reduce(2))  # 150x115
    with tifffile.TiffWriter(p) as tw:
        for i, img in enumerate((he, lvl1)):
            lh, lw = img.shape[:2]
            ph, pw = -(-lh // TILE) * TILE, -(-lw // TILE) * TILE
            padded = np.full((ph, pw, 3), 255, np.uint8)
            padded[:lh, :lw] = img
            streams = [
                encode_tile(padded[y : y + TILE, x : x + TILE], subsampling=2)
                for y in range(0, ph, TILE)
                for x in range(0, pw, TILE)
            ]
            tables, _ = split_tables(streams[0])
            tw.write(
                iter([split_tables(s)[1] for s in streams]),
                shape=(lh, lw, 3) if i == 0 else (ph, pw, 3),  # level 1: padded size tags
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=(2, 2),
                compressionargs={"outcolorspace": "YCBCR"},
                jpegtables=tables,
                software="Philips DP v1.0",
                description=PHILIPS_XML if i == 0 else "level=1",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
            )
    with tifffile.TiffFile(p) as tf:
        assert tf.is_philips
    levels = level_colour_facts(p)
    assert [(lv.width, lv.height) for lv in levels] == [(W, H), (150, 115)]
    assert [lv.mpp for lv in levels] == pytest.approx([0.25, 0.5])
    assert all(lv.jpeg_tables and lv.subsampling == (2, 2) for lv in levels)
    assert [lv.chroma_mpp for lv in levels] == pytest.approx([0.5, 1.0])
    assert choose_level(levels, 2.0) == (1, 4)
    with JpegTiffReader(p) as r:
        got = r.read_region(1, 0, 0, 150, 115, 2)
        assert got.shape == (58, 75, 3)
        pytest.importorskip("imagecodecs")
        mx, mean = diff(got, box(lvl1_decoded(p), 0, 0, 150, 115, 2))
        assert mx <= BOUNDS[(2, 2), 2][0] and mean <= BOUNDS[(2, 2), 2][1]


def lvl1_decoded(path: Path) -> np.ndarray:
    """Level 1 of the Philips-like file, decoded by tifffile (its padded page, cropped)."""
    with tifffile.TiffFile(path) as tf:
        return tf.series[0].levels[1].asarray()[:115, :150]


# --------------------------------------------------------------------------- the shared SVS


@pytest.fixture(scope="module")
def cmu_svs() -> Path:
    path = Path(__file__).resolve().parents[1].parent / "shared/data/wsi/CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"the shared Aperio SVS is absent (../shared/data, CI has it): {path}")
    return path


def test_aperio_svs_facts(cmu_svs):
    """OpenSlide's CMU-1-Small-Region: RGB JPEG, 1x1 sampling (its YCbCrSubSampling tag says
    2x2), JPEGTables, component ids 0-1-2 and no Adobe or JFIF marker (RGB by Photometric)."""
    (lv,) = level_colour_facts(cmu_svs)
    assert (lv.width, lv.height, lv.tile_width) == (2220, 2967, 240)
    assert (lv.photometric, lv.colorspace, lv.subsampling) == ("RGB", "RGB", (1, 1))
    assert lv.tag_subsampling == (2, 2) and lv.jpeg_tables
    assert lv.jpeg is not None and lv.jpeg.adobe_transform is None and not lv.jpeg.jfif
    assert lv.mpp == pytest.approx(0.499) and lv.chroma_mpp == pytest.approx(0.499)
    assert lv.readable


def test_aperio_svs_reads(cmu_svs):
    pytest.importorskip("imagecodecs")
    full = tifffile.imread(cmu_svs, key=0)
    hh, ww = full.shape[:2]
    with JpegTiffReader(cmu_svs) as r:
        # across the 240-px tile edges to the image's right edge (2220 = 9·240 + 60)
        x, y, w, h = 1680, 2400, ww - 1680, hh - 2400
        assert diff(r.read_region(0, x, y, w, h, 1), full[y:, x:]) == (0, 0.0)
        # measured over the whole level: max 19 / 9 / 4, mean 0.099 / 0.071 / 0.068 (s = 2 / 4 /
        # 8); the corner rectangle: max 13 / 5 / 3, mean ≤ 0.04
        bounds = {2: (24, 0.15), 4: (12, 0.12), 8: (6, 0.1)}
        for s in (2, 4, 8):
            for rect in [(x, y, w, h), (0, 0, ww, hh)]:
                mx, mean = diff(r.read_region(0, *rect, s), box(full, *rect, s))
                assert mx <= bounds[s][0] and mean <= bounds[s][1], (s, mx, mean)


def test_aperio_svs_matches_openslide(cmu_svs):
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(cmu_svs)) as osr:
        ref = np.asarray(osr.read_region((700, 900), 0, (500, 300)).convert("RGB"))
    with JpegTiffReader(cmu_svs) as r:
        got = r.read_region(0, 700, 900, 500, 300, 1)
    mx, mean = diff(got, ref)
    assert mx <= 2 and mean < 0.05, (mx, mean)


def test_idc_mosaic_is_420(shared):
    """The shared IDC mosaic 9035 (4 µm/px): YCbCr JPEG coded 4:2:0 (its colour is at 8 µm/px),
    as are all 28 shared mosaics (checked when this test was written)."""
    path = shared / "idc" / "slides" / "9035.tiff"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    lv = level_colour_facts(path)[0]
    assert (lv.colorspace, lv.subsampling, lv.tag_subsampling) == ("YCbCr", (2, 2), (2, 2))
    assert lv.mpp == pytest.approx(4.0) and lv.chroma_mpp == pytest.approx(8.0)
    pytest.importorskip("imagecodecs")
    full = tifffile.imread(path, key=0)
    hh, ww = full.shape[:2]
    # measured over the whole level: max 32 / 14 / 7, mean 0.34 / 0.21 / 0.12 (s = 2 / 4 / 8)
    bounds = {1: (0, 0.0), 2: (36, 0.45), 4: (17, 0.3), 8: (9, 0.2)}
    with JpegTiffReader(path) as r:
        for s, (bmax, bmean) in bounds.items():
            mx, mean = diff(r.read_region(0, 0, 0, ww, hh, s), box(full, 0, 0, ww, hh, s))
            assert mx <= bmax and mean <= bmean, (s, mx, mean)


# --------------------------------------------------------------------------- choose_level


def _lv(level: int, mpp: float, sub: tuple[int, int] | None, readable: bool = True, code=7):
    return LevelColour(
        level=level,
        width=1000 >> level,
        height=1000 >> level,
        downsample=2.0**level,
        mpp=mpp,
        mpp_y=mpp,
        tiled=True,
        tile_width=256,
        tile_height=256,
        compression="JPEG" if code == 7 else "OTHER",
        compression_code=code,
        photometric="YCBCR",
        tag_subsampling=None,
        jpeg=None,
        jpeg_tables=False,
        colorspace="YCbCr",
        subsampling=sub,
        readable=readable,
        reason="" if readable else "not JPEG",
    )


def test_choose_level_rules():
    s420 = (2, 2)
    pyr40x = [_lv(i, 0.25 * 4**i, s420) for i in range(4)]  # 0.25, 1, 4, 16 µm/px
    assert choose_level(pyr40x, 4.0) == (1, 4)  # the 4-µm level's chroma is 8 µm
    assert choose_level(pyr40x[:2], 4.0) == (1, 4)  # the 1x/4x-only pyramid
    assert choose_level([replace(lv, subsampling=(1, 1)) for lv in pyr40x], 4.0) == (2, 1)
    assert choose_level(pyr40x[:1], 4.0) == (0, 8)  # level 0 only: 0.25·8 = 2 ≤ 4 < 4
    aperio = [_lv(0, 0.499, (1, 1)), _lv(1, 1.996, (1, 1)), _lv(2, 7.984, (1, 1))]
    assert choose_level(aperio, 4.0) == (1, 2)  # 3.992 µm/px, then an area resize to 4
    # 1 % slack both ways
    assert choose_level([_lv(0, 1.0, s420), _lv(1, 2.015, s420)], 4.0) == (1, 2)
    assert choose_level([_lv(0, 1.0, s420), _lv(1, 2.1, s420)], 4.0) == (0, 4)
    # 4:2:2: the coarser axis counts
    assert choose_level([_lv(0, 1.0, (2, 1)), _lv(1, 4.0, (2, 1))], 4.0) == (0, 4)
    # a level not readable by io_jpeg (e.g. JPEG 2000): no scaled decode
    jp2k = [_lv(0, 0.25, (1, 1), False, 33005), _lv(1, 1.0, (1, 1), False, 33005)]
    assert choose_level(jp2k, 4.0) == (1, 1)
    # lossless level with unknown sampling counts as full colour; unknown JPEG is skipped
    assert choose_level([_lv(0, 1.0, s420), _lv(1, 4.0, None, False, 8)], 4.0) == (1, 1)
    assert choose_level([_lv(0, 1.0, s420), _lv(1, 4.0, None)], 4.0) == (0, 4)
    # nothing fine enough: the finest level, no scaling
    assert choose_level([_lv(0, 8.0, s420), _lv(1, 32.0, s420)], 4.0) == (0, 1)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            choose_level(pyr40x, bad)
    with pytest.raises(ValueError):
        choose_level([], 4.0)


def test_jp2k_siz_sampling():
    """JPEG 2000 levels (Aperio 33003/33005): the codestream's SIZ marker gives the sampling."""

    def siz(xr: list[int], yr: list[int]) -> bytes:
        head = struct.pack(">HHIIIIIIIIH", 38 + 3 * len(xr), 0, 256, 256, 0, 0, 256, 256, 0, 0, 3)
        comps = b"".join(bytes([7, x, y]) for x, y in zip(xr, yr, strict=True))
        return b"\xff\x4f\xff\x51" + head + comps + b"\xff\x52"

    assert jp2k_sampling(siz([1, 1, 1], [1, 1, 1])) == (1, 1)
    assert jp2k_sampling(siz([1, 2, 2], [1, 2, 2])) == (2, 2)
    assert jp2k_sampling(siz([1, 2, 2], [1, 1, 1])) == (2, 1)
    assert jp2k_sampling(b"\x00" * 50) is None


# --------------------------------------------------------------------------- the Slide's read rule


@pytest.mark.parametrize(
    ("subsampling", "downsamples", "want"),
    [
        (2, (1, 4), (0, 4, 4.0)),  # 4:2:0: the 4-µm level's colour is at 8 µm/px → 1 µm at 1/4
        (0, (1, 4), (1, 1, 4.0)),  # 4:4:4: the 4-µm level has full colour → read it as it is
        (2, (1,), (0, 4, 4.0)),  # only level 0 is fine enough
        (2, (1, 2), (1, 2, 4.0)),  # the 2-µm level: colour at 4 µm/px, read at 1/2
    ],
)
def test_slide_reads_the_level_with_full_colour(
    he: np.ndarray, tmp_path: Path, subsampling: int, downsamples: tuple[int, ...], want: tuple
) -> None:
    big = np.kron(he, np.ones((4, 4, 1), np.uint8))  # a 1-µm slide of the 4-µm image
    path = write_jpeg_tiff(
        tmp_path / "p.tif", big, subsampling=subsampling, downsamples=downsamples, mpp=1.0
    )
    with open_slide(path) as slide:
        rl = slide.read_level_for_mpp(4.0)
        assert (rl.level, rl.scale, rl.chroma_mpp) == want, rl.reason
        assert rl.downsample == slide.info.level_downsamples[rl.level] * rl.scale
        # the read is the level's full decode box-reduced by the scale (exact where scale = 1)
        x, y, w, h = 13, 7, 150, 90
        got = slide.read_scaled(rl, (x, y), (w, h))
        full = tifffile.imread(path, key=rl.level)
        s = rl.scale
        mx, mean = diff(got, box(full, x * s, y * s, w * s, h * s, s))
        # 4×4 blocks of per-pixel colour noise: sharper chroma edges than BOUNDS' image, so
        # the scaled IDCT's chroma departs more from the full decode's triangle upsampling
        bound = {1: (0, 0.0), 2: (64, 5.0), 4: (48, 2.5)}[s]
        assert mx <= bound[0] and mean <= bound[1], (mx, mean)


def test_scaled_read_has_finer_colour_than_the_420_level(he: np.ndarray, tmp_path: Path) -> None:
    """The point of the rule: on a 4:2:0 pyramid, 1/4 of the 1-µm level is closer in colour
    to the true 4-µm image than the 4-µm level is (whose colour is at 8 µm/px)."""
    big = np.kron(he, np.ones((4, 4, 1), np.uint8))
    path = write_jpeg_tiff(tmp_path / "p.tif", big, subsampling=2, downsamples=(1, 4), mpp=1.0)

    def chroma_error(rgb: np.ndarray) -> float:
        a = np.asarray(Image.fromarray(rgb).convert("YCbCr"), np.float64)[..., 1:]
        b = np.asarray(Image.fromarray(he).convert("YCbCr"), np.float64)[..., 1:]
        return float(np.abs(a - b).mean())

    with open_slide(path) as slide:
        rl = slide.read_level_for_mpp(4.0)
        scaled = slide.read_scaled(rl, (0, 0), (W, H))
        level = slide.read_region((0, 0), 1, (W, H))
    assert chroma_error(scaled) < 0.6 * chroma_error(level)


def test_slide_without_colour_facts_reads_the_nearest_finer_level(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    Image.fromarray(synthetic_he(64, 64, seed=1)).save(png, dpi=(25400 / 2.0, 25400 / 2.0))
    with open_slide(png) as slide:
        rl = slide.read_level_for_mpp(4.0)
        assert (rl.level, rl.scale, rl.chroma_mpp) == (0, 1, None)
        assert "unknown" in rl.reason


def test_aperio_svs_is_read_at_one_eighth(cmu_svs: Path) -> None:
    """0.499 µm/px RGB JPEG: 1/8 of level 0 is 3.99 µm/px with full colour."""
    with open_slide(cmu_svs) as slide:
        rl = slide.read_level_for_mpp(4.0)
        assert (rl.level, rl.scale) == (0, 8)
        assert rl.chroma_mpp == pytest.approx(0.499 * 8, rel=1e-3)
        got = slide.read_scaled(rl, (10, 20), (100, 120))
        ref = slide.read_region((80, 160), 0, (800, 960))
        mx, mean = diff(got, np.asarray(Image.fromarray(ref).reduce(8)))
        assert mx <= 12 and mean <= 1.0, (mx, mean)


def test_pipeline_records_the_scaled_read(he: np.ndarray, tmp_path: Path) -> None:
    from pipeline_helpers import colour_model

    from idcmap.pipeline.segment import segment_slide

    big = np.kron(he, np.ones((4, 4, 1), np.uint8))
    path = write_jpeg_tiff(tmp_path / "p.tif", big, subsampling=2, downsamples=(1, 4), mpp=1.0)
    res = segment_slide(path, model=colour_model(), progress=False)
    rec = res.summary.slide
    assert (rec["level_read"], rec["level_read_scale"], rec["colour_mpp"]) == (0, 4, 4.0)


def _one_um_420(he: np.ndarray, tmp_path: Path) -> Path:
    """``he`` as a 1-µm/px slide of one 4:2:0 level (the model's 4 µm/px is read at 1/4)."""
    big = np.kron(he, np.ones((4, 4, 1), np.uint8))
    return write_jpeg_tiff(tmp_path / "p.tif", big, subsampling=2, downsamples=(1,), mpp=1.0)


def _keep_only(grid: Any, *cells: tuple[int, int]) -> Any:
    """``grid`` with only ``cells`` (row, col; negative counts from the end) kept."""
    keep = np.zeros_like(grid.keep)
    for rc in cells:
        keep[rc] = True
    return replace(grid, keep=keep)


def test_need_skips_unwanted_tiles(kind_tiff: tuple[str, Path]) -> None:
    """Tiles under no wanted output px are not decoded (white); the others are as before."""
    _, path = kind_tiff
    asked: list[tuple[int, int, int, int]] = []

    def left_half(x0: int, y0: int, x1: int, y1: int) -> bool:
        asked.append((x0, y0, x1, y1))
        return x0 < 20

    with JpegTiffReader(path) as r:
        whole = r.read_region(0, 0, 0, W, H, 2)
        got = r.read_region(0, 0, 0, W, H, 2, need=left_half)
    # 64-px tiles at 1/2: 32 output px each; the rectangles tile the output exactly
    assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in asked) == whole.shape[0] * whole.shape[1]
    assert np.array_equal(got[:, :32], whole[:, :32])
    assert (got[:, 32:] == 255).all() and not (whole[:, 32:] == 255).all()


def test_kept_only_blocks_give_the_same_tiles(he: np.ndarray, tmp_path: Path) -> None:
    """``kept_only`` reads skip the JPEG tiles under no kept tile: the kept tiles' pixels and
    probabilities are bit for bit those of the full read, and fewer px are decoded."""
    from pipeline_helpers import colour_model

    from idcmap.pipeline.infer import predict_grid
    from idcmap.pipeline.tiles import make_grid, plan_blocks, read_block

    path = _one_um_420(he, tmp_path)
    model = colour_model()
    with open_slide(path) as slide:
        rl = slide.read_level_for_mpp(4.0)
        grid = make_grid(slide, None, model_mpp=4.0, patch_px=50, stride_px=50, min_tissue=0.0)
        grid = _keep_only(grid, (0, 0), (-1, -1))  # two corners: most of the block unneeded
        keep = grid.keep
        ((r0, r1, c0, c1),) = plan_blocks(grid, rl.downsample)
        full = read_block(slide, grid, rl, (r0, r1), (c0, c1))
        part = read_block(slide, grid, rl, (r0, r1), (c0, c1), kept_only=True)
        for r, c in zip(*np.nonzero(keep), strict=True):
            win = np.s_[r * 50 : r * 50 + 50, c * 50 : c * 50 + 50]
            assert np.array_equal(part.pixels[win], full.pixels[win])
        assert (part.pixels == 255).mean() > (full.pixels == 255).mean() + 0.3
        p_full, _ = predict_grid(slide, grid, model, progress=False, on_block=lambda b: None)
        p_part, _ = predict_grid(slide, grid, model, progress=False)
    np.testing.assert_array_equal(p_part, p_full)


def test_kept_only_blocks_under_the_ink_remover(he: np.ndarray, tmp_path: Path) -> None:
    """The QC stage's un-inking transform (per px) keeps the ``kept_only`` reads: the kept
    tiles' probabilities are bit for bit those of a whole read (a hook forces one)."""
    from pipeline_helpers import colour_model

    from idcmap.pipeline.correct import PixelCorrector
    from idcmap.pipeline.infer import predict_grid
    from idcmap.pipeline.tiles import make_grid

    path = _one_um_420(he, tmp_path)
    model = colour_model()
    with open_slide(path) as slide:
        grid = make_grid(slide, None, model_mpp=4.0, patch_px=50, stride_px=50, min_tissue=0.0)
        grid = _keep_only(grid, (0, 0), (-1, -1), (1, 1))
        # a field on a 16-µm thumbnail over the first tiles (and the glass beside them)
        th, tw = -(-4 * he.shape[0] // 16), -(-4 * he.shape[1] // 16)
        od = np.zeros((th, tw, 3), np.float32)
        od[: th // 2, : tw // 2] = (0.4, 0.1, 0.2)
        remover = PixelCorrector((16.0, 16.0), grid.level0_per_model_px, grid.stride_px, ink_od=od)
        p_full, _ = predict_grid(
            slide, grid, model, progress=False, transform=remover, on_block=lambda b: None
        )
        p_part, _ = predict_grid(slide, grid, model, progress=False, transform=remover)
        p_none, _ = predict_grid(slide, grid, model, progress=False)
    np.testing.assert_array_equal(p_part, p_full)
    assert not np.array_equal(p_part, p_none, equal_nan=True)  # the field did reach a tile


def test_kept_only_blocks_give_the_blur_its_sharpness(he: np.ndarray, tmp_path: Path) -> None:
    """The QC stage's blur hook reads the kept tiles and the tiles its cells need
    (:meth:`SharpnessGrid.tiles_needed`), not whole blocks: the sharpness of every cell that
    :func:`find_blur` looks at (the kept tiles' cells) is bit for bit a whole read's."""
    from pipeline_helpers import colour_model

    from idcmap.pipeline.infer import predict_grid
    from idcmap.pipeline.qcblur import SharpnessGrid
    from idcmap.pipeline.tiles import make_grid

    path = _one_um_420(he, tmp_path)
    model = colour_model()
    with open_slide(path) as slide:
        grid = make_grid(slide, None, model_mpp=4.0, patch_px=50, stride_px=25, min_tissue=0.0)
        grid = _keep_only(grid, (0, 0), (-1, -1), (3, 2))
        keep = grid.keep
        whole = SharpnessGrid(grid.shape, grid.stride_px, grid.patch_px)
        part = SharpnessGrid(grid.shape, grid.stride_px, grid.patch_px)
        need = part.tiles_needed(grid.keep)
        assert need.sum() < 0.8 * need.size  # most of the block is not read
        p_whole, _ = predict_grid(slide, grid, model, progress=False, on_block=whole.add)
        p_part, _ = predict_grid(
            slide, grid, model, progress=False, on_block=part.add, read_tiles=need
        )
    np.testing.assert_array_equal(p_part, p_whole)
    cells = np.zeros(whole.fine.shape, bool)  # the kept tiles' cells (2 × 2 each)
    for r, c in zip(*np.nonzero(keep), strict=True):
        cells[r : r + 2, c : c + 2] = True
    np.testing.assert_array_equal(part.ratio[cells], whole.ratio[cells])
    assert not np.array_equal(part.ratio, whole.ratio, equal_nan=True)  # the rest was not read


def test_sharpness_measured_by_the_readers_is_the_tile_pass_own(
    he: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readers that start before the QC stage measure each block's sharpness as they read
    it (:meth:`SharpnessGrid.measure_ahead`, on the tiles of the tissue before QC); the tile
    pass takes those figures for the blocks it gets unchanged, and measures again a block the
    QC stage corrects. Either way every cell is what the tile pass alone measures."""
    import threading

    from pipeline_helpers import colour_model

    import idcmap.pipeline.qcblur as qcblur
    from idcmap.pipeline.infer import predict_grid, start_reads
    from idcmap.pipeline.tiles import make_grid

    path = _one_um_420(he, tmp_path)
    model = colour_model()
    by_thread: list[str] = []
    measure = qcblur.block_sharpness

    def counted(*a: Any, **k: Any) -> Any:
        by_thread.append(threading.current_thread().name)
        return measure(*a, **k)

    monkeypatch.setattr(qcblur, "block_sharpness", counted)

    def darken(row0: int, col0: int, px: np.ndarray) -> np.ndarray:
        return (px // 2).astype(np.uint8)  # the QC stage's corrector, where it reaches

    with open_slide(path) as slide:
        full = make_grid(slide, None, model_mpp=4.0, patch_px=50, stride_px=25, min_tissue=0.0)
        before = _keep_only(full, (0, 0), (-1, -1), (3, 2), (2, 2))  # the tissue before QC
        after = _keep_only(full, (0, 0), (-1, -1), (3, 2))  # QC took a tile away
        for transform, measured_again in ((None, 0), (darken, 1)):
            alone = qcblur.SharpnessGrid(full.shape, full.stride_px, full.patch_px)
            ahead = qcblur.SharpnessGrid(full.shape, full.stride_px, full.patch_px)
            reader = start_reads(
                slide, before, 4.0, on_read=lambda b, g=ahead: g.measure_ahead(b, before.keep)
            )
            by_thread.clear()
            p_ahead, stats = predict_grid(
                slide,
                after,
                model,
                progress=False,
                on_block=ahead.add,
                read_tiles=ahead.tiles_needed(after.keep),
                transform=transform,
                reader=reader,
            )
            # each block was measured by a reader; the tile pass measures a corrected one again
            assert by_thread.count(threading.current_thread().name) == measured_again
            assert sum(n.startswith("idcmap-read") for n in by_thread) == stats.blocks
            p_alone, _ = predict_grid(
                slide,
                after,
                model,
                progress=False,
                on_block=alone.add,
                read_tiles=alone.tiles_needed(after.keep),
                transform=transform,
            )
            np.testing.assert_array_equal(p_ahead, p_alone)
            np.testing.assert_array_equal(ahead.ratio, alone.ratio)
            assert np.isfinite(ahead.ratio).any()


def test_a_failing_read_hook_is_not_a_read_error(he: np.ndarray, tmp_path: Path) -> None:
    """Work done ahead in the readers (``on_read``) that fails is left to its owner: the
    blocks still arrive, and the tile pass's sharpness is what it measures alone."""
    from pipeline_helpers import colour_model

    from idcmap.pipeline.infer import predict_grid, start_reads
    from idcmap.pipeline.qcblur import SharpnessGrid
    from idcmap.pipeline.tiles import make_grid

    def broken(block: Any) -> None:
        raise RuntimeError("a bug in work done ahead")

    path = _one_um_420(he, tmp_path)
    model = colour_model()
    with open_slide(path) as slide:
        grid = make_grid(slide, None, model_mpp=4.0, patch_px=50, stride_px=25, min_tissue=0.0)
        grid = _keep_only(grid, (0, 0), (-1, -1), (3, 2))
        hooked = SharpnessGrid(grid.shape, grid.stride_px, grid.patch_px)
        alone = SharpnessGrid(grid.shape, grid.stride_px, grid.patch_px)
        reader = start_reads(slide, grid, 4.0, on_read=broken)
        p_hooked, _ = predict_grid(
            slide, grid, model, progress=False, on_block=hooked.add,
            read_tiles=hooked.tiles_needed(grid.keep), reader=reader,
        )  # fmt: skip
        p_alone, _ = predict_grid(
            slide, grid, model, progress=False, on_block=alone.add,
            read_tiles=alone.tiles_needed(grid.keep),
        )  # fmt: skip
    np.testing.assert_array_equal(p_hooked, p_alone)
    np.testing.assert_array_equal(hooked.ratio, alone.ratio)


def test_the_readers_threads_go_to_torch_once_every_block_is_read(
    he: np.ndarray, tmp_path: Path
) -> None:
    """``torch_threads`` beside the readers while they read; once every block is read their
    threads go to torch (at most the cores), and torch's own setting is back afterwards."""
    import os
    import time

    import torch
    from pipeline_helpers import colour_model

    from idcmap.pipeline.infer import predict_grid, start_reads
    from idcmap.pipeline.tiles import make_grid

    path = _one_um_420(he, tmp_path)
    model = colour_model()
    before = torch.get_num_threads()
    seen: list[int] = []
    with open_slide(path) as slide:
        grid = make_grid(slide, None, model_mpp=4.0, patch_px=50, stride_px=25, min_tissue=0.0)
        reader = start_reads(slide, grid, 4.0, workers=2)
        while not reader.reads_done:  # the blocks read ahead, as while the QC stage runs
            time.sleep(0.01)
        predict_grid(
            slide, grid, model, progress=False, torch_threads=1, reader=reader,
            on_block=lambda b: seen.append(torch.get_num_threads()),
        )  # fmt: skip
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert seen and seen[-1] == min(1 + 2, cores or 1)
    assert torch.get_num_threads() == before
