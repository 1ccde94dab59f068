"""idcmap.train.degrade on real patches: each degradation does what its name says, and only it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from shared_data import SHARED

from idcmap.train import degrade as dg
from idcmap.train.data import list_patches, load_patches

FIXTURES = Path(__file__).parent / "fixtures" / "patches"
REFS = SHARED / "stain-refs"


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return load_patches(list_patches(FIXTURES))


@pytest.fixture(scope="module")
def tile(patches: np.ndarray) -> np.ndarray:
    """A 250x250 image made of 25 real patches (JPEG needs more than one 16-px block)."""
    rows = [np.concatenate(list(patches[i * 5 : i * 5 + 5]), axis=1) for i in range(5)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def _ycbcr(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).convert("YCbCr"), dtype=np.float64)


def _detail(ch: np.ndarray) -> float:
    """Energy of the fine detail of one channel (what a 2x2 chroma average removes)."""
    return float(np.mean((ch - gaussian_filter(ch, 1.0)) ** 2))


def test_420_blurs_chroma_not_luma(tile: np.ndarray) -> None:
    ref = _ycbcr(tile)
    full = _ycbcr(dg.jpeg(tile, 95, "4:4:4"))
    half = _ycbcr(dg.jpeg(tile, 95, "4:2:0"))
    # luma: both encodes are close to the original, and equally so
    err_full = np.abs(full[..., 0] - ref[..., 0]).mean()
    err_half = np.abs(half[..., 0] - ref[..., 0]).mean()
    assert err_full < 2 and err_half < 2 and abs(err_half - err_full) < 0.5
    # chroma: 4:2:0 removes most of its fine detail, 4:4:4 keeps it
    for c in (1, 2):
        d0, d_full, d_half = _detail(ref[..., c]), _detail(full[..., c]), _detail(half[..., c])
        assert d_full > 0.7 * d0
        assert d_half < 0.5 * d0
        assert (
            np.abs(half[..., c] - ref[..., c]).mean()
            > 1.3 * np.abs(full[..., c] - ref[..., c]).mean()
        )


def test_422_is_between(tile: np.ndarray) -> None:
    ref = _ycbcr(tile)[..., 1]
    errs = [
        np.abs(_ycbcr(dg.jpeg(tile, 95, s))[..., 1] - ref).mean()
        for s in ("4:4:4", "4:2:2", "4:2:0")
    ]
    assert errs[0] < errs[1] < errs[2]


def test_jpeg_quality_monotone(tile: np.ndarray) -> None:
    errs = [np.abs(dg.jpeg(tile, q, "4:4:4").astype(int) - tile).mean() for q in (40, 70, 95)]
    assert errs[0] > errs[1] > errs[2]
    assert dg.jpeg(tile, 80).shape == tile.shape and dg.jpeg(tile, 80).dtype == np.uint8


def test_jpeg_rejects_bad_args(tile: np.ndarray) -> None:
    with pytest.raises(ValueError):
        dg.jpeg(tile, 80, "4:1:1")
    with pytest.raises(ValueError):
        dg.jpeg(tile, 0)
    with pytest.raises(TypeError):
        dg.jpeg(tile.astype(np.float32), 80)


def test_white_balance(tile: np.ndarray) -> None:
    out = dg.white_balance(tile, (0.93, 0.95, 1.0))
    ratio = out.reshape(-1, 3).astype(float).sum(0) / tile.reshape(-1, 3).astype(float).sum(0)
    np.testing.assert_allclose(ratio, [0.93, 0.95, 1.0], atol=0.005)
    assert np.array_equal(dg.white_balance(tile, (1, 1, 1)), tile)


def test_od_offset(tile: np.ndarray) -> None:
    """An added OD multiplies each channel by exp(-od); a negative one brightens, clipped."""
    assert np.array_equal(dg.od_offset(tile, (0, 0, 0)), tile)
    out = dg.od_offset(tile, (0.2, 0.0, 0.1))
    ratio = out.reshape(-1, 3).astype(float).sum(0) / tile.reshape(-1, 3).astype(float).sum(0)
    np.testing.assert_allclose(ratio, np.exp([-0.2, 0.0, -0.1]), atol=0.005)
    bright = dg.od_offset(tile, (-0.5, -0.5, -0.5))
    assert bright.max() == 255 and (bright >= tile).all()
    with pytest.raises(ValueError, match="3 values"):
        dg.od_offset(tile, (0.1, 0.1))


def test_scanner_augment_od_offset_is_opt_in(patches: np.ndarray) -> None:
    """Off by default and drawing nothing then (earlier recipes keep their random stream); on,
    it moves some patches' colour along a random OD direction."""
    aug = dg.ScannerAugment(p_hed=0, p_gain=0, p_blur=0, p_jpeg=0)
    assert np.array_equal(aug(patches[:32], np.random.default_rng(0)), patches[:32])
    on = dg.ScannerAugment(p_hed=0, p_gain=0, p_blur=0, p_jpeg=0, p_od=1.0, od_max=0.3)
    out = on(patches[:32], np.random.default_rng(0))
    od = -np.log(np.maximum(out.astype(float), 1) / np.maximum(patches[:32].astype(float), 1))
    per_patch = np.median(od.reshape(32, -1, 3), axis=1)  # one offset per patch
    assert (np.abs(per_patch).max(1) > 0.02).mean() > 0.8
    assert np.linalg.norm(per_patch, axis=1).max() <= 0.3 + 0.02


def test_scanner_augment_ink_is_opt_in_and_lays_a_marker_over_the_patch(
    patches: np.ndarray,
) -> None:
    """Off by default and drawing nothing then; on, each patch gets a marker's colour over it
    (dye or paint): darker, its colour pulled towards one of the markers', its tissue kept."""
    from idcmap.train.artefacts import INK_COLOURS, ink_over_patch

    aug = dg.ScannerAugment(p_hed=0, p_gain=0, p_blur=0, p_jpeg=0)
    assert np.array_equal(aug(patches[:32], np.random.default_rng(0)), patches[:32])
    on = dg.ScannerAugment(p_hed=0, p_gain=0, p_blur=0, p_jpeg=0, p_ink=1.0)
    out = on(patches[:32], np.random.default_rng(0))
    assert out.shape == patches[:32].shape and out.dtype == np.uint8
    x, y = patches[:32].astype(float), out.astype(float)
    assert (y.mean((1, 2, 3)) < x.mean((1, 2, 3))).mean() > 0.9  # ink absorbs
    # the same generator draws the same marks; another draws others
    again = on(patches[:32], np.random.default_rng(0))
    assert np.array_equal(out, again)
    assert not np.array_equal(out, on(patches[:32], np.random.default_rng(1)))
    # one patch under 200 marks: every marker colour shows (the channel that drops least)
    rng = np.random.default_rng(2)
    kept = {
        int(np.argmax(ink_over_patch(patches[0], rng).mean((0, 1)) / x[0].mean((0, 1))))
        for _ in range(200)
    }
    assert kept >= {1, 2}  # green ink keeps green, blue ink blue (red ink: red)
    assert len(INK_COLOURS) == 4
    # the tissue's texture survives under it (the network is to read through the mark)
    one = ink_over_patch(patches[0], np.random.default_rng(3)).astype(float)
    assert np.corrcoef(one.sum(2).ravel(), x[0].sum(2).ravel())[0, 1] > 0.3


def test_hed_shift_identity_and_direction(patches: np.ndarray) -> None:
    from skimage.color import rgb2hed

    x = patches[:20]
    assert np.abs(dg.hed_shift(x).astype(int) - x).max() <= 1
    h_before = rgb2hed(x[0] / 255.0)[..., 0].mean()
    more_h = dg.hed_shift(x[0], h=0.01)
    assert rgb2hed(more_h / 255.0)[..., 0].mean() == pytest.approx(h_before + 0.01, abs=0.002)
    # more haematoxylin darkens red most (H absorbs red and green), more eosin darkens green
    dr = (more_h.astype(float) - x[0]).mean((0, 1))
    assert dr[0] < 0 and dr[0] < dr[2]
    de = (dg.hed_shift(x[0], e=0.01).astype(float) - x[0]).mean((0, 1))
    assert de[1] < de[0] and de[1] < de[2]
    # per-image parameters in a batch equal one call per image
    hs = np.array([0.0, 0.01, -0.01]).reshape(3, 1, 1)
    batch = dg.hed_shift(x[:3], h=hs)
    for i in range(3):
        assert np.array_equal(batch[i], dg.hed_shift(x[i], h=float(hs[i, 0, 0])))


def test_reinhard_matches_target_stats(tile: np.ndarray) -> None:
    refs = sorted(REFS.glob("*.png"))
    if not refs:
        pytest.skip("no stain references in ../shared")
    ref = np.asarray(Image.open(refs[0]).convert("RGB"))
    target = dg.lab_stats(ref)
    out = dg.reinhard_to(tile, ref, alpha=1.0)
    got = dg.lab_stats(out)
    np.testing.assert_allclose(got.mean, target.mean, atol=0.03)
    np.testing.assert_allclose(got.std, target.std, rtol=0.25, atol=0.01)
    assert np.abs(dg.reinhard_to(tile, ref, alpha=0.0).astype(int) - tile).max() <= 1
    half = dg.lab_stats(dg.reinhard_to(tile, ref, alpha=0.5)).mean
    src = dg.lab_stats(tile).mean
    for c in range(3):
        assert min(src[c], target.mean[c]) - 0.02 <= half[c] <= max(src[c], target.mean[c]) + 0.02


def test_lab_roundtrip(tile: np.ndarray) -> None:
    assert np.abs(dg.lab_to_rgb(dg.rgb_to_lab(tile)).astype(int) - tile).max() <= 1


def test_blur(tile: np.ndarray) -> None:
    g = _ycbcr(tile)[..., 0]
    b = _ycbcr(dg.blur(tile, 1.0))[..., 0]
    assert _detail(b) < 0.5 * _detail(g)
    assert np.array_equal(dg.blur(tile, 0), tile)
    assert abs(dg.blur(tile, 1.0).astype(float).mean() - tile.mean()) < 1


def test_scanner_augment_seeded(patches: np.ndarray) -> None:
    refs = [dg.lab_stats(patches[:10])]
    aug = dg.ScannerAugment(refs=refs).fit(patches)
    a = aug(patches[:64], np.random.default_rng(1))
    b = aug(patches[:64], np.random.default_rng(1))
    c = aug(patches[:64], np.random.default_rng(2))
    assert a.shape == (64, 50, 50, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    changed = np.abs(a.astype(int) - patches[:64]).reshape(64, -1).max(1) > 0
    assert changed.mean() > 0.8  # most patches are degraded somehow
    assert np.abs(a.astype(float) - patches[:64]).mean() < 25  # but stay H&E-like
    # the input is left alone
    assert np.array_equal(patches[:64], load_patches(list_patches(FIXTURES))[:64])
