"""Training side on real data: layout helpers, mosaic cutting, patient split, a tiny fastai
training run, metrics, and the prepare-data / evaluate commands."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from idcmap.model.runtime import load_model
from idcmap.pipeline.heatmap import Heatmap
from idcmap.train import data
from idcmap.train.metrics import best_threshold, binary_metrics, dice_iou, roc_auc
from idcmap.train.truth import truth_from_cells, truth_from_geojson

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PATCHES = ROOT / "tests" / "fixtures" / "patches"
EXAMPLE_SLIDES = sorted((ROOT / "examples").glob("*.tiff"))
SMALL_MOSAIC = "9035"  # the smallest of the shared mosaics (236 patches)


@pytest.fixture(scope="module")
def idc_data() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "idc"
    if not path.is_dir():
        pytest.skip(f"the real IDC data set is absent (CI has it at ../shared): {path}")
    return path


def _cli(argv: list[str]) -> int:
    from idcmap.cli.training import register

    parser = argparse.ArgumentParser(prog="idcmap")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


# ---- layout, split ----------------------------------------------------------------------------


def test_list_patches_reads_the_layout() -> None:
    recs = data.list_patches(FIXTURE_PATCHES)
    assert len(recs) == 150
    r = recs[0]
    assert r.path.name == f"{r.patient}_idx5_x{r.x}_y{r.y}_class{r.label}.png"
    assert r.path.parent.name == str(r.label)
    x = data.load_patches(recs[:5])
    assert x.shape == (5, 50, 50, 3) and x.dtype == np.uint8


def test_pad_patch_makes_edge_patches_full_size() -> None:
    edge = np.random.default_rng(0).integers(0, 255, (31, 50, 3), dtype=np.uint8)
    out = data.pad_patch(edge)
    assert out.shape == (50, 50, 3)
    np.testing.assert_array_equal(out[:31], edge)
    np.testing.assert_array_equal(out[49], edge[30])


def test_split_is_by_patient_fixed_and_disjoint() -> None:
    groups = {"a": [str(i) for i in range(100)], "mosaics": [str(i) for i in range(500, 528)]}
    s1 = data.split_patients(groups, seed=3, test_counts={"mosaics": 6})
    s2 = data.split_patients(groups, seed=3, test_counts={"mosaics": 6})
    assert s1 == s2
    assert data.split_patients(groups, seed=4, test_counts={"mosaics": 6}) != s1
    sets = [set(s1[k]) for k in data.SPLITS]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(groups["a"]) | set(groups["mosaics"])
    assert len([p for p in s1["test"] if int(p) >= 500]) == 6
    assert len([p for p in s1["test"] if int(p) < 500]) == 15


# ---- prepare-data -------------------------------------------------------------------------------


def test_prepare_mosaics_cuts_every_cell(idc_data: Path, tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    for suffix in (".tiff", ".cells.csv"):
        shutil.copy(idc_data / "slides" / f"{SMALL_MOSAIC}{suffix}", slides)
    out = tmp_path / "patches"
    assert _cli(["prepare-data", str(slides), "--out", str(out)]) == 0
    cells = data.read_cells(slides / f"{SMALL_MOSAIC}.cells.csv")
    recs = data.list_patches(out)
    assert len(recs) == len(cells) == 236
    assert data.is_mosaic_folder(out)
    assert sum(r.label for r in recs) == sum(c[4] for c in cells)
    # names are 1-based like the original data set; pixels are the mosaic's
    img = data.read_level0(slides / f"{SMALL_MOSAIC}.tiff")
    x, y, w, h, label = cells[len(cells) // 2]
    p = out / SMALL_MOSAIC / str(label) / f"{SMALL_MOSAIC}_idx5_x{x + 1}_y{y + 1}_class{label}.png"
    np.testing.assert_array_equal(
        data.load_patches([data.list_patches(out)[0]])[0].shape, (50, 50, 3)
    )
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(p)), img[y : y + h, x : x + w])


# ---- training -----------------------------------------------------------------------------------


def test_tiny_real_training_run(idc_data: Path, tmp_path: Path) -> None:
    """One epoch of fastai on a few hundred real patches → a model file the pipeline loads."""
    from idcmap.train.patches import train

    out = tmp_path / "tiny.json"
    cfg = train(
        [idc_data / "patches"],
        out,
        epochs=1,
        seed=1,
        max_patches=320,
        batch_size=64,
        arch_params={"widths": (16, 32, 32)},
        lr_find_iters=8,
        progress=False,
        log=lambda *a: None,
    )
    assert out.is_file() and out.with_suffix(".safetensors").is_file()
    split = json.loads(out.with_suffix(".split.json").read_text())
    assert not set(split["train"]) & set(split["test"])
    assert cfg.training["patients"]["test"] == split["test"]
    assert cfg.training["patches"]["train"] == 320
    assert cfg.arch_params == {"widths": [16, 32, 32], "dropout": 0.3}  # given + the default
    assert (cfg.architecture, cfg.mpp) == ("idcnet-v1", 4.0)
    assert all(0.3 < m < 0.95 for m in cfg.mean) and all(0.03 < s < 0.5 for s in cfg.std)
    assert 0.0 < cfg.tile_threshold < 1.0 and cfg.region_threshold == cfg.tile_threshold
    assert cfg.training["lr_find_suggestion"] > 0
    # no absolute path of this machine in the model file (the data folder lies outside the cwd)
    assert cfg.training["data"] == split["data"] == ["patches"]

    model = load_model(out, device="cpu")
    assert model.sha256 == cfg.weights_sha256
    x = data.load_patches(data.list_patches(FIXTURE_PATCHES))
    p = model.predict(x)
    assert p.shape == (len(x),) and np.all((p >= 0) & (p <= 1))
    assert model.predict_dense(np.ascontiguousarray(np.concatenate([x[0], x[1]], 1)), 25).shape == (
        1,
        3,
    )


def test_augmentations_keep_range_and_shape() -> None:
    import torch

    from idcmap.train.patches import colour_jitter, dihedral

    x = torch.rand(16, 3, 50, 50)
    d = dihedral(x)
    assert d.shape == x.shape
    # every output is one of the 8 symmetries of its input
    for i in range(16):
        syms = [x[i].rot90(k, (1, 2)) for k in range(4)]
        syms += [s.flip(2) for s in syms]
        assert any(torch.equal(d[i], s) for s in syms)
    c = colour_jitter(x)
    assert c.shape == x.shape and float(c.min()) >= 0 and float(c.max()) <= 1
    same = colour_jitter(x, hed=0, hed_bias=0, brightness=0, contrast=0, saturation=0)
    torch.testing.assert_close(same, x.clamp(1e-3, 1), atol=1e-5, rtol=0)


# ---- metrics ------------------------------------------------------------------------------------


def test_binary_metrics_by_hand() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.1, 0.05])
    m = binary_metrics(y, p, 0.5)
    assert m["confusion"] == [[4, 1], [1, 2]]
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["roc_auc"] == pytest.approx(14 / 15)
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.9])))
    assert best_threshold(y, p, "f1") == pytest.approx(0.21)  # 0.9, 0.8, 0.6, 0.3 → F1 6/7


def test_dice_iou_and_truth_rasterisation(tmp_path: Path) -> None:
    pred = np.array([[1, 1, 0], [0, 1, 0]], bool)
    truth = np.array([[1, 0, 0], [0, 1, 1]], bool)
    r = dice_iou(pred, truth)
    assert r["dice"] == pytest.approx(2 * 2 / 6) and r["iou"] == pytest.approx(2 / 4)
    assert dice_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool))["dice"] == 1.0

    csv = tmp_path / "s.cells.csv"
    csv.write_text("x,y,width,height,label\n0,0,50,50,1\n50,0,50,50,0\n100,50,50,31,1\n")
    grid = Heatmap(np.zeros((2, 3), np.float32), (0.0, 0.0), (50.0, 50.0), 4.0, 4.0, 50, 50)
    np.testing.assert_array_equal(truth_from_cells(csv, grid), [[1, 0, 0], [0, 0, 1]])
    fine = Heatmap(np.zeros((4, 6), np.float32), (0.0, 0.0), (25.0, 25.0), 4.0, 4.0, 25, 50)
    assert truth_from_cells(csv, fine)[:2, :2].all() and truth_from_cells(csv, fine).sum() == 6

    gj = tmp_path / "a.geojson"
    gj.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"classification": {"name": "IDC"}},
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[[0, 0], [60, 0], [60, 60], [0, 60], [0, 0]]],
                        },
                    },
                    {
                        "type": "Feature",
                        "properties": {"classification": {"name": "Stroma"}},
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[[100, 0], [150, 0], [150, 50], [100, 50], [100, 0]]],
                        },
                    },
                ],
            }
        )
    )
    np.testing.assert_array_equal(truth_from_geojson(gj, grid), [[1, 0, 0], [0, 0, 0]])


# ---- evaluate commands --------------------------------------------------------------------------


def test_evaluate_patches_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    split = tmp_path / "split.json"
    patients = sorted({r.patient for r in data.list_patches(FIXTURE_PATCHES)})
    data.write_split({"train": [], "valid": [], "test": patients[:5]}, split)
    out = tmp_path / "report.json"
    assert (
        _cli(
            [
                "evaluate",
                "patches",
                "--data",
                str(FIXTURE_PATCHES),
                "--patients-from",
                str(split),
                "--split",
                "test",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rep = json.loads(out.read_text())
    assert set(rep["per_patient"]) == set(patients[:5])
    for k in (
        "roc_auc",
        "f1",
        "balanced_accuracy",
        "accuracy",
        "sensitivity",
        "specificity",
        "confusion",
    ):
        assert k in rep["pooled"]
    assert "pooled" in capsys.readouterr().out


@pytest.mark.skipif(not EXAMPLE_SLIDES, reason="no example mosaic in examples/")
def test_evaluate_slides_command(tmp_path: Path) -> None:
    slide = EXAMPLE_SLIDES[0]
    out = tmp_path / "slides.json"
    assert (
        _cli(["evaluate", "slides", str(slide), "--direct", "--device", "cpu", "--out", str(out)])
        == 0
    )
    rep = json.loads(out.read_text())
    r = rep["per_slide"][slide.stem]
    assert r["truth_cells"] > 0 and 0.5 < r["dice"] <= 1.0
    assert Path(r["png"]).is_file()


@pytest.mark.skipif(not EXAMPLE_SLIDES, reason="no example mosaic in examples/")
def test_tune_regions_writes_a_model_where_told(tmp_path: Path) -> None:
    """--write names the model file to write; the bundled model's own file is never touched."""
    from idcmap.errors import UsageError
    from idcmap.model.modelfile import weights_path
    from idcmap.model.runtime import bundled_model_path

    slide = EXAMPLE_SLIDES[0]
    bundled = bundled_model_path().read_bytes()
    args = ["evaluate", "tune-regions", str(slide), "--device", "cpu"]
    with pytest.raises(UsageError, match="package"):
        _cli([*args, "--write", str(bundled_model_path())])
    assert bundled_model_path().read_bytes() == bundled
    out = tmp_path / "tuned" / "idc-tuned.json"
    assert _cli([*args, "--write", str(out)]) == 0
    tuned, shipped = load_model(out, device="cpu"), load_model(device="cpu")
    assert tuned.sha256 == shipped.sha256
    shipped_weights = weights_path(bundled_model_path(), shipped.config)
    assert weights_path(out, tuned.config).read_bytes() == shipped_weights.read_bytes()
    regions = tuned.config.training["regions"]
    assert regions["chosen_on"] == [slide.stem] and 0.0 < regions["pooled_dice"] <= 1.0
    assert tuned.config.tile_threshold == shipped.config.tile_threshold
    assert 0.0 < tuned.config.region_threshold < 1.0


def test_recorded_paths_name_no_folder_of_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from idcmap.train.patches import portable_command, portable_path

    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "data" / "patches") == "data/patches"  # below the cwd
    assert portable_path("/srv/elsewhere/mosaics") == "mosaics"  # elsewhere: the name only
    assert portable_path("../shared/patches") == "../shared/patches"  # relative: as given
    assert portable_command(["idcmap", "train", "--out", "/srv/run/m.json", "--seed", "0"]) == (
        "idcmap train --out m.json --seed 0"
    )


def test_training_with_scanner_augment_and_init(idc_data: Path, tmp_path: Path) -> None:
    """--scanner-augment and --init: degraded copies are made and used, and a fine-tune starts
    from the given model's weights and normalisation."""
    import torch

    from idcmap.train.degrade import ScannerAugment, lab_stats
    from idcmap.train.patches import degraded_copies, train

    x = data.load_patches(data.list_patches(FIXTURE_PATCHES))
    aug = ScannerAugment(refs=[lab_stats(x[:20])]).fit(x)
    pool = degraded_copies(x, aug, 2, seed=0)
    assert pool.shape == (2, len(x), 3, 50, 50) and pool.dtype == torch.uint8
    assert not torch.equal(pool[0], pool[1])
    base = tmp_path / "base.json"
    kw = {
        "epochs": 1,
        "seed": 1,
        "max_patches": 192,
        "batch_size": 64,
        "arch_params": {"widths": (16, 32, 32)},
        "lr_find_iters": 4,
        "progress": False,
        "log": lambda *a: None,
    }
    train([idc_data / "patches"], base, **kw)
    cfg = train(
        [idc_data / "patches"],
        tmp_path / "ft.json",
        degrade=ScannerAugment(refs=[lab_stats(x[:20])]),
        degrade_copies=1,
        init=base,
        **kw,
    )
    b = load_model(base, device="cpu").config
    assert cfg.mean == b.mean and cfg.std == b.std
    assert cfg.training["init"]["sha256"] == b.weights_sha256
    assert "ScannerAugment" in cfg.training["augmentation"]


def test_distillation_from_a_frozen_teacher(idc_data: Path, tmp_path: Path) -> None:
    """--distill-from: training batches carry the frozen teacher's p(IDC) of the clean patch
    (same flips), the student fine-tuned from the teacher stays close to it on clean patches,
    and the teacher is recorded."""
    import torch

    from idcmap.train.degrade import ScannerAugment, lab_stats
    from idcmap.train.distill import DistillLoss, frozen, teacher_probability
    from idcmap.train.patches import array_dl_class, train

    teacher = load_model("idc-v2", device="cpu")
    x = data.load_patches(data.list_patches(FIXTURE_PATCHES))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    net = frozen(teacher.net)
    assert not any(p.requires_grad for p in net.parameters())
    dl = array_dl_class()(
        xt, torch.zeros(len(x), dtype=torch.long), augment=True, teacher=net, bs=len(x)
    )
    xb, _, tp = next(iter(dl.create_batches(range(len(x)))))
    # the teacher's probability is that of the clean patch under the flips the student got:
    # the dihedral orbit of the clean patch holds exactly the teacher's batch input
    clean = xt.float() / 255
    orbit = [clean, clean.flip(3), clean.flip(2), clean.flip(2).flip(3)]
    orbit += [o.transpose(2, 3) for o in orbit]
    probs = torch.stack([teacher_probability(net, o) for o in orbit])
    assert torch.all((probs - tp).abs().min(0).values < 1e-5)
    assert xb.shape == clean.shape and not torch.equal(xb, clean)  # jittered
    # teacher_jitter: the teacher sees the student's own jittered input (no degraded copies here)
    dl = array_dl_class()(
        xt,
        torch.zeros(len(x), dtype=torch.long),
        augment=True,
        teacher=net,
        teacher_jitter=True,
        bs=len(x),
    )
    xb, _, tp = next(iter(dl.create_batches(range(len(x)))))
    assert not torch.equal(xb, clean)
    assert torch.allclose(teacher_probability(net, xb), tp, atol=1e-5)

    loss = DistillLoss(1.0)
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    p = torch.softmax(logits, 1)[:, 1]
    assert loss(logits, torch.tensor([0, 1]), p) < loss(logits, torch.tensor([0, 1]), 1 - p)
    assert loss(logits, torch.tensor([1, 0])) == DistillLoss(0.3)(logits, torch.tensor([1, 0]))

    out = tmp_path / "student.json"
    cfg = train(
        [idc_data / "patches"],
        out,
        epochs=1,
        seed=1,
        lr=1e-4,
        max_patches=192,
        batch_size=64,
        arch_params={"widths": [64, 192, 256], "dropout": 0.1},
        degrade=ScannerAugment(refs=[lab_stats(x[:20])]),
        degrade_copies=1,
        init="idc-v2",
        distill_from="idc-v2",
        distill_weight=0.9,
        lr_find_iters=4,
        progress=False,
        log=lambda *a: None,
    )
    assert cfg.training["distill"] == {
        "model": "idc-v2",
        "sha256": teacher.config.weights_sha256,
        "weight": 0.9,
        "teacher_jitter": False,
    }
    assert "teacher" in cfg.training["loss"]
    student = load_model(out, device="cpu")
    assert np.abs(student.predict(x) - teacher.predict(x)).max() < 0.15


def test_scanner_augment_blur_options(tmp_path: Path) -> None:
    """--blur-p / --blur-max-px set ScannerAugment's blur probability and largest sigma, --od-p /
    --od-max its OD offset (the rest of the recipe as without them); out-of-range values are
    refused."""
    from idcmap.cli.training import _scanner_augment, register
    from idcmap.errors import UsageError
    from idcmap.train.degrade import ScannerAugment

    refs = sorted((ROOT.parent / "shared" / "data" / "stain-refs").glob("*.png"))[:2]
    if not refs:
        pytest.skip("../shared/data/stain-refs is absent (CI has it)")
    parser = argparse.ArgumentParser(prog="idcmap")
    register(parser.add_subparsers(dest="command"))
    argv = ["train", "--data", "p", "--out", "m.json", "--scanner-augment", *map(str, refs)]
    args = parser.parse_args([*argv, "--blur-p", "0.5", "--blur-max-px", "2.5"])
    aug = _scanner_augment(args)
    assert (aug.p_blur, aug.blur_max) == (0.5, 2.5) and len(aug.refs) == 2
    plain = parser.parse_args(argv)
    dflt = _scanner_augment(plain)
    assert (dflt.p_blur, dflt.blur_max) == (ScannerAugment.p_blur, ScannerAugment.blur_max)
    assert dflt.p_od == 0.0  # the OD offset is opt-in
    od = _scanner_augment(parser.parse_args([*argv, "--od-p", "0.3", "--od-max", "0.2"]))
    assert (od.p_od, od.od_max, od.p_blur) == (0.3, 0.2, ScannerAugment.p_blur)
    assert dflt.p_ink == 0.0  # so is marker ink
    assert _scanner_augment(parser.parse_args([*argv, "--ink-p", "0.8"])).p_ink == 0.8
    no_refs = parser.parse_args(["train", "--data", "p", "--out", "m.json", "--blur-p", "0.5"])
    assert _scanner_augment(no_refs) is None  # no --scanner-augment: no degradation
    bads = (["--blur-p", "1.5"], ["--blur-max-px", "0.1"], ["--od-p", "2"], ["--od-max", "0"])
    for bad in (*bads, ["--ink-p", "-0.1"]):
        with pytest.raises(UsageError):
            _scanner_augment(parser.parse_args([*argv, *bad]))
    # p 1: every patch of a batch is blurred (sigma ≥ 0.2 px), so high frequencies drop
    x = data.load_patches(data.list_patches(FIXTURE_PATCHES))[:32]
    only_blur = ScannerAugment(p_hed=0, p_transfer=0, p_gain=0, p_jpeg=0, p_blur=1.0, blur_max=2.5)
    y = only_blur(x, np.random.default_rng(0))
    assert (
        np.abs(np.diff(y.astype(float), axis=2)).mean()
        < np.abs(np.diff(x.astype(float), axis=2)).mean()
    )
