"""Pictures: glyphs, transparent-where-low overlay, outlines with a halo, scale bar, mask size,
evaluation legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from idcmap.output.render import (
    colormap_lut,
    font,
    heatmap_picture,
    legend_panel,
    mask_picture,
    nice_scale_length_um,
    overlay_alpha,
    save_png,
)
from idcmap.pipeline.heatmap import Heatmap
from idcmap.train.figures import FN_COLOR, FP_COLOR, TP_COLOR, comparison_png


def _glyph(ch: str, bold: bool = False) -> np.ndarray:
    return np.asarray(font(24, bold).getmask(ch))


@pytest.mark.parametrize("bold", [False, True])
def test_font_has_the_glyphs(bold: bool) -> None:
    missing = _glyph("\ue000", bold)  # private-use code point: the font's "missing" box
    for ch in "µσ≥²":
        g = _glyph(ch, bold)
        assert g.size and g.any(), ch
        assert g.shape != missing.shape or not np.array_equal(g, missing), ch


def test_overlay_alpha_ramp() -> None:
    a = overlay_alpha(np.array([np.nan, 0.0, 0.2, 0.45, 0.7, 0.9]), 0.7, max_alpha=0.6)
    assert a[0] == 0 and a[1] == 0 and a[2] == 0
    assert 0 < a[3] < 0.6
    assert a[4] == pytest.approx(0.6) and a[5] == pytest.approx(0.6)
    assert np.all(np.diff(a[1:]) >= 0)


def test_nice_scale_length() -> None:
    assert nice_scale_length_um(10.0, 100) == 1000.0
    assert nice_scale_length_um(16.0, 160) == 2000.0
    assert nice_scale_length_um(0.5, 900) == 500.0


def _scene() -> tuple[Heatmap, np.ndarray, shapely.Polygon]:
    # 20×30 cells of 100 level-0 px at 2 µm/px; high probability in a block on the right
    prob = np.full((20, 30), 0.05, dtype=np.float32)
    prob[5:15, 18:28] = 0.95
    prob[:, :3] = np.nan
    hm = Heatmap(prob, (0.0, 0.0), (100.0, 100.0), 2.0, 8.0, 25, 25)
    # thumbnail: uniform pink "tissue", 10 level-0 px... 20 px per cell
    thumb = np.zeros((200 * 2, 300 * 2, 3), np.uint8)
    thumb[:] = (230, 150, 190)
    poly = shapely.box(1800, 500, 2800, 1500)
    return hm, thumb, poly


def test_heatmap_picture(tmp_path: Path) -> None:
    hm, thumb, poly = _scene()
    img = heatmap_picture(
        hm,
        thumb,
        (0.0, 0.0),
        (5.0, 5.0),
        threshold=0.7,
        polygons=[poly],
        title="slide: IDC probability (smoothed, σ 400 µm)",
        caption="1 IDC region · 2.00 mm²",
        min_side=600,
    )
    arr = np.asarray(img)
    # the picture sits at (14, header); find it by its pink
    pink = np.all(arr == (230, 150, 190), axis=2)
    ys, xs = np.nonzero(pink)
    assert len(ys) > 1000, "low-probability tissue must show the H&E unchanged"
    y0, x0 = ys.min(), xs.min()
    # 600-px picture for 3000 level-0 px: 5 level-0 px per picture px
    low = arr[y0 + 1000 // 5, x0 + 1000 // 5]  # tissue at probability 0.05: no tint at all
    assert tuple(low) == (230, 150, 190)
    inside = arr[y0 + 1000 // 5, x0 + 2300 // 5]
    assert not np.array_equal(inside, (230, 150, 190)), "high probability must be coloured"
    # a white line with a dark halo along the region's left edge (x = 1800 → picture col 360)
    row = arr[y0 + 700 // 5, x0 + 360 - 8 : x0 + 360 + 8]
    assert (row.sum(axis=1) > 740).any(), "bright line"
    assert (row.sum(axis=1) < 60).any(), "dark halo"
    # a black scale bar in the lower left corner of the picture
    corner = arr[y0 + 300 : y0 + 400, x0 : x0 + 200]
    assert (np.all(corner < 10, axis=2)).sum() > 200
    save_png(img, tmp_path / "h.png", {"Comment": "µm ≥"})
    assert Image.open(tmp_path / "h.png").size == img.size


def test_heatmap_picture_tissue_only_and_checks() -> None:
    hm, thumb, _ = _scene()
    tissue = np.zeros(thumb.shape[:2], bool)  # no tissue at all: nothing painted
    img = heatmap_picture(hm, thumb, (0, 0), (5.0, 5.0), threshold=0.7, tissue=tissue)
    assert np.all(np.asarray(img) == (230, 150, 190), axis=2).sum() > 0.8 * thumb.shape[0] ** 2
    with pytest.raises(ValueError, match="tissue"):
        heatmap_picture(hm, thumb, (0, 0), (5.0, 5.0), threshold=0.7, tissue=tissue[:-1])
    with pytest.raises(ValueError, match="empty"):
        heatmap_picture(hm, thumb[:0], (0, 0), (5.0, 5.0), threshold=0.7)


def test_mask_picture() -> None:
    mask = np.zeros((39, 58), bool)
    mask[10:20, 5:9] = True
    img, k = mask_picture(mask)
    assert k == 18 and img.size == (58 * 18, 39 * 18)
    arr = np.asarray(img)
    assert np.array_equal(arr[::k, ::k] == 255, mask)
    big, k1 = mask_picture(np.zeros((3000, 2000), bool))
    assert k1 == 1 and big.size == (2000, 3000)
    with pytest.raises(ValueError, match="2-D"):
        mask_picture(np.zeros(3, bool))


def test_legend_and_comparison_png(tmp_path: Path) -> None:
    panel = legend_panel(300, [((255, 0, 0), "a red thing"), ((0, 0, 255), "blue")], "Title µm")
    assert panel.width >= 300 and panel.height > 20
    pred = np.zeros((10, 12), bool)
    truth = np.zeros((10, 12), bool)
    pred[2:5, 2:5] = truth[3:6, 3:6] = True
    out = tmp_path / "cmp.png"
    comparison_png(pred, truth, out, title="x: predicted vs truth")
    arr = np.asarray(Image.open(out).convert("RGB"))
    for c in (TP_COLOR, FP_COLOR, FN_COLOR):  # legend swatches in the pure colours
        assert np.all(arr == c, axis=2).any(), c


def test_colormap_lut() -> None:
    lut = colormap_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert tuple(lut[0]) == (68, 1, 84) and tuple(lut[-1]) == (253, 231, 37)
    luminance = lut @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luminance) > -0.5)  # perceptually ordered: never darker
