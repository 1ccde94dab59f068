"""Slides: open a whole-slide image (OpenSlide, tiffslide, PIL; URLs through fsspec), know its
µm/px, read 8-bit RGB at a chosen level.

Public: :func:`open_slide`, :func:`slide_info`, :class:`Slide`, :class:`SlideInfo`,
:func:`to_qupath_px`, :data:`BACKENDS`, :data:`SLIDE_SUFFIXES`, :func:`is_url`, :func:`url_name`.
Modules: ``slide`` (the handle), ``readers`` (one class per backend), ``tiffmeta`` (what the TIFF
tags say), ``mpp`` (the µm/px rules), ``open`` (choosing a backend), ``remote`` (URLs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from idcmap._lazy import lazy_exports

if TYPE_CHECKING:
    from idcmap.io.open import SLIDE_SUFFIXES as SLIDE_SUFFIXES
    from idcmap.io.open import open_slide as open_slide
    from idcmap.io.open import slide_info as slide_info
    from idcmap.io.readers import BACKENDS as BACKENDS
    from idcmap.io.slide import Slide as Slide
    from idcmap.io.slide import SlideInfo as SlideInfo
    from idcmap.io.slide import to_qupath_px as to_qupath_px
    from idcmap.io.urls import is_url as is_url
    from idcmap.io.urls import url_name as url_name

_EXPORTS = {
    "open_slide": "open",
    "slide_info": "open",
    "SLIDE_SUFFIXES": "open",
    "Slide": "slide",
    "SlideInfo": "slide",
    "to_qupath_px": "slide",
    "BACKENDS": "readers",
    "is_url": "urls",
    "url_name": "urls",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
