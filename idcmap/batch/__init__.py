"""Many slides: inputs (paths, folders, lists, URLs), the serial runner (``runner``, one
per-slide unit with lock, skip and atomic save), the Dask runner over the same unit
(``cluster``), and file locks (``locking``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from idcmap._lazy import lazy_exports

if TYPE_CHECKING:
    from idcmap.batch.cluster import segment_slides as segment_slides
    from idcmap.batch.runner import Outcome as Outcome
    from idcmap.batch.runner import process_slide as process_slide

_EXPORTS = {"process_slide": "runner", "Outcome": "runner", "segment_slides": "cluster"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
