"""The shipped model and its file format: accuracy floor on real test patches, damaged and
foreign files, dense vs tile equivalence on a real mosaic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiffgen import synthetic_he, write_pyramid_tiff
from torch import nn

from idcmap.errors import ModelError, UsageError
from idcmap.model.archs import Architecture
from idcmap.model.modelfile import ModelConfig, bundled_model_path, bundled_models, save_model
from idcmap.model.runtime import ARCHITECTURES, load_model, register_architecture
from idcmap.pipeline.segment import segment_slide
from idcmap.train.data import list_patches, load_patches, read_level0
from idcmap.train.metrics import binary_metrics

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
    """The default model's JSON and its weights file (whose name the JSON gives) in tmp_path."""
    src = bundled_model_path()
    shutil.copy(src, tmp_path / src.name)
    shutil.copy(_weights(src), _weights(tmp_path / src.name))
    return tmp_path / src.name


def _weights(model_json: Path) -> Path:
    from idcmap.model.modelfile import read_config

    return model_json.parent / read_config(model_json).weights_file


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
    w = _weights(model_copy)
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
    _weights(model_copy).unlink()
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


# ---- a second architecture: one module (here, this test) and one registry entry --------------


class MeanColourNet(nn.Module):
    """Logits from the mean colour of a patch: tiny, real, and trivially densifiable."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], patch_px: int = 50):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.head = nn.Conv2d(3, 2, 1)
        self.patch_px = patch_px

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(((x - self.mean) / self.std).mean((2, 3), keepdim=True)).flatten(1)


class DenseMeanColourNet(MeanColourNet):
    def forward_dense(self, x: torch.Tensor, stride_px: int) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.head(nn.functional.avg_pool2d(x, self.patch_px, stride=stride_px))


MEAN_COLOUR = Architecture(name="mean-colour-test", build=MeanColourNet)
DENSE_MEAN_COLOUR = Architecture(
    name="dense-mean-colour-test", build=DenseMeanColourNet, dense_step_px=1
)


@pytest.fixture()
def mean_colour_files(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Both architectures registered, and one model file of each with the same weights."""
    for arch in (MEAN_COLOUR, DENSE_MEAN_COLOUR):
        register_architecture(arch)
    torch.manual_seed(0)
    net = MeanColourNet((0.8, 0.6, 0.7), (0.15, 0.2, 0.15))
    paths = {}
    for arch in (MEAN_COLOUR, DENSE_MEAN_COLOUR):
        cfg = ModelConfig(
            name="mean colour",
            version="0",
            architecture=arch.name,
            mpp=4.0,
            patch_px=50,
            mean=(0.8, 0.6, 0.7),
            std=(0.15, 0.2, 0.15),
        )
        paths[arch.name] = tmp_path / f"{arch.name}.json"
        save_model(net, cfg, paths[arch.name])
    yield paths
    for arch in (MEAN_COLOUR, DENSE_MEAN_COLOUR):
        ARCHITECTURES.pop(arch.name)


def test_a_second_architecture_loads_and_predicts(mean_colour_files: dict[str, Path]) -> None:
    m = load_model(mean_colour_files["mean-colour-test"], device="cpu")
    assert type(m.net) is MeanColourNet and not m.supports_dense(50)
    x = synthetic_he(100, 150, seed=3, tissue=0.8)
    tiles = np.stack([x[r : r + 50, c : c + 50] for r in (0, 50) for c in (0, 50, 100)])
    t = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.8, 0.6, 0.7]).view(1, 3, 1, 1)
    std = torch.tensor([0.15, 0.2, 0.15]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = m.net.head(((t - mean) / std).mean((2, 3), keepdim=True)).flatten(1)
    want = torch.softmax(logits, 1)[:, 1].numpy()
    np.testing.assert_allclose(m.predict(tiles, batch_size=4), want, atol=1e-5)
    with pytest.raises(ValueError, match="densely"):
        m.predict_dense(x, 50)

    d = load_model(mean_colour_files["dense-mean-colour-test"], device="cpu")
    assert d.supports_dense(50) and d.supports_dense(7)
    np.testing.assert_allclose(d.predict_dense(x, 50).reshape(-1), want, atol=1e-5)


def test_a_second_architecture_runs_the_pipeline(
    mean_colour_files: dict[str, Path], tmp_path: Path
) -> None:
    """The tile path (no dense capability) and the dense path give the same heatmap."""
    img = synthetic_he(1400, 1700, seed=4, tissue=0.6)
    slide = write_pyramid_tiff(
        tmp_path / "he.tiff", img, 4.0, downsamples=(1, 4), compression="zlib"
    )
    tiles = segment_slide(
        slide, model=mean_colour_files["mean-colour-test"], stride=25, progress=False
    )
    dense = segment_slide(
        slide, model=mean_colour_files["dense-mean-colour-test"], stride=25, progress=False
    )
    assert np.isfinite(tiles.heatmap.prob).sum() > 100
    np.testing.assert_allclose(tiles.heatmap.prob, dense.heatmap.prob, atol=1e-5, equal_nan=True)


def test_architecture_registry_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_architecture(Architecture(name="idcnet-v1", build=MeanColourNet))
    with pytest.raises(ValueError, match="engine needs dense_step_px"):
        Architecture(name="x", build=MeanColourNet, engine=lambda net, dev: net)  # type: ignore[arg-type,return-value]
    cfg = ModelConfig(
        name="x", version="0", architecture="no-such-arch", mpp=4.0, patch_px=50,
        mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2),
    )  # fmt: skip
    save_model(MeanColourNet(cfg.mean, cfg.std), cfg, tmp_path / "x.json")
    with pytest.raises(ModelError, match="unknown architecture 'no-such-arch'"):
        load_model(tmp_path / "x.json", device="cpu")


def test_writing_into_the_package_is_refused(model_copy: Path) -> None:
    from idcmap.model.modelfile import read_config, save_config

    cfg = read_config(model_copy)
    with pytest.raises(UsageError, match="package"):
        save_config(cfg, bundled_model_path(), _weights(model_copy))
    out = model_copy.parent / "elsewhere" / "tuned.json"
    written = save_config(cfg.replace(smooth_um=123.0), out, _weights(model_copy))
    m = load_model(out, device="cpu")
    assert m.config.smooth_um == 123.0 and m.sha256 == written.weights_sha256 == cfg.weights_sha256


# ---- process-wide torch settings ----------------------------------------------------------------


def test_predict_grid_changes_torch_threads_only_when_asked(tmp_path: Path) -> None:
    from idcmap.io.open import open_slide
    from idcmap.pipeline.infer import predict_grid, threads_beside_readers
    from idcmap.pipeline.tiles import make_grid

    img = synthetic_he(600, 700, seed=5, tissue=0.7)
    path = write_pyramid_tiff(tmp_path / "he.tiff", img, 4.0, downsamples=(1,), compression="zlib")
    model = load_model(device="cpu")
    before = torch.get_num_threads()
    seen: list[int] = []
    with open_slide(path) as slide:
        grid = make_grid(slide, None, model_mpp=4.0, patch_px=50, stride_px=50, min_tissue=0.0)
        kw = {
            "workers": 1,
            "progress": False,
            "on_block": lambda b: seen.append(torch.get_num_threads()),
        }
        plain, _ = predict_grid(slide, grid, model, **kw)  # type: ignore[arg-type]
        assert set(seen) == {before} and torch.get_num_threads() == before
        seen.clear()
        want = before + 1  # any count different from the current one
        asked, _ = predict_grid(slide, grid, model, torch_threads=want, **kw)  # type: ignore[arg-type]
        assert set(seen) == {want} and torch.get_num_threads() == before  # restored
    np.testing.assert_allclose(plain, asked, atol=1e-5)  # thread counts may sum in other orders
    n = threads_beside_readers(1)
    assert n is not None and 1 <= n <= before and threads_beside_readers(0) is None


def test_a_relative_or_symlinked_path_into_the_package_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The destination check looks at the resolved path: a relative path from inside the
    package, a ``..`` detour and a symlink into it all name the bundled model's folder."""
    from idcmap.model.modelfile import check_destination

    weights = bundled_model_path().parent
    link = tmp_path / "link"
    link.symlink_to(weights, target_is_directory=True)
    detour = tmp_path / "x" / ".." / "link" / "idc-v2.json"
    for path in (link / "idc-v2.json", link / "new.json", detour):
        with pytest.raises(UsageError, match="package"):
            check_destination(path)
    monkeypatch.chdir(weights)
    for rel in ("idc-v2.json", "sub/new.json", "./idc-v1.json"):
        with pytest.raises(UsageError, match="package"):
            check_destination(rel)
    monkeypatch.chdir(tmp_path)
    assert check_destination("mine.json") == Path("mine.json")  # outside: accepted as given
    # and the writers use the check: nothing is written through the symlink
    m = load_model(None, device="cpu")
    before = sorted(p.name for p in weights.iterdir())
    try:
        with pytest.raises(UsageError, match="package"):
            save_model(m.net, m.config, link / "idc-v9.json")
    finally:
        after = sorted(p.name for p in weights.iterdir())
        for name in set(after) - set(before):  # a broken check must not leave them there
            (weights / name).unlink()
    assert after == before


def test_idc_v3_is_opt_in_and_portable() -> None:
    """idc-v3 ships beside the default: it loads by name with its shift-fitted aggregator,
    starts from idc-v2's normalisation, and its file names no folder of a machine."""
    assert {"idc-v2", "idc-v3"} <= set(bundled_models())
    assert bundled_model_path().name != "idc-v3.json"
    v2, v3 = load_model("idc-v2", device="cpu"), load_model("idc-v3", device="cpu")
    assert v3.config.version == "3.0.0" and v3.config.weights_file == "idc-v3.safetensors"
    assert v3.aggregator is not None and v3.aggregator.threshold == pytest.approx(0.32)
    assert v3.config.mean == v2.config.mean and v3.config.std == v2.config.std
    assert v3.config.training["init"]["model"] == "idc-v2"
    text = (bundled_model_path().parent / "idc-v3.json").read_text(encoding="utf-8")
    for folder in ("/work", "/tmp", "/home", "/root", "/srv"):
        assert folder not in text


def test_idc_v4_is_opt_in_and_carries_v2s_aggregator() -> None:
    """idc-v4 (opt-in) is a student distilled from idc-v2: its own network weights, idc-v2's
    normalisation and aggregator unchanged (same tensors, same section and threshold), the
    teacher recorded."""
    from idcmap.model.modelfile import read_config, read_weights
    from idcmap.pipeline.aggregate import PREFIX

    assert "idc-v4" in bundled_models()
    v2p, v4p = bundled_model_path("idc-v2"), bundled_model_path("idc-v4")
    v2, v4 = read_config(v2p), read_config(v4p)
    assert v4.version.startswith("4.") and v4.weights_file == "idc-v4.safetensors"
    assert (v4.mean, v4.std, v4.arch_params) == (v2.mean, v2.std, v2.arch_params)
    assert v4.training["init"]["model"] == v4.training["distill"]["model"] == "idc-v2"
    assert v4.training["distill"]["sha256"] == v2.weights_sha256
    assert {k: v for k, v in v4.aggregator.items() if k != "training"} == {
        k: v for k, v in v2.aggregator.items() if k != "training"
    }
    w2, w4 = read_weights(v2p, v2), read_weights(v4p, v4)
    agg = sorted(k for k in w2 if k.startswith(PREFIX))
    assert agg and all(torch.equal(w2[k], w4[k]) for k in agg)
    assert any(not torch.equal(w2[k], w4[k]) for k in w2 if not k.startswith(PREFIX))
    m = load_model("idc-v4", device="cpu")
    assert m.aggregator is not None and m.aggregator.threshold == pytest.approx(0.5)
    x = load_patches(list_patches(FIXTURE_PATCHES))
    p2, p4 = load_model("idc-v2", device="cpu").predict(x), m.predict(x)
    assert 0 < np.abs(p4 - p2).mean() < 0.15  # a student of v2: close to it, not equal
    text = v4p.read_text(encoding="utf-8")
    for folder in ("/work", "/tmp", "/home", "/root", "/srv"):
        assert folder not in text


def test_the_default_is_idc_v4_glass_and_v2_still_loads() -> None:
    """The bundled default is idc-v4-glass: idc-v4's weights file with the per-slide glass gain;
    its output on examples/8955.tiff is pinned (measured on CPU: 476 tissue cells, 172 IDC cells,
    6.88 mm²; idc-v2: 149 cells, 5.96 mm²). idc-v2 and idc-v1 still load by name."""
    from idcmap.pipeline.segment import segment_slide

    assert bundled_model_path().name == "idc-v4-glass.json"
    m = load_model(device="cpu")
    assert m.config.weights_file == "idc-v4.safetensors"
    assert m.config.stain_norm["method"] == "glass"
    assert m.sha256 == load_model("idc-v4", device="cpu").sha256
    res = segment_slide(ROOT / "examples" / "8955.tiff", model=m, progress=False)
    assert int(res.heatmap.tissue.sum()) == 476
    assert abs(int(res.mask.sum()) - 172) <= 1
    assert res.summary["idc_area_mm2"] == pytest.approx(6.88, abs=0.05)
    assert res.summary["stain_norm"]["method"] == "glass"
    for name in ("idc-v2", "idc-v1"):
        assert load_model(name, device="cpu").config.stain_norm == {}


def test_the_blur_model_section_round_trips_and_is_checked() -> None:
    """``blur_model`` names the second network for out-of-focus tissue: the default carries it,
    it survives to_json/from_dict, a file without it writes none, and a malformed one is a
    ModelError. The named model is bundled, loaded once per model."""
    path = bundled_model_path()
    d = json.loads(path.read_text())
    cfg = ModelConfig.from_dict(d)
    assert cfg.blur_model == {"model": "idc-v4blur", "logit_shift": 1.0}
    assert ModelConfig.from_dict(json.loads(cfg.to_json())).blur_model == cfg.blur_model
    assert "blur_model" not in json.loads(cfg.replace(blur_model={}).to_json())
    for bad in ({"model": ""}, {"logit_shift": 1.0}, {"model": "x", "logit_shift": "nan"}, [1]):
        with pytest.raises(ModelError, match="blur_model"):
            ModelConfig.from_dict({**d, "blur_model": bad})
    m = load_model(device="cpu")
    blur = m.blur_model()
    assert blur is not None and blur.config.version == "4.0.0+blur" and m.blur_model() is blur
    assert load_model("idc-v2", device="cpu").blur_model() is None


def test_a_mistyped_bundled_name_gets_the_closest_one_and_the_list() -> None:
    with pytest.raises(ModelError, match=r"did you mean idc-v4-glass\? bundled: idc-v1,"):
        load_model("idc-v4glass")
    with pytest.raises(ModelError, match=r"bundled: .*idc-v4blur") as e:
        load_model("nonexistent")
    assert "did you mean" not in str(e.value)
    with pytest.raises(ModelError, match="written by 'idcmap train'"):  # a path: no names
        load_model("no/such/model.json")


def test_the_ink_model_section_round_trips_and_is_checked() -> None:
    """``ink_model`` names the second network for tissue under marker ink: the default carries
    it, it survives to_json/from_dict, a file without it writes none, and a malformed one is a
    ModelError. The named model is bundled, loaded once per model."""
    path = bundled_model_path()
    d = json.loads(path.read_text())
    cfg = ModelConfig.from_dict(d)
    assert cfg.ink_model == {"model": "idc-v4ink"}
    assert ModelConfig.from_dict(json.loads(cfg.to_json())).ink_model == cfg.ink_model
    assert "ink_model" not in json.loads(cfg.replace(ink_model={}).to_json())
    for bad in ({"model": ""}, {"weight": 1.0}, [1], "idc-v4ink"):
        with pytest.raises(ModelError, match="ink_model"):
            ModelConfig.from_dict({**d, "ink_model": bad})
    m = load_model(device="cpu")
    ink = m.ink_model()
    assert ink is not None and ink.config.version == "4.0.0+ink" and m.ink_model() is ink
    assert not ink.config.ink_model and not ink.config.blur_model  # no third network
    assert load_model("idc-v2", device="cpu").ink_model() is None
