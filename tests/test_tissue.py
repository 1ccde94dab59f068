"""Tissue stage on the 28 IDC mosaics (real) and on TIFFs written by tests/tiffgen.py, read by
the tile pass's rule (full-resolution colour)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiffgen import (
    GLASS_RGB,
    synthetic_he,
    write_image,
    write_jpeg_tiff,
    write_pyramid_tiff,
)

from idcmap.errors import UsageError
from idcmap.io.open import open_slide
from idcmap.pipeline.tissue import TissueMask, detect_tissue, tissue_mask_from_rgb


def _cell_fraction(mask: TissueMask, x: int, y: int, w: int, h: int) -> float:
    sx, sy = mask.px_level0
    c0, r0 = int(x / sx), int(y / sy)
    c1, r1 = max(c0 + 1, round((x + w) / sx)), max(r0 + 1, round((y + h) / sy))
    return float(mask.mask[r0:r1, c0:c1].mean())


def test_mosaics_keep_idc_and_drop_glass(shared: Path) -> None:
    """≥ 98 % of the IDC cells of every mosaic are ≥ 20 % tissue (the tile stage's default
    ``min_tissue``); the glass-coloured filler away from any cell is never tissue."""
    slides = sorted((shared / "idc" / "slides").glob("*.tiff"))
    assert len(slides) == 28
    worst = 1.0
    for path in slides:
        with open_slide(path) as s:
            tm = detect_tissue(s)
        assert tm.mpp == pytest.approx(16.0, rel=0.01)
        assert tm.thumbnail.shape[:2] == tm.mask.shape
        covered = np.zeros(tm.mask.shape, bool)
        idc = kept = 0
        with open(path.with_name(path.stem + ".cells.csv")) as f:
            for row in csv.DictReader(f):
                x, y, w, h, label = (int(row[k]) for k in ("x", "y", "width", "height", "label"))
                sx, sy = tm.px_level0
                covered[
                    int(y / sy) : round((y + h) / sy) + 1, int(x / sx) : round((x + w) / sx) + 1
                ] = True
                if label == 1:
                    idc += 1
                    kept += _cell_fraction(tm, x, y, w, h) >= 0.2
        worst = min(worst, kept / idc)
        assert kept / idc >= 0.98, (path.name, kept, idc)
        from scipy import ndimage

        glass = ndimage.binary_erosion(~covered, iterations=2)
        assert tm.mask[glass].mean() < 0.01, path.name
    print(f"worst mosaic: {worst:.4f} of IDC cells in tissue")


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tissue")


def test_blank_slides_have_no_tissue(d: Path) -> None:
    rng = np.random.default_rng(1)
    glass = np.empty((800, 1000, 3), np.uint8)
    glass[:] = GLASS_RGB
    noisy = np.clip(glass + rng.normal(0, 3, glass.shape), 0, 255).astype(np.uint8)
    white = np.full((600, 700, 3), 255, np.uint8)
    black_pad = white.copy()
    black_pad[:, :200] = 0  # scanner padding: not tissue
    for name, img in (("glass", glass), ("noisy", noisy), ("white", white), ("pad", black_pad)):
        with open_slide(write_pyramid_tiff(d / f"{name}.tiff", img, 2.0)) as s:
            tm = detect_tissue(s)
        assert not tm.mask.any(), name
        assert tm.area_um2 == 0.0


def test_all_tissue_is_full(d: Path) -> None:
    full = synthetic_he(800, 1000, seed=5, tissue=1.0)
    with open_slide(write_pyramid_tiff(d / "full.tiff", full, 2.0)) as s:
        tm = detect_tissue(s)
    assert tm.mask.all()
    assert tm.area_um2 == pytest.approx(1000 * 800 * 2.0 * 2.0, rel=0.02)
    pink = np.empty((300, 300, 3), np.uint8)
    pink[:] = (230, 150, 190)  # flat: Otsu on a constant image must not break
    assert tissue_mask_from_rgb(pink, 16.0).all()


def test_half_tissue_matches_truth(d: Path) -> None:
    img = synthetic_he(1200, 1600, seed=7, tissue=0.4)
    truth = np.any(img != GLASS_RGB, axis=2)
    with open_slide(write_pyramid_tiff(d / "half.tiff", img, 4.0)) as s:
        tm = detect_tissue(s)
    sx, sy = tm.px_level0
    assert tm.origin_level0_px == (0.0, 0.0)
    assert (sx * 4.0, sy * 4.0) == (pytest.approx(16.0, rel=0.02), pytest.approx(16.0, rel=0.02))
    rows, cols = tm.mask.shape
    t = truth[(np.arange(rows) * sy + sy / 2).astype(int)][
        :, (np.arange(cols) * sx + sx / 2).astype(int)
    ]
    iou = (t & tm.mask).sum() / (t | tm.mask).sum()
    assert iou > 0.9
    assert tm.area_um2 == pytest.approx(truth.sum() * 16.0, rel=0.1)


def test_small_objects_and_holes() -> None:
    rgb = np.empty((200, 200, 3), np.uint8)
    rgb[:] = GLASS_RGB
    rgb[20:120, 20:120] = (200, 100, 170)  # 100×100 px at 16 µm = 2.56 mm²
    rgb[60:63, 60:63] = GLASS_RGB  # a 9-px hole (2,304 µm²): filled
    rgb[150:152, 150:152] = (200, 100, 170)  # 4 px (1,024 µm²): dropped
    m = tissue_mask_from_rgb(rgb, 16.0)
    assert m[20:120, 20:120].all() and not m[150:152, 150:152].any()
    assert m.sum() == 100 * 100
    keep_small = tissue_mask_from_rgb(rgb, 16.0, min_object_um2=0)
    assert keep_small[150:152, 150:152].all()


def test_tiny_and_plain_images(d: Path) -> None:
    tiny = synthetic_he(30, 40, seed=2, tissue=1.0)
    with open_slide(write_image(d / "tiny.png", tiny), mpp=4.0) as s:
        tm = detect_tissue(s)
    assert tm.mask.shape == (8, 10)
    assert tm.mask.mean() > 0.9
    with open_slide(write_image(d / "dot.png", tiny[:3, :3].copy()), mpp=0.5) as s:
        assert detect_tissue(s).mask.shape == (1, 1)


def test_bad_parameters(d: Path) -> None:
    img = synthetic_he(100, 100)
    with open_slide(write_image(d / "p.png", img), mpp=4.0) as s:
        for kw in ({"target_mpp": 0.0}, {"min_object_um2": -1.0}, {"min_hole_um2": float("nan")}):
            with pytest.raises(UsageError):
                detect_tissue(s, **kw)


def test_tissue_on_a_420_pyramid_has_the_colour_of_the_full_read(d: Path) -> None:
    """A 40x-style pyramid (YCbCr 4:2:0 tiles at 1, 4, 16 µm/px): the tissue pass reads by the
    tile pass's rule, the 4-µm level at 1/4 (colour at 16 µm/px), not the 16-µm level (colour at
    32 µm/px). Its mask is the one drawn from the image itself, where the nearest level's
    misses tissue edges. Measured (seeds 1, 2, 5): 11-21 mask px of 16,384 differ from the
    image's mask, against 330-444 for the 16-µm level."""
    he = synthetic_he(512, 512, seed=2, tissue=0.5)  # the truth, at 4 µm/px
    big = np.kron(he, np.ones((4, 4, 1), np.uint8))
    path = write_jpeg_tiff(
        d / "p420.tiff", big, subsampling=2, downsamples=(1, 4, 16), mpp=1.0, tile=256
    )
    truth = tissue_mask_from_rgb(np.asarray(Image.fromarray(he).reduce(4)), 16.0)
    with open_slide(path) as s:
        rl = s.read_level_for_mpp(16.0)
        assert (rl.level, rl.scale, rl.chroma_mpp) == (1, 4, 16.0), rl.reason
        tm = detect_tissue(s)
        nearest = tissue_mask_from_rgb(s.read_region((0, 0), 2, s.info.level_dimensions[2]), 16.0)
    assert tm.mask.shape == truth.shape == nearest.shape
    new_off, old_off = int((tm.mask != truth).sum()), int((nearest != truth).sum())
    assert new_off < 0.01 * truth.size and new_off < old_off / 5, (new_off, old_off)


@pytest.mark.parametrize(
    ("kind", "one_pass"),
    [
        ("420 pyramid", False),  # tissue: the 4-µm level at 1/4; tiles: the 1-µm level at 1/4
        ("4-µm level only", False),  # tissue: level 0 at 1/4; tiles: level 0 as it is
        ("1-µm level only", False),  # tissue: level 0 at 1/8; tiles: level 0 at 1/4
        ("0.5-µm level only", True),  # both: level 0 at 1/8 (then 2:1 and 4:1 averages)
        ("png", True),  # no scaled decode: both read the only level whole
    ],
)
def test_one_pass_only_when_the_tissue_read_is_the_tile_read(
    d: Path, kind: str, one_pass: bool
) -> None:
    """The tissue mask comes from the tile pass's blocks only when a read of its own would
    decode the same level at the same scale; a cheaper read (a coarser level, or a smaller
    scaled decode) spares the model every glass tile."""
    from idcmap.pipeline.front import tissue_from_tile_pass

    he = synthetic_he(128, 160, seed=3)
    if kind == "png":
        path, mpp = write_image(d / "one.png", he), 4.0
    else:
        up, downsamples = {
            "420 pyramid": (4, (1, 4, 16)),
            "4-µm level only": (1, (1,)),
            "1-µm level only": (4, (1,)),
            "0.5-µm level only": (8, (1,)),
        }[kind]
        img = np.kron(he, np.ones((up, up, 1), np.uint8))
        path = write_jpeg_tiff(
            d / f"{kind}.tiff", img, subsampling=2, downsamples=downsamples, mpp=4.0 / up
        )
        mpp = None
    with open_slide(path, mpp=mpp) as s:
        assert tissue_from_tile_pass(s, 16.0, 4.0) is one_pass
