"""The training-side subcommands of the CLI: ``prepare-data``, ``train``, ``train-aggregator``,
``train-stain-norm``, ``evaluate``.

:func:`register` adds them to :mod:`idcmap.cli.main`'s parser; heavy imports stay in handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from idcmap.cli.argtypes import positive_int
from idcmap.errors import UsageError

_DEVICE_HELP = "auto (CUDA when there is one, else CPU), cpu, cuda, cuda:N or mps"


def _model_arg(parser: argparse.ArgumentParser, default: str = "idc-v4-glass, the default") -> None:
    help_ = f"model .json or bundled name (default: {default})"
    parser.add_argument("--model", type=Path, default=None, help=help_)


def _frac(s: str) -> float:
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {s!r}")
    return v


def _pos_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s!r}")
    return v


def _arch_param(s: str) -> tuple[str, Any]:
    key, sep, value = s.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=JSON, got {s!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare word: a string


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare-data``, ``train`` and ``evaluate`` to ``subparsers``."""
    prep = subparsers.add_parser(
        "prepare-data",
        help="cut whole-slide mosaics (tiff + cells.csv) into patch folders",
        description="Cut every <patient>.tiff + <patient>.cells.csv of SLIDES_DIR into "
        "OUT/<patient>/<label>/<patient>_idx5_x<X>_y<Y>_class<L>.png.",
    )
    prep.add_argument("slides_dir", type=Path, help="folder of <patient>.tiff + .cells.csv")
    prep.add_argument("--out", "-o", required=True, type=Path, help="output folder")
    prep.add_argument("--debug", action="store_true", help="print tracebacks")
    prep.set_defaults(func=cmd_prepare)

    tr = subparsers.add_parser(
        "train",
        help="train the IDC classifier with fastai",
        description="Train a network (by default IDCNet, idcnet-v1) on patch folders in the IDC "
        "data set's layout; patients are split into train/valid/test by a seed (written to "
        "OUT.split.json).",
    )
    tr.add_argument(
        "--data",
        nargs="+",
        required=True,
        type=Path,
        metavar="DIR",
        help="patch folders (<patient>/<0|1>/*.png); folders written by "
        "prepare-data count as whole-slide patients",
    )
    tr.add_argument("--out", "-o", required=True, type=Path, help="model .json to write")
    tr.add_argument("--epochs", type=positive_int, default=20, help="training epochs (default: 20)")
    tr.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    tr.add_argument("--lr", type=float, help="peak of the one-cycle schedule (default: lr_find's)")
    tr.add_argument("--batch-size", type=positive_int, default=256, help="default: 256")
    tr.add_argument(
        "--arch",
        default="idcnet-v1",
        metavar="NAME",
        help="architecture (a name registered in idcmap.model.runtime.ARCHITECTURES; "
        "default: idcnet-v1)",
    )
    tr.add_argument(
        "--arch-param",
        action="append",
        default=[],
        type=_arch_param,
        metavar="KEY=JSON",
        help="an argument of the architecture, e.g. widths=[64,192,256] (repeatable; default: "
        "the architecture's own)",
    )
    tr.add_argument(
        "--widths",
        type=positive_int,
        nargs=3,
        default=None,
        help="idcnet-v1 channel widths (default: 64 192 256)",
    )
    tr.add_argument("--dropout", type=_frac, default=None, help="idcnet-v1 (default: 0.3)")
    tr.add_argument(
        "--mpp",
        type=_pos_float,
        default=4.0,
        help="µm per pixel of the patches, which the model will expect of slides "
        "(default: 4, the IDC data set)",
    )
    tr.add_argument("--wd", type=float, default=0.01, help="weight decay (default: 0.01)")
    tr.add_argument(
        "--test-frac",
        type=_frac,
        default=0.15,
        help="test fraction of patch-folder patients (default: 0.15)",
    )
    tr.add_argument(
        "--valid-frac",
        type=_frac,
        default=0.12,
        help="validation fraction of every folder's patients (default: 0.12)",
    )
    tr.add_argument(
        "--mosaic-test",
        type=int,
        default=6,
        help="test patients taken from each prepare-data folder (default: 6)",
    )
    tr.add_argument("--split", type=Path, help="reuse a split JSON instead of drawing one")
    tr.add_argument(
        "--max-patches", type=positive_int, help="cap each split's patches (quick runs)"
    )
    tr.add_argument(
        "--threshold-criterion",
        choices=["f1", "balanced_accuracy"],
        default="f1",
        help="what the validation threshold maximises (default: f1)",
    )
    tr.add_argument("--no-augment", action="store_true", help="no flips or colour jitter")
    tr.add_argument(
        "--init",
        default=None,
        metavar="MODEL",
        help="start from this model's weights (fine-tuning; same architecture and widths)",
    )
    tr.add_argument(
        "--scanner-augment",
        nargs="*",
        type=Path,
        default=None,
        metavar="REF",
        help="also train on degraded copies (idcmap.train.degrade.ScannerAugment: JPEG with "
        "chroma subsampling, white balance, HED, blur, colour transfer to these reference images)",
    )
    tr.add_argument("--blur-p", type=float, help="its blur's probability per patch (0.15)")
    tr.add_argument("--blur-max-px", type=float, help="its top blur sigma: U(0.2, it) px (0.8)")
    tr.add_argument("--od-p", type=float, help="its OD offset's probability per patch (0)")
    tr.add_argument("--od-max", type=float, help="its largest OD offset, natural log (0.2)")
    tr.add_argument("--ink-p", type=float, help="its marker ink's probability per patch (0)")
    tr.add_argument(
        "--distill-from",
        metavar="MODEL",
        help="teacher: match its p(IDC) of the clean patch (idcmap.train.distill)",
    )
    tr.add_argument("--distill-weight", type=float, default=0.9, help="λ of the teacher term")
    tr.add_argument("--distill-jitter", action="store_true", help="teacher sees the colour jitter")
    tr.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    tr.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    tr.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    tr.add_argument("--debug", action="store_true", help="print tracebacks")
    tr.set_defaults(func=cmd_train)

    ta = subparsers.add_parser(
        "train-aggregator",
        help="train the learned context aggregator of a model on whole-slide mosaics",
        description="Run the model over whole slides with ground truth, fit the context "
        "aggregator (a multi-scale logistic regression over the heatmap) on the training "
        "slides, choose its region threshold on the validation slides, and write the model "
        "with it (same network weights) to OUT. Slides: --train/--valid, or --slides-dir with "
        "--split (the <patient>.tiff of each split's patients).",
    )
    ta.add_argument("--out", "-o", required=True, type=Path, help="model .json to write")
    _model_arg(ta)
    ta.add_argument("--train", nargs="+", type=Path, metavar="SLIDE", help="training slides")
    ta.add_argument("--valid", nargs="+", type=Path, metavar="SLIDE", help="validation slides")
    ta.add_argument(
        "--slides-dir", type=Path, default=None, help="folder of <patient>.tiff + .cells.csv"
    )
    ta.add_argument(
        "--split", type=Path, default=None, help="split JSON naming train / valid patients"
    )
    ta.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="tile step of the training heatmaps, model px (default: the patch size)",
    )
    ta.add_argument(
        "--sigmas-um",
        type=_pos_float,
        nargs="+",
        default=[200.0, 400.0, 800.0, 1600.0],
        help="context scales, µm (default: 200 400 800 1600)",
    )
    ta.add_argument(
        "--features",
        nargs="+",
        default=["logit_p", "logit_smooth", "logit_max"],
        choices=["logit_p", "logit_smooth", "tissue", "logit_max"],
        help="feature families (default: logit_p logit_smooth logit_max; also: tissue)",
    )
    ta.add_argument("--l2", type=float, default=1e-3, help="L2 penalty (default: 0.001)")
    ta.add_argument("--name", default=None, help="model name (default: the base model's)")
    ta.add_argument("--version", default=None, help="model version (default: the base's)")
    ta.add_argument("--device", default="auto", help=_DEVICE_HELP)
    ta.add_argument("--debug", action="store_true", help="print tracebacks")
    ta.set_defaults(func=cmd_train_aggregator)

    sn = subparsers.add_parser(
        "train-stain-norm",
        help="fit a model's per-slide stain normalisation on its training slides",
        description="Measure the tissue colour statistics of each training slide as the "
        "pipeline's tissue pass sees it, and write the model (same weights) to OUT with a "
        "stain_norm section holding their mean: every slide's colour is then mapped onto it "
        "before the network (docs/training.md). Slides: SLIDE... or --slides-dir with --split "
        "(the split's training patients).",
    )
    sn.add_argument("slides", nargs="*", type=Path, metavar="SLIDE", help="training slides")
    sn.add_argument("--out", "-o", required=True, type=Path, help="model .json to write")
    _model_arg(sn, "idc-v4, the default model's network")
    sn.add_argument(
        "--slides-dir", type=Path, default=None, help="folder of <patient>.tiff (with --split)"
    )
    sn.add_argument("--split", type=Path, default=None, help="split JSON naming train patients")
    sn.add_argument(
        "--method",
        default="glass",
        choices=list(_stain_methods()),
        help="statistics and map (default: glass; see idcmap.pipeline.stain)",
    )
    sn.add_argument(
        "--tissue-mpp",
        type=_pos_float,
        default=16.0,
        help="µm/px of the tissue pass the statistics are measured on (default: 16)",
    )
    sn.add_argument("--name", default=None, help="model name (default: the base model's)")
    sn.add_argument("--version", default=None, help="model version (default: the base's)")
    sn.add_argument("--debug", action="store_true", help="print tracebacks")
    sn.set_defaults(func=cmd_train_stain_norm)

    ev = subparsers.add_parser("evaluate", help="measure a model on labelled patches or slides")
    evs = ev.add_subparsers(dest="what", metavar="{patches,slides,tune-regions}")
    evs.required = True
    ep = evs.add_parser("patches", help="ROC AUC, F1, balanced accuracy... on patch folders")
    ep.add_argument(
        "--data", nargs="+", required=True, type=Path, metavar="DIR", help="patch folders"
    )
    _model_arg(ep)
    ep.add_argument(
        "--patients-from",
        type=Path,
        default=None,
        metavar="SPLIT_JSON",
        help="only the patients of one split of this split JSON",
    )
    ep.add_argument("--split", choices=["train", "valid", "test"], default="test", help="the split")
    ep.add_argument("--threshold", type=float, default=None, help="default: the model's")
    ep.add_argument("--device", default="auto", help=_DEVICE_HELP)
    ep.add_argument("--out", "-o", type=Path, default=None, help="report JSON")
    ep.add_argument("--debug", action="store_true", help="print tracebacks")
    ep.set_defaults(func=cmd_evaluate_patches)

    es = evs.add_parser("slides", help="Dice / IoU of the IDC mask against ground truth")
    es.add_argument("slides", nargs="+", type=Path, metavar="SLIDE", help="with <stem>.cells.csv")
    es.add_argument(
        "--truth",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="cells.csv or QuPath .geojson per slide (default: <stem>.cells.csv beside each slide)",
    )
    _model_arg(es)
    es.add_argument("--threshold", type=float, default=None, help="default: the model's")
    es.add_argument("--device", default="auto", help=_DEVICE_HELP)
    es.add_argument(
        "--direct",
        action="store_true",
        help="tile the mosaic directly instead of using idcmap.pipeline.segment.segment_slide",
    )
    es.add_argument(
        "--aggregator",
        choices=["auto", "none"],
        default="auto",
        help="region stage: auto = the model's context aggregator when it has one (the fixed "
        "Gaussian is then reported beside it), none = the fixed Gaussian",
    )
    es.add_argument(
        "--out", "-o", type=Path, default=None, help="report JSON; the PNGs go beside it"
    )
    es.add_argument("--debug", action="store_true", help="print tracebacks")
    es.set_defaults(func=cmd_evaluate_slides)

    et = evs.add_parser(
        "tune-regions",
        help="choose heatmap smoothing and region threshold on validation slides",
        description="Grid-search the heatmap smoothing (µm) and the region threshold that "
        "maximise the pooled Dice on slides with ground truth. Use validation "
        "slides only; --write MODEL_JSON writes the model with that choice (the weights "
        "unchanged) to a path you name.",
    )
    et.add_argument("slides", nargs="+", type=Path, metavar="SLIDE", help="with <stem>.cells.csv")
    et.add_argument(
        "--truth",
        nargs="+",
        type=Path,
        default=None,
        metavar="FILE",
        help="cells.csv or QuPath .geojson per slide (default: <stem>.cells.csv)",
    )
    _model_arg(et)
    et.add_argument("--device", default="auto", help=_DEVICE_HELP)
    et.add_argument(
        "--write",
        type=Path,
        default=None,
        metavar="MODEL_JSON",
        help="write the model with the chosen smooth_um and region_threshold to MODEL_JSON "
        "(its weights copied beside it; may be --model itself, never the bundled model's file)",
    )
    et.add_argument("--out", "-o", type=Path, default=None, help="report JSON")
    et.add_argument("--debug", action="store_true", help="print tracebacks")
    et.set_defaults(func=cmd_tune_regions)


def cmd_prepare(args: argparse.Namespace) -> int:
    from idcmap.train.data import prepare_mosaics

    counts = prepare_mosaics(args.slides_dir, args.out)
    print(f"idcmap: {sum(counts.values())} patches of {len(counts)} patients -> {args.out}")
    return 0


def _scanner_augment(args: argparse.Namespace) -> Any:
    """``--scanner-augment``'s ScannerAugment with its ``--blur-*``, ``--od-*``, ``--ink-p``."""
    if args.scanner_augment is None:
        return None
    from idcmap.train.degrade import ScannerAugment, load_refs

    aug = ScannerAugment(refs=list(load_refs(args.scanner_augment).values()))
    for flag, field in (("blur_p", "p_blur"), ("blur_max_px", "blur_max"), ("od_p", "p_od")):
        if getattr(args, flag) is not None:
            setattr(aug, field, getattr(args, flag))
    aug.od_max = aug.od_max if args.od_max is None else args.od_max
    aug.p_ink = aug.p_ink if args.ink_p is None else args.ink_p
    if not (0.0 <= aug.p_blur <= 1.0 and aug.blur_max > 0.2):
        raise UsageError("--blur-p must be in [0, 1] and --blur-max-px > 0.2 (U(0.2, it) px)")
    if not (0.0 <= aug.p_od <= 1.0 and aug.od_max > 0 and 0.0 <= aug.p_ink <= 1.0):
        raise UsageError("--od-p and --ink-p must be in [0, 1], --od-max > 0")
    return aug


def cmd_train(args: argparse.Namespace) -> int:
    from idcmap.train.patches import portable_command, train

    arch_params = dict(args.arch_param)
    if args.widths is not None:
        arch_params["widths"] = args.widths
    if args.dropout is not None:
        arch_params["dropout"] = args.dropout
    cfg = train(
        args.data,
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        lr=args.lr,
        batch_size=args.batch_size,
        architecture=args.arch,
        arch_params=arch_params,
        mpp=args.mpp,
        weight_decay=args.wd,
        test_frac=args.test_frac,
        valid_frac=args.valid_frac,
        mosaic_test=args.mosaic_test,
        split_path=args.split,
        max_patches=args.max_patches,
        threshold_criterion=args.threshold_criterion,
        augment=not args.no_augment,
        degrade=_scanner_augment(args),
        init=args.init,
        distill_from=args.distill_from,
        distill_weight=args.distill_weight,
        distill_jitter=args.distill_jitter,
        device=args.device,
        threads=args.threads,
        progress=not args.quiet,
        command=portable_command(["idcmap", *sys.argv[1:]]),
    )
    print(
        f"idcmap: model {args.out} (tile threshold {cfg.tile_threshold:.2f}, "
        f"sha256 {cfg.weights_sha256[:12]}…)"
    )
    return 0


def _split_members(slides_dir: Path, split: Path, keys: tuple[str, ...]) -> list[list[Path]]:
    """The slides (``*.tif*``) of ``slides_dir`` whose stem is a patient of each split part."""
    from idcmap.train.data import read_split

    parts, have = read_split(split), {p.stem: p for p in sorted(Path(slides_dir).glob("*.tif*"))}
    return [[have[p] for p in parts[k] if p in have] for k in keys]


def _split_slides(
    args: argparse.Namespace,
) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    if args.train or args.valid:
        if not (args.train and args.valid) or args.split or args.slides_dir:
            raise UsageError("pass both --train and --valid, or --slides-dir with --split")
        train, valid = list(args.train), list(args.valid)
    else:
        if not (args.slides_dir and args.split):
            raise UsageError("pass --train and --valid slides, or --slides-dir with --split")
        train, valid = _split_members(args.slides_dir, args.split, ("train", "valid"))
        if not train or not valid:
            raise UsageError(
                f"{args.slides_dir} has no slides of the split's train or valid patients"
            )
    truths = []
    for group in (train, valid):
        ts = [s.with_name(s.name.rsplit(".", 1)[0] + ".cells.csv") for s in group]
        for t in ts:
            if not t.is_file():
                raise UsageError(f"ground truth {t} not found (a <stem>.cells.csv per slide)")
        truths.append(ts)
    return train, truths[0], valid, truths[1]


def cmd_train_aggregator(args: argparse.Namespace) -> int:
    from idcmap.train.aggregator import train_aggregator
    from idcmap.train.patches import portable_command

    train, train_t, valid, valid_t = _split_slides(args)
    cfg = train_aggregator(
        train,
        train_t,
        valid,
        valid_t,
        args.out,
        model=args.model,
        kinds=args.features,
        sigmas_um=args.sigmas_um,
        l2=args.l2,
        stride_px=args.stride,
        device=args.device,
        name=args.name,
        version=args.version,
        command=portable_command(["idcmap", *sys.argv[1:]]),
    )
    print(
        f"idcmap: model {args.out} with a context aggregator (region threshold "
        f"{cfg.aggregator['threshold']:.2f}, sha256 {cfg.weights_sha256[:12]}…)"
    )
    return 0


def _stain_methods() -> tuple[str, ...]:
    from idcmap.pipeline.stain import METHODS  # numpy only: the parser stays light

    return METHODS


def cmd_train_stain_norm(args: argparse.Namespace) -> int:
    from idcmap.train.patches import portable_command
    from idcmap.train.stain import write_stain_norm

    slides = list(args.slides)
    if bool(args.slides_dir) != bool(args.split) or bool(slides) == bool(args.slides_dir):
        raise UsageError("pass training slides, or --slides-dir with --split")
    if args.slides_dir:
        (slides,) = _split_members(args.slides_dir, args.split, ("train",))
        if not slides:
            raise UsageError(f"{args.slides_dir} has no slides of the split's train patients")
    cfg = write_stain_norm(
        slides,
        args.out,
        model=args.model,
        method=args.method,
        tissue_mpp=args.tissue_mpp,
        name=args.name,
        version=args.version,
        command=portable_command(["idcmap", *sys.argv[1:]]),
    )
    print(
        f"idcmap: model {args.out} with {args.method} stain normalisation fitted on "
        f"{len(slides)} slides (sha256 {cfg.weights_sha256[:12]}…)"
    )
    return 0


def cmd_evaluate_patches(args: argparse.Namespace) -> int:
    from idcmap.output.export import write_json
    from idcmap.train.data import read_split
    from idcmap.train.evaluate import evaluate_patches, format_patch_table

    patients = read_split(args.patients_from)[args.split] if args.patients_from else None
    rep = evaluate_patches(
        args.data, args.model, patients=patients, threshold=args.threshold, device=args.device
    )
    if args.patients_from:
        rep["patients_from"] = {"split_file": str(args.patients_from), "split": args.split}
    print(format_patch_table(rep))
    if args.out:
        write_json(rep, args.out)
        print(f"idcmap: report -> {args.out}")
    return 0


def _truths(args: argparse.Namespace) -> list[Path]:
    if args.truth is None:
        truths = [s.with_name(s.name.rsplit(".", 1)[0] + ".cells.csv") for s in args.slides]
    else:
        truths = list(args.truth)
    if len(truths) != len(args.slides):
        raise UsageError(f"{len(args.slides)} slides but {len(truths)} --truth files")
    for t in truths:
        if not t.is_file():
            raise UsageError(f"ground truth {t} not found; pass --truth cells.csv|.geojson")
    return truths


def cmd_tune_regions(args: argparse.Namespace) -> int:
    from idcmap.model.modelfile import (
        bundled_model_path,
        check_destination,
        find_config,
        read_config,
        save_config,
        weights_path,
    )
    from idcmap.output.export import write_json
    from idcmap.train.patches import portable_command
    from idcmap.train.tune import tune_regions

    if args.write is not None:
        check_destination(args.write)  # before the slides are run, not after
    rep = tune_regions(args.slides, _truths(args), args.model, device=args.device)
    b = rep["best"]
    print(
        f"best pooled Dice {b['dice']:.3f} at smooth_um={b['smooth_um']:g}, "
        f"region_threshold={b['threshold']:.2f} ({len(args.slides)} slides)"
    )
    if args.out:
        write_json(rep, args.out)
        print(f"idcmap: report -> {args.out}")
    if args.write:
        src = find_config(args.model if args.model is not None else bundled_model_path())
        cfg = read_config(src)
        regions = {
            "chosen_on": [Path(s).stem for s in args.slides],
            "pooled_dice": round(b["dice"], 4),
            "command": portable_command(["idcmap", *sys.argv[1:]]),
        }
        tuned = cfg.replace(
            smooth_um=float(b["smooth_um"]),
            region_threshold=float(b["threshold"]),
            training={**cfg.training, "regions": regions},
        )
        save_config(tuned, args.write, weights_path(src, cfg))
        print(f"idcmap: model with smooth_um and region_threshold -> {args.write}")
    return 0


def cmd_evaluate_slides(args: argparse.Namespace) -> int:
    from idcmap.output.export import write_json
    from idcmap.train.evaluate import evaluate_slides, format_slide_table

    truths = _truths(args)
    png_dir = args.out.parent if args.out else None
    rep = evaluate_slides(
        args.slides,
        truths,
        args.model,
        threshold=args.threshold,
        device=args.device,
        png_dir=png_dir,
        use_pipeline=not args.direct,
        aggregator=args.aggregator,
    )
    print(format_slide_table(rep))
    if args.out:
        write_json(rep, args.out)
        print(f"idcmap: report -> {args.out}")
    return 0
