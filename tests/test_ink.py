"""Pen ink over tissue (idcmap.pipeline.ink, inkfield): measured, taken off the pixels, kept as
tissue; ink on glass left out; the IDC under a stroke kept. On the repository's example mosaic
(8955) with marks painted by idcmap.train.artefacts, and on ../shared's 9124 (a blood clot)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from scipy import ndimage

from idcmap.params import Params
from idcmap.pipeline import ink as inkmod
from idcmap.pipeline.correct import PixelCorrector
from idcmap.pipeline.inkfield import ink_field, paint_opacity
from idcmap.pipeline.qcverdict import REVIEW_INK_NEAR_IDC
from idcmap.pipeline.tissue import tissue_mask_from_rgb
from idcmap.train.artefacts import INK_COLOURS, paint_ink
from idcmap.train.data import read_level0

sys.path.insert(0, str(Path(__file__).parent))
from tiffgen import write_pyramid_tiff

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "8955.tiff"


@pytest.fixture(scope="module")
def example() -> tuple[np.ndarray, np.ndarray]:
    """8955 at 4 µm/px and its IDC cells (bool, level-0 px)."""
    rgb = read_level0(EXAMPLE)
    idc = np.zeros(rgb.shape[:2], bool)
    with open(ROOT / "examples" / "8955.cells.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["label"] == "1":
                x, y, w, h = (int(r[k]) for k in ("x", "y", "width", "height"))
                idc[y : y + h, x : x + w] = True
    return rgb, idc


@pytest.fixture(scope="module")
def clean_run() -> dict:
    from idcmap.pipeline.segment import segment_slide

    return segment_slide(EXAMPLE, progress=False, device="cpu", params=Params(qc="all")).summary


def thumb(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).reduce(4))


def reduce_mask(m: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).reduce(4)) >= 128


def test_texture_is_the_rms_about_the_3x3_median(example: tuple[np.ndarray, np.ndarray]) -> None:
    """:func:`~idcmap.pipeline.ink.texture`'s median (a sorting network, for speed) is
    ``ndimage.median_filter``'s, borders included: on a painted thumbnail and on thin strips."""
    rgb, _ = example
    out, _, _ = paint_ink(rgb, 4.0, np.random.default_rng(3), colour="blue", alpha=0.6)
    painted = thumb(out)
    for img in (painted, painted[:1], painted[:, :2], painted[5:8, 9:10]):
        c = img[..., 0].astype(np.float32) + img[..., 1] + img[..., 2]
        hp = c - ndimage.median_filter(c, 3)
        want = np.sqrt(np.maximum(ndimage.uniform_filter(hp * hp, 5), 0))
        np.testing.assert_array_equal(inkmod.texture(img), want.astype(np.float32))


@pytest.mark.parametrize(("colour", "alpha"), [("blue", 0.6), ("red", 0.45), ("black", 0.5)])
def test_the_ink_field_is_the_painted_inks_od(
    example: tuple[np.ndarray, np.ndarray], colour: str, alpha: float
) -> None:
    """A mark over tissue: the ink's OD measured at its edge is the OD the painter added,
    pixel by pixel (its dye, −log(1 − α + α·c), made uneven along the mark), within 0.1."""
    rgb, _ = example
    out, painted, _ = paint_ink(
        rgb, 4.0, np.random.default_rng(3), colour=colour, shape="stroke", where="tissue",
        width_mm=1.0, alpha=alpha,
    )  # fmt: skip
    t, t0 = thumb(out), thumb(rgb)
    mark = reduce_mask(painted)[: t.shape[0], : t.shape[1]]
    tissue = tissue_mask_from_rgb(t0, 16.0)
    field = ink_field(t, mark, tissue & ~mark, 16.0)
    added = np.log((t0.astype(np.float32) + 1) / (t.astype(np.float32) + 1))
    under = mark & tissue
    err = np.median(np.abs(field[under] - added[under]), axis=0)
    c = np.asarray(INK_COLOURS[colour]) / 255
    assert np.all(err < 0.1), (err, -np.log(1 - alpha + alpha * c))


def test_ink_on_glass_has_no_field_and_is_not_tissue(
    example: tuple[np.ndarray, np.ndarray],
) -> None:
    rgb, _ = example
    out, painted, _ = paint_ink(
        rgb, 4.0, np.random.default_rng(1), colour="green", shape="dots", where="glass",
        width_mm=0.6,
    )  # fmt: skip
    t = thumb(out)
    mark = reduce_mask(painted)[: t.shape[0], : t.shape[1]]
    tissue = tissue_mask_from_rgb(thumb(rgb), 16.0)
    assert mark.any() and not (mark & tissue).any()
    assert not ink_field(t, mark, tissue & ~mark, 16.0).any()
    assert inkmod.ink_over_tissue(t, mark, 16.0).sum() < 0.05 * mark.sum()


@pytest.mark.parametrize("colour", ["green", "blue", "red"])
def test_paint_is_told_from_a_dye_and_the_tissue_under_it_stays_tissue(
    example: tuple[np.ndarray, np.ndarray], colour: str
) -> None:
    """The same stroke of α 0.8 over tissue as a dye and as paint (its colour mixed over the
    pixels): the dye gets no opacity; the paint gets one near the painter's, and with it the
    tissue the paint flattened stays over tissue (> 90 % of it), where the dye's texture rule
    reads more than a fifth of it as glass."""
    rgb, _ = example
    tissue = tissue_mask_from_rgb(thumb(rgb), 16.0)
    kw = {"colour": colour, "shape": "stroke", "where": "tissue", "width_mm": 1.0, "alpha": 0.8}
    out = {}
    for blend in ("dye", "paint"):
        img, painted, _ = paint_ink(rgb, 4.0, np.random.default_rng(5), blend=blend, **kw)
        t = thumb(img)
        mark = reduce_mask(painted)[: t.shape[0], : t.shape[1]]
        out[blend] = (t, mark, paint_opacity(t, mark, tissue & ~mark, 16.0))
    assert out["dye"][2] is None
    t, mark, opacity = out["paint"]
    assert opacity is not None
    under = mark & tissue
    assert 0.5 <= float(np.median(opacity[under])) <= 0.9
    core = under & ndimage.binary_erosion(tissue, iterations=3)
    as_dye = inkmod.ink_over_tissue(t, mark, 16.0)
    as_paint = inkmod.ink_over_tissue(t, mark, 16.0, opacity)
    assert as_paint[core].mean() > 0.9 > as_dye[core].mean() + 0.2, (
        as_paint[core].mean(),
        as_dye[core].mean(),
    )


def test_the_corrector_takes_the_ink_field_off_a_block() -> None:
    """The tile pass's transform: a constant field on the thumbnail's grid comes off every
    pixel of a block as ``(rgb + 1)·exp(od) − 1``; where the field is 0 the block is as read."""
    od = np.zeros((20, 30, 3), np.float32)
    od[:, :15] = (0.5, 0.2, 0.1)
    # thumbnail px = 4 level-0 px; model px = 1 level-0 px; stride 50
    remover = PixelCorrector((4.0, 4.0), (1.0, 1.0), 50, ink_od=od)
    block = np.full((50, 100, 3), 100, np.uint8)
    out = remover(0, 0, block)  # x 0–99 model px = thumbnail px 0–25: field on px < 15
    want = np.clip(np.rint(101 * np.exp([0.5, 0.2, 0.1]) - 1), 0, 255)
    assert np.array_equal(out[:, :50], np.broadcast_to(want, (50, 50, 3)))
    assert np.array_equal(out[:, 64:], block[:, 64:])
    assert remover(0, 3, block) is block  # x ≥ 150 model px: thumbnail px ≥ 37, no field


def test_the_corrector_halves_a_folds_od_and_takes_ink_off_with_it() -> None:
    """A fold's gain (:func:`fold_gain`: 1/2 inside, 1 outside) halves the OD of a block's px:
    ``(rgb + 1)·exp(OD/2) − 1`` = √(256·(rgb + 1)) − 1 (99 → 159); with an ink field too, both
    come off (OD/2 − ink); far from the fold, the block is as read."""
    from idcmap.pipeline.correct import FOLD_OD_FACTOR, fold_gain

    fold = np.zeros((40, 40), bool)
    fold[:, :20] = True
    gain = fold_gain(fold)
    assert FOLD_OD_FACTOR == 2.0 and np.allclose(gain[:, :15], 0.5) and np.all(gain[:, 25:] == 1)
    block = np.full((50, 160, 3), 99, np.uint8)
    out = PixelCorrector((4.0, 4.0), (1.0, 1.0), 50, gain=gain)(0, 0, block)
    assert np.array_equal(out[:, :56], np.full((50, 56, 3), 159, np.uint8))  # thumbnail px < 14
    assert np.array_equal(out[:, 100:], block[:, 100:])  # thumbnail px ≥ 25
    ink = np.zeros((40, 40, 3), np.float32)
    ink[:, :20] = (0.5, 0.2, 0.1)
    both = PixelCorrector((4.0, 4.0), (1.0, 1.0), 50, ink_od=ink, gain=gain)(0, 0, block)
    od = -np.log(100 / 256)
    want = np.rint(256 * np.exp(-(od / 2 - np.array([0.5, 0.2, 0.1]))) - 1).clip(0, 255)
    assert np.array_equal(both[0, 0], want.astype(np.uint8))
    with pytest.raises(ValueError, match="needs"):
        PixelCorrector((4.0, 4.0), (1.0, 1.0), 50)


def test_blend_inked_mixes_the_network_with_the_tissue_around() -> None:
    """An un-inked cell's probability is 0.7 × its own + 0.3 × the tissue around the ink's
    (``INK_NET_WEIGHT``), or 0.4 × its own + 0.6 × the tissue around's where that reads more
    IDC (``INK_NET_WEIGHT_UP``: the un-inked read errs towards losing IDC); cells off the ink,
    and a slide whose every cell is inked, are as they were."""
    prob = np.full((20, 20), np.nan, np.float32)
    prob[5:15, 2:18] = 0.9
    inked = np.zeros((20, 20), bool)
    inked[5:15, 9:12] = True
    prob[inked] = 0.3
    out = inkmod.blend_inked(prob, inked)
    assert (inkmod.INK_NET_WEIGHT, inkmod.INK_NET_WEIGHT_UP) == (0.7, 0.4)
    assert np.allclose(out[inked], 0.4 * 0.3 + 0.6 * 0.9, atol=1e-5)
    assert np.array_equal(out[~inked], prob[~inked], equal_nan=True)
    one = inkmod.blend_inked(prob, inked, weight_up=None)  # the same weight both ways
    assert np.allclose(one[inked], 0.7 * 0.3 + 0.3 * 0.9, atol=1e-5)
    low = np.where(np.isfinite(prob), 0.3, np.nan).astype(np.float32)
    low[inked] = 0.9  # the network reads more IDC than the tissue around: 0.7 on it
    assert np.allclose(inkmod.blend_inked(low, inked)[inked], 0.7 * 0.9 + 0.3 * 0.3, atol=1e-5)
    every = np.isfinite(prob)
    assert inkmod.blend_inked(prob, every) is prob


def test_fill_cells_bridges_a_stroke() -> None:
    """Cells under a stroke across a region of high probability get the region's."""
    prob = np.full((20, 20), np.nan, np.float32)
    prob[5:15, 2:18] = 0.9
    fill = np.zeros((20, 20), bool)
    fill[5:15, 9:12] = True
    prob[fill] = np.nan
    out = inkmod.fill_cells(prob, fill)
    assert np.allclose(out[fill], 0.9, atol=1e-5)
    assert np.isnan(out[0, 0]) and np.array_equal(out[~fill], prob[~fill], equal_nan=True)


def test_translucent_ink_over_tissue_keeps_the_tissue_area(
    example: tuple[np.ndarray, np.ndarray], clean_run: dict, tmp_path: Path
) -> None:
    """Translucent marks over the tissue and an opaque one on glass: the slide's tissue area
    stays within 10 % of the clean slide's (0.2.0 counted the ink as tissue), and the summary
    says where the ink lies."""
    from idcmap.pipeline.segment import segment_slide

    rgb, idc = example
    rng = np.random.default_rng(7)
    out, _, _ = paint_ink(rgb, 4.0, rng, colour="blue", shape="stroke", where="tissue", alpha=0.5)
    out, _, _ = paint_ink(out, 4.0, rng, colour="red", shape="dots", where="tissue", alpha=0.4)
    out, _, _ = paint_ink(out, 4.0, rng, colour="black", shape="circle", region=idc, alpha=0.6)
    path = write_pyramid_tiff(tmp_path / "inked.tiff", out, 4.0)
    s = {m: segment_slide(path, progress=False, device="cpu", params=Params(qc=m)).summary
         for m in ("none", "all")}  # fmt: skip
    clean = clean_run["tissue_area_mm2"]
    assert s["none"]["tissue_area_mm2"] > 1.1 * clean  # the ink on glass read as tissue
    assert abs(s["all"]["tissue_area_mm2"] / clean - 1) <= 0.10
    ink = s["all"]["qc"]["ink"]
    assert ink["over_tissue_mm2"] > 1 and ink["on_glass_mm2"] > 1
    assert ink["over_tissue_mm2"] == pytest.approx(ink["uninked_mm2"] + ink["filled_mm2"], abs=1e-3)
    # the circle round the IDC lies next to it: the verdict says how much IDC was read through
    # ink, as mm² and as a share of the IDC area, and flags the slide for it
    idc_mm2 = s["all"]["idc_area_mm2"]
    assert ink["near_idc_mm2"] > REVIEW_INK_NEAR_IDC * idc_mm2, (ink, idc_mm2)
    assert ink["near_idc_pct_of_idc"] == pytest.approx(
        100 * ink["near_idc_mm2"] / idc_mm2, rel=0.05
    )
    assert any("IDC read through ink" in r for r in s["all"]["qc"]["reasons"]), s["all"]["qc"]


def test_a_stroke_across_an_idc_region_does_not_split_it(
    example: tuple[np.ndarray, np.ndarray], clean_run: dict, tmp_path: Path
) -> None:
    """A green stroke across 8955's IDC region: 0.2.0 cuts the region in two and loses half
    its area; with QC the ink is taken off the pixels and the region stays one, its area
    within 15 % of the clean slide's. (Specks of one heatmap cell where the stroke's edge
    crosses a cell, 0.006–0.015 mm², may come and go beside it: the region is the largest.)"""
    from idcmap.pipeline.segment import segment_slide

    rgb, idc = example
    out, painted, _ = paint_ink(
        rgb, 4.0, np.random.default_rng(2), colour="green", shape="stroke", where="idc",
        region=idc, width_mm=0.6, alpha=0.7,
    )  # fmt: skip
    assert (painted & idc).sum() > 0.05 * idc.sum()
    path = write_pyramid_tiff(tmp_path / "stroke.tiff", out, 4.0)
    r = {m: segment_slide(path, progress=False, device="cpu", params=Params(qc=m))
         for m in ("none", "all")}  # fmt: skip
    s = {m: x.summary for m, x in r.items()}
    largest = {m: max(g.area_um2 for g in x.regions) / 1e6 for m, x in r.items()}
    clean = clean_run["idc_area_mm2"]
    assert clean_run["regions"] == 1
    assert s["none"]["regions"] >= 2 and largest["none"] < 0.6 * clean  # the stroke cuts it
    assert largest["all"] >= 0.85 * clean  # one region holds the IDC
    assert largest["all"] >= 0.97 * s["all"]["idc_area_mm2"]  # the rest are specks
    assert abs(s["all"]["idc_area_mm2"] / clean - 1) <= 0.15
    # the region says how much of it was read through ink, in QuPath and in summary.json: about
    # as much as the painted stroke covers of it (measured 28.5 % against 20.6 %: the QC
    # stage's ink outline, on its 16-µm grid, takes in the mark's soft rim)
    big = max(range(len(r["all"].regions)), key=lambda i: r["all"].regions[i].area_um2)
    poly = r["all"].regions[big].polygon
    rows, cols = np.nonzero(painted)
    painted_pct = 100 * shapely.contains_xy(poly, cols + 0.5, rows + 0.5).sum()
    painted_pct /= shapely.area(poly)
    region = [
        f for f in r["all"].to_geojson()["features"] if f["properties"]["name"] == f"IDC {big + 1}"
    ]
    got = region[0]["properties"]["measurements"]["Ink % of area"]
    assert painted_pct > 5 and 0.9 * painted_pct < got < 1.5 * painted_pct, (got, painted_pct)
    entry = s["all"]["measurements"]["regions"][big]["artefact_pct_of_area"]
    assert entry["ink"] == pytest.approx(got, abs=0.01)
    assert "artefact_pct_of_area" not in s["none"]["measurements"]["regions"][0]
    assert all("Ink % of area" not in f["properties"].get("measurements", {})
               for f in r["none"].to_geojson()["features"])  # fmt: skip


def test_the_cells_under_ink_are_read_by_the_ink_network_from_the_tiles_as_scanned(
    example: tuple[np.ndarray, np.ndarray], clean_run: dict, tmp_path: Path
) -> None:
    """A blue stroke of paint (α 0.6) across 8955's IDC: the default model's ink network
    (``ink_model``) reads the cells under it a second time; no cell away from the mark moves
    against the same model without that section, the IDC area stays within 15 % of the clean
    slide's (6.04 against 6.88 mm² when written; 6.24 without the ink network), and the pass
    is timed with the QC stage's fill."""
    from idcmap.model.runtime import load_model
    from idcmap.pipeline.segment import segment_slide

    rgb, idc = example
    out, painted, _ = paint_ink(
        rgb, 4.0, np.random.default_rng(2), colour="blue", shape="stroke", where="idc",
        region=idc, width_mm=0.8, alpha=0.6, blend="paint",
    )  # fmt: skip
    path = write_pyramid_tiff(tmp_path / "paint.tiff", out, 4.0)
    on = load_model(device="cpu")
    off = load_model(device="cpu")
    off.config = off.config.replace(ink_model={})
    assert on.config.ink_model and on.ink_model() is not None and off.ink_model() is None
    r = {
        name: segment_slide(path, model=m, progress=False) for name, m in (("on", on), ("off", off))
    }
    moved = np.isfinite(r["on"].heatmap.prob) & (r["on"].heatmap.prob != r["off"].heatmap.prob)
    assert moved.sum() > 50
    rows, cols = moved.shape
    cell = 50  # heatmap cells of 200 µm: 50 px of this 4-µm slide
    near = np.zeros_like(moved)
    ys, xs = np.nonzero(painted)
    near[np.minimum(ys // cell, rows - 1), np.minimum(xs // cell, cols - 1)] = True
    near = ndimage.binary_dilation(near, iterations=3)  # the blend's tissue around: σ ≤ 2 cells
    assert not (moved & ~near).any()
    area = r["on"].summary["idc_area_mm2"]
    assert abs(area / clean_run["idc_area_mm2"] - 1) <= 0.15, area
    assert r["on"].summary["timings_s"]["qc_fill"] > r["off"].summary["timings_s"]["qc_fill"]


def test_the_screen_does_not_change_what_is_found(
    example: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pixel classifier first screens a 2:1 reduction, then classifies the flagged
    pixels on boxes round them: a pixel's probability is its probability on the whole
    thumbnail, whatever the screen flagged (the boxes sit on the thumbnail's 4-px grid with
    the features' whole reach as context). Before, the screen's threshold moved pixels' ink
    probabilities by up to 0.5 and the masks and the ink's field with them."""
    from idcmap.pipeline import qc

    rgb, idc = example
    out, _, _ = paint_ink(
        rgb, 4.0, np.random.default_rng(2), colour="green", shape="stroke", where="idc",
        region=idc, width_mm=0.6, alpha=0.7,
    )  # fmt: skip
    t = thumb(out)[1:, 3:]  # a thumbnail whose size is not a multiple of 4
    tissue = tissue_mask_from_rgb(t, 16.0)
    found = {}
    for screen in (0.0, 0.1, 0.2):  # 0: every pixel that absorbs light is classified
        monkeypatch.setattr(qc, "SCREEN_P", screen)
        found[screen] = qc.find_artefacts(t, 16.0, tissue)
    ref = found[0.0]
    assert ref.masks["ink"].sum() > 1000
    for screen in (0.1, 0.2):
        for kind in ("ink", "fold", "debris"):
            assert np.array_equal(found[screen].masks[kind], ref.masks[kind]), (screen, kind)
        assert found[screen].ink is not None and ref.ink is not None
        assert np.array_equal(found[screen].ink.od, ref.ink.od)


def test_blood_is_not_taken_out_as_ink(shared: Path) -> None:
    """9124 holds a blood clot (bright, saturated red, like red marker): it stays tissue. Its
    red is not what decides: were it taken for ink, its texture (red cells) keeps it over
    tissue, while the painter's red marker on glass is smooth."""
    from idcmap.pipeline.segment import segment_slide

    path = shared / "idc" / "slides" / "9124.tiff"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    s = {m: segment_slide(path, progress=False, device="cpu", params=Params(qc=m)).summary
         for m in ("none", "all")}  # fmt: skip
    assert abs(s["all"]["tissue_area_mm2"] / s["none"]["tissue_area_mm2"] - 1) <= 0.03
    assert not s["all"]["qc"]["review"]
    rgb = read_level0(path)
    t = thumb(rgb)
    c = t.astype(int)
    clot = (c[..., 0] > 120) & (c[..., 0] - c[..., 1] > 90) & (c[..., 0] - c[..., 2] > 60)
    clot = reduce_mask(np.asarray(Image.fromarray(clot).resize(rgb.shape[1::-1])))
    clot = clot[: t.shape[0], : t.shape[1]]
    assert clot.sum() > 2000  # the clot, ~0.5 mm² and more
    assert inkmod.ink_over_tissue(t, clot, 16.0).sum() > 0.9 * clot.sum()
    out, painted, _ = paint_ink(
        rgb, 4.0, np.random.default_rng(0), colour="red", shape="stroke", where="glass"
    )
    mark = reduce_mask(painted)[: t.shape[0], : t.shape[1]]
    assert inkmod.ink_over_tissue(thumb(out), mark, 16.0).sum() < 0.05 * mark.sum()
