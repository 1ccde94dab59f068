"""``idcmap view``: a read-only browser viewer over an output folder of ``idcmap run``.

A batch page (one row per slide, sortable) and a slide page (the slide zoomable to full
resolution with OpenSeadragon, the heatmap overlay, the numbered IDC regions and their
measurements, a scale bar). See ``docs/viewer.md``.

The server is imported on first use, so that adding the ``view`` command to the CLI costs
nothing when another command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from idcmap._lazy import lazy_exports

if TYPE_CHECKING:
    from idcmap.viewer.server import ViewerServer as ViewerServer
    from idcmap.viewer.server import make_server as make_server

_EXPORTS = {"ViewerServer": "server", "make_server": "server"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
