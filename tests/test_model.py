"""The shipped model and its file format: accuracy floor on real test patches, damaged and
foreign files, dense vs tile equivalence on a real mosaic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from idcmap.data import list_patches, load_patches, read_level0
from idcmap.errors import ModelError
from idcmap.evaluate import binary_metrics
from idcmap.model import bundled_model_path, load_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PATCHES = ROOT / "tests" / "fixtures" / "patches"
EXAMPLE_SLIDES = sorted((ROOT / "examples").glob("*.tiff"))

# Measured AUC of idc-v1 on these 150 fixture patches (29 test patients) is in MODEL_CARD.md;
# the floor sits a little below it so that only a real regression fails.
AUC_FLOOR = 0.93


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_model(device="cpu")


@pytest.fixture()
def model_copy(tmp_path: Path) -> Path:
    src = bundled_model_path()
    shutil.copy(src, tmp_path / src.name)
    shutil.copy(src.with_suffix(".safetensors"), tmp_path / src.with_suffix(".safetensors").name)
    return tmp_path / src.name


def test_shipped_model_on_fixture_test_patches(model) -> None:  # type: ignore[no-untyped-def]
    recs = list_patches(FIXTURE_PATCHES)
    test_patients = set(model.config.training["patients"]["test"])
    assert {r.patient for r in recs} <= test_patients, "fixtures must come from test patients"
    assert not {r.patient for r in recs} & set(model.config.training["patients"]["train"])
    y = np.array([r.label for r in recs])
    p = model.predict(load_patches(recs))
    m = binary_metrics(y, p, model.config.tile_threshold)
    assert m["roc_auc"] >= AUC_FLOOR, m
    assert m["balanced_accuracy"] >= 0.80, m


def test_shipped_config_describes_itself(model) -> None:  # type: ignore[no-untyped-def]
    c = model.config
    assert (c.name, c.architecture, c.mpp, c.patch_px) == ("idcmap-idc", "idcnet-v1", 4.0, 50)
    assert 0.0 < c.tile_threshold < 1.0 and 0.0 < c.region_threshold < 1.0
    assert len(c.weights_sha256) == 64
    t = c.training
    assert t["framework"] == "fastai" and t["epochs"] >= 1
    assert set(t["patients"]) == {"train", "valid", "test"}
    assert not set(t["patients"]["train"]) & set(t["patients"]["test"])
    assert not set(t["patients"]["valid"]) & set(t["patients"]["test"])
    assert t["metrics"]["test"]["roc_auc"] > 0.9


def test_damaged_weights_are_refused(model_copy: Path) -> None:
    w = model_copy.with_suffix(".safetensors")
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model(model_copy, device="cpu")


def test_foreign_json_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "other.json"
    p.write_text(json.dumps({"format": "something-else", "name": "x"}))
    with pytest.raises(ModelError, match="not an idcmap model"):
        load_model(p, device="cpu")
    p.write_text("[1, 2, 3]")
    with pytest.raises(ModelError):
        load_model(p, device="cpu")


def test_missing_weights_are_refused(model_copy: Path) -> None:
    model_copy.with_suffix(".safetensors").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(model_copy, device="cpu")


@pytest.mark.skipif(not EXAMPLE_SLIDES, reason="no example mosaic in examples/")
@pytest.mark.parametrize("stride", [50, 25, 10])
def test_dense_equals_tiles_on_a_real_mosaic(model, stride: int) -> None:  # type: ignore[no-untyped-def]
    img = read_level0(EXAMPLE_SLIDES[0])
    h, w = img.shape[:2]
    # a 300x300 block around the centre of the slide (tissue, not only glass)
    y0, x0 = (h // 2 - 150) // 5 * 5, (w // 2 - 150) // 5 * 5
    block = np.ascontiguousarray(img[y0 : y0 + 300, x0 : x0 + 300])
    dense = model.predict_dense(block, stride)
    n = (300 - 50) // stride + 1
    assert dense.shape == (n, n)
    tiles = np.stack(
        [
            block[i * stride : i * stride + 50, j * stride : j * stride + 50]
            for i in range(n)
            for j in range(n)
        ]
    )
    tile_p = model.predict(tiles).reshape(n, n)
    np.testing.assert_allclose(dense, tile_p, atol=1e-4, rtol=0)
    assert dense.std() > 0.01  # a real block: not a constant answer


@pytest.mark.skipif(not EXAMPLE_SLIDES, reason="no example mosaic in examples/")
@pytest.mark.parametrize("stride", [50, 25, 10, 5])
def test_fast_engine_equals_the_plain_torch_network(model, stride: int) -> None:  # type: ignore[no-untyped-def]
    """predict/predict_dense run a folded matrix-product engine; it must compute what the plain
    nn.Module computes, tile by tile (forward) and densely (forward_dense)."""
    import torch

    img = read_level0(EXAMPLE_SLIDES[0])
    h, w = img.shape[:2]
    y0, x0 = (h // 2 - 200) // 5 * 5, (w // 2 - 200) // 5 * 5
    block = np.ascontiguousarray(img[y0 : y0 + 400, x0 : x0 + 350])
    x = torch.from_numpy(block).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        ref_dense = torch.softmax(model.net.forward_dense(x, stride), 1)[0, 1].numpy()
        n_r, n_c = ref_dense.shape
        tiles = torch.stack(
            [
                x[0, :, i * stride : i * stride + 50, j * stride : j * stride + 50]
                for i in range(n_r)
                for j in range(n_c)
            ]
        )
        ref_tiles = torch.softmax(model.net(tiles), 1)[:, 1].numpy().reshape(n_r, n_c)
    np.testing.assert_allclose(ref_dense, ref_tiles, atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.predict_dense(block, stride), ref_dense, atol=1e-4, rtol=0)
