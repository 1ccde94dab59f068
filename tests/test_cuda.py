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
