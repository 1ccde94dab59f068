"""Deprecated since 0.3 (removed in 0.4): use :mod:`idcmap` (``segment_slide``, ``SlideResult``,
``Params``) or :mod:`idcmap.pipeline`."""

from idcmap._shim import reexport

reexport(__name__, "idcmap.pipeline.segment", globals())
from idcmap.errors import IDCMapError  # noqa: E402
from idcmap.io.urls import slide_stem  # noqa: E402
from idcmap.output.folder import OUTPUT_FILES, is_done  # noqa: E402
from idcmap.params import Params  # noqa: E402
from idcmap.pipeline.result import SlideResult  # noqa: E402
from idcmap.pipeline.segment import segment_slide  # noqa: E402

__all__ = [
    "OUTPUT_FILES",
    "IDCMapError",
    "Params",
    "SlideResult",
    "is_done",
    "segment_slide",
    "slide_stem",
]
