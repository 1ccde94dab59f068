"""The CUDA path (AMP fp16, pinned transfers, batching) agrees with the CPU path.

Runs only where a CUDA GPU is visible (CI has none: these skip there, and the same checks run on
a lent GPU machine via benchmarks/gpu.sh).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiffgen import synthetic_he, write_pyramid_tiff

from idcmap.model.runtime import IDCModel, load_model, resolve_device
from idcmap.pipeline.segment import segment_slide

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")


def _pair() -> tuple[IDCModel, IDCModel]:
    return load_model(device="cpu"), load_model(device="cuda")


def test_auto_device_is_cuda() -> None:
    assert resolve_device("auto").type == "cuda"


def test_predict_and_dense_agree_with_cpu() -> None:
    cpu, gpu = _pair()
    rng = np.random.default_rng(0)
    block = synthetic_he(600, 700, seed=1)
    tiles = np.stack(
        [block[r : r + 50, c : c + 50] for r in range(0, 550, 50) for c in range(0, 650, 50)]
    )
    p_cpu = cpu.predict(tiles)
    p_gpu = gpu.predict(tiles, batch_size=int(rng.integers(7, 64)))
    np.testing.assert_allclose(p_gpu, p_cpu, atol=2e-2)
    for stride in (50, 25):
        np.testing.assert_allclose(
            gpu.predict_dense(block, stride), cpu.predict_dense(block, stride), atol=2e-2
        )


def test_segment_slide_on_cuda_matches_cpu(tmp_path: Path) -> None:
    img = synthetic_he(2000, 2400, seed=2, tissue=0.6)
    path = write_pyramid_tiff(
        tmp_path / "he.tiff", img, 4.0, downsamples=(1, 4), compression="zlib"
    )
    cpu, gpu = _pair()
    a = segment_slide(path, model=cpu, progress=False)
    b = segment_slide(path, model=gpu, progress=False)
    assert b.summary["model"]["device"].startswith("cuda")
    np.testing.assert_array_equal(a.heatmap.tissue, b.heatmap.tissue)
    np.testing.assert_allclose(a.heatmap.prob, b.heatmap.prob, atol=2e-2, equal_nan=True)
    agree = (a.mask == b.mask).mean()
    assert agree > 0.99


# --------------------------------------------------------------------------- nvjpeg


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29's image I/O note
@pytest.mark.parametrize("subsampling", [2, 0])  # 4:2:0 and 4:4:4
def test_nvjpeg_read_agrees_with_the_cpu_decode(tmp_path: Path, subsampling: int) -> None:
    """The torch decode path on CUDA (nvjpeg, then the box reduction on the GPU) against the
    same code on the CPU (libjpeg: Pillow's full decode + Image.reduce, bit for bit, see
    tests/test_io_jpegtorch.py). nvjpeg's IDCT and chroma upsampling are its own: the bounds
    are test_io_jpeg's for the scaled IDCT against the same reference (not yet measured on a
    GPU: benchmarks/gpu.sh prints the figures)."""
    pytest.importorskip("torchvision")
    from test_io_jpeg import BOUNDS, H, W, diff
    from tiffgen import write_jpeg_tiff

    from idcmap.io.jpegtiff import JpegTiffReader
    from idcmap.io.jpegtorch import TorchTileDecoder

    img = synthetic_he(H, W, seed=3, tissue=0.7)
    path = write_jpeg_tiff(tmp_path / "t.tif", img, subsampling=subsampling)
    gpu, cpu = TorchTileDecoder("cuda"), TorchTileDecoder("cpu")
    coded = (2, 2) if subsampling == 2 else (1, 1)
    with JpegTiffReader(path) as r:
        for s in (1, 2, 4, 8):
            a = r.read_region(0, 0, 0, W, H, s, decoder=gpu)
            b = r.read_region(0, 0, 0, W, H, s, decoder=cpu)
            mx, mean = diff(a, b)
            print(f"nvjpeg vs libjpeg, {coded} 1/{s}: max {mx}, mean {mean:.3f}")
            bmax, bmean = BOUNDS[coded, max(s, 2)]
            assert mx <= bmax and mean <= bmean, (s, mx, mean)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_segment_slide_on_cuda_decodes_on_the_gpu(tmp_path: Path) -> None:
    """decode='auto' on CUDA is the nvjpeg path; its masks agree with the CPU's Pillow path."""
    pytest.importorskip("torchvision")
    from tiffgen import write_jpeg_tiff

    from idcmap.params import Params

    he = synthetic_he(600, 800, seed=2, tissue=0.6)
    big = np.kron(he, np.ones((4, 4, 1), np.uint8))
    path = write_jpeg_tiff(
        tmp_path / "p.tif", big, subsampling=2, downsamples=(1, 4), mpp=1.0, tile=256
    )
    cpu, gpu = _pair()
    a = segment_slide(path, model=cpu, progress=False)
    b = segment_slide(path, model=gpu, progress=False, params=Params(workers=4))
    assert b.summary.parameters["decode"] == "torch" and a.summary.parameters["decode"] == "pillow"
    assert b.summary.slide["level_read_scale"] == 4
    np.testing.assert_array_equal(a.heatmap.tissue, b.heatmap.tissue)
    np.testing.assert_allclose(a.heatmap.prob, b.heatmap.prob, atol=5e-2, equal_nan=True)
    assert (a.mask == b.mask).mean() > 0.99
