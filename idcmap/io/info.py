"""Builds a slide's :class:`~idcmap.io.slide.SlideInfo` from an open reader: µm/px by the rules
of :mod:`idcmap.io.mpp`, bounds, vendor, objective."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from idcmap.errors import MppMismatchWarning, ResolutionError
from idcmap.io.mpp import MPP_HINT, MPP_MISMATCH, plausible, to_float
from idcmap.io.slide import SlideInfo
from idcmap.io.tiffmeta import TiffFacts


def build_info(
    path: str, backend: str, reader: Any, facts: TiffFacts | None, user_mpp: float | None
) -> SlideInfo:
    props = reader.properties
    w0, h0 = reader.level_dimensions[0]
    mpp, mpp_y, source = resolution(path, backend, reader, facts, user_mpp)
    if user_mpp is not None:
        warn_if_contradicted(path, backend, reader, facts, user_mpp)
    bounds = (0, 0, w0, h0)
    if backend == "openslide":
        b = [to_float(props.get(f"openslide.bounds-{k}")) for k in ("x", "y", "width", "height")]
        if all(v is not None for v in b):
            bx, by, bw, bh = (int(v) for v in b)  # type: ignore[arg-type]
            if bw > 0 and bh > 0 and bx >= 0 and by >= 0 and bx + bw <= w0 and by + bh <= h0:
                bounds = (bx, by, bw, bh)
    obj = to_float(props.get(f"{backend}.objective-power"))
    vendor = reader.vendor
    if backend == "tiffslide" and vendor is None:
        vendor = "ome" if facts is not None and facts.is_ome else "generic-tiff"
    converted = None
    if getattr(reader, "scaling", None) is not None:
        converted = facts.non_rgb if facts is not None else "non-RGB"
    if backend == "image":
        converted = reader.converted_from
    return SlideInfo(
        path=path,
        backend=backend,
        vendor=vendor,
        level_dimensions=tuple(reader.level_dimensions),
        level_downsamples=tuple(reader.level_downsamples),
        mpp=mpp,
        mpp_y=mpp_y,
        mpp_source=source,
        bounds_level0_px=bounds,
        objective_power=obj if obj and obj > 0 else None,
        converted_from=converted,
    )


def resolution(
    path: str, backend: str, reader: Any, facts: TiffFacts | None, user_mpp: float | None
) -> tuple[float, float, str]:
    """(mpp_x, mpp_y, source) by the rules in the module docstring."""
    if user_mpp is not None:
        return user_mpp, user_mpp, "user"
    notes: list[str] = []
    if backend in ("openslide", "tiffslide"):
        mx = to_float(reader.properties.get(f"{backend}.mpp-x"))
        my = to_float(reader.properties.get(f"{backend}.mpp-y")) or mx
        if plausible(mx) and plausible(my):
            return mx, my, f"{backend}.mpp-x"  # type: ignore[return-value]
        if mx is not None:
            notes.append(f"it says {mx:.4g} µm/px, implausible")
    if facts is not None:
        if facts.res_mpp is not None:
            return facts.res_mpp[0], facts.res_mpp[1], "tiff-resolution"
        if facts.res_note and not notes:
            notes.append(facts.res_note)
    dpi = getattr(reader, "dpi", None)
    if dpi:
        mx, my = 25400.0 / dpi[0], 25400.0 / dpi[1]
        if plausible(mx) and plausible(my):
            return mx, my, "image-dpi"
        notes.append(f"its {dpi[0]:.0f} dpi tag means nothing for a slide")
    note = f" ({'; '.join(notes)})" if notes else ""
    raise ResolutionError(f"{Path(path).name}: no usable µm/px metadata{note}; {MPP_HINT}")


def warn_if_contradicted(
    path: str, backend: str, reader: Any, facts: TiffFacts | None, user_mpp: float
) -> None:
    """Warn (:class:`MppMismatchWarning`) when ``mpp=`` contradicts the slide's metadata by
    more than 25 %: areas would be off by the square of the ratio (e.g. 100x for 10x)."""
    try:
        meta, _, source = resolution(path, backend, reader, facts, None)
    except ResolutionError:
        return  # nothing to contradict
    if max(user_mpp / meta, meta / user_mpp) > MPP_MISMATCH:
        warnings.warn(
            MppMismatchWarning(
                f"{Path(path).name}: mpp={user_mpp:g} contradicts the slide's own "
                f"{meta:.4g} µm/px ({source}); if that is right, every area is "
                f"{(user_mpp / meta) ** 2:.3g} times what it should be"
            ),
            stacklevel=4,
        )
