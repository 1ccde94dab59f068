"""Tile-grid geometry across blocks, and stitching where fewer than k² tiles cover a cell.

The multi-block test checks a stride-25 heatmap cell by cell against pixels computed here
from the image itself, with the colour stand-in model (IDC probability = mean red / 255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from pipeline_helpers import colour_model
from tiffgen import write_pyramid_tiff

from idcmap.io.open import open_slide
from idcmap.params import Params
from idcmap.pipeline.heatmap import Heatmap, smooth, stitch
from idcmap.pipeline.segment import segment_slide
from idcmap.pipeline.tiles import BLOCK_MODEL_PX, MAX_READ_PX, make_grid, plan_blocks, read_block
from idcmap.pipeline.tissue import TissueMask


def expected_heatmap(red: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """Stitched mean-red heatmap computed directly: every tile evaluated (all tissue), padded
    with white past the image, each cell the mean of the tiles covering it."""
    h, w = red.shape
    rows = -(-max(h - patch, 0) // stride) + 1
    cols = -(-max(w - patch, 0) // stride) + 1
    padded = np.full(((rows - 1) * stride + patch, (cols - 1) * stride + patch), 255.0)
    padded[:h, :w] = red
    sat = np.pad(padded, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    y0 = np.arange(rows)[:, None] * stride
    x0 = np.arange(cols)[None, :] * stride
    tiles = (
        sat[y0 + patch, x0 + patch] - sat[y0, x0 + patch] - sat[y0 + patch, x0] + sat[y0, x0]
    ) / (patch * patch * 255.0)
    k = patch // stride
    total = np.zeros((rows + k - 1, cols + k - 1))
    count = np.zeros_like(total)
    for dy in range(k):
        for dx in range(k):
            total[dy : dy + rows, dx : dx + cols] += tiles
            count[dy : dy + rows, dx : dx + cols] += 1
    return total / count


@pytest.mark.parametrize("dense", [False, True])
def test_multi_block_slide_at_stride_25_cell_by_cell(tmp_path: Path, dense: bool) -> None:
    """A slide wider and taller than one block (1024 model px = 4.1 mm at 4 µm/px): a block
    origin stepped wrongly (e.g. by the patch instead of the stride) shifts every block after
    the first."""
    rng = np.random.default_rng(7)
    cells = rng.integers(60, 250, size=(23, 29)).astype(np.uint8)  # 50-px cells of flat red
    red = np.kron(cells, np.ones((50, 50), np.uint8))[:1130, :1437]  # partial edge tiles too
    img = np.empty((*red.shape, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = red, 40, 150
    assert min(red.shape) > BLOCK_MODEL_PX
    path = write_pyramid_tiff(
        tmp_path / "wide.tiff", img, 4.0, downsamples=(1, 4), tile=256, compression="zlib"
    )
    res = segment_slide(
        path,
        model=colour_model(dense=dense),
        # geometry only: QC would lift this textureless slide's logits (a soft slide)
        params=Params(stride_px=25, workers=2, qc="none"),
        progress=False,
    )
    assert res.summary["tiles"]["blocks"] >= 4  # at least 2×2 blocks
    hm = res.heatmap
    assert hm.tissue.all()
    expect = expected_heatmap(red.astype(np.float64), 50, 25)
    assert hm.shape == expect.shape
    np.testing.assert_allclose(hm.prob, expect, atol=1e-4)


def brute_force_stitch(prob: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    rows, cols = prob.shape
    out = np.full((rows + k - 1, cols + k - 1), np.nan)
    for i in range(rows + k - 1):
        for j in range(cols + k - 1):
            cover = [
                prob[r, c]
                for r in range(i - k + 1, i + 1)
                for c in range(j - k + 1, j + 1)
                if 0 <= r < rows and 0 <= c < cols and valid[r, c]
            ]
            if cover:
                out[i, j] = np.mean(cover)
    return out


@pytest.mark.parametrize("k", [1, 2, 5])
def test_stitch_averages_by_the_number_of_covering_tiles(k: int) -> None:
    """At slide edges, next to missing (non-tissue) tiles and in holes, a cell is covered by
    fewer than k² tiles: its value is the mean of those, never their sum over k²."""
    rng = np.random.default_rng(k)
    prob = rng.random((9, 11)).astype(np.float32)
    valid = rng.random((9, 11)) > 0.35  # missing tiles: tissue edges and holes
    valid[4, :] = False  # a gap wider than a tile
    out = stitch(prob, valid, k)
    np.testing.assert_allclose(out, brute_force_stitch(prob, valid, k), atol=1e-6)
    # every valid tile alone: its own cells take exactly its value
    lone = np.zeros_like(valid)
    lone[0, 0] = lone[8, 10] = True
    out = stitch(prob, lone, k)
    assert np.all(out[:k, :k] == prob[0, 0]) and np.all(out[-k:, -k:] == prob[8, 10])
    assert np.isnan(out).sum() == out.size - 2 * k * k


def test_stitch_full_grid_edges() -> None:
    """All tiles valid, stride = patch / 2: corner cells have one tile, edge cells two."""
    prob = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    out = stitch(prob, np.ones((3, 4), bool), 2)
    assert out[0, 0] == prob[0, 0] and out[-1, -1] == prob[-1, -1]
    assert out[0, 1] == pytest.approx(prob[0, :2].mean())
    assert out[1, 1] == pytest.approx(prob[:2, :2].mean())


@pytest.mark.parametrize("stride", [50, 25, 10])
def test_tile_tissue_fraction_and_keep(tmp_path: Path, stride: int) -> None:
    """Tile tissue fractions against a random tissue mask of 5 level-0 px per mask px (model =
    level 0 at 4 µm/px): a tile's fraction is the share of mask pixels whose centre lies in it;
    a tile exactly at min_tissue is kept."""
    img = np.full((400, 600, 3), 200, np.uint8)
    path = write_pyramid_tiff(tmp_path / "s.tiff", img, 4.0, downsamples=(1,), compression="zlib")
    mask = np.random.default_rng(stride).random((80, 120)) < 0.5
    tissue = TissueMask(mask, (0.0, 0.0), (5.0, 5.0), 20.0, np.zeros((80, 120, 3), np.uint8))
    with open_slide(path) as slide:
        grid = make_grid(slide, tissue, model_mpp=4.0, patch_px=50, stride_px=stride)
    rows, cols = grid.shape
    padded = np.zeros((rows * stride // 5 + 10, cols * stride // 5 + 10))
    padded[:80, :120] = mask
    s = stride // 5  # mask px per stride
    expect = np.array(
        [
            [padded[r * s : r * s + 10, c * s : c * s + 10].mean() for c in range(cols)]
            for r in range(rows)
        ]
    )
    np.testing.assert_allclose(grid.tissue_fraction, expect, atol=1e-6)
    with open_slide(path) as slide:
        kept = make_grid(
            slide, tissue, model_mpp=4.0, patch_px=50, stride_px=stride, min_tissue=0.5
        ).keep
    clear = np.abs(expect - 0.5) > 1e-9
    assert (kept[clear] == (expect[clear] > 0.5)).all()
    if stride == 50:  # fractions are exact here (n / 100): a tile at exactly 0.5 is kept
        at = expect == 0.5
        assert at.any() and kept[at].all()


@pytest.mark.parametrize("stride", [50, 25, 10, 5])
def test_blocks_stay_within_their_size_limits(tmp_path: Path, stride: int) -> None:
    img = np.full((1500, 2600, 3), 200, np.uint8)
    path = write_pyramid_tiff(tmp_path / "s.tiff", img, 4.0, downsamples=(1,), compression="zlib")
    with open_slide(path) as slide:
        grid = make_grid(slide, None, model_mpp=4.0, patch_px=50, stride_px=stride)
    blocks = plan_blocks(grid, 1.0)
    assert len(blocks) > 1
    covered = np.zeros(grid.shape, int)
    for r0, r1, c0, c1 in blocks:
        for n in (r1 - r0, c1 - c0):
            side = (n - 1) * stride + 50  # model px = level px here
            assert side <= min(BLOCK_MODEL_PX, MAX_READ_PX)
        covered[r0:r1, c0:c1] += 1
    assert (covered == 1).all()  # every tile in exactly one block


def _hm(prob: np.ndarray, cell_um: float = 200.0) -> Heatmap:
    return Heatmap(
        prob.astype(np.float32), (0.0, 0.0), (cell_um / 4, cell_um / 4), 4.0, 4.0, 50, 50
    )


def test_smooth_sigma_is_in_um_and_tissue_aware() -> None:
    from scipy import ndimage

    prob = np.zeros((15, 15))
    prob[7, 7] = 1.0
    out = smooth(_hm(prob), 400.0).prob  # sigma 400 µm = 2 cells of 200 µm
    ref = ndimage.gaussian_filter(prob, 2.0, mode="constant") / ndimage.gaussian_filter(
        np.ones_like(prob), 2.0, mode="constant"
    )
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # constant IDC probability beside glass (NaN) stays constant: glass does not pull it down
    flat = np.full((9, 9), 0.8)
    flat[:, :4] = np.nan
    sm = smooth(_hm(flat), 400.0).prob
    assert np.isnan(sm[:, :4]).all()
    np.testing.assert_allclose(sm[:, 4:], 0.8, atol=1e-6)


def test_block_reads_stop_at_the_bounds_and_round_a_fractional_origin(tmp_path: Path) -> None:
    """Bounds (103, 51, 597, 449) inside a 1 µm/px slide with data all around them, read at its
    4 µm/px level (no resize): the bounds origin falls at level px (25.75, 12.75), so model px
    (0, 0) is level px (26, 13) (rounded, not truncated to 25, 12); tiles past the bounds' right
    and bottom edges (level px 175, 125) are padded with white, not filled with the frame's
    pixels beyond them. OpenSlide leaves the frame of a Leica SCN transparent outside its
    bounds, where a leak would read white anyway, so the bounds rectangle of a plain pyramid
    is replaced here (as in test_slide.py's test_bounds_region) to give it pixels to leak."""
    from dataclasses import replace

    img = np.random.default_rng(11).integers(0, 256, (800, 1000, 3), dtype=np.uint8)
    path = write_pyramid_tiff(
        tmp_path / "b.tiff", img, 1.0, downsamples=(1, 4), tile=128, compression="zlib"
    )
    level1 = tifffile.imread(path, key=1)  # the level's own pixels, read without idcmap
    bx, by, bw, bh = 103, 51, 597, 449
    with open_slide(path) as slide:
        slide.info = replace(slide.info, bounds_level0_px=(bx, by, bw, bh))
        rl = slide.read_level_for_mpp(4.0)
        assert (rl.level, rl.scale, rl.downsample) == (1, 1, 4.0)
        grid = make_grid(slide, None, model_mpp=4.0, patch_px=50, stride_px=50)
        assert grid.shape == (3, 3)
        blocks = plan_blocks(grid, 4.0)
        assert blocks == [(0, 3, 0, 3)]
        block = read_block(slide, grid, rl, (0, 3), (0, 3))
    expect = np.full((150, 150, 3), 255, np.uint8)
    x0, y0 = round(bx / 4), round(by / 4)  # 26, 13
    x1, y1 = (bx + bw) // 4, (by + bh) // 4  # 175, 125: the last level px wholly inside
    expect[: y1 - y0, : x1 - x0] = level1[y0:y1, x0:x1]
    np.testing.assert_array_equal(block.pixels, expect)
