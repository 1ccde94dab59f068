"""The run record of one slide: :class:`SlideSummary`, what was read, with which model and
knobs, what was found. Typed inside the program; JSON (``summary.json``) only at the edge:
:meth:`SlideSummary.to_json` writes it, :func:`read_summary` reads it back — this file's and
older versions' (0.1 files have no ``measurements``), and tolerates a damaged one.

``summary.json`` keys (units in the names): ``idcmap_version``, ``slide``
(:meth:`~idcmap.io.slide.SlideInfo.to_dict` plus the level read), ``model``, ``parameters`` (every
:class:`~idcmap.params.Params` field with the model's defaults resolved, plus
``tile_threshold``), ``coordinates``, ``tissue_from``, ``tissue_area_mm2``, ``idc_area_mm2``,
``idc_fraction_of_tissue``, ``regions`` (count), ``measurements`` (grading measurements of the
drawn regions, per slide and per region: :mod:`idcmap.pipeline.measure`), ``tiles``,
``timings_s`` and ``mask_png_px_per_cell``. ``idc_area_mm2`` counts the mask's heatmap cells;
``measurements.idc_area_mm2`` sums the drawn polygons (with smooth outlines they differ by a few
per cent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from idcmap.version import __version__

__all__ = ["COORDINATES", "ModelRecord", "SlideSummary", "TilesRecord", "read_summary"]

#: Frame of every coordinate in the outputs.
COORDINATES = "level-0 px relative to the slide bounds origin (QuPath's frame)"


@dataclass(frozen=True)
class ModelRecord:
    """The model a slide was run with."""

    name: str = ""
    version: str = ""
    architecture: str = ""
    sha256: str = ""
    path: str | None = None
    mpp: float | None = None
    patch_px: int | None = None
    device: str = ""


@dataclass(frozen=True)
class TilesRecord:
    """The tile grid: tiles evaluated, grid shape (rows, cols), blocks read (dense ones)."""

    evaluated: int = 0
    grid: tuple[int, int] = (0, 0)
    blocks: int = 0
    dense_blocks: int = 0


@dataclass(frozen=True)
class SlideSummary:
    """What one run of the pipeline on one slide read, used and found (``summary.json``).

    Attributes:
        slide: the slide as recorded (:meth:`SlideInfo.to_dict` + ``level_read``,
            ``level_read_mpp``); a plain mapping so that files of other versions read back.
        model: the model used.
        parameters: the run's parameters with the model's defaults resolved.
        tissue_area_mm2, idc_area_mm2: tissue cells and IDC-mask cells of the heatmap, mm².
        idc_fraction_of_tissue: their ratio.
        regions: number of drawn IDC regions.
        measurements: the grading block (per slide and per region) or None (0.1 files).
        tiles: the tile grid record.
        timings_s: wall time per stage, seconds.
        mask_png_px_per_cell: ``k`` of ``mask.png`` (k×k px per cell), when it was written.
        qc: the QC verdict (:class:`~idcmap.pipeline.qc.QCVerdict`: excluded areas by kind,
            colour distance, ``review`` and its reasons), None when QC did not run.
        stain: the per-slide stain normalisation (method, the slide's own statistics, or why
            none was applied), None when the model carries none or it was turned off.
    """

    slide: Mapping[str, Any] = field(default_factory=dict)
    model: ModelRecord = field(default_factory=ModelRecord)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    tissue_area_mm2: float = 0.0
    idc_area_mm2: float = 0.0
    idc_fraction_of_tissue: float = 0.0
    regions: int = 0
    measurements: Mapping[str, Any] | None = None
    tiles: TilesRecord = field(default_factory=TilesRecord)
    timings_s: Mapping[str, float] = field(default_factory=dict)
    tissue_from: str = ""
    coordinates: str = COORDINATES
    idcmap_version: str = __version__
    mask_png_px_per_cell: int | None = None
    qc: Mapping[str, Any] | None = None
    stain: Mapping[str, Any] | None = None

    @property
    def drawn_idc_area_mm2(self) -> float:
        """IDC area of the drawn regions (the GeoJSON polygons), as cohort.csv and heatmap.png
        give it; 0.1 files have only the mask's cells."""
        return _number(self.measurement("idc_area_mm2"), self.idc_area_mm2)

    @property
    def review(self) -> bool:
        """QC asks a person to look at this slide (False when QC did not run)."""
        return bool((self.qc or {}).get("review"))

    @property
    def review_reasons(self) -> list[str]:
        """Why QC asks for a look ([] when it does not)."""
        reasons = (self.qc or {}).get("reasons")
        return [str(r) for r in reasons] if isinstance(reasons, list) else []

    def measurement(self, name: str) -> Any:
        """A per-slide figure of the measurements block (None when absent)."""
        return (self.measurements or {}).get(name)

    def to_json(self) -> dict[str, Any]:
        """The ``summary.json`` object, keys in their documented order."""
        d: dict[str, Any] = {
            "idcmap_version": self.idcmap_version,
            "slide": dict(self.slide),
            "model": {f.name: getattr(self.model, f.name) for f in fields(ModelRecord)},
            "parameters": dict(self.parameters),
            "coordinates": self.coordinates,
            "tissue_from": self.tissue_from,
            "tissue_area_mm2": self.tissue_area_mm2,
            "idc_area_mm2": self.idc_area_mm2,
            "idc_fraction_of_tissue": self.idc_fraction_of_tissue,
            "regions": self.regions,
        }
        if self.measurements is not None:
            d["measurements"] = dict(self.measurements)
        d["tiles"] = {
            "evaluated": self.tiles.evaluated,
            "grid": list(self.tiles.grid),
            "blocks": self.tiles.blocks,
            "dense_blocks": self.tiles.dense_blocks,
        }
        d["timings_s"] = dict(self.timings_s)
        if self.qc is not None:
            d["qc"] = dict(self.qc)
        if self.stain is not None:
            d["stain_norm"] = dict(self.stain)
        if self.mask_png_px_per_cell is not None:
            d["mask_png_px_per_cell"] = self.mask_png_px_per_cell
        return d

    def __getitem__(self, key: str) -> Any:
        """``summary["idc_area_mm2"]`` as with 0.2's dict (read-only)."""
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)


def _number(v: Any, default: float) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    return float(v) if ok else default


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def read_summary(obj: Mapping[str, Any]) -> SlideSummary:
    """A :class:`SlideSummary` from ``summary.json`` content of any idcmap version; missing or
    malformed entries take their defaults (so a viewer or a cohort table never fails on one)."""
    s = _mapping(obj)
    m, t = _mapping(s.get("model")), _mapping(s.get("tiles"))
    grid = t.get("grid")
    shape = (
        (int(grid[0]), int(grid[1])) if isinstance(grid, Sequence) and len(grid) == 2 else (0, 0)
    )
    regions = s.get("regions")
    k = s.get("mask_png_px_per_cell")
    model = ModelRecord(**{f.name: m[f.name] for f in fields(ModelRecord) if f.name in m})
    return SlideSummary(
        slide=_mapping(s.get("slide")),
        model=model,
        parameters=_mapping(s.get("parameters")),
        tissue_area_mm2=_number(s.get("tissue_area_mm2"), 0.0),
        idc_area_mm2=_number(s.get("idc_area_mm2"), 0.0),
        idc_fraction_of_tissue=_number(s.get("idc_fraction_of_tissue"), 0.0),
        regions=len(regions) if isinstance(regions, list) else int(_number(regions, 0)),
        measurements=s["measurements"] if isinstance(s.get("measurements"), Mapping) else None,
        tiles=TilesRecord(
            int(_number(t.get("evaluated"), 0)),
            shape,
            int(_number(t.get("blocks"), 0)),
            int(_number(t.get("dense_blocks"), 0)),
        ),
        timings_s=_mapping(s.get("timings_s")),
        tissue_from=str(s.get("tissue_from") or ""),
        coordinates=str(s.get("coordinates") or COORDINATES),
        idcmap_version=str(s.get("idcmap_version") or ""),
        mask_png_px_per_cell=int(k) if isinstance(k, int) else None,
        qc=s["qc"] if isinstance(s.get("qc"), Mapping) else None,
        stain=s["stain_norm"] if isinstance(s.get("stain_norm"), Mapping) else None,
    )
