"""Per-slide stain normalisation (idcmap.pipeline.stain): on real mosaics shifted by known colour
transforms, the map brings them back near the original; a model without the config field runs
exactly as before; the model file round-trips the field; and the pipeline's mask on a shifted
mosaic moves towards the unshifted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shared_data import SHARED, needs_shared
from tiffgen import write_pyramid_tiff

from idcmap.errors import ModelError
from idcmap.io.open import open_slide
from idcmap.model.modelfile import (
    bundled_model_path,
    read_config,
    save_config,
    weights_path,
)
from idcmap.model.runtime import load_model
from idcmap.params import Params
from idcmap.pipeline.front import stain_reference
from idcmap.pipeline.segment import segment_slide
from idcmap.pipeline.stain import (
    METHODS,
    StainMap,
    StainStats,
    fit_reference,
    measure,
    optical_density,
    stain_map,
)
from idcmap.pipeline.tissue import detect_tissue, tissue_mask_from_rgb
from idcmap.train import degrade as dg

SLIDES = SHARED / "idc" / "slides"
#: TRAIN mosaics of the project's split (the reference of these tests is fitted on them)
TRAIN = ("8863", "8867", "8914", "8950")
MPP = 4.0


def _level0(stem: str) -> np.ndarray:
    with open_slide(SLIDES / f"{stem}.tiff") as s:
        w, h = s.info.dimensions
        return s.read_region((0, 0), 0, (w, h))


def _thumb(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tissue pass's view of a 4-µm image: box 4:1 (16 µm/px) and its tissue mask."""
    h, w = rgb.shape[0] // 4 * 4, rgb.shape[1] // 4 * 4
    small = np.asarray(Image.fromarray(rgb[:h, :w]).reduce(4))
    return small, tissue_mask_from_rgb(small, 4 * MPP)


def _redraw(rgb: np.ndarray) -> np.ndarray:
    return tissue_mask_from_rgb(rgb, 4 * MPP)


@pytest.fixture(scope="module")
def train_thumbs() -> list[tuple[np.ndarray, np.ndarray]]:
    if not SHARED.is_dir():
        pytest.skip(f"../shared/data is absent (CI has it): {SHARED}")
    out = []
    for stem in TRAIN:
        with open_slide(SLIDES / f"{stem}.tiff") as s:
            t = detect_tissue(s)
        out.append((t.thumbnail, t.mask))
    return out


SHIFTS = {
    "yellowish white balance": lambda x: dg.white_balance(x, (1.0, 0.95, 0.92)),
    "bluish white balance": lambda x: dg.white_balance(x, (0.93, 0.95, 1.0)),
    "haematoxylin +0.01": lambda x: dg.hed_shift(x, h=0.01),
    "eosin +0.01": lambda x: dg.hed_shift(x, e=0.01),
}


@pytest.fixture(scope="module")
def region() -> np.ndarray:
    """A real mosaic region (VALID mosaic 9037), 4 µm/px, sides a multiple of 4."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared/data is absent (CI has it): {SHARED}")
    rgb = _level0("9037")[:1600, :1600]
    return rgb[: rgb.shape[0] // 4 * 4, : rgb.shape[1] // 4 * 4]


@needs_shared
@pytest.mark.parametrize(
    ("method", "shift"),
    [("glass", s) for s in SHIFTS]
    + [(m, "yellowish white balance") for m in ("glass+od", "glass+lab", "glass+macenko")],
)
def test_map_brings_a_shifted_mosaic_back(
    train_thumbs, region: np.ndarray, method: str, shift: str
) -> None:
    """A real mosaic region shifted by a known colour transform (a scanner's white balance, an
    even change of stain amount, both of which tint the glass too): after each one's own map
    the shifted copy lies within a few grey levels of the original (also mapped), far closer
    than it was, and the redrawn tissue masks agree."""
    ref = fit_reference(train_thumbs, method, _redraw)
    rgb = region
    moved = SHIFTS[shift](rgb)
    maps, masks = [], []
    for img in (rgb, moved):
        thumb, mask = _thumb(img)
        smap, m = stain_map(thumb, mask, ref, mask_fn=_redraw)
        assert smap is not None
        maps.append(smap(img).astype(np.float32))
        masks.append(m)
    tissue = np.repeat(np.repeat(masks[0], 4, 0), 4, 1)
    before = np.abs(moved.astype(np.float32) - rgb)[tissue].mean()
    after = np.abs(maps[1] - maps[0])[tissue].mean()
    assert after < 3.0 and after < before / 3, (before, after)
    iou = (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum()
    assert iou > 0.95


@needs_shared
def test_glass_redraws_a_tissue_mask_that_a_tint_spread_over_the_glass(train_thumbs) -> None:
    """A yellowish white balance tints the mosaic's glass filler enough for the saturation test
    to call all of it tissue; the glass gain gives back the original mask."""
    rgb = _level0("8917")
    _, mask = _thumb(rgb)
    tinted, tinted_mask = _thumb(SHIFTS["yellowish white balance"](rgb))
    assert tinted_mask.mean() > mask.mean() + 0.2  # the glass became "tissue"
    ref = fit_reference(train_thumbs, "glass", _redraw)
    _, redrawn = stain_map(tinted, tinted_mask, ref, mask_fn=_redraw)
    assert (redrawn & mask).sum() / (redrawn | mask).sum() > 0.95


def test_od_map_is_exact_for_a_gain_and_leaves_the_reference_alone() -> None:
    """On a synthetic image: a per-channel gain (an OD offset) is undone to rounding by ``od``
    with the image's own statistics as the reference; a map to its own statistics is the
    identity for every method."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(60, 240, (64, 64, 3), dtype=np.uint8)
    mask = np.ones((64, 64), bool)
    for method in METHODS:
        stats, _ = measure(rgb, mask, method)
        if stats is None:  # macenko needs stain-like colours: not this noise
            continue
        same = StainMap(stats, stats)(rgb)
        assert np.abs(same.astype(int) - rgb).max() <= 1, method
    ref, _ = measure(rgb, mask, "od")
    assert ref is not None
    gained = dg.white_balance(rgb, (0.9, 1.0, 0.8))
    src, _ = measure(gained, mask, "od")
    assert src is not None
    back = StainMap(src, ref)(gained)
    assert np.abs(back.astype(int) - rgb).mean() < 1.0
    # OD of white is 0; 0 is floored at 1 (finite)
    assert np.allclose(
        optical_density(np.array([255, 1, 0], np.uint8)), [0.0, np.log(255), np.log(255)]
    )


def test_a_table_map_is_the_same_px_by_px_whatever_the_array_shape() -> None:
    """A table map (the glass gain, per channel) gives every px the same value whether it is
    given a block, the block's tiles stacked (the tile pass's N×50×50×3), a strided view or a
    flat list of px, and a writable array each time (the network reads it in place)."""
    rng = np.random.default_rng(3)
    block = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    src = StainStats.from_dict("glass", {"glass": [0.08, 0.05, 0.11]})
    ref = StainStats.from_dict("glass", {"glass": [0.04, 0.045, 0.042]})
    smap = StainMap(src, ref)
    whole = smap(block)
    assert whole.shape == block.shape and whole.dtype == np.uint8 and whole.flags.writeable
    assert not np.array_equal(whole, block)  # (the gain moves the colours)
    tiles = np.stack([block[r : r + 50, c : c + 50] for r in (0, 100) for c in (0, 50, 150)])
    mapped = smap(tiles)
    assert mapped.flags.writeable
    for i, (r, c) in enumerate((r, c) for r in (0, 100) for c in (0, 50, 150)):
        assert np.array_equal(mapped[i], whole[r : r + 50, c : c + 50])
    assert np.array_equal(smap(block[::3, 5::2]), whole[::3, 5::2])
    assert np.array_equal(smap(block.reshape(-1, 3)), whole.reshape(-1, 3))
    assert smap(block[:0]).shape == (0, 200, 3)


def test_a_slide_without_glass_keeps_its_own_white() -> None:
    """All tissue, no glass (the brightest pixels are pink stroma): no glass gain is made up
    (the map leaves the colour alone) and the record says why."""
    rng = np.random.default_rng(1)
    pink = np.clip(rng.normal((225, 170, 200), 8, (40, 40, 3)), 0, 255).astype(np.uint8)
    mask = np.ones((40, 40), bool)
    ref = StainStats("glass", {"glass": (0.02, 0.03, 0.02)})
    smap, _ = stain_map(pink, mask, ref)
    assert smap is not None and np.array_equal(smap(pink), pink)
    assert "no glass" in smap.to_dict()["notes"][0]
    glass = np.full((40, 40, 3), (236, 228, 221), np.uint8)  # a yellowish glass
    glass[:20] = pink[:20]
    smap, _ = stain_map(glass, mask, ref)
    assert smap is not None and "notes" not in smap.to_dict()
    white = smap(glass[30:, :1])[0, 0]
    assert np.abs(white.astype(int) - 255 * np.exp(-np.array(ref.values["glass"]))).max() <= 1


def test_stats_round_trip_and_refuse_bad_input() -> None:
    s = StainStats("glass+od", {"glass": (0.1, 0.1, 0.1), "mean": (1, 2, 3), "std": (1, 1, 1)})
    assert StainStats.from_dict("glass+od", s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown"):
        StainStats.from_dict("reinhard-ish", s.to_dict())
    with pytest.raises(ValueError, match="lacks"):
        StainStats.from_dict("glass+macenko", s.to_dict())
    few = np.zeros((10, 10), bool)
    assert measure(np.zeros((10, 10, 3), np.uint8), few, "od")[0] is None


def _with_stain(tmp_path: Path, section: dict, name: str = "idc-v2-stain") -> Path:
    cfg = read_config(bundled_model_path("idc-v2"))
    out = tmp_path / f"{name}.json"
    save_config(
        cfg.replace(stain_norm=section),
        out,
        weights_path(bundled_model_path("idc-v2"), cfg),
    )
    return out


def test_model_file_round_trips_the_field(tmp_path: Path) -> None:
    section = {
        "method": "glass+od",
        "ref": {"glass": [0.01, 0.02, 0.01], "mean": [0.2, 0.5, 0.3], "std": [0.1, 0.2, 0.1]},
        "fitted_on": ["8863"],
    }
    path = _with_stain(tmp_path, section)
    assert read_config(path).stain_norm == section
    assert load_model(path, device="cpu").config.stain_norm == section
    ref = stain_reference(section)
    assert ref is not None and ref.method == "glass+od"
    # a model without it is written without it (the bundled JSONs stay as they are)
    plain = read_config(bundled_model_path("idc-v2"))
    assert plain.stain_norm == {} and "stain_norm" not in json.loads(plain.to_json())
    bad = json.loads(path.read_text())
    bad["stain_norm"] = {"method": "glass+od", "ref": {"glass": [0, 0, 0]}}
    path.write_text(json.dumps(bad))
    with pytest.raises(ModelError, match="lacks"):
        read_config(path)


@needs_shared
def test_a_model_without_the_field_runs_as_before(tmp_path: Path) -> None:
    """idc-v2 has no stain_norm: "auto" and "none" give the same heatmap and mask, and the
    summary holds neither the parameter nor a stain record (0.3's summary.json keys)."""
    slide = SLIDES / "8955.tiff"
    model = load_model("idc-v2", device="cpu")
    runs = [
        segment_slide(slide, model=model, progress=False, params=Params(stain_norm=v))
        for v in ("auto", "none")
    ]
    a, b = runs
    assert np.array_equal(a.heatmap.prob, b.heatmap.prob, equal_nan=True)
    assert np.array_equal(a.mask, b.mask)
    for r in runs:
        d = r.summary.to_json()
        assert "stain_norm" not in d and "stain_norm" not in d["parameters"]
        assert "stain_norm" not in d["timings_s"]


@needs_shared
def test_pipeline_on_a_shifted_mosaic_moves_towards_the_unshifted_mask(
    tmp_path: Path, train_thumbs
) -> None:
    """A VALID mosaic with a yellowish scanner white balance, written as a JPEG pyramid: with
    the model's stain normalisation its IDC mask is closer to the mask of the mosaic as it is
    than without; the summary records the method and the slide's statistics."""
    rgb = _level0("9037")
    clean = write_pyramid_tiff(tmp_path / "clean.tiff", rgb, MPP)
    shifted = write_pyramid_tiff(
        tmp_path / "shifted.tiff", SHIFTS["yellowish white balance"](rgb), MPP
    )
    ref = fit_reference(train_thumbs, "glass", _redraw)
    path = _with_stain(tmp_path, {"method": ref.method, "ref": ref.to_dict()})
    normed, plain = load_model(path, device="cpu"), load_model("idc-v2", device="cpu")

    def mask(slide: Path, model, **kw) -> np.ndarray:
        r = segment_slide(slide, model=model, progress=False, params=Params(**kw))
        return np.asarray(r.mask, bool)

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        return 2 * (a & b).sum() / max(1, a.sum() + b.sum())

    base = mask(clean, plain)
    without = dice(mask(shifted, plain), base)
    with_norm = dice(mask(shifted, normed), base)
    assert with_norm > without + 0.05 and with_norm > 0.8, (without, with_norm)
    # its own unshifted mask is as close (the map undoes the tint)
    assert dice(mask(shifted, normed), mask(clean, normed)) > 0.9
    off = dice(mask(shifted, normed, stain_norm="none"), base)
    assert off == pytest.approx(without)  # --stain-norm none: the colour as read
    r = segment_slide(shifted, model=normed, progress=False)
    rec = r.summary.to_json()["stain_norm"]
    assert rec["method"] == "glass" and len(rec["slide"]["glass"]) == 3
    assert r.summary.to_json()["parameters"]["stain_norm"] == "auto"


@needs_shared
def test_train_stain_norm_cli_writes_a_loadable_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`idcmap train-stain-norm` on two mosaics: the model it writes keeps idc-v2's weights and
    config, carries the glass reference (the mean of the slides' glass OD), and loads; a call
    without slides is one line and a non-zero exit."""
    from idcmap.cli.main import main
    from idcmap.pipeline.stain import glass_od

    out = tmp_path / "v2-glass.json"
    slides = [SLIDES / "8863.tiff", SLIDES / "8867.tiff"]
    rc = main(["train-stain-norm", *map(str, slides), "--model", "idc-v2", "--out", str(out)])
    assert rc == 0
    cfg, v2 = read_config(out), read_config(bundled_model_path("idc-v2"))
    assert cfg.weights_sha256 == v2.weights_sha256 and cfg.aggregator == v2.aggregator
    sn = cfg.stain_norm
    assert sn["method"] == "glass" and sn["fitted_on"] == ["8863", "8867"]
    glass = []
    for s in slides:
        with open_slide(s) as slide:
            glass.append(glass_od(detect_tissue(slide).thumbnail))
    assert np.allclose(sn["ref"]["glass"], np.mean(glass, axis=0), atol=1e-6)
    assert load_model(out, device="cpu").config.stain_norm == sn
    rc = main(["train-stain-norm", "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "--slides-dir" in err and "\n" not in err


@needs_shared
@pytest.mark.parametrize("base", ["idc-v2", "idc-v3", "idc-v4"])
def test_bundled_glass_models_are_their_base_plus_the_map(base: str) -> None:
    """idc-v2-glass / idc-v3-glass (opt-in) and idc-v4-glass (the default) are the base
    model's own file (same weights file and sha256, same aggregator) plus a glass reference
    fitted on the 19 training mosaics (idc-v4-glass also names its networks for blurred cells
    and for cells under ink, which a clean mosaic never calls); with --stain-norm none they give
    the base model's heatmap exactly."""
    from idcmap.model.modelfile import bundled_models

    assert f"{base}-glass" in bundled_models()
    plain, glass = (
        read_config(bundled_model_path(base)),
        read_config(bundled_model_path(f"{base}-glass")),
    )
    assert glass.weights_file == plain.weights_file and glass.weights_sha256 == plain.weights_sha256
    assert (
        glass.aggregator == plain.aggregator
        and glass.replace(version=plain.version, stain_norm={}, blur_model={}, ink_model={})
        == plain
    )
    sn = glass.stain_norm
    assert sn["method"] == "glass" and len(sn["fitted_on"]) == 19 and "8917" not in sn["fitted_on"]
    slide = SLIDES / "9076.tiff"  # a VALID mosaic
    a = segment_slide(slide, model=base, device="cpu", progress=False)
    b = segment_slide(
        slide, model=f"{base}-glass", device="cpu", progress=False, params=Params(stain_norm="none")
    )
    assert np.array_equal(a.heatmap.prob, b.heatmap.prob, equal_nan=True)
    c = segment_slide(slide, model=f"{base}-glass", device="cpu", progress=False)
    assert c.summary.to_json()["stain_norm"]["method"] == "glass"
    dice = 2 * (a.mask & c.mask).sum() / (a.mask.sum() + c.mask.sum())
    assert dice > 0.9  # a clean slide of the training lab: its glass moves little
