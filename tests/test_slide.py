"""Slide stage on real files (../shared/data) and on TIFFs written by tests/tiffgen.py."""

from __future__ import annotations

import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from tiffgen import (
    downsample_image,
    drop_tag,
    synthetic_he,
    write_image,
    write_ome_tiff,
    write_pyramid_tiff,
    write_striped_tiff,
    write_svs_like,
)

from idcmap.errors import (
    MppMismatchWarning,
    ResolutionError,
    SlideError,
    UnsupportedImageError,
    UsageError,
)
from idcmap.io.mpp import mpp_from_tags
from idcmap.io.open import open_slide, slide_info
from idcmap.io.slide import Slide, SlideInfo

warnings.filterwarnings("ignore", module="tiffslide")


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return synthetic_he(600, 900, seed=3)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory, he: np.ndarray) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    rng = np.random.default_rng(0)
    return {
        "cm": write_pyramid_tiff(d / "cm.tiff", he, 0.5),
        "inch": write_pyramid_tiff(d / "inch.tiff", he, 0.25, resolution_unit="inch"),
        "nounit": write_pyramid_tiff(d / "nounit.tiff", he, 0.5, resolution_unit=None),
        "dpi72": write_pyramid_tiff(d / "dpi72.tiff", he, None, dpi=72),
        "dpi96": write_striped_tiff(d / "dpi96.tiff", he, 25400 / 96, resolution_unit="inch"),
        "nonint": write_pyramid_tiff(d / "nonint.tiff", he, 0.25, downsamples=(1, 3.3, 10.7)),
        # 0.25 µm/px, levels at 0.25 and 2 µm/px: nothing near 4 µm/px
        "no4": write_pyramid_tiff(d / "no4.tiff", he, 0.25, downsamples=(1, 8)),
        "one": write_pyramid_tiff(d / "one.tiff", he, 0.5, downsamples=(1,)),
        "subifd": write_pyramid_tiff(d / "subifd.tiff", he, 0.5, subifds=True),
        "zlib": write_pyramid_tiff(d / "zlib.tiff", he, 0.5, compression="zlib"),
        "svs": write_svs_like(d / "like.svs", he, mpp=0.499, downsamples=(1, 4)),
        "ome": write_ome_tiff(d / "rgb.ome.tiff", he, 0.5),
        "ome_fl": write_ome_tiff(
            d / "fl.ome.tiff", (rng.random((5, 300, 400)) * 4000).astype(np.uint16), 0.65
        ),
        "striped": write_striped_tiff(d / "striped.tiff", he, 0.5),
        "u16": write_pyramid_tiff(
            d / "u16.tiff", he.astype(np.uint16) * 257, 0.5, compression="zlib"
        ),
        "gray": write_pyramid_tiff(d / "gray.tiff", he[..., 1], 0.5),
        "png": write_image(d / "plain.png", he),
        "jpg": write_image(d / "plain.jpg", he, quality=95),
        "png16": _png16(d / "gray16.png", he),
        "tiny": write_pyramid_tiff(
            d / "tiny.tiff", he[:37, :23].copy(), 0.5, downsamples=(1,), tile=16
        ),
    }


def _png16(path: Path, he: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(he[..., 0].astype(np.uint16) * 257).save(path)
    return path


# ----------------------------------------------------------------- real files


def test_cmu_small_region(shared: Path) -> None:
    with open_slide(shared / "wsi" / "CMU-1-Small-Region.svs") as s:
        i = s.info
        assert (i.backend, i.vendor) == ("openslide", "aperio")
        assert i.level_dimensions == ((2220, 2967),)
        assert i.mpp == pytest.approx(0.499) and i.mpp_y == pytest.approx(0.499)
        assert i.mpp_source == "openslide.mpp-x"
        assert i.objective_power == 20
        assert i.bounds_level0_px == (0, 0, 2220, 2967)
        px = s.read_region((1000, 1000), 0, (64, 32))
        assert px.shape == (32, 64, 3) and px.dtype == np.uint8
        thumb, (sx, _) = s.read_at_mpp(16.0)
        assert thumb.shape == (round(2967 * 0.499 / 16), round(2220 * 0.499 / 16), 3)
        assert sx * i.mpp == pytest.approx(16.0, rel=0.02)
        d = i.to_dict()
        assert d["level_dimensions"] == [[2220, 2967]] and d["mpp"] == pytest.approx(0.499)


def test_small_svs(shared: Path) -> None:
    s = open_slide(shared / "wsi" / "small.svs")
    assert s.info.level_dimensions == ((16, 16),)
    assert s.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)
    s.close()


@pytest.mark.parametrize("name", ["boxes.tiff", "small_HE_levels.tiff"])
def test_72dpi_tags_need_mpp(shared: Path, name: str) -> None:
    with pytest.raises(ResolutionError, match="mpp="):
        open_slide(shared / "wsi" / name)
    with open_slide(shared / "wsi" / name, mpp=0.5) as s:
        assert (s.info.mpp, s.info.mpp_source) == (0.5, "user")
        assert s.info.level_count == 4
        # non-integer downsamples (2, 4.016, 8.086)
        assert s.info.level_downsamples[2] == pytest.approx(4.016, abs=1e-3)
        assert s.best_level_for_mpp(2.0) == 2  # 2.008 µm/px: within the 1 % tolerance
        assert s.best_level_for_mpp(1.9) == 1  # 1.0 µm/px
        assert s.read_region((0, 0), 3, (37, 31)).shape == (31, 37, 3)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("broken.svs", "not a slide"),
        ("unopenable.tiff", "cannot be decoded"),
        ("unreadable.svs", "cannot be decoded"),
    ],
)
def test_negative_files(shared: Path, name: str, match: str) -> None:
    path = shared / "wsi" / "negative" / name
    for kw in ({}, {"mpp": 0.5}, {"allow_non_rgb": True}):
        with pytest.raises(SlideError, match=match) as ei:
            open_slide(path, **kw)
        msg = str(ei.value)
        assert "\n" not in msg and name in msg
    for backend in ("openslide", "tiffslide", "image"):
        with pytest.raises(SlideError, match="backend="):
            open_slide(path, backend=backend, mpp=0.5)


def test_truncated_and_empty(shared: Path, tmp_path: Path) -> None:
    data = (shared / "wsi" / "CMU-1-Small-Region.svs").read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideError) as ei, open_slide(cut) as s:
        s.read_at_mpp(1.0)  # either the open or the read of the lost tiles fails
    assert "\n" not in str(ei.value)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideError, match="empty"):
        open_slide(empty)


@pytest.mark.parametrize("keep", [600, 0.8])
def test_truncated_tiff_is_refused_before_any_read(
    gen: dict[str, Path], tmp_path: Path, keep: float
) -> None:
    """A copy cut short keeps its header: cut inside its directory (its tile tables lost) or
    after it (tiles lost), it is refused when opened, on one line, whatever the backend. Before,
    tiffslide read the lost tiles as blank, and such a slide came out as "no tissue"."""
    data = gen["cm"].read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: int(keep if keep > 1 else len(data) * keep)])
    for backend in ("auto", "tiffslide", "openslide"):
        with pytest.raises(SlideError, match="damaged or truncated TIFF") as ei:
            open_slide(cut, backend=backend)
        assert "\n" not in str(ei.value) and "cut.tiff" in str(ei.value)
        assert "pixel data" in ei.value.detail  # what is missing, for --debug
    with open_slide(gen["cm"]) as s:  # the whole file still opens
        assert s.info.level_count >= 1


def test_missing_dir_and_bad_options(tmp_path: Path, gen: dict[str, Path]) -> None:
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideError, match="folder without slides"):
        open_slide(tmp_path)
    with pytest.raises(UsageError, match="backend"):
        open_slide(gen["cm"], backend="bioformats")
    for bad in (0, -1, 0.001, 1000, float("nan")):
        with pytest.raises(UsageError, match="mpp="):
            open_slide(gen["cm"], mpp=bad)


def test_mosaic(shared: Path) -> None:
    path = sorted((shared / "idc" / "slides").glob("*.tiff"))[0]
    with open_slide(path) as s:
        i = s.info
        assert (i.backend, i.vendor, i.mpp, i.level_count) == ("openslide", "generic-tiff", 4.0, 3)
        assert s.best_level_for_mpp(4.0) == 0
        assert s.best_level_for_mpp(16.0) == 1  # downsample 3.998 → 15.99 µm/px
        assert s.best_level_for_mpp(1.0) == 0


# ----------------------------------------------------------------- generated files


def test_resolution_units(gen: dict[str, Path]) -> None:
    assert slide_info(gen["cm"]).mpp == pytest.approx(0.5)
    inch = slide_info(gen["inch"])
    assert inch.mpp == pytest.approx(0.25) and inch.mpp_y == pytest.approx(0.25)
    for key in ("nounit", "dpi72", "dpi96"):
        with pytest.raises(ResolutionError, match="mpp="):
            slide_info(gen[key])
    assert slide_info(gen["dpi72"], mpp=0.3).mpp == 0.3
    # tiffslide computes a striped TIFF's µm/px from its tags itself (cm and inch alike), so
    # this is tiffslide's rule, not idcmap's (see test_idcmaps_own_resolution_rule)
    info = slide_info(gen["striped"], backend="tiffslide")
    assert (info.mpp, info.mpp_source) == (pytest.approx(0.5), "tiffslide.mpp-x")


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_anisotropic_pixels_keep_their_y_resolution(
    tmp_path: Path, he: np.ndarray, backend: str
) -> None:
    """x and y µm/px differ (0.5 and 0.6): the y one comes from the y tag, not from x."""
    import tifffile

    path = tmp_path / "aniso.tiff"
    tifffile.imwrite(
        path,
        he,
        photometric="rgb",
        tile=(256, 256),
        compression="zlib",
        metadata=None,
        resolution=(1e4 / 0.5, 1e4 / 0.6),
        resolutionunit="CENTIMETER",
    )
    info = slide_info(path, backend=backend)
    assert info.mpp_source == f"{backend}.mpp-x"
    assert (info.mpp, info.mpp_y) == (pytest.approx(0.5), pytest.approx(0.6))


def test_transparent_pixels_read_as_white(tmp_path: Path, he: np.ndarray) -> None:
    """An RGBA slide: fully transparent pixels are white (as QuPath paints them over a white
    background), opaque ones keep their colour, half-transparent ones are blended with white."""
    rgba = np.dstack([he, np.full(he.shape[:2], 255, np.uint8)])
    rgba[:, :300, 3] = 0
    rgba[:, 300:400, 3] = 128
    path = write_pyramid_tiff(tmp_path / "rgba.tiff", rgba, 0.5, compression="zlib")
    with open_slide(path, backend="tiffslide") as s:
        out = s.read_region((0, 0), 0, (900, 600)).astype(int)
    assert (out[:, :300] == 255).all()
    np.testing.assert_array_equal(out[:, 400:], he[:, 400:])
    half = (he[:, 300:400].astype(int) * 128 + 255 * 127 + 127) // 255
    np.testing.assert_array_equal(out[:, 300:400], half)


def test_idcmaps_own_resolution_rule(tmp_path: Path, he: np.ndarray) -> None:
    """Where no backend reads the resolution tags, idcmap's own rule decides (source
    "tiff-resolution"): a TIFF without ResolutionUnit (the TIFF default is inch; tiffslide then
    gives no µm/px), and any TIFF read with backend="image" (PIL). Both units, both ways."""
    import tifffile

    for unit, mpp in (("cm", 0.5), ("inch", 0.25)):
        path = write_striped_tiff(tmp_path / f"{unit}.tiff", he, mpp, resolution_unit=unit)
        with tifffile.TiffFile(path) as tif:
            assert mpp_from_tags(tif.pages.first) == ((pytest.approx(mpp),) * 2, None)
        info = slide_info(path, backend="image")
        assert (info.mpp, info.mpp_source) == (pytest.approx(mpp), "tiff-resolution")
    # no ResolutionUnit tag: the TIFF default, inch (50,800 px per inch = 0.5 µm/px)
    nounit = drop_tag(write_striped_tiff(tmp_path / "nounit.tiff", he, 0.5, "inch"), 296)
    with tifffile.TiffFile(nounit) as tif:
        assert "ResolutionUnit" not in tif.pages.first.tags
    info = slide_info(nounit)
    assert (info.backend, info.mpp_source) == ("tiffslide", "tiff-resolution")
    assert (info.mpp, info.mpp_y) == (pytest.approx(0.5), pytest.approx(0.5))


def test_levels_and_best_level(gen: dict[str, Path]) -> None:
    with open_slide(gen["no4"]) as s:
        assert [s.level_mpp(i) for i in range(2)] == pytest.approx([0.25, 2.0], rel=0.01)
        assert s.best_level_for_mpp(4.0) == 1  # nearest finer level
        assert s.best_level_for_mpp(0.1) == 0  # all coarser → 0
        rgb, _ = s.read_at_mpp(4.0)
        assert rgb.shape == (round(600 * 0.25 / 4), round(900 * 0.25 / 4), 3)
    with open_slide(gen["nonint"]) as s:
        assert s.info.level_downsamples[1] == pytest.approx(3.3, abs=0.01)
        assert s.best_level_for_mpp(1.0) == 1
        assert s.best_level_for_mpp(0.8) == 0
        rgb, _ = s.read_at_mpp(2.0)
        assert rgb.shape == (75, 112, 3)


def test_formats(gen: dict[str, Path], he: np.ndarray) -> None:
    cases = {
        "cm": ("openslide", 3),
        "subifd": ("tiffslide", 3),  # OpenSlide ignores SubIFDs: tiffslide sees the levels
        "svs": ("openslide", 2),
        "ome": ("tiffslide", 2),
        "striped": ("tiffslide", 1),
        "one": ("openslide", 1),
        "zlib": ("openslide", 3),
    }
    for key, (backend, levels) in cases.items():
        with open_slide(gen[key]) as s:
            assert (s.info.backend, s.info.level_count) == (backend, levels), key
            px = s.read_region((100, 50), 0, (40, 30)).astype(int)
            tol = 0 if key in ("striped", "zlib", "ome") else 12  # JPEG of a noisy image
            assert np.abs(px - he[50:80, 100:140]).mean() <= tol, key
    assert slide_info(gen["svs"]).vendor == "aperio"
    assert slide_info(gen["ome"]).vendor == "ome"


def test_mpp_contradicting_the_metadata_warns(gen: dict[str, Path]) -> None:
    """The cm slide says 0.5 µm/px: more than 25 % away warns, naming both values."""
    with pytest.warns(MppMismatchWarning, match=r"mpp=5 contradicts .* 0\.5 µm/px") as w:
        assert slide_info(gen["cm"], mpp=5.0).mpp == 5.0
    assert len(w) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for ok in (0.4, 0.6):  # within 25 %: no warning
            slide_info(gen["cm"], mpp=ok)
        slide_info(gen["nounit"], mpp=5.0)  # nothing to contradict


def test_plain_images(gen: dict[str, Path], he: np.ndarray) -> None:
    with pytest.raises(ResolutionError, match="mpp="):
        open_slide(gen["png"])
    for key in ("png", "jpg"):
        with open_slide(gen[key], mpp=4.0) as s:
            assert s.info.backend == "image" and s.info.level_dimensions == ((900, 600),)
            px = s.read_region((10, 20), 0, (5, 5)).astype(int)
            assert np.abs(px - he[20:25, 10:15]).mean() <= (0 if key == "png" else 12)
            r = s.reopen()
            a, b = r.read_region((0, 0), 0, (9, 9)), s.read_region((0, 0), 0, (9, 9))
            assert np.array_equal(a, b)


def test_non_rgb(gen: dict[str, Path]) -> None:
    for key in ("u16", "gray", "ome_fl", "png16"):
        kw = {"mpp": 0.5} if key == "png16" else {}
        with pytest.raises(UnsupportedImageError, match="allow_non_rgb=True"):
            open_slide(gen[key], **kw)
        with open_slide(gen[key], allow_non_rgb=True, **kw) as s:
            assert s.info.converted_from
            px = s.read_region((0, 0), 0, (50, 40))
            assert px.shape == (40, 50, 3) and px.dtype == np.uint8
            rgb, _ = s.read_at_mpp(4.0)
            assert rgb.dtype == np.uint8 and rgb.max() > rgb.min()
    with pytest.raises(UnsupportedImageError):
        open_slide(gen["u16"], backend="openslide", allow_non_rgb=True)


def test_read_region_edges(gen: dict[str, Path], he: np.ndarray) -> None:
    with open_slide(gen["cm"]) as s:
        out = s.read_region((-10, -5), 0, (20, 10))
        assert (out[:5] == 255).all() and (out[:, :10] == 255).all()
        assert np.abs(out[5:, 10:].astype(int) - he[:5, :10]).mean() < 8
        assert (s.read_region((5000, 5000), 0, (8, 8)) == 255).all()
        far = s.read_region((890, 590), 0, (20, 20))
        assert (far[10:] == 255).all() and (far[:, 10:] == 255).all()
        assert s.read_region((0, 0), 2, (0, 5)).shape == (5, 0, 3)
        with pytest.raises(UsageError, match="level"):
            s.read_region((0, 0), 3, (4, 4))


def test_read_region_at_a_reduced_level_floors_the_location(
    gen: dict[str, Path], he: np.ndarray
) -> None:
    """A level-0 location maps to level px by flooring: pixel-exact with tiffslide on a lossless
    pyramid, for locations that are not multiples of the downsample (OpenSlide renders those
    with a sub-pixel shift; idcmap's own reads always start on level pixels)."""
    level1 = downsample_image(he, 4)
    with open_slide(gen["zlib"], backend="tiffslide") as s:
        assert s.info.level_downsamples[1] == 4.0
        m = 32  # white margin: reads may start before the image or run past its end
        padded = np.pad(level1, ((m, m), (m, m), (0, 0)), constant_values=255)
        for x0, y0 in ((0, 0), (3, 2), (6, 7), (13, 17), (398, 201), (-2, -6), (894, 590)):
            out = s.read_region((x0, y0), 1, (20, 10))
            ly, lx = y0 // 4 + m, x0 // 4 + m
            np.testing.assert_array_equal(out, padded[ly : ly + 10, lx : lx + 20], str((x0, y0)))


def test_tiny_slide(gen: dict[str, Path]) -> None:
    with open_slide(gen["tiny"]) as s:
        assert s.info.level_dimensions == ((23, 37),)
        assert s.read_region((0, 0), 0, (50, 50))[37:].min() == 255
        rgb, _ = s.read_at_mpp(16.0)
        assert rgb.shape == (1, 1, 3)


def test_openslide_and_tiffslide_agree(gen: dict[str, Path], shared: Path) -> None:
    paths = [gen["cm"], gen["nonint"], sorted((shared / "idc" / "slides").glob("*.tiff"))[0]]
    for path in paths:
        a, b = open_slide(path, backend="openslide"), open_slide(path, backend="tiffslide")
        assert (a.info.backend, b.info.backend) == ("openslide", "tiffslide")
        assert a.info.mpp == pytest.approx(b.info.mpp)
        for loc, size in (((0, 0), (256, 256)), ((300, 200), (333, 177))):
            pa = a.read_region(loc, 0, size).astype(int)
            pb = b.read_region(loc, 0, size).astype(int)
            assert np.abs(pa - pb).mean() <= 3, path
        a.close()
        b.close()


def test_reopen_threads(shared: Path) -> None:
    slide = open_slide(shared / "wsi" / "CMU-1-Small-Region.svs")
    expected = slide.read_region((512, 512), 0, (256, 256))
    results: list[bool] = []

    def work() -> None:
        with slide.reopen() as mine:
            for _ in range(5):
                results.append(
                    np.array_equal(mine.read_region((512, 512), 0, (256, 256)), expected)
                )

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 20
    slide.close()
    with pytest.raises(SlideError, match="closed"):
        slide.read_region((0, 0), 0, (4, 4))


def test_failed_handle_sticks(tmp_path: Path, shared: Path) -> None:
    """A read error marks the handle failed; later reads fail fast with the same message."""
    src = shared / "wsi" / "CMU-1-Small-Region.svs"
    dst = tmp_path / "late_damage.svs"
    shutil.copy(src, dst)
    s = open_slide(dst)  # probe reads fine: the centre tile
    import tifffile

    with tifffile.TiffFile(src) as tif:
        page = tif.pages.first
        off, n = page.dataoffsets[0], page.databytecounts[0]
    with open(dst, "r+b") as f:  # damage the first tile after opening
        f.seek(off + 2)
        f.write(b"\xff\x00" * (n // 4))
    s2 = open_slide(dst)
    with pytest.raises(SlideError, match="cannot read pixels") as e1:
        s2.read_region((0, 0), 0, (64, 64))
    with pytest.raises(SlideError) as e2:
        s2.read_region((1024, 1024), 0, (16, 16))
    assert str(e1.value) == str(e2.value)
    s.close()
    s2.close()


def test_slideinfo_fields() -> None:
    names = [f for f in SlideInfo.__dataclass_fields__]
    assert names[:10] == [
        "path",
        "backend",
        "vendor",
        "level_dimensions",
        "level_downsamples",
        "mpp",
        "mpp_y",
        "mpp_source",
        "bounds_level0_px",
        "objective_power",
    ]
    assert hasattr(Slide, "reopen")


def test_bounds_region(gen: dict[str, Path], he: np.ndarray) -> None:
    """With OpenSlide bounds, read_at_mpp covers only the bounds rectangle (QuPath's image)."""
    from dataclasses import replace

    from idcmap.io.slide import to_qupath_px
    from idcmap.pipeline.tissue import detect_tissue

    with open_slide(gen["cm"]) as s:
        s.info = replace(s.info, bounds_level0_px=(100, 60, 640, 320))
        rgb, (sx, sy) = s.read_at_mpp(2.0)  # 0.5 µm/px → 4 level-0 px per output px
        assert rgb.shape == (80, 160, 3) and (sx, sy) == (4.0, 4.0)
        ref = he[60:380, 100:740].reshape(80, 4, 160, 4, 3).mean(axis=(1, 3))
        assert np.abs(rgb.astype(float) - ref).mean() < 6
        assert to_qupath_px(s.info, 100, 60) == (0, 0)
        tm = detect_tissue(s, target_mpp=8.0)
        assert tm.origin_level0_px == (0.0, 0.0) and tm.mask.shape == (20, 40)


def test_read_at_mpp_non_square_pixels(tmp_path: Path) -> None:
    """1 × 2 µm pixels read at 4 µm/px: each output px is the mean of a 4 (x) × 2 (y) block of
    level-0 px. The integer pre-reduction must use the smaller of the two factors (2): the
    larger (4) would average 4 rows, then stretch them back over 2 output rows."""
    img = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    path = write_pyramid_tiff(
        tmp_path / "ns.tiff", img, 1.0, downsamples=(1,), compression="zlib", mpp_y=2.0
    )
    with open_slide(path) as s:
        assert (s.info.mpp, s.info.mpp_y) == (pytest.approx(1.0), pytest.approx(2.0))
        rgb, (sx, sy) = s.read_at_mpp(4.0)
    assert rgb.shape == (120, 80, 3) and (sx, sy) == (4.0, 2.0)
    ref = img.reshape(120, 2, 80, 4, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(rgb - ref).max() <= 1.0  # two roundings to uint8
