"""``idcmap view``: a read-only browser viewer over an output folder of ``idcmap run``.

A batch page (one row per slide, sortable) and a slide page (the slide zoomable to full
resolution with OpenSeadragon, the heatmap overlay, the numbered IDC regions and their
measurements, a scale bar). See ``docs/viewer.md``.
"""

from __future__ import annotations

from idcmap.viewer.server import ViewerServer, make_server

__all__ = ["ViewerServer", "make_server"]
