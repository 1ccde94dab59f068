"""The per-slide pipeline, one module per stage, data flowing one way:

``tissue`` (tissue mask) → ``tiles`` (the tile grid and its read blocks) → ``infer`` (the model
over the grid) → ``heatmap`` (stitched tile probabilities) → ``aggregate`` (context refinement)
→ ``regions`` / ``contours`` (mask and polygons) → ``measure`` (per-region figures) →
``summary`` (the typed run record); ``segment`` ties them together (:func:`segment_slide`) and
returns a ``result.SlideResult``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from idcmap._lazy import lazy_exports

if TYPE_CHECKING:
    from idcmap.pipeline.result import SlideResult as SlideResult
    from idcmap.pipeline.segment import segment_slide as segment_slide

_EXPORTS = {"segment_slide": "segment", "SlideResult": "result"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
