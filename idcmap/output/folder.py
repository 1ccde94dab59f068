"""A slide's output folder: the one table of its files, and the atomic save.

Each :class:`Output` names one file and the function that writes it from a
:class:`~idcmap.pipeline.result.SlideResult`. To add an output format, add one entry to
:data:`OUTPUTS`
(``option="name"`` makes it opt-in: ``SlideResult.save(..., extra_outputs={"name"})``).
``summary.json`` stays the last entry: it records how long the others took, and its presence
in ``<out>/<stem>/`` is what marks a slide done (:func:`idcmap.pipeline.segment.is_done`).

The folder is written atomically: every file goes to ``<out>/.<stem>.tmp-*`` first, which is
renamed to ``<out>/<stem>`` once complete (an existing folder is moved aside to
``.<stem>.old-*`` and removed after the rename; :func:`idcmap.batch.runner.remove_leftovers` repairs
a run killed in between).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from idcmap.errors import Cancelled, OutputError
from idcmap.io.slide import SlideInfo
from idcmap.io.urls import slide_stem
from idcmap.output.export import heatmap_npz, regions_to_geojson, write_json
from idcmap.output.ometiff import heatmap_image, write_ome_tiff
from idcmap.output.render import heatmap_picture, mask_picture, mask_px_per_cell, save_png
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.regions import Region
from idcmap.pipeline.summary import SlideSummary
from idcmap.pipeline.tissue import TissueMask

__all__ = ["OUTPUTS", "OUTPUT_FILES", "OUTPUT_OPTIONS", "Output", "SavedResult", "save_outputs"]


class SavedResult(Protocol):
    """What the writers read of a :class:`~idcmap.pipeline.result.SlideResult` (typed here as
    a protocol so that the result, which saves itself through this module, is not imported)."""

    slide: SlideInfo
    heatmap: Heatmap
    smoothed: Heatmap
    mask: np.ndarray
    regions: list[Region]
    tissue: TissueMask
    threshold: float
    tile_threshold: float
    summary: SlideSummary
    smooth_um: float
    aggregator: str
    qc_masks: dict[str, np.ndarray] | None

    @property
    def stem(self) -> str: ...

    def to_geojson(self, tiles: bool = False) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Output:
    """One file of a slide's output folder.

    Attributes:
        file_name: name in the folder; ``{stem}`` is replaced by the slide's stem.
        write: writes the file from the result at the given path (the temporary folder's).
        description: one line for the docs.
        option: None: always written; else written only when this name is asked for
            (``extra_outputs`` of :func:`save_outputs`, e.g. ``tiles_geojson``).
    """

    file_name: str
    write: Callable[[SavedResult, Path], None]
    description: str
    option: str | None = None

    def path_in(self, folder: Path, stem: str) -> Path:
        return folder / self.file_name.format(stem=stem)


def _regions_geojson(r: SavedResult, path: Path) -> None:
    write_json(r.to_geojson(), path)


def _tiles_geojson(r: SavedResult, path: Path) -> None:
    write_json(
        regions_to_geojson([], tiles=r.heatmap, tile_threshold=r.tile_threshold),
        path,
    )


def _heatmap_npz(r: SavedResult, path: Path) -> None:
    heatmap_npz(r.heatmap, path, prob_smoothed=r.smoothed.prob)


def _heatmap_png(r: SavedResult, path: Path) -> None:
    note = f" (smoothed, σ {r.smooth_um:g} µm)" if r.smooth_um else ""
    if r.aggregator != "none":
        note = " (refined by the context aggregator)"
    s = r.summary
    n = len(r.regions)
    caption = f"{n} IDC region{'s' if n != 1 else ''}"
    if s.measurements is not None:
        caption += (
            f" · IDC {s.measurement('idc_area_mm2'):.2f} mm² = "
            f"{s.measurement('idc_percent_of_tissue'):.1f} % of "
            f"{s.measurement('tissue_area_mm2'):.2f} mm² tissue"
        )
    if n:
        largest = s.measurement("largest_focus_greatest_dimension_mm") or 0
        caption += f" · largest focus {largest:.1f} mm across"
    tissue = r.tissue.mask if r.tissue.mask.shape == r.tissue.thumbnail.shape[:2] else None
    img = heatmap_picture(
        r.smoothed,
        r.tissue.thumbnail,
        r.tissue.origin_level0_px,
        r.tissue.px_level0,
        threshold=r.threshold,
        polygons=[reg.polygon for reg in r.regions],
        tissue=tissue,
        title=f"{r.stem}: IDC probability{note}",
        caption=caption,
        mpp_x=r.slide.mpp,
        mpp_y=r.slide.mpp_y,
    )
    save_png(img, path)


def _mask_png(r: SavedResult, path: Path) -> None:
    img, k = mask_picture(r.mask)
    cw, ch = r.heatmap.cell_level0_px
    save_png(
        img,
        path,
        {
            "Comment": f"IDC mask (255 = IDC): {k}×{k} px per heatmap cell; cell (row, col) = "
            f"pixel (row·{k}, col·{k}); a cell is {cw:g}×{ch:g} level-0 px"
        },
    )


def _ome_tiff(r: SavedResult, path: Path) -> None:
    image = heatmap_image(
        heatmap=r.heatmap,
        smoothed=r.smoothed,
        qc_masks=r.qc_masks,
        thumbnail=r.tissue,
        name=r.stem,
        threshold=r.threshold,
        bounds_level0_px=r.slide.bounds_level0_px,
    )
    write_ome_tiff(image, path)


def _summary_json(r: SavedResult, path: Path) -> None:
    write_json(r.summary.to_json(), path)


#: Every file of a slide's folder, in the order written (``summary.json`` last).
OUTPUTS: tuple[Output, ...] = (
    Output("{stem}.geojson", _regions_geojson, "IDC regions, QuPath GeoJSON (level-0 px)"),
    Output(
        "{stem}.tiles.geojson",
        _tiles_geojson,
        "every evaluated heatmap cell as a QuPath tile with its IDC probability, classified "
        "at the model's tile threshold",
        option="tiles_geojson",
    ),
    Output("heatmap.npz", _heatmap_npz, "heatmap arrays and geometry (load_heatmap_npz)"),
    Output(
        "heatmap.png",
        _heatmap_png,
        "heatmap over the slide thumbnail (clear where low), numbered region outlines, scale "
        "bar, colour bar with the region threshold",
    ),
    Output("mask.png", _mask_png, "IDC mask, k×k px per heatmap cell (k in summary.json)"),
    Output(
        "{stem}.heatmap.ome.tif",
        _ome_tiff,
        "pyramidal OME-TIFF aligned with the slide at its physical size (one px = one heatmap "
        "cell): IDC probability, QC artefact code, tissue, tile probability (uint8 channels)",
        option="ome_tiff",
    ),
    Output("summary.json", _summary_json, "areas, counts, model, parameters, timings"),
)

#: Files every finished folder holds (``{stem}`` to be replaced by the slide's stem).
OUTPUT_FILES: tuple[str, ...] = tuple(o.file_name for o in OUTPUTS if o.option is None)
#: Names of the opt-in outputs.
OUTPUT_OPTIONS: frozenset[str] = frozenset(o.option for o in OUTPUTS if o.option is not None)


def save_outputs(
    result: SavedResult,
    out_dir: str | Path,
    *,
    overwrite: bool = True,
    extra_outputs: Iterable[str] = (),
    stop: Callable[[], bool] | None = None,
) -> Path:
    """Write ``result``'s outputs to ``out_dir/<stem>/`` atomically; returns that folder.

    ``stop`` (optional) is asked before each file and before the final rename: when it says
    True the temporary folder is removed and :class:`~idcmap.errors.Cancelled` raised (a
    batch writing in a background thread while Ctrl-C stops it, :mod:`idcmap.batch.lane`).

    Raises:
        OutputError: the folder exists and ``overwrite`` is False, or it cannot be written.
        Cancelled: ``stop`` said so; nothing was left under the slide's name.
    """

    def check_stop() -> None:
        if stop is not None and stop():
            raise Cancelled(f"{stem}: outputs not written, the run is stopping")

    extra = set(extra_outputs)
    unknown = extra - OUTPUT_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown extra outputs {sorted(unknown)}; known: {sorted(OUTPUT_OPTIONS)}"
        )
    out_dir = Path(out_dir)
    stem = result.stem
    final = out_dir / stem
    tmp = out_dir / f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        t0 = time.perf_counter()
        for out in OUTPUTS:
            if out.option is not None and out.option not in extra:
                continue
            check_stop()
            if out is OUTPUTS[-1]:  # summary.json records the export time of the others
                s = result.summary
                result.summary = replace(
                    s,
                    timings_s={**s.timings_s, "export": round(time.perf_counter() - t0, 4)},
                    mask_png_px_per_cell=mask_px_per_cell(result.mask.shape),
                )
            out.write(result, out.path_in(tmp, stem))
        _fsync_dir(tmp)
        check_stop()
        if final.exists():
            if not overwrite:
                raise OutputError(f"{final} exists; overwrite=True replaces it")
            old = out_dir / f".{stem}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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


def is_done(out_dir: str | Path, slide_path: str | Path) -> bool:
    """True when ``out_dir/<stem>/summary.json`` exists (a finished, renamed output folder)."""
    return (Path(out_dir) / slide_stem(slide_path) / "summary.json").is_file()
