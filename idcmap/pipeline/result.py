"""The result of one slide: :class:`SlideResult` (what
:func:`~idcmap.pipeline.segment.segment_slide` returns) and the name its outputs go under."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from idcmap.io.slide import SlideInfo
from idcmap.io.urls import slide_stem
from idcmap.output.export import regions_to_geojson
from idcmap.output.folder import save_outputs
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.measure import artefact_measurements, artefact_share_pct, measure_polygon
from idcmap.pipeline.qc import artefact_outlines
from idcmap.pipeline.regions import Region
from idcmap.pipeline.summary import SlideSummary
from idcmap.pipeline.tissue import TissueMask

__all__ = ["SlideResult"]


@dataclass
class SlideResult:
    """Everything idcmap found on one slide.

    Attributes:
        slide: what the reader saw (backend, levels, µm/px, bounds).
        heatmap: IDC probability per grid cell (NaN outside tissue), tiles stitched.
        smoothed: the refined heatmap the mask is drawn from: the model's learned aggregator
            (:mod:`idcmap.aggregate`) when it has one, else the tissue-aware Gaussian
            (``smooth_um``; the same object as ``heatmap`` when it is 0).
        mask: bool IDC mask on the heatmap grid (after clean-up).
        regions: IDC regions as shapely polygons in level-0 px (QuPath frame).
        tissue: the tissue mask and thumbnail.
        threshold: the region threshold: of ``smoothed``, the mask was made with it.
        tile_threshold: the model's per-tile threshold (classifies tiles in the tile GeoJSON).
        summary: areas, counts, model, parameters, timings (:class:`SlideSummary`, written as
            summary.json).
        smooth_um: σ (µm) of the Gaussian that made ``smoothed`` (0 with the aggregator).
        aggregator: the aggregator's kind (e.g. ``multiscale-logistic/1``), or ``"none"``.
        source: the path given to :func:`segment_slide`; it names the outputs (for a DICOM
            series folder it is the folder, while ``slide.path`` is the file opened in it).
        qc_masks: what the QC stage found, per kind (bool, on the tissue thumbnail's grid;
            ``blur`` on the heatmap's grid; :data:`idcmap.pipeline.qc.EXCLUDE` says which
            kinds were removed from the tissue); None with ``qc="none"``.
        qc_outlines: those masks as polygons in level-0 px
            (:func:`idcmap.pipeline.qc.artefact_outlines`), once for the summary and the
            GeoJSON; None: made from ``qc_masks`` when needed.
    """

    slide: SlideInfo
    heatmap: Heatmap
    smoothed: Heatmap
    mask: np.ndarray
    regions: list[Region]
    tissue: TissueMask
    threshold: float
    tile_threshold: float
    summary: SlideSummary = field(default_factory=SlideSummary)
    smooth_um: float = 0.0
    aggregator: str = "none"
    source: str | None = None
    qc_masks: dict[str, np.ndarray] | None = None
    qc_outlines: dict[str, list[Any]] | None = None

    @property
    def stem(self) -> str:
        """Output-folder name: the stem of the path given, as :func:`is_done` computes it."""
        return slide_stem(self.source or self.slide.path)

    def to_geojson(self, tiles: bool = False) -> dict[str, Any]:
        """QuPath FeatureCollection of the IDC regions (and the tiles, with ``tiles=True``);
        each region carries its grading measurements (:mod:`idcmap.measure`)."""
        arte = self.qc_outlines
        if arte is None and self.qc_masks is not None:
            arte = artefact_outlines(self.qc_masks, self.tissue, self.heatmap)
        measurements = []
        for r in self.regions:
            m = measure_polygon(r.polygon, self.slide.mpp, self.slide.mpp_y).qupath()
            if arte:  # each region: how much of it lies under each kind the QC stage found
                m.update(artefact_measurements(artefact_share_pct(r.polygon, arte)))
            measurements.append(m)
        return regions_to_geojson(
            self.regions,
            tiles=self.heatmap if tiles else None,
            tile_threshold=self.tile_threshold,
            measurements=measurements,
            artefacts=arte,
        )

    def save(
        self,
        out_dir: str | Path,
        *,
        tiles_geojson: bool = False,
        overwrite: bool = True,
        extra_outputs: Iterable[str] = (),
        stop: Callable[[], bool] | None = None,
    ) -> Path:
        """Write the outputs (:data:`idcmap.outputs.OUTPUTS`) to ``out_dir/<stem>/``
        atomically: everything goes to a temporary folder first, renamed once complete.

        Args:
            tiles_geojson: also write ``<stem>.tiles.geojson`` (same as
                ``extra_outputs={"tiles_geojson"}``).
            overwrite: replace an existing folder (else :class:`OutputError`).
            extra_outputs: names of opt-in outputs to write too.
            stop: asked between files; True gives up (:func:`save_outputs`).

        Returns the final folder.
        """
        extra = set(extra_outputs) | ({"tiles_geojson"} if tiles_geojson else set())
        return save_outputs(self, out_dir, overwrite=overwrite, extra_outputs=extra, stop=stop)
