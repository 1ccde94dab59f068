"""Deprecated path (0.2.0): use :mod:`idcmap` (``segment_slide``, ``SlideResult``, ``Params``) or
:mod:`idcmap.pipeline`. Kept for one release."""

import warnings

from idcmap.errors import IDCMapError
from idcmap.io.urls import slide_stem
from idcmap.output.folder import OUTPUT_FILES, is_done
from idcmap.params import Params
from idcmap.pipeline.result import SlideResult
from idcmap.pipeline.segment import segment_slide

warnings.warn(
    "idcmap.api is deprecated; import segment_slide, SlideResult and Params from idcmap",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "OUTPUT_FILES",
    "IDCMapError",
    "Params",
    "SlideResult",
    "is_done",
    "segment_slide",
    "slide_stem",
]
