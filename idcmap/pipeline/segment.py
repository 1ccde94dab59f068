"""The per-slide pipeline: one slide in, heatmap + IDC regions out (:func:`segment_slide`).

slide → tissue → tiles → model → heatmap → regions → export, each stage in its own module.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from idcmap.errors import UsageError
from idcmap.io.jpegtorch import tile_decoder
from idcmap.io.open import open_slide
from idcmap.io.slide import Slide, SlideInfo
from idcmap.io.urls import is_url, slide_stem
from idcmap.model.runtime import IDCModel, load_model
from idcmap.params import Params
from idcmap.pipeline.contours import contour_regions
from idcmap.pipeline.correct import PixelCorrector, fold_gain
from idcmap.pipeline.front import (
    Front,
    artefacts_of,
    front_key,
    stain_reference,
    tissue_from_tile_pass,
    tissue_of,
)
from idcmap.pipeline.heatmap import Heatmap, smooth, stitch
from idcmap.pipeline.infer import InferenceStats, predict_grid, start_reads
from idcmap.pipeline.ink import blend_inked, fill_cells
from idcmap.pipeline.measure import measurements_summary
from idcmap.pipeline.qc import (
    EXCLUDE,
    SOFT_LOGIT_SHIFT,
    SOFT_P90,
    QCMasks,
    SharpnessGrid,
    artefact_outlines,
    find_blur,
    lift_blurred,
    parse_kinds,
    sharp_p90,
    verdict,
)
from idcmap.pipeline.regions import Region, idc_mask, mask_to_regions
from idcmap.pipeline.result import SlideResult
from idcmap.pipeline.stain import StainMap, StainStats, stain_map
from idcmap.pipeline.summary import ModelRecord, SlideSummary, TilesRecord
from idcmap.pipeline.thumbnail import BlockThumbnail
from idcmap.pipeline.tiles import Block, TileGrid, cell_fraction, make_grid
from idcmap.pipeline.tissue import TissueMask


def segment_slide(
    path: str | Path,
    *,
    model: IDCModel | str | Path | None = None,
    device: str | None = None,
    stride: int | None = None,
    threshold: float | None = None,
    mpp: float | None = None,
    progress: bool = True,
    params: Params | None = None,
    front: Front | None = None,
) -> SlideResult:
    """Find the IDC regions of one whole slide.

    Args:
        path: slide file (any format OpenSlide or tiffslide reads, or a PNG/JPEG with ``mpp``).
        model: a loaded :class:`IDCModel`, a model ``.json`` path, or ``None`` for the bundled one.
        device: ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda``, ``mps`` (default:
            ``params.device``, itself ``auto``); used to load ``model`` when it is not loaded.
        stride: tile step in model px (default: the patch size, 50 px = 200 µm); must divide it.
        threshold: region threshold: of the smoothed IDC probability, for the region mask
            (default: the model's ``region_threshold``, chosen on validation mosaics).
        mpp: µm per level-0 px, overriding the slide's metadata (required when it has none).
        progress: show a tqdm bar over the tiles.
        params: every other knob (:class:`Params`); the keyword arguments above, when given
            (not None), override it.
        front: this slide's tissue and artefact masks computed beforehand
            (:func:`~idcmap.pipeline.front.compute_front` with the same path, parameters and
            model), e.g. in another process (``idcmap run``: :mod:`idcmap.batch.ahead`); None:
            computed here. The result is the same either way.

    Raises:
        SlideError, ResolutionError, UnsupportedImageError, ModelError, UsageError.
    """
    p = params or Params()
    kw = {"device": device, "stride_px": stride, "threshold": threshold, "mpp": mpp}
    p = Params(**{**asdict(p), **{k: v for k, v in kw.items() if v is not None}})
    p.validate()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    net = model if isinstance(model, IDCModel) else load_model(model, device=p.device)
    cfg = net.config
    stride_px = p.stride_px or cfg.patch_px
    # the learned aggregator draws the regions unless asked for the fixed Gaussian
    agg = net.aggregator if p.aggregator == "auto" and p.smooth_um is None else None
    default_thr = cfg.region_threshold if agg is None else agg.threshold
    thr = default_thr if p.threshold is None else p.threshold
    smooth_um = 0.0 if agg is not None else cfg.smooth_um if p.smooth_um is None else p.smooth_um
    decoder = tile_decoder(p.decode, net.device)  # None: Pillow's scaled IDCT
    stain_ref = stain_reference(cfg.stain_norm) if p.stain_norm == "auto" else None
    if front is not None and front.key != front_key(path, p, cfg):
        raise UsageError(
            f"the front given was computed for another slide or other settings than {path}'s run"
        )
    timings["load_model"] = time.perf_counter() - t0

    t = time.perf_counter()
    with open_slide(path, backend=p.backend, mpp=p.mpp, allow_non_rgb=p.force_rgb) as slide:
        timings["open"] = time.perf_counter() - t
        run_kw: dict[str, Any] = {
            "batch_size": p.batch_size,
            "workers": p.workers,
            "torch_threads": p.torch_threads,
            "progress": progress,
            "desc": slide_stem(path),
            "decoder": decoder,
        }
        tissue, grid, tile_prob, stats, one_pass, qc = _tissue_and_tiles(
            slide, p, net, stride_px, run_kw, timings, stain_ref, front
        )
        timings["tiles_wall"] = stats.wall_s
        info = slide.info
    t = time.perf_counter()
    heatmap = Heatmap(
        prob=stitch(tile_prob, grid.keep, grid.cells_per_tile),
        origin_level0_px=(0.0, 0.0),  # QuPath frame: the bounds origin
        cell_level0_px=grid.cell_level0_px,
        slide_mpp=info.mpp,
        slide_mpp_y=info.mpp_y,
        model_mpp=cfg.mpp,
        stride_px=stride_px,
        patch_px=cfg.patch_px,
    )
    timings["stitch"] = time.perf_counter() - t
    if qc.fill is not None:  # ink over tissue: (part) the probability of the tissue around it
        t = time.perf_counter()
        fill = qc.fill & np.isnan(heatmap.prob)
        if (qc.fill & ~fill).any() and (ink_net := net.ink_model()) is not None:
            # a network that reads tissue under ink as scanned (the tiles, not un-inked)
            raw = _cells_read_by(ink_net, path, p, grid, qc.fill, run_kw, qc.pixel_map)
            heatmap = replace(heatmap, prob=_where_read(qc.fill, raw, heatmap.prob))
        # the inked cells' read, part network and part the tissue around them
        heatmap = replace(heatmap, prob=blend_inked(heatmap.prob, qc.fill))
        if fill.any():
            heatmap = replace(heatmap, prob=fill_cells(heatmap.prob, fill))
        timings["qc_fill"] = time.perf_counter() - t
    blur_cells, sharp = None, None
    if qc.sharpness is not None:  # blur: cells of the tile pass (glass, NaN, if excluded)
        t = time.perf_counter()
        sharp = sharp_p90(qc.sharpness.ratio, heatmap.tissue)
        blur_cells = find_blur(qc.sharpness.ratio, heatmap.tissue, p90=sharp)
        if "blur" in EXCLUDE:
            heatmap = replace(heatmap, prob=np.where(blur_cells, np.nan, heatmap.prob))
        elif blur_cells.any() and (blur_net := net.blur_model()) is not None:
            # a network that reads blurred tissue better, lifted less (loaded on first use)
            second = _cells_read_by(
                blur_net, path, p, grid, blur_cells, run_kw, qc.pixel_map, qc.corrector
            )
            prob = _where_read(blur_cells, second, heatmap.prob)
            shift = float(cfg.blur_model["logit_shift"])
            heatmap = replace(heatmap, prob=lift_blurred(prob, blur_cells, shift))
        elif blur_cells.any():  # blurred IDC reads paler: lift it before the aggregator
            heatmap = replace(heatmap, prob=lift_blurred(heatmap.prob, blur_cells))
        if sharp is not None and sharp < SOFT_P90:  # so does a slide soft all over
            rest = heatmap.tissue & ~blur_cells
            heatmap = replace(heatmap, prob=lift_blurred(heatmap.prob, rest, SOFT_LOGIT_SHIFT))
        timings["qc_blur"] = time.perf_counter() - t
    t = time.perf_counter()
    smoothed = agg.refine(heatmap) if agg is not None else smooth(heatmap, smooth_um)
    timings["aggregate" if agg is not None else "smooth"] = time.perf_counter() - t
    t = time.perf_counter()
    mask = idc_mask(smoothed, thr, min_region_um2=p.min_region_um2, min_hole_um2=p.min_hole_um2)
    if p.outline == "smooth":
        regions = contour_regions(mask, smoothed, thr, stats=heatmap, simplify_um=p.simplify_um)
    else:
        regions = mask_to_regions(mask, heatmap, simplify_um=p.simplify_um)
    timings["regions"] = time.perf_counter() - t
    qc_verdict = None
    if qc.masks is not None and qc.tissue_before is not None:
        qc_verdict = verdict(
            qc.masks,
            qc.tissue_before,
            tissue.thumbnail if qc.pixel_map is None else qc.pixel_map(tissue.thumbnail),
            blur_cells=blur_cells,
            cell_mm2=heatmap.cell_area_um2 / 1e6,
            idc_cells=mask,
            cell_um=heatmap.cell_um[0],
            sharpness_p90=sharp,
            own_glass_od=qc.masks.glass_od,  # (the thumbnail's, as scanned)
        ).to_dict()
    qc_masks = (
        None
        if qc.masks is None
        else {**qc.masks.masks, **({"blur": blur_cells} if blur_cells is not None else {})}
    )
    outlines = None
    if qc_masks is not None:  # for the regions' shares (summary) and the GeoJSON, once
        t = time.perf_counter()
        outlines = artefact_outlines(qc_masks, tissue, heatmap)
        timings["qc_outlines"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    recorded = asdict(p)
    if not cfg.stain_norm:  # no effect without the model's reference: outputs as before
        del recorded["stain_norm"]
    summary = build_summary(
        info=info,
        model=net,
        parameters={
            **recorded,
            "stride_px": stride_px,
            "threshold": thr,
            "smooth_um": smooth_um,
            "aggregator": agg.kind_name if agg is not None else "none",
            "tile_threshold": cfg.tile_threshold,
            "decode": "pillow" if decoder is None else "torch",
        },
        heatmap=heatmap,
        mask=mask,
        regions=regions,
        grid=grid,
        stats=stats,
        tissue_from_tiles=one_pass,
        timings_s=timings,
        artefacts=outlines,
    )
    if qc_verdict is not None:
        summary = replace(summary, qc=qc_verdict)
    if qc.stain is not None:
        summary = replace(summary, stain=qc.stain)
    return SlideResult(
        slide=info,
        heatmap=heatmap,
        smoothed=smoothed,
        mask=mask,
        regions=regions,
        tissue=tissue,
        threshold=thr,
        tile_threshold=cfg.tile_threshold,
        summary=summary,
        smooth_um=smooth_um,
        aggregator=agg.kind_name if agg is not None else "none",
        source=str(path),
        qc_masks=qc_masks,
        qc_outlines=outlines,
    )


def build_summary(
    *,
    info: SlideInfo,
    model: IDCModel,
    parameters: Mapping[str, Any],
    heatmap: Heatmap,
    mask: np.ndarray,
    regions: Sequence[Region],
    grid: TileGrid,
    stats: InferenceStats,
    tissue_from_tiles: bool,
    timings_s: Mapping[str, float],
    artefacts: Mapping[str, Sequence[Any]] | None = None,
) -> SlideSummary:
    """The summary of one slide from the pipeline's pieces.

    Args:
        info: the slide as read.
        model: the model used (its config, path and device are recorded).
        parameters: the run's parameters with the model's defaults resolved.
        heatmap: the stitched heatmap (its tissue cells give the tissue area).
        mask: the IDC mask on the heatmap grid (its cells give the IDC area).
        regions: the IDC regions (counted and measured).
        grid: the tile grid (its shape).
        stats: inference statistics (level read, tiles, blocks, busy times).
        tissue_from_tiles: the tissue mask came from the tile pass (:func:`tissue_from_tile_pass`).
        timings_s: wall time per stage, seconds.
        artefacts: what the QC stage found, kind → polygons (:func:`artefact_outlines`):
            each region's measurements say how much of it lies under each kind.
    """
    cfg = model.config
    tissue_mm2 = float(heatmap.tissue.sum() * heatmap.cell_area_um2 / 1e6)
    idc_mm2 = float(np.count_nonzero(mask) * heatmap.cell_area_um2 / 1e6)
    return SlideSummary(
        slide={
            **info.to_dict(),
            # where the file was, whatever folder the run started in (a viewer started
            # elsewhere finds the slide by it; the path above is as given)
            **({} if is_url(info.path) else {"path_resolved": str(Path(info.path).resolve())}),
            "level_read": stats.level,
            "level_read_mpp": stats.level_mpp,
            "level_read_scale": stats.scale,
            "colour_mpp": None if stats.chroma_mpp is None else round(stats.chroma_mpp, 4),
        },
        model=ModelRecord(
            name=cfg.name,
            version=cfg.version,
            architecture=cfg.architecture,
            sha256=cfg.weights_sha256,
            path=str(model.path) if model.path else None,
            mpp=cfg.mpp,
            patch_px=cfg.patch_px,
            device=str(model.device),
        ),
        parameters=dict(parameters),
        tissue_from=(
            "the tile pass (no cheaper read)" if tissue_from_tiles else "a low-resolution read"
        ),
        tissue_area_mm2=round(tissue_mm2, 4),
        idc_area_mm2=round(idc_mm2, 4),
        idc_fraction_of_tissue=round(idc_mm2 / tissue_mm2, 4) if tissue_mm2 > 0 else 0.0,
        regions=len(regions),
        measurements=measurements_summary(
            [r.polygon for r in regions], tissue_mm2, info.mpp, info.mpp_y, artefacts=artefacts
        )[1],
        tiles=TilesRecord(stats.tiles, grid.shape, stats.blocks, stats.dense_blocks),
        timings_s={
            **{k: round(v, 4) for k, v in timings_s.items()},
            "read_busy": round(stats.read_s, 4),
            "resize_busy": round(stats.resize_s, 4),
            "model": round(stats.model_s, 4),
            "model_waited_for_pixels": round(stats.wait_s, 4),
        },
    )


@dataclass
class _QC:
    """What the QC stage found (masks on the tissue thumbnail, the tissue before QC, and the
    per-cell sharpness the tile pass measured for blur), and the stain normalisation applied."""

    masks: QCMasks | None = None
    tissue_before: np.ndarray | None = None
    sharpness: SharpnessGrid | None = None
    #: heatmap cells that are tissue by the tissue rule and hold ink: those left unevaluated
    #: get the probability of the tissue around them (:func:`fill_cells`), the evaluated ones
    #: part of it (:func:`blend_inked`)
    fill: np.ndarray | None = None
    #: takes the ink's OD off the tile pass's blocks and halves a fold's (None: neither)
    corrector: PixelCorrector | None = None
    stain: dict[str, Any] | None = None  # the stain normalisation record (summary.json)
    #: the stain map the model's pixels go through (the verdict's colour is the model's view)
    pixel_map: StainMap | None = None


#: A tile whose area is at least this fraction artefact is not evaluated (even when the rest
#: of it holds ``min_tissue``): the model would see the artefact.
QC_MAX_TILE_ARTEFACT = 0.5


def _apply_qc(
    slide: Slide,
    tissue: TissueMask,
    p: Params,
    grid_kw: dict[str, Any],
    qc: _QC,
    *,
    unink: bool = True,
    masks: QCMasks | None = None,
) -> tuple[TissueMask, TileGrid]:
    """Remove the artefacts from the tissue; the grid keeps tiles of clean tissue only (ink
    over tissue, un-inked, included) and ``qc.corrector`` un-inks and un-folds their pixels:
    ``unink`` False where the tile pass ran already (neither is corrected then). ``masks``:
    the artefacts found already (a :class:`Front`'s)."""
    qc.tissue_before = tissue.mask
    qc.masks = masks if masks is not None else artefacts_of(tissue, p, unink=unink)
    clean = replace(tissue, mask=qc.masks.tissue_after(tissue.mask))
    grid = make_grid(slide, clean, **grid_kw)
    untrusted = qc.masks.untrusted
    if untrusted.any():
        art = make_grid(slide, replace(tissue, mask=untrusted), **{**grid_kw, "min_tissue": 0})
        grid = replace(grid, keep=grid.keep & (art.tissue_fraction < QC_MAX_TILE_ARTEFACT))
    ink = qc.masks.ink
    if ink is not None:
        k = grid.cells_per_tile
        rows, cols = grid.shape[0] + k - 1, grid.shape[1] + k - 1
        cw, ch = grid.cell_level0_px
        frac = cell_fraction(clean, rows, cols, cw, ch)
        inked = cell_fraction(replace(tissue, mask=qc.masks.masks["ink"]), rows, cols, cw, ch)
        qc.fill = (frac >= max(grid_kw["min_tissue"], 1e-6)) & (inked > 0)
    unfold = qc.masks.unfold
    # (where the tiles were evaluated already, folds stay as read)
    gain = fold_gain(unfold & clean.mask) if unink and unfold is not None else None
    ink_od = ink.od if ink is not None else None
    if ink_od is not None or gain is not None:
        qc.corrector = PixelCorrector(
            tissue.px_level0,
            grid.level0_per_model_px,
            grid.stride_px,
            ink_od=ink_od,
            gain=gain,
        )
    return clean, grid


def _cells_read_by(
    second_net: IDCModel,
    path: str | Path,
    p: Params,
    grid: TileGrid,
    cells: np.ndarray,
    run_kw: dict[str, Any],
    pixel_map: StainMap | None,
    transform: PixelCorrector | None = None,
) -> np.ndarray:
    """``second_net``'s probability of the heatmap's cells (NaN where no tile was read): a
    second, short pass over the tiles that cover ``cells``, through the same stain map and,
    where given, the same ``transform`` as the first, stitched the same way."""
    k = grid.cells_per_tile
    rows, cols = grid.keep.shape
    covering = np.zeros_like(grid.keep)
    for dy in range(k):  # tile (r, c) covers cells r..r+k-1, c..c+k-1
        for dx in range(k):
            covering |= cells[dy : dy + rows, dx : dx + cols]
    sub = replace(grid, keep=grid.keep & covering)
    kw = {**run_kw, "progress": False}
    with open_slide(path, backend=p.backend, mpp=p.mpp, allow_non_rgb=p.force_rgb) as slide:
        tile_prob, _ = predict_grid(
            slide, sub, second_net, transform=transform, pixel_map=pixel_map, **kw
        )
    return stitch(tile_prob, sub.keep, k)


def _where_read(cells: np.ndarray, second: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """``prob`` with ``cells`` given the ``second`` read, where it read them."""
    use = cells & np.isfinite(second)
    return np.where(use, second, prob).astype(np.float32)


def _tissue_and_tiles(
    slide: Slide,
    p: Params,
    net: IDCModel,
    stride_px: int,
    run_kw: dict[str, Any],
    timings: dict[str, float],
    stain_ref: StainStats | None = None,
    front: Front | None = None,
) -> tuple[TissueMask, TileGrid, np.ndarray, InferenceStats, bool, _QC]:
    """Tissue mask (after QC), tile grid and tile probabilities (NaN off tissue); True when
    the mask came from the tile pass (:class:`BlockThumbnail`, see
    :func:`tissue_from_tile_pass`); what the QC stage found.

    With ``stain_ref`` the tissue is found first (the one-pass path is not taken: the map needs
    the slide's colour before the first tile), and every block is stain-normalised to it. With
    ``front`` (found for this slide: never a one-pass one) its tissue and artefacts are taken."""
    cfg = net.config
    grid_kw: dict[str, Any] = {
        "model_mpp": cfg.mpp,
        "patch_px": cfg.patch_px,
        "stride_px": stride_px,
        "min_tissue": p.min_tissue,
    }
    kinds = parse_kinds(p.qc)
    qc = _QC()
    two_pass = stain_ref is not None or not tissue_from_tile_pass(slide, p.tissue_mpp, cfg.mpp)
    if front is not None or two_pass:
        if front is not None:  # its stages' times, where they ran
            tissue = front.tissue
            timings.update(front.seconds)
            timings["front_ahead"] = sum(front.seconds.values())
        else:
            t = time.perf_counter()
            tissue = tissue_of(slide, p, stain_ref)
            timings["tissue"] = time.perf_counter() - t
        reader = None
        if kinds:
            # the readers start on the tissue's tiles while this thread runs the stain map and
            # the QC stage (single-threaded: a core would idle); QC only takes tiles away,
            # else predict_grid reads afresh
            pre = make_grid(slide, tissue, **grid_kw)
            on_read = None
            if "blur" in kinds:  # the readers measure each block's sharpness too
                qc.sharpness = SharpnessGrid(pre.shape, stride_px, cfg.patch_px)
                on_read = partial(qc.sharpness.measure_ahead, keep=pre.keep)
            reader = start_reads(
                slide,
                pre,
                cfg.mpp,
                workers=run_kw["workers"],
                decoder=run_kw["decoder"],
                on_read=on_read,
            )
        try:
            pixel_map = None
            if stain_ref is not None:
                t = time.perf_counter()
                pixel_map, qc.stain = _stain(tissue, stain_ref)
                qc.pixel_map = pixel_map
                timings["stain_norm"] = time.perf_counter() - t
            t = time.perf_counter()
            if kinds:  # the QC stage makes the grid of the tissue it leaves (timed with it)
                ahead = front.qc_masks if front is not None else None
                tissue, grid = _apply_qc(slide, tissue, p, grid_kw, qc, masks=ahead)
                timings["qc"] = time.perf_counter() - t + timings.pop("qc_artefacts", 0.0)
            else:
                grid = make_grid(slide, tissue, **grid_kw)
                timings["grid"] = time.perf_counter() - t
            on_block = read_tiles = None
            if qc.sharpness is not None:  # (the grid's shape is the slide's: as pre's)
                on_block = qc.sharpness.add
                read_tiles = qc.sharpness.tiles_needed(grid.keep, qc.fill)
            tile_prob, stats = predict_grid(
                slide,
                grid,
                net,
                on_block=on_block,
                read_tiles=read_tiles,
                transform=qc.corrector,
                pixel_map=pixel_map,
                reader=reader,
                **run_kw,
            )
        finally:
            if reader is not None:  # predict_grid took it over; an error before: stop it
                reader.close()
        return tissue, grid, tile_prob, stats, False, qc
    # one pass: evaluate every tile, draw the mask from the same decoded blocks, keep the
    # tissue tiles
    full = make_grid(slide, None, **grid_kw)
    thumbnail = BlockThumbnail(full, p.tissue_mpp)
    hooks = [thumbnail.add]
    if "blur" in kinds:
        qc.sharpness = SharpnessGrid(full.shape, stride_px, cfg.patch_px)
        hooks.append(qc.sharpness.add)

    def every_hook(block: Block) -> None:
        for hook in hooks:
            hook(block)

    prob_all, stats = predict_grid(slide, full, net, on_block=every_hook, **run_kw)
    t = time.perf_counter()
    tissue = thumbnail.tissue(slide.info)
    if kinds:
        t_qc = time.perf_counter()
        tissue, grid = _apply_qc(slide, tissue, p, grid_kw, qc, unink=False)
        timings["qc"] = time.perf_counter() - t_qc
    else:
        grid = make_grid(slide, tissue, **grid_kw)
    stats.tiles = grid.n_tiles
    timings["tissue"] = time.perf_counter() - t
    tile_prob = np.where(grid.keep, prob_all, np.nan).astype(np.float32)
    return tissue, grid, tile_prob, stats, True, qc


def _stain(tissue: TissueMask, ref: StainStats) -> tuple[StainMap | None, dict[str, Any]]:
    """The slide's stain map from its tissue thumbnail and mask, and its record for the
    summary."""
    smap, _ = stain_map(tissue.thumbnail, tissue.mask, ref)
    record = (
        smap.to_dict()
        if smap is not None
        else {"method": ref.method, "slide": None, "why": "too little tissue"}
    )
    return smap, record


__all__ = ["segment_slide", "stain_reference"]
