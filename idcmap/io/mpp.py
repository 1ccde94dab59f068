"""The µm/px rules: plausible ranges for metadata and for the user, and the TIFF resolution tags.

Resolution (µm per level-0 pixel), first that applies (:func:`idcmap.io.info.resolution`):
``mpp=`` from the user (source ``"user"``); the backend's ``openslide.mpp-x/-y`` or
``tiffslide.mpp-x/-y`` when plausible; TIFF ``XResolution/YResolution`` when ``ResolutionUnit``
is centimeter or inch and the value is plausible (0.05–20 µm/px: 72/96-dpi tags give ~350/265
µm/px and are refused); a PNG/JPEG's dpi under the same rule; else
:class:`~idcmap.errors.ResolutionError`.
"""

from __future__ import annotations

import math
from typing import Any

PLAUSIBLE_MPP = (0.05, 20.0)
"""µm/px accepted from file metadata (backend properties, TIFF tags, image dpi)."""

USER_MPP = (0.01, 100.0)
"""µm/px accepted from the user (``mpp=``)."""

MPP_HINT = "pass mpp=0.25 for a 40x scan, mpp=0.5 for 20x"

#: ``mpp=`` may differ from the slide's own metadata by this factor before a warning.
MPP_MISMATCH = 1.25


def plausible(mpp: float | None) -> bool:
    return mpp is not None and math.isfinite(mpp) and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def to_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def mpp_from_tags(page: Any) -> tuple[tuple[float, float] | None, str | None]:
    """µm/px from XResolution/YResolution when the unit is cm (3) or inch (2) and plausible."""
    tags = page.tags
    unit_tag, x_tag = tags.get("ResolutionUnit"), tags.get("XResolution")
    if x_tag is None:
        return None, None
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
    if per_unit is None:
        return None, "its TIFF resolution tags have no unit"

    def value(tag: Any) -> float:
        v = tag.value
        return float(v[0]) / float(v[1]) if isinstance(v, tuple) and v[1] else float(v)

    y_tag = tags.get("YResolution") or x_tag
    try:
        xres, yres = value(x_tag), value(y_tag)
    except (TypeError, ValueError, ZeroDivisionError):
        return None, None
    if xres <= 0 or yres <= 0:
        return None, None
    mx, my = per_unit / xres, per_unit / yres
    if not (plausible(mx) and plausible(my)):
        dpi = xres * 25400 / per_unit
        return None, (f"its TIFF tags say {mx:.4g} µm/px ({dpi:.0f} dpi), a screen value")
    return (mx, my), None
