"""The Python API: one slide in, heatmap + IDC regions out.

slide → tissue → tiles → model → heatmap → regions → export, each stage in its own module.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import __version__
from .errors import IDCMapError, OutputError, UsageError
from .export import heatmap_npz, heatmap_png, mask_png, regions_to_geojson, write_json
from .heatmap import Heatmap, smooth, stitch
from .infer import InferenceStats, predict_grid
from .model import IDCModel, load_model
from .regions import Region, idc_mask, mask_to_regions
from .remote import is_url, url_name
from .slide import Slide, SlideInfo, open_slide
from .tiles import Block, TileGrid, make_grid
from .tissue import TissueMask, detect_tissue, tissue_mask_from_rgb

#: Files of one slide's output folder; the folder is complete when it exists under its final name.
OUTPUT_FILES = ("{stem}.geojson", "heatmap.npz", "heatmap.png", "mask.png", "summary.json")


@dataclass(frozen=True)
class Params:
    """Every knob of one run, with its unit. ``None`` means "the model's default"."""

    stride_px: int | None = None  # model px; default = patch size
    threshold: float | None = None  # of the smoothed heatmap; default = the model's
    smooth_um: float | None = None  # heatmap smoothing sigma, µm; default = the model's
    mpp: float | None = None  # µm per level-0 px, overrides the slide's metadata
    backend: str = "auto"
    device: str = "auto"
    batch_size: int = 512
    workers: int = 2  # background reader threads
    min_tissue: float = 0.2  # tissue fraction a tile needs to be evaluated
    tissue_mpp: float = 16.0  # µm/px of the tissue mask
    min_region_um2: float = 40_000.0  # IDC regions smaller than this are dropped
    min_hole_um2: float = 40_000.0  # holes smaller than this are filled
    simplify_um: float = 2.0  # polygon simplification tolerance
    force_rgb: bool = False  # process non-brightfield images anyway

    def validate(self) -> None:
        if self.stride_px is not None and (
            not isinstance(self.stride_px, int) or self.stride_px <= 0
        ):
            raise UsageError(f"stride_px={self.stride_px} must be a positive integer (model px)")
        if self.threshold is not None and not (0.0 <= self.threshold <= 1.0):
            raise UsageError(f"threshold={self.threshold} must lie in [0, 1] (an IDC probability)")
        if self.mpp is not None and not (math.isfinite(self.mpp) and 0.01 <= self.mpp <= 100):
            raise UsageError(
                f"mpp={self.mpp} must be µm per pixel between 0.01 and 100 (0.25 for 40x)"
            )
        if self.batch_size < 1:
            raise UsageError(f"batch_size={self.batch_size} must be ≥ 1")
        if self.workers < 0:
            raise UsageError(f"workers={self.workers} must be ≥ 0")
        for name in ("min_region_um2", "min_hole_um2", "simplify_um", "tissue_mpp", "smooth_um"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise UsageError(f"{name}={v} must be a number ≥ 0")
        if self.tissue_mpp <= 0:
            raise UsageError(f"tissue_mpp={self.tissue_mpp} must be µm per pixel > 0")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise UsageError(f"min_tissue={self.min_tissue} must lie in [0, 1]")


@dataclass
class SlideResult:
    """Everything idcmap found on one slide.

    Attributes:
        slide: what the reader saw (backend, levels, µm/px, bounds).
        heatmap: IDC probability per grid cell (NaN outside tissue), tiles stitched.
        smoothed: ``heatmap`` after the tissue-aware Gaussian (``smooth_um``) the mask is
            drawn from (the same object when ``smooth_um`` is 0).
        mask: bool IDC mask on the heatmap grid (after clean-up).
        regions: IDC regions as shapely polygons in level-0 px (QuPath frame).
        tissue: the tissue mask and thumbnail.
        threshold: the threshold of ``smoothed`` the mask was made with.
        tile_threshold: the model's per-tile threshold (classifies tiles in the tile GeoJSON).
        summary: areas, counts, model, parameters, timings (written as summary.json).
        source: the path given to :func:`segment_slide`; it names the outputs (for a DICOM
            series folder it is the folder, while ``slide.path`` is the file opened in it).
    """

    slide: SlideInfo
    heatmap: Heatmap
    smoothed: Heatmap
    mask: np.ndarray
    regions: list[Region]
    tissue: TissueMask
    threshold: float
    tile_threshold: float
    summary: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def stem(self) -> str:
        """Output-folder name: the stem of the path given, as :func:`is_done` computes it."""
        return slide_stem(self.source or self.slide.path)

    def to_geojson(self, tiles: bool = False) -> dict[str, Any]:
        """QuPath FeatureCollection of the IDC regions (and the tiles, with ``tiles=True``)."""
        return regions_to_geojson(
            self.regions, tiles=self.heatmap if tiles else None, threshold=self.tile_threshold
        )

    def save(
        self, out_dir: str | Path, *, tiles_geojson: bool = False, overwrite: bool = True
    ) -> Path:
        """Write the outputs to ``out_dir/<stem>/`` atomically: everything goes to a temporary
        folder first, which is renamed once complete. Returns the final folder."""
        out_dir = Path(out_dir)
        final = out_dir / self.stem
        tmp = out_dir / f".{self.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            t0 = time.perf_counter()
            self._write(tmp, tiles_geojson)
            self.summary.setdefault("timings_s", {})["export"] = round(time.perf_counter() - t0, 4)
            write_json(self.summary, tmp / "summary.json")
            _fsync_dir(tmp)
            if final.exists():
                if not overwrite:
                    raise OutputError(f"{final} exists; overwrite=True replaces it")
                old = out_dir / f".{self.stem}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
            _fsync_dir(out_dir)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(
                f"cannot write outputs to {out_dir}: {e.strerror or e}; check that the folder is "
                "writable and the disk has space"
            ) from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _smooth_note(self) -> str:
        sigma = self.summary.get("parameters", {}).get("smooth_um") or 0
        return f" (smoothed, sigma {sigma:g} µm)" if sigma else ""

    def _write(self, folder: Path, tiles_geojson: bool) -> None:
        write_json(self.to_geojson(), folder / f"{self.stem}.geojson")
        if tiles_geojson:
            write_json(
                regions_to_geojson([], tiles=self.heatmap, threshold=self.tile_threshold),
                folder / f"{self.stem}.tiles.geojson",
            )
        heatmap_npz(self.heatmap, folder / "heatmap.npz", prob_smoothed=self.smoothed.prob)
        heatmap_png(
            self.smoothed,
            self.tissue.thumbnail,
            self.tissue.origin_level0_px,
            self.tissue.px_level0,
            folder / "heatmap.png",
            threshold=self.threshold,
            title=f"{self.stem}: IDC probability{self._smooth_note()}",
        )
        mask_png(self.mask, folder / "mask.png")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def slide_stem(path: str | Path) -> str:
    """Output-folder name of a slide: its file name without extension (``a.ome.tiff`` → ``a``);
    for a URL, its last path part (``https://h/b/a.svs?sig=…`` → ``a``)."""
    name = url_name(path) if is_url(path) else Path(path).name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem if Path(name).suffix else name


def segment_slide(
    path: str | Path,
    *,
    model: IDCModel | str | Path | None = None,
    device: str = "auto",
    stride: int | None = None,
    threshold: float | None = None,
    mpp: float | None = None,
    progress: bool = True,
    params: Params | None = None,
) -> SlideResult:
    """Find the IDC regions of one whole slide.

    Args:
        path: slide file (any format OpenSlide or tiffslide reads, or a PNG/JPEG with ``mpp``).
        model: a loaded :class:`IDCModel`, a model ``.json`` path, or ``None`` for the bundled one.
        device: ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda``, ``mps``.
        stride: tile step in model px (default: the patch size, 50 px = 200 µm); must divide it.
        threshold: threshold of the smoothed IDC probability for the region mask (default: the
            model's ``region_threshold``, chosen on validation mosaics).
        mpp: µm per level-0 px, overriding the slide's metadata (required when it has none).
        progress: show a tqdm bar over the tiles.
        params: every other knob (:class:`Params`); the keyword arguments above override it.

    Raises:
        SlideError, ResolutionError, UnsupportedImageError, ModelError, UsageError.
    """
    p = params or Params()
    kw = {"device": device, "stride_px": stride, "threshold": threshold, "mpp": mpp}
    p = Params(**{**asdict(p), **{k: v for k, v in kw.items() if v is not None and v != "auto"}})
    p.validate()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    net = model if isinstance(model, IDCModel) else load_model(model, device=p.device)
    cfg = net.config
    stride_px = p.stride_px or cfg.patch_px
    if p.threshold is not None:
        thr = p.threshold
    else:
        thr = cfg.threshold if cfg.region_threshold is None else cfg.region_threshold
    smooth_um = cfg.smooth_um if p.smooth_um is None else p.smooth_um
    timings["load_model"] = time.perf_counter() - t0

    t = time.perf_counter()
    with open_slide(path, backend=p.backend, mpp=p.mpp, allow_non_rgb=p.force_rgb) as slide:
        timings["open"] = time.perf_counter() - t
        grid_kw = {
            "model_mpp": cfg.mpp,
            "patch_px": cfg.patch_px,
            "stride_px": stride_px,
            "min_tissue": p.min_tissue,
        }
        run_kw = {
            "batch_size": p.batch_size,
            "workers": p.workers,
            "progress": progress,
            "desc": slide_stem(path),
        }
        one_pass = slide.best_level_for_mpp(p.tissue_mpp) == slide.best_level_for_mpp(cfg.mpp)
        if one_pass:
            # no level coarser than the tiles' one: the tissue mask would decode that whole
            # level a second time, so evaluate every tile and take the mask from the same pass
            tissue, grid, tile_prob, stats = _one_pass(
                slide, p.tissue_mpp, grid_kw, run_kw, net, timings
            )
        else:
            t = time.perf_counter()
            tissue = detect_tissue(slide, target_mpp=p.tissue_mpp)
            timings["tissue"] = time.perf_counter() - t
            t = time.perf_counter()
            grid = make_grid(slide, tissue, **grid_kw)
            timings["grid"] = time.perf_counter() - t
            tile_prob, stats = predict_grid(slide, grid, net, **run_kw)
        timings["tiles_wall"] = stats.wall_s
        info = slide.info
    t = time.perf_counter()
    heatmap = Heatmap(
        prob=stitch(tile_prob, grid.keep, grid.cells_per_tile),
        origin_level0_px=(0.0, 0.0),  # QuPath frame: the bounds origin
        cell_level0_px=grid.cell_level0_px,
        slide_mpp=info.mpp,
        model_mpp=cfg.mpp,
        stride_px=stride_px,
        patch_px=cfg.patch_px,
    )
    timings["stitch"] = time.perf_counter() - t
    t = time.perf_counter()
    smoothed = smooth(heatmap, smooth_um)
    mask = idc_mask(smoothed, thr, min_region_um2=p.min_region_um2, min_hole_um2=p.min_hole_um2)
    regions = mask_to_regions(mask, heatmap, simplify_um=p.simplify_um)
    timings["regions"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    tissue_mm2 = float(heatmap.tissue.sum() * heatmap.cell_area_um2 / 1e6)
    idc_mm2 = float(mask.sum() * heatmap.cell_area_um2 / 1e6)
    summary: dict[str, Any] = {
        "idcmap_version": __version__,
        "slide": {**info.to_dict(), "level_read": stats.level, "level_read_mpp": stats.level_mpp},
        "model": {
            "name": cfg.name,
            "version": cfg.version,
            "architecture": cfg.architecture,
            "sha256": cfg.weights_sha256,
            "path": str(net.path) if net.path else None,
            "mpp": cfg.mpp,
            "patch_px": cfg.patch_px,
            "device": str(net.device),
        },
        "parameters": {
            **asdict(p),
            "stride_px": stride_px,
            "threshold": thr,
            "smooth_um": smooth_um,
            "tile_threshold": cfg.threshold,
        },
        "coordinates": "level-0 px relative to the slide bounds origin (QuPath's frame)",
        "tissue_from": "the tile pass (no coarser level)" if one_pass else "a low-resolution read",
        "tissue_area_mm2": round(tissue_mm2, 4),
        "idc_area_mm2": round(idc_mm2, 4),
        "idc_fraction_of_tissue": round(idc_mm2 / tissue_mm2, 4) if tissue_mm2 > 0 else 0.0,
        "regions": len(regions),
        "tiles": {
            "evaluated": stats.tiles,
            "grid": list(grid.shape),
            "blocks": stats.blocks,
            "dense_blocks": stats.dense_blocks,
        },
        "timings_s": {
            **{k: round(v, 4) for k, v in timings.items()},
            "read_busy": round(stats.read_s, 4),
            "resize_busy": round(stats.resize_s, 4),
            "model": round(stats.model_s, 4),
            "model_waited_for_pixels": round(stats.wait_s, 4),
        },
    }
    return SlideResult(
        slide=info,
        heatmap=heatmap,
        smoothed=smoothed,
        mask=mask,
        regions=regions,
        tissue=tissue,
        threshold=thr,
        tile_threshold=cfg.threshold,
        summary=summary,
        source=str(path),
    )


def _one_pass(
    slide: Slide,
    tissue_mpp: float,
    grid_kw: dict[str, Any],
    run_kw: dict[str, Any],
    net: IDCModel,
    timings: dict[str, float],
) -> tuple[TissueMask, TileGrid, np.ndarray, InferenceStats]:
    """Evaluate every tile, build the tissue thumbnail from the same decoded blocks (box
    average of k×k model px, k = tissue µm/px ÷ model µm/px), then keep the tissue tiles."""
    full = make_grid(slide, None, **grid_kw)
    k = max(1, round(tissue_mpp / full.model_mpp))
    rows, cols = full.shape
    h_m = (rows - 1) * full.stride_px + full.patch_px
    w_m = (cols - 1) * full.stride_px + full.patch_px
    thumb = np.full((-(-h_m // k), -(-w_m // k), 3), 255, np.uint8)

    def collect(block: Block) -> None:
        x0, y0 = block.col0 * full.stride_px, block.row0 * full.stride_px
        sx, sy = (-x0) % k, (-y0) % k  # start on the thumbnail's k-px lattice
        piece = np.ascontiguousarray(block.pixels[sy:, sx:])
        if piece.size:
            small = np.asarray(Image.fromarray(piece).reduce(k))
            ty, tx = (y0 + sy) // k, (x0 + sx) // k
            hh, ww = (
                min(small.shape[0], thumb.shape[0] - ty),
                min(small.shape[1], thumb.shape[1] - tx),
            )
            thumb[ty : ty + hh, tx : tx + ww] = small[:hh, :ww]

    prob_all, stats = predict_grid(slide, full, net, on_block=collect, **run_kw)
    t = time.perf_counter()
    fx, fy = full.level0_per_model_px
    _, _, bw, bh = full.bounds_level0_px
    thumb = thumb[: max(1, math.ceil(bh / (k * fy))), : max(1, math.ceil(bw / (k * fx)))]
    mpp_x, mpp_y = k * fx * slide.info.mpp, k * fy * slide.info.mpp_y
    mask = tissue_mask_from_rgb(thumb, mpp_x, mpp_y)
    tissue = TissueMask(
        mask=mask,
        origin_level0_px=(0.0, 0.0),
        px_level0=(k * fx, k * fy),
        mpp=mpp_x,
        thumbnail=thumb,
        mpp_y=mpp_y,
    )
    grid = make_grid(slide, tissue, **grid_kw)
    stats.tiles = grid.n_tiles
    timings["tissue"] = time.perf_counter() - t
    return tissue, grid, np.where(grid.keep, prob_all, np.nan).astype(np.float32), stats


def is_done(out_dir: str | Path, slide_path: str | Path) -> bool:
    """True when ``out_dir/<stem>/summary.json`` exists (a finished, renamed output folder)."""
    return (Path(out_dir) / slide_stem(slide_path) / "summary.json").is_file()


__all__ = ["IDCMapError", "Params", "SlideResult", "is_done", "segment_slide", "slide_stem"]
