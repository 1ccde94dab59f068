"""QC stage (idcmap.pipeline.qc) and the artefact painter (idcmap.train.artefacts) on real
mosaics with painted artefacts. Mosaic tests skip when ../shared/data is absent (CI has it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idcmap.errors import UsageError
from idcmap.params import Params
from idcmap.pipeline import qc
from idcmap.pipeline.tissue import tissue_mask_from_rgb
from idcmap.train.artefacts import KINDS, paint, paint_border, paint_ink

MOSAIC = "9035"  # the smallest test mosaic (1300 × 1500 px at 4 µm/px)


@pytest.fixture(scope="module")
def mosaic(shared: Path) -> np.ndarray:
    from idcmap.train.data import read_level0

    path = shared / "idc" / "slides" / f"{MOSAIC}.tiff"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return read_level0(path)


@pytest.fixture(scope="module")
def idc_region(mosaic: np.ndarray, shared: Path) -> np.ndarray:
    """bool, the mosaic's IDC cells (its cells.csv) at level 0."""
    from idcmap.train.data import read_cells

    region = np.zeros(mosaic.shape[:2], bool)
    for x, y, w, h, label in read_cells(shared / "idc" / "slides" / f"{MOSAIC}.cells.csv"):
        region[y : y + h, x : x + w] |= label == 1
    return region


def thumb(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tissue stage's view: 16 µm/px (4:1 box) and its tissue mask."""
    t = np.asarray(Image.fromarray(rgb).reduce(4))
    return t, tissue_mask_from_rgb(t, 16.0)


def reduce_mask(m: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).reduce(4)) >= 128


def test_parse_kinds() -> None:
    assert qc.parse_kinds("all") == set(qc.KINDS)
    assert qc.parse_kinds("none") == frozenset()
    assert qc.parse_kinds("ink,fold") == {"ink", "fold"}
    with pytest.raises(ValueError, match="unknown QC kind"):
        qc.parse_kinds("ink,smudge")
    with pytest.raises(ValueError, match="no QC kind given"):  # --qc "": a slip, not none
        qc.parse_kinds(" ")
    with pytest.raises(UsageError, match="qc="):
        Params(qc="smudge").validate()


def test_painter_is_seeded_and_labels_every_kind(mosaic: np.ndarray) -> None:
    crop = mosaic[:800, :800]
    a = paint(crop, 4.0, KINDS, seed=3)
    b = paint(crop, 4.0, KINDS, seed=3)
    assert np.array_equal(a.rgb, b.rgb)
    assert set(a.masks) == set(KINDS)
    assert a.rgb.dtype == np.uint8 and a.rgb.shape == crop.shape
    for kind in ("ink", "border", "debris"):
        assert a.masks[kind].any(), kind


def test_blue_ink_over_tissue_and_glass_is_found(mosaic: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    img, m1, _ = paint_ink(
        mosaic, 4.0, rng, colour="blue", shape="stroke", where="tissue", width_mm=0.8, alpha=0.6
    )
    img, m2, _ = paint_ink(img, 4.0, rng, colour="green", shape="dots", where="glass", width_mm=0.8)
    t, tissue = thumb(img)
    found = qc.find_artefacts(t, 16.0, tissue)
    truth = reduce_mask(m1 | m2)[: t.shape[0], : t.shape[1]]
    got = found.excluded
    recall = (got & truth).sum() / truth.sum()
    precision = (got & truth).sum() / max(got.sum(), 1)
    assert recall > 0.7, recall
    assert precision > 0.7, precision


@pytest.mark.parametrize(
    ("colour", "alpha"), [("blue", 0.35), ("green", 0.45), ("red", 0.5), ("green", 0.25)]
)
def test_pale_ink_on_glass_is_not_tissue(mosaic: np.ndarray, colour: str, alpha: float) -> None:
    """A mark as translucent where it crosses glass as over tissue (α 0.25–0.5, not the
    painter's opaque glass ink): the QC stage finds it (green, which H&E never is, however
    pale: :data:`~idcmap.pipeline.qc.GREEN_INK_OD`), and the tissue after QC is about the
    clean slide's, not the clean slide's plus the mark."""
    img, m, _ = paint_ink(
        mosaic, 4.0, np.random.default_rng(7), colour=colour, shape="stroke", where="glass",
        width_mm=1.0, alpha=alpha, on_glass="translucent",
    )  # fmt: skip
    t, tissue = thumb(img)
    _, tissue0 = thumb(mosaic)
    found = qc.find_artefacts(t, 16.0, tissue)
    truth = reduce_mask(m)[: t.shape[0], : t.shape[1]] & ~tissue0
    assert truth.sum() > 200  # the mark lies mostly on glass
    assert (found.masks["ink"] & truth).sum() / truth.sum() > 0.8
    after = found.tissue_after(tissue).sum()
    assert abs(after / tissue0.sum() - 1) < 0.05, (after, tissue0.sum(), tissue.sum())


def test_black_border_is_found(mosaic: np.ndarray) -> None:
    img, m, _ = paint_border(mosaic, 4.0, np.random.default_rng(1), edges=["left"], width_mm=0.8)
    t, tissue = thumb(img)
    found = qc.find_artefacts(t, 16.0, tissue, kinds="border")
    truth = reduce_mask(m)
    assert set(found.masks) == {"border"}
    assert (found.masks["border"] & truth).sum() / truth.sum() > 0.9


def test_clean_mosaic_is_not_flagged(mosaic: np.ndarray) -> None:
    t, tissue = thumb(mosaic)
    found = qc.find_artefacts(t, 16.0, tissue)
    assert (found.excluded & tissue).sum() <= 0.03 * tissue.sum()
    v = qc.verdict(found, tissue, t)
    assert not v.review, v.reasons
    assert v.colour_distance < qc.COLOUR_FAR


def test_blur_band_lowers_sharpness(mosaic: np.ndarray) -> None:
    p = paint(mosaic, 4.0, ["blur"], seed=2, where="tissue", sigma_um=10.0, width_mm=2.0)
    f, m = qc.block_sharpness(p.rgb, 50)
    ratio = f / np.maximum(m, 0.5)
    rows, cols = ratio.shape
    painted = p.masks["blur"][: rows * 50, : cols * 50].reshape(rows, 50, cols, 50).mean((1, 3))
    _t, tissue = thumb(mosaic)
    tcell = (
        np.asarray(
            Image.fromarray(tissue.astype(np.uint8) * 255).resize(
                (cols, rows), Image.Resampling.BOX
            )
        )
        > 127
    )
    blur = qc.find_blur(ratio, tcell)
    truth = (painted > 0.5) & tcell
    assert truth.sum() > 5
    assert (blur & truth).sum() / truth.sum() > 0.4  # pale blurred cells stay ambiguous
    f0, m0 = qc.block_sharpness(mosaic, 50)
    clean = qc.find_blur(f0 / np.maximum(m0, 0.5), tcell)
    assert clean.sum() <= 0.02 * tcell.sum()


def test_all_ink_slide_gives_a_clear_verdict(mosaic: np.ndarray, tmp_path: Path) -> None:
    """A slide drowned in ink: the pipeline finishes, finds no IDC, and says why; the tissue
    under the ink is still tissue (about the clean crop's area), though none is evaluated."""
    from tiffgen import write_pyramid_tiff

    from idcmap.pipeline.segment import segment_slide

    crop = mosaic[:600, :700]
    inked = (crop * (0.25 + 0.75 * np.asarray([30, 60, 160]) / 255)).astype(np.uint8)
    summary = {}
    for name, img in (("inked", inked), ("clean", crop)):
        path = write_pyramid_tiff(tmp_path / f"{name}.tiff", img, 4.0)
        res = segment_slide(path, progress=False, device="cpu", params=Params(qc="all"))
        summary[name] = res.summary
    v = summary["inked"]["qc"]
    assert v["review"]
    assert any("no tissue left" in r for r in v["reasons"]), v["reasons"]
    assert summary["inked"]["idc_area_mm2"] == 0
    area = {k: s["tissue_area_mm2"] for k, s in summary.items()}
    assert abs(area["inked"] / area["clean"] - 1) < 0.15, area
    assert v["ink"]["over_tissue_pct"] > 95 and v["colour_distance"] is None


def test_one_pass_slide_gets_the_qc_stage(mosaic: np.ndarray, tmp_path: Path) -> None:
    """A PNG (no pyramid: the tissue mask comes from the tile pass) with ink on it."""
    from idcmap.pipeline.segment import segment_slide

    crop = mosaic[:600, :700]
    img, _m, _ = paint_ink(crop, 4.0, np.random.default_rng(2), colour="green", shape="stroke")
    path = tmp_path / "inked.png"
    Image.fromarray(img).save(path)
    # without stain normalisation: a model that corrects the glass measures it on a thumbnail
    # read first (a low-resolution read), so there is no one pass
    params = Params(qc="all", stain_norm="none")
    res = segment_slide(path, progress=False, device="cpu", mpp=4.0, params=params)
    assert res.summary["tissue_from"].startswith("the tile pass")
    assert res.qc_masks is not None and res.qc_masks["ink"].any()
    assert res.summary["qc"]["excluded_mm2"]["ink"] > 0
    assert "blur" in res.qc_masks


def test_a_flagged_slide_says_so_on_its_line_and_in_the_cohort_table(
    mosaic: np.ndarray, tmp_path: Path
) -> None:
    """QC's review flag reaches the done line and cohort.csv (review, review_reasons); a run
    without QC leaves both empty."""
    import csv

    from pipeline_helpers import colour_model
    from tiffgen import write_pyramid_tiff

    from idcmap.batch.runner import RunOptions, format_outcome, run_batch

    crop = mosaic[:600, :700].astype(np.float32)
    inked = (crop * (0.25 + 0.75 * np.asarray([30, 60, 160]) / 255)).astype(np.uint8)
    path = write_pyramid_tiff(tmp_path / "inked.tiff", inked, 4.0)
    out = tmp_path / "out"
    kw = {"model": colour_model(), "report": str, "options": RunOptions(overwrite=True)}
    (o,) = run_batch([path], out, params=Params(qc="all", workers=0), **kw)
    assert o.status == "done" and "review: " in format_outcome(o)
    with (out / "cohort.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert row["review"] == "yes" and row["review_reasons"]
    (o,) = run_batch([path], out, params=Params(qc="none", workers=0), **kw)
    assert "review" not in format_outcome(o)
    with (out / "cohort.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert (row["review"], row["review_reasons"]) == ("", "")


def test_excluded_areas_reach_qupath_as_their_own_classes(
    mosaic: np.ndarray, tmp_path: Path
) -> None:
    """The ink QC found is in the slide's GeoJSON as locked ``Ink`` annotations (never IDC),
    over the painted ink, and the file passes the QuPath checks."""
    import shapely
    from geojson_check import validate_qupath_geojson

    from idcmap.pipeline.segment import segment_slide

    crop = mosaic[:600, :700]
    img, masks, _ = paint_ink(crop, 4.0, np.random.default_rng(2), colour="blue", shape="stroke")
    path = tmp_path / "inked.png"
    Image.fromarray(img).save(path)
    res = segment_slide(path, progress=False, device="cpu", mpp=4.0, params=Params(qc="ink"))
    gj = res.to_geojson()
    validate_qupath_geojson(gj)
    ink = [f for f in gj["features"] if f["properties"]["classification"]["name"] == "Ink"]
    assert ink and all(f["properties"]["isLocked"] for f in ink)
    assert all(f["properties"]["name"].startswith(("IDC", "Ink")) for f in gj["features"])
    drawn = shapely.union_all([shapely.geometry.shape(f["geometry"]) for f in ink])
    painted = np.argwhere(masks)  # (row, col) of painted ink px at 4 µm/px = level-0 px
    inside = shapely.contains_xy(drawn, painted[:, 1] + 0.5, painted[:, 0] + 0.5)
    assert inside.mean() > 0.5, inside.mean()


def test_cli_all_ink_and_empty_slides_get_one_clear_line_each(tmp_path: Path) -> None:
    """``idcmap run --qc all`` on a slide drowned in ink, a slide of flat marker colour and a
    blank glass slide: each is done with one line saying why nothing is left, nothing on
    stderr, and the opt-in OME-TIFF written (no tissue in it)."""
    import subprocess
    import sys

    import tifffile

    sys.path.insert(0, str(Path(__file__).parent))
    from tiffgen import write_pyramid_tiff

    from idcmap.train.data import read_level0

    root = Path(__file__).resolve().parents[1]
    crop = read_level0(root / "examples" / "8955.tiff")[:600, :700].astype(np.float32)
    drowned = (crop * (0.25 + 0.75 * np.asarray([30, 60, 160]) / 255)).astype(np.uint8)
    flat = np.empty((600, 700, 3), np.uint8)
    flat[:] = (40, 70, 170)
    glass = np.full((600, 700, 3), (243, 241, 246), np.uint8)
    slides = {}
    for name, img in (("drowned", drowned), ("flat", flat), ("glass", glass)):
        slides[name] = write_pyramid_tiff(tmp_path / f"{name}.tiff", img, 4.0, (1, 4))
    out = tmp_path / "out"
    args = ["run", *map(str, slides.values()), "-o", str(out), "--qc", "all", "--ome-tiff", "-q"]
    proc = subprocess.run(
        [sys.executable, "-m", "idcmap", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "" and "Traceback" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert len(lines) == len(slides) + 1 and lines[-1].startswith("idcmap: 3 done"), lines
    by_name = {Path(ln.split(": ", 1)[0][2:]).stem: ln for ln in lines[:-1]}
    for name, why in (
        ("drowned", "no tissue left after QC"),
        ("flat", "no tissue left after QC"),
        ("glass", "no tissue found"),
    ):
        line = by_name[name]
        assert line.startswith("✓ ") and "0 IDC regions" in line, line
        assert why in line.split("; review: ", 1)[1], line
        planes = tifffile.imread(out / name / f"{name}.heatmap.ome.tif")
        assert not (planes[0] >= 128).any()  # no IDC
        if name != "drowned":  # under the drowning ink, the tissue is still tissue
            assert not planes[2].any() and not planes[0].any()  # no tissue, no probability
        if name != "glass":
            assert (planes[1] == 1).mean() > 0.9  # ink, nearly everywhere


def test_a_scanner_white_balance_is_not_taken_for_ink(mosaic: np.ndarray, tmp_path: Path) -> None:
    """A yellowish scanner (a gain per channel, glass included): the QC stage brings the glass
    back to the training mosaics' before it looks for ink, so it finds none and the default
    model's mask is the one without QC; a model without the glass normalisation is flagged for
    the white balance it was not validated on. (Before: 77 % of 9037's tissue taken for ink,
    its IDC area 11.6 → 2.1 mm².)"""
    from tiffgen import write_pyramid_tiff

    from idcmap.model.runtime import load_model
    from idcmap.pipeline.segment import segment_slide
    from idcmap.train.degrade import white_balance

    path = write_pyramid_tiff(
        tmp_path / "yellowish.tiff", white_balance(mosaic, (1.0, 0.95, 0.92)), 4.0
    )
    default = load_model(None, device="cpu")
    plain = segment_slide(path, model=default, progress=False, params=Params(qc="none"))
    res = segment_slide(path, model=default, progress=False, params=Params(qc="all"))
    v = res.summary["qc"]
    assert res.qc_masks is not None and not res.qc_masks["ink"].any()
    assert not v["review"], v["reasons"]
    assert max(abs(x) for x in v["glass_od_offset"]) < 0.01
    assert np.array_equal(np.asarray(res.mask), np.asarray(plain.mask))
    assert res.summary["tissue_area_mm2"] == plain.summary["tissue_area_mm2"]
    v2 = segment_slide(path, model="idc-v2", device="cpu", progress=False, params=Params(qc="all"))
    reasons = v2.summary["qc"]["reasons"]
    assert any("white balance" in r for r in reasons), reasons
    assert v2.summary["qc"]["glass_od_offset"][2] > 0.06


def test_a_slide_blurred_all_over_is_flagged(mosaic: np.ndarray, tmp_path: Path) -> None:
    """Blur over the whole slide (σ 0.7 px at 4 µm/px, the shift table's row: −0.028 Dice) has
    no sharp tissue to be relative to, so find_blur cannot see it; the slide's own sharpness
    level (SOFT_P90) flags it, and lifts its tissue's logit (SOFT_LOGIT_SHIFT). The same
    mosaic unblurred is neither flagged nor lifted."""
    from tiffgen import write_pyramid_tiff

    from idcmap.pipeline.segment import segment_slide
    from idcmap.train.degrade import blur

    verdicts, idc = {}, {}
    for name, img in (("soft", blur(mosaic, 0.7)), ("clean", mosaic)):
        path = write_pyramid_tiff(tmp_path / f"{name}.tiff", img, 4.0)
        summary = segment_slide(path, progress=False, device="cpu").summary
        verdicts[name], idc[name] = summary["qc"], summary["idc_area_mm2"]
        unlifted = Params(qc="ink,fold,debris,border")  # no sharpness: no lift
        idc[name, "unlifted"] = segment_slide(
            path, progress=False, device="cpu", params=unlifted
        ).summary["idc_area_mm2"]
    soft, clean = verdicts["soft"], verdicts["clean"]
    # the soft slide's tissue gets SOFT_LOGIT_SHIFT: its IDC comes back towards the clean
    # slide's (measured: clean 4.84, soft 3.04 → 5.04 mm²); the clean slide gets no lift
    assert idc["clean"] == idc["clean", "unlifted"], idc
    assert abs(idc["soft"] - idc["clean"]) < abs(idc["soft", "unlifted"] - idc["clean"]), idc
    assert soft["sharpness_p90"] < qc.SOFT_P90 < clean["sharpness_p90"]
    assert any("softer" in r for r in soft["reasons"]), soft["reasons"]
    assert not any("softer" in r for r in clean["reasons"]), clean["reasons"]


def test_blurred_idc_is_lifted_back(
    mosaic: np.ndarray, idc_region: np.ndarray, tmp_path: Path
) -> None:
    """An out-of-focus band over the IDC of a real mosaic: the network reads the blurred IDC
    paler, so without the lift (blur not looked for) the IDC area falls; with it, the cells
    find_blur finds get BLUR_LOGIT_SHIFT and the IDC area comes back towards the clean one
    (σ 10 µm, within the painted battery's 6–16 µm)."""
    from tiffgen import write_pyramid_tiff

    from idcmap.pipeline.segment import segment_slide

    blurred = paint(mosaic, 4.0, ["blur"], seed=0, region=idc_region, where="idc", sigma_um=10.0)
    idc = {}
    for name, img in (("clean", mosaic), ("blurred", blurred.rgb)):
        path = write_pyramid_tiff(tmp_path / f"{name}.tiff", img, 4.0)
        for qc_kinds in ("all", "ink,fold,debris,border"):
            res = segment_slide(path, progress=False, device="cpu", params=Params(qc=qc_kinds))
            idc[name, qc_kinds] = res.summary["idc_area_mm2"]
            if name == "blurred" and qc_kinds == "all":
                assert res.summary["qc"]["excluded_mm2"]["blur"] > 0.5, res.summary["qc"]
    assert idc["clean", "all"] == idc["clean", "ink,fold,debris,border"]  # no blur, no lift
    lost_unlifted = idc["clean", "all"] - idc["blurred", "ink,fold,debris,border"]
    lost_lifted = abs(idc["clean", "all"] - idc["blurred", "all"])
    assert lost_unlifted > 0.2 * idc["clean", "all"], idc
    assert lost_lifted < 0.65 * lost_unlifted, idc  # measured: 4.84 clean, 0.96 → 2.48 mm²


def test_a_slide_whose_glass_is_at_white_is_flagged(mosaic: np.ndarray, tmp_path: Path) -> None:
    """Less haematoxylin (the shift table's row, −0.042 pooled Dice in CV) lightens the glass
    too, and the glass clips at 255: the glass gain cannot see how much paler the slide got, so
    the verdict says so. The same mosaic as it is (glass OD ~0.04) is not flagged."""
    from tiffgen import write_pyramid_tiff

    from idcmap.pipeline.segment import segment_slide
    from idcmap.pipeline.stain import glass_od
    from idcmap.train.degrade import hed_shift

    pale = hed_shift(mosaic, h=-0.01)
    own = glass_od(pale)
    assert own is not None and (own[:2] < qc.GLASS_WHITE_OD).all(), own
    path = write_pyramid_tiff(tmp_path / "pale.tiff", pale, 4.0)
    v = segment_slide(path, progress=False, device="cpu").summary["qc"]
    assert v["review"], v
    white = [r for r in v["reasons"] if "glass is at white" in r]
    assert len(white) == 1 and "red" in white[0] and "green" in white[0], v["reasons"]
    own = glass_od(mosaic)
    assert own is not None and (own > 2 * qc.GLASS_WHITE_OD).all(), own
    clean = write_pyramid_tiff(tmp_path / "clean.tiff", mosaic, 4.0)
    reasons = segment_slide(clean, progress=False, device="cpu").summary["qc"]["reasons"]
    assert not any("glass is at white" in r for r in reasons), reasons


def test_debris_over_the_idc_is_flagged(
    mosaic: np.ndarray, idc_region: np.ndarray, tmp_path: Path
) -> None:
    """Dark debris over the IDC is excluded (not tissue, not IDC), so the IDC under it is not
    counted: the verdict measures the tissue excluded next to the IDC mask and flags the
    slide. The clean mosaic has none."""
    from tiffgen import write_pyramid_tiff

    from idcmap.pipeline.segment import segment_slide

    painted = paint(mosaic, 4.0, ["debris"], seed=0, region=idc_region, where="idc")
    path = write_pyramid_tiff(tmp_path / "debris.tiff", painted.rgb, 4.0)
    v = segment_slide(path, progress=False, device="cpu").summary["qc"]
    assert v["excluded_near_idc_mm2"] > qc.REVIEW_EXCLUDED_NEAR_IDC_MM2, v
    assert any("excluded over or next to the IDC" in r for r in v["reasons"]), v["reasons"]
    # the tissue left, on the tissue mask's own grid: before less what was excluded from it
    before, after = v["tissue_before_qc_mm2"], v["tissue_after_qc_mm2"]
    on_tissue = v["excluded_pct_of_tissue"]["debris"] / 100 * before
    assert before - after == pytest.approx(on_tissue, abs=0.01), v
    clean = write_pyramid_tiff(tmp_path / "clean.tiff", mosaic, 4.0)
    v = segment_slide(clean, progress=False, device="cpu").summary["qc"]
    assert v["excluded_near_idc_mm2"] == 0.0 and not v["review"], v
    assert v["tissue_after_qc_mm2"] <= v["tissue_before_qc_mm2"], v


def test_blurred_idc_is_read_by_the_blur_network(
    mosaic: np.ndarray, idc_region: np.ndarray, tmp_path: Path
) -> None:
    """The default model names a second network for out-of-focus tissue (``blur_model``:
    idc-v4blur, trained with strong blur): the cells find_blur finds take its probability,
    lifted by its smaller ``logit_shift``, from a second pass over their tiles only. On an
    out-of-focus band over 9035's IDC it keeps more of the IDC than the lift alone (measured:
    clean 4.84 mm², lift alone 2.48, blur network 2.56). Cells outside the blur are the same."""
    from tiffgen import write_pyramid_tiff

    from idcmap.model.runtime import load_model
    from idcmap.pipeline.segment import segment_slide

    blurred = paint(mosaic, 4.0, ["blur"], seed=0, region=idc_region, where="idc", sigma_um=10.0)
    path = write_pyramid_tiff(tmp_path / "blurred.tiff", blurred.rgb, 4.0)
    default = load_model(None, device="cpu")
    assert default.config.blur_model == {"model": "idc-v4blur", "logit_shift": 1.0}
    lift_only = load_model(None, device="cpu")
    lift_only.config = lift_only.config.replace(blur_model={})
    a = segment_slide(path, model=default, progress=False)
    b = segment_slide(path, model=lift_only, progress=False)
    blur = a.qc_masks["blur"]
    assert blur.sum() > 10 and np.array_equal(blur, b.qc_masks["blur"])
    pa, pb = np.asarray(a.heatmap.prob), np.asarray(b.heatmap.prob)
    assert np.array_equal(pa[~blur], pb[~blur], equal_nan=True)
    assert not np.allclose(pa[blur], pb[blur])
    clean = 4.84
    assert abs(a.summary["idc_area_mm2"] - clean) < abs(b.summary["idc_area_mm2"] - clean), (
        a.summary["idc_area_mm2"],
        b.summary["idc_area_mm2"],
    )


def test_a_fold_over_the_idc_is_un_folded(
    mosaic: np.ndarray, idc_region: np.ndarray, tmp_path: Path
) -> None:
    """A fold (the section over itself: OD × 1.8) over 9035's IDC. Found, its band's OD is
    halved before the network sees it (:attr:`QCMasks.unfold`: the fold found and its paler
    rim), and the IDC area comes back towards the clean slide's; the fold reported is the one
    found. Measured: clean 4.84 mm², the fold as read 3.72, un-folded 4.68."""
    from tiffgen import write_pyramid_tiff

    from idcmap.pipeline.segment import segment_slide

    folded = paint(mosaic, 4.0, ["fold"], seed=0, region=idc_region, where="idc")
    path = write_pyramid_tiff(tmp_path / "folded.tiff", folded.rgb, 4.0)
    clean_path = write_pyramid_tiff(tmp_path / "clean.tiff", mosaic, 4.0)
    a = segment_slide(path, progress=False)
    b = segment_slide(path, progress=False, params=Params(qc="ink,debris,border,blur"))
    clean = segment_slide(clean_path, progress=False, params=Params(qc="ink,debris,border,blur"))
    fold = a.qc_masks["fold"]
    assert fold.sum() > 100 and "fold" not in b.qc_masks
    t = a.tissue
    found = qc.find_artefacts(t.thumbnail, t.mpp, t.mask, kinds="fold", mpp_y=t.mpp_y)
    assert np.array_equal(found.masks["fold"], fold)
    assert found.unfold is not None and found.unfold.sum() > fold.sum()
    assert not (fold & ~found.unfold).any()
    idc = {k: r.summary["idc_area_mm2"] for k, r in (("a", a), ("b", b), ("clean", clean))}
    assert abs(idc["a"] - idc["clean"]) < 0.5 * abs(idc["b"] - idc["clean"]), idc


def test_ink_next_to_the_idc_is_measured_and_flagged_and_ink_far_from_it_is_not() -> None:
    """The verdict measures the ink over tissue within 400 µm of the IDC mask, as mm² and as
    a share of the IDC area, and flags the slide when it exceeds
    :data:`~idcmap.pipeline.qc.REVIEW_INK_NEAR_IDC` of it; the same ink 2 mm away is
    measured as 0 and raises no flag. (A 16-µm thumbnail, 200-µm heatmap cells.)"""
    from idcmap.pipeline.ink import InkResult

    shape = (250, 250)  # 4 × 4 mm
    tissue = np.ones(shape, bool)
    rgb = np.full((*shape, 3), (200, 120, 180), np.uint8)  # mid H&E, in the colour check's range
    idc = np.zeros((20, 20), bool)
    idc[2:5, 2:5] = True  # 9 cells, 0.36 mm², 0.4–1.0 mm from the corner
    for rows, near in ((slice(60, 70), True), (slice(200, 210), False)):
        over = np.zeros(shape, bool)
        over[rows, 20:60] = True  # 0.16 × 0.64 mm = 0.1024 mm² of ink over tissue
        ink = InkResult(np.zeros((*shape, 3), np.float32), tissue, over, np.zeros(shape, bool))
        masks = qc.QCMasks({"ink": over}, 16.0, 16.0, ink=ink, shape=shape)
        v = qc.verdict(masks, tissue, rgb, idc_cells=idc).to_dict()
        got = v["ink"]["near_idc_mm2"]
        flagged = any("IDC read through ink" in r for r in v["reasons"])
        if near:  # 1.12 mm down: within 400 µm of cell row 4's lower edge (1.0 mm)
            assert got == pytest.approx(0.1024, abs=1e-4), v["ink"]
            assert v["ink"]["near_idc_pct_of_idc"] == pytest.approx(100 * 0.1024 / 0.36, abs=0.1)
            assert flagged, v["reasons"]
        else:  # 3.2 mm down
            assert got == 0.0 and v["ink"]["near_idc_pct_of_idc"] == 0.0, v["ink"]
            assert not flagged, v["reasons"]
