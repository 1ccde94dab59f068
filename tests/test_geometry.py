"""Tile-grid geometry across blocks, and stitching where fewer than k² tiles cover a cell.

The multi-block test checks a stride-25 heatmap cell by cell against pixels computed here
from the image itself, with the colour stand-in model (IDC probability = mean red / 255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import colour_model
from tiffgen import write_pyramid_tiff

from idcmap.api import Params, segment_slide
from idcmap.heatmap import stitch
from idcmap.tiles import BLOCK_MODEL_PX


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
        params=Params(stride_px=25, workers=2),
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
