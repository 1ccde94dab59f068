"""``idcmap`` command line: a thin layer over :mod:`idcmap.pipeline` and :mod:`idcmap.batch`.

Exit status: 0 all slides done or skipped; 1 some slide failed; 2 bad usage / model / output
folder; 130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idcmap.cli.argtypes import positive_int
from idcmap.errors import IDCMapError, IDCMapWarning, UsageError, interruption
from idcmap.io.readers import BACKENDS
from idcmap.params import AGGREGATORS, DECODES, OUTLINES, STAIN_NORMS, Params
from idcmap.version import __version__

if TYPE_CHECKING:
    from idcmap.batch.ahead import FrontAhead
    from idcmap.batch.runner import Outcome, RunOptions

#: Python-API names (``Params`` fields, keyword arguments) whose CLI flag is not ``--name``.
_FLAG_OF = {
    "stride_px": "--stride",
    "allow_non_rgb": "--force-rgb",
    "out_dir": "--out",
}
#: Python-API names the library's messages may mention (``name=value``), translated by
#: :func:`to_flags`.
_API_NAMES = {f.name for f in fields(Params)} | {
    "allow_non_rgb",
    "overwrite",
    "tiles_geojson",
    "ome_tiff",
    "debug",
    "out_dir",
    "model",
}
_API_TERM = re.compile(r"(?<![\w./-])([a-z][a-z0-9_]*)=(True\b|'[^']*'|\"[^\"]*\"|)")


def flag_of(name: str) -> str:
    """The CLI flag of a Python-API name (``stride_px`` → ``--stride``)."""
    return _FLAG_OF.get(name, "--" + name.replace("_", "-"))


def _dest(name: str) -> str:
    """argparse's attribute for the flag of a Python-API name (``stride_px`` → ``stride``)."""
    return flag_of(name)[2:].replace("-", "_")


def to_flags(text: str) -> str:
    """A library message in CLI terms: ``mpp=0.25`` → ``--mpp 0.25``, ``overwrite=True`` →
    ``--overwrite`` (the library speaks Python API; only known names are translated)."""

    def sub(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        if name not in _API_NAMES:
            return m.group(0)
        if value == "True":
            return flag_of(name)
        unquoted = value.strip(chr(34) + chr(39))
        if unquoted:  # (an empty string value reads as the bare flag)
            return f"{flag_of(name)} {unquoted}"
        after = m.string[m.end() : m.end() + 1]  # "mpp=0.25" → "--mpp 0.25"; "out_dir=;" → "--out;"
        return flag_of(name) + (
            " " if after and not after.isspace() and after not in ",;:)." else ""
        )

    return _API_TERM.sub(sub, text)


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that temporary outputs are cleaned up."""


def _finite(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idcmap",
        description="Find invasive ductal carcinoma (IDC) regions on H&E whole-slide images.",
    )
    parser.add_argument("--version", action="version", version=f"idcmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="segment IDC on one or more slides",
        description="Segment IDC on slides; writes OUT/<slide stem>/ per slide.",
    )
    run.add_argument("slides", nargs="*", metavar="SLIDE", help="slide files or folders of slides")
    run.add_argument(
        "--list",
        dest="lists",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="text file of slide paths, one per line (# comments; relative paths are relative "
        "to the file's folder); repeatable",
    )
    run.add_argument(
        "--recursive",
        "-r",
        action="store_true",
        help="look for slides in the sub-folders of the folders given too",
    )
    run.add_argument("--out", "-o", required=True, type=Path, help="output folder")
    d = Params()  # the CLI's defaults are the library's
    run.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model .json, or a bundled model by name (idc-v4-glass, the default: robust to "
        "scanner and stain shifts, with a per-slide glass gain; idc-v4 without the gain; "
        "idc-v2, 0.2's default; idc-v1; idc-v3; idc-v2-glass; idc-v3-glass; idc-v4blur)",
    )
    run.add_argument(
        "--device",
        default=d.device,
        help=f"auto | cpu | cuda | cuda:N | mps (default: {d.device})",
    )
    run.add_argument(
        "--backend",
        default=d.backend,
        choices=list(BACKENDS),
        help=f"slide reader (default: {d.backend} = OpenSlide, then tiffslide, then PIL)",
    )
    run.add_argument(
        "--mpp",
        type=_finite,
        default=d.mpp,
        help="µm per level-0 pixel, overriding or replacing the slide's metadata (a value "
        "that contradicts the metadata by more than 25 %% is warned about)",
    )
    run.add_argument(
        "--stride",
        type=positive_int,
        default=d.stride_px,
        help="tile step in model px; divides the patch size (default: patch size, 50)",
    )
    run.add_argument(
        "--threshold",
        type=_finite,
        default=d.threshold,
        help="region threshold in [0, 1]: of the smoothed IDC probability, for the region "
        "mask (default: the model's region_threshold; `idcmap info SLIDE` shows it). Not the "
        "tile threshold that --tiles-geojson classifies tiles at",
    )
    run.add_argument(
        "--batch-size",
        type=positive_int,
        default=d.batch_size,
        help=f"tiles per batch (default: {d.batch_size})",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help=f"background reader threads (default: {d.workers})",
    )
    run.add_argument(
        "--torch-threads",
        type=positive_int,
        default=d.torch_threads,
        help="torch threads for the model on CPU (default: the cores left beside --workers)",
    )
    run.add_argument(
        "--min-tissue",
        type=_finite,
        default=d.min_tissue,
        help=f"tissue fraction a tile needs to be evaluated (default: {d.min_tissue:g})",
    )
    run.add_argument(
        "--tissue-mpp",
        type=_finite,
        default=d.tissue_mpp,
        help=f"µm/px of the tissue mask (default: {d.tissue_mpp:g})",
    )
    run.add_argument(
        "--smooth-um",
        type=_finite,
        default=d.smooth_um,
        help="sigma (µm) of the tissue-aware Gaussian smoothing of the heatmap before the "
        "region mask is drawn (default: the model's; 0 = none)",
    )
    run.add_argument(
        "--aggregator",
        choices=AGGREGATORS,
        default=d.aggregator,
        help="region stage: auto = the model's learned context aggregator when it has one "
        "(idc-v2, idc-v4 and their -glass), else the Gaussian of --smooth-um; none = the "
        "Gaussian (giving --smooth-um implies none)",
    )
    run.add_argument(
        "--stain-norm",
        choices=STAIN_NORMS,
        default=d.stain_norm,
        help="per-slide stain normalisation: auto = the model's own when its file carries one "
        "(the slide's tissue colour mapped to its training slides'), none = the colour as read",
    )
    run.add_argument(
        "--min-region-um2",
        type=_finite,
        default=d.min_region_um2,
        help=f"drop IDC regions smaller than this, µm² (default: {d.min_region_um2:g})",
    )
    run.add_argument(
        "--min-hole-um2",
        type=_finite,
        default=d.min_hole_um2,
        help=f"fill holes smaller than this, µm² (default: {d.min_hole_um2:g})",
    )
    run.add_argument(
        "--simplify-um",
        type=_finite,
        default=d.simplify_um,
        help=f"polygon simplification tolerance, µm (default: {d.simplify_um:g})",
    )
    run.add_argument(
        "--force-rgb",
        action="store_true",
        default=d.force_rgb,
        help="process images that are not 8-bit brightfield RGB anyway",
    )
    run.add_argument(
        "--tiles-geojson",
        action="store_true",
        help="also write <stem>.tiles.geojson: every evaluated tile with its IDC probability, "
        "classified IDC at the model's tile_threshold (per tile, unsmoothed; named in the "
        "file and shown by `idcmap info`), not at the region threshold of --threshold",
    )
    run.add_argument(
        "--ome-tiff",
        action="store_true",
        help="also write <stem>.heatmap.ome.tif: a pyramidal OME-TIFF that overlays the slide at "
        "its physical size (one pixel = one heatmap cell), channels IDC probability, QC "
        "artefact code (with --qc), tissue and tile probability, uint8; see docs/outputs.md "
        "for opening it in QuPath",
    )
    run.add_argument("--overwrite", action="store_true", help="redo slides whose outputs exist")
    run.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="one slide after the other (default: a slide's outputs are written in the "
        "background while the next slide is read; the same outputs either way)",
    )
    run.add_argument(
        "--outline",
        choices=list(OUTLINES),
        default=d.outline,
        help="region outlines: smooth = where the smoothed probability crosses the threshold "
        "(default); cells = the 200-µm heatmap cell edges",
    )
    run.add_argument(
        "--qc",
        default=d.qc,
        metavar="KINDS",
        help="artefacts the QC stage finds: all (the default), none (0.2.0's behaviour) or a "
        "comma list of ink, fold, blur, debris, border; ink on glass, "
        "debris and borders are removed from the tissue, ink over tissue is taken off the "
        "pixels (or filled from the tissue around it), a fold's optical density is halved, "
        "blurred tissue is read by the model's blur-robust network (or lifted); the verdict "
        "goes to summary.json",
    )
    run.add_argument(
        "--decode",
        choices=list(DECODES),
        default=d.decode,
        help="JPEG tiles: pillow = libjpeg's scaled IDCT in the reader threads; torch = "
        "batched decode on the model's device (nvjpeg on CUDA; needs torchvision); auto = "
        "torch when the model runs on CUDA, else pillow (default: auto)",
    )
    run.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bars (without a terminal: one line per slide, no bars, anyway)",
    )
    run.add_argument("--debug", action="store_true", help="print tracebacks")
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="one task per slide on a Dask cluster: tcp://HOST:8786, a scheduler file, or "
        "local[:N] (this machine: one worker per GPU, or N CPU workers); see docs/cluster.md",
    )
    run.set_defaults(func=cmd_run)

    info = sub.add_parser(
        "info",
        help="what idcmap sees in a slide",
        description="Backend, vendor, dimensions, levels, µm/px and the level "
        "the pipeline will read.",
    )
    info.add_argument("slide", help="a slide file, a DICOM series folder or a URL")
    info.add_argument(
        "--backend", default="auto", choices=list(BACKENDS), help="slide reader (default: auto)"
    )
    info.add_argument("--mpp", type=_finite, default=None, help="µm per level-0 pixel override")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--debug", action="store_true", help="print tracebacks")
    info.set_defaults(func=cmd_info)

    from idcmap.viewer.cli import add_parser as add_view_parser

    add_view_parser(sub)

    # training commands: always listed; fastai is imported (and asked for) only when one runs
    from idcmap.cli.training import register

    register(sub)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from idcmap.batch.ahead import FrontAhead
    from idcmap.batch.inputs import expand_inputs, read_slide_list

    # every Params field has the flag flag_of(field): --stride for stride_px, --mpp for mpp...
    params = Params(**{f.name: getattr(args, _dest(f.name)) for f in fields(Params)})
    params.validate()
    if not args.slides and not args.lists:
        raise UsageError("no slides: give slide files or folders, or --list FILE")
    inputs = [*args.slides, *(p for lf in args.lists for p in read_slide_list(lf))]
    slides = expand_inputs(inputs, recursive=args.recursive)
    # before torch is imported (~2 s on one core; nothing here has imported it yet): the slides'
    # tissue and QC stages in a second process, one slide ahead, the first one meanwhile
    ahead = None
    if not args.scheduler:
        ahead = FrontAhead.start(slides, params, args.model, args.out, overwrite=args.overwrite)
    with ahead or nullcontext():
        return _run(args, params, slides, ahead)


def _run(
    args: argparse.Namespace, params: Params, slides: list[str | Path], ahead: FrontAhead | None
) -> int:
    from idcmap.batch.report import failures_lines, totals_line
    from idcmap.batch.runner import FAILED, RunOptions, format_outcome, write_line

    # the CLI owns its process: readers get their cores (on a cluster, each worker's nthreads)
    if params.torch_threads is None and not args.scheduler:
        from idcmap.pipeline.infer import threads_beside_readers

        params = replace(params, torch_threads=threads_beside_readers(params.workers))
    # in a log (stderr not a terminal) redrawn bars are noise: one numbered line per slide instead
    interactive = sys.stderr.isatty()
    options = RunOptions(
        overwrite=args.overwrite,
        extra_outputs=_extra_outputs(args),
        progress=not args.quiet and interactive,
        debug=args.debug,
        stream=args.stream,
    )
    outcomes: list[Outcome] = []
    for o in _outcomes(args, slides, params, options, ahead):
        outcomes.append(o)
        line = to_flags(format_outcome(o, detail=args.debug))
        write_line(
            line if interactive else f"{line} [{len(outcomes)}/{len(slides)}]",
            print,
            options.progress,
        )
    # in a long run the ✗ lines scroll away: the failures again, then the totals
    for line in failures_lines(outcomes) if len(outcomes) > 1 else []:
        print(to_flags(line))
    print(totals_line(outcomes, args.out))
    return 1 if any(o.status == FAILED for o in outcomes) else 0


def _extra_outputs(args: argparse.Namespace) -> frozenset[str]:
    """The opt-in outputs asked for (``--tiles-geojson``, ``--ome-tiff``)."""
    asked = {"tiles_geojson": args.tiles_geojson, "ome_tiff": args.ome_tiff}
    return frozenset(name for name, on in asked.items() if on)


def _outcomes(
    args: argparse.Namespace,
    slides: list[str | Path],
    params: Params,
    options: RunOptions,
    ahead: FrontAhead | None = None,
) -> Iterator[Outcome]:
    """The batch's outcomes as they come: in this process (with ``ahead``: the first slide's
    front computed meanwhile), or one Dask task per slide."""
    if not args.scheduler:
        from idcmap.batch.runner import run_slides
        from idcmap.model.runtime import load_model
        from idcmap.pipeline.tiles import check_stride

        model = load_model(args.model, device=args.device)
        if params.stride_px is not None:
            check_stride(params.stride_px, model.config.patch_px)
        yield from run_slides(
            slides, args.out, model=model, params=params, options=options, ahead=ahead
        )
        return
    from idcmap.batch.cluster import connect, dashboard_link, segment_slides

    client, cluster = connect(args.scheduler)
    try:
        link = dashboard_link(client)
        n = len(client.scheduler_info().get("workers", {}))
        print(
            f"idcmap: Dask scheduler {client.scheduler.address}, {n} worker{'s' * (n != 1)}"
            + (f"; dashboard {link}" if link else "")
        )
        yield from segment_slides(
            slides,
            args.out,
            client=client,
            model=args.model,
            params=params,
            overwrite=options.overwrite,
            progress=options.progress,
            extra_outputs=options.extra_outputs,
            debug=options.debug,
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def cmd_info(args: argparse.Namespace) -> int:
    from idcmap.io.open import SLIDE_SUFFIXES, open_slide
    from idcmap.io.urls import is_url
    from idcmap.model.modelfile import bundled_model_path, read_config

    folder = Path(args.slide)
    if not is_url(args.slide) and folder.is_dir() and not any(folder.glob("*.dcm")):
        # a DICOM series folder is one slide; any other folder is a mistake
        n = sum(1 for q in folder.iterdir() if q.name.lower().endswith(SLIDE_SUFFIXES))
        raise UsageError(
            f"info takes one slide; {folder} is a folder ({n} slide{'s' * (n != 1)} in it): "
            "pass one of its files"
        )

    cfg = read_config(bundled_model_path())
    with open_slide(
        args.slide if is_url(args.slide) else folder, backend=args.backend, mpp=args.mpp
    ) as slide:
        d: dict[str, Any] = slide.info.to_dict()
        rl = slide.read_level_for_mpp(cfg.mpp)
        d["levels_colour"] = [
            "unknown" if c is None else c.describe().split(": ", 1)[1] for c in slide.colour
        ]
        d["pipeline"] = {
            "model": f"{cfg.name} {cfg.version}",
            "model_mpp": cfg.mpp,
            "region_stage": cfg.aggregator.get("kind", "fixed Gaussian"),
            "region_threshold": cfg.aggregator.get("threshold", cfg.region_threshold),
            "tile_threshold": cfg.tile_threshold,
            "level_read": rl.level,
            "level_read_mpp": round(slide.level_mpp(rl.level), 4),
            "level_read_scale": rl.scale,
            "why": rl.reason,
        }
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    width = max(len(k) for k in d)
    for k, v in d.items():
        print(f"{k:<{width}}  {v}")
    return 0


def _quiet_libraries() -> None:
    """Keep the readers' own chatter off the terminal (unless ``--debug``).

    A failing tile decode in tiffslide (zarr's asyncio pipeline) makes asyncio log "Task
    exception was never retrieved" with a traceback for every other chunk in flight, and
    tifffile logs warnings about damaged files; idcmap already reports the failure on one line.
    """
    for name in ("asyncio", "tifffile", "tiffslide", "zarr", "numcodecs"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited")
    warnings.filterwarnings("ignore", module=r"(PIL|openslide|tiffslide|tifffile|zarr)(\.|$)")


def _leaf_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The (sub)parser of the command ``args`` ran: ``idcmap evaluate slides`` → its own."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for key in ("what", "command"):  # the nested subcommand's dest, then the top one's
                name = getattr(args, key, None)
                if name in action.choices:
                    return _leaf_parser(action.choices[name], args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # told by the subcommand's parser, so its usage line is the one shown
        _leaf_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    if not debug:
        _quiet_libraries()

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            with warnings.catch_warnings():
                _one_line_warnings()
                return int(args.func(args))
        except Exception as e:  # a signal that landed inside a library: that library's error
            stop = interruption(e)
            if stop is None:
                raise
            raise stop from None
    except IDCMapError as e:
        if debug:
            raise
        print(f"idcmap: error: {to_flags(_one_line(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "idcmap: interrupted; finished slides are complete, rerun to do the rest",
            file=sys.stderr,
        )
        return 130
    except Terminated:
        print(
            "idcmap: terminated; finished slides are complete, rerun to do the rest",
            file=sys.stderr,
        )
        return 143
    except OSError as e:  # e.g. a folder that cannot be listed, a full disk while reporting
        if debug:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"idcmap: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: one line, the traceback with --debug
        if debug:
            raise
        print(
            f"idcmap: internal error {type(e).__name__}: {_one_line(e)} "
            "(rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)


def _one_line_warnings() -> None:
    """idcmap's own warnings as one ``idcmap: warning:`` line each, in flag terms (call inside
    ``warnings.catch_warnings()``: it restores the defaults)."""
    default = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if not issubclass(category, IDCMapWarning):
            default(message, category, *rest, **kw)
            return
        from tqdm.auto import tqdm

        tqdm.write(f"idcmap: warning: {to_flags(_one_line(message))}", file=sys.stderr)

    warnings.simplefilter("always", IDCMapWarning)  # every slide's own warning, not the first
    warnings.showwarning = show


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())
