"""Opening a slide: backends, tried in this order with ``backend="auto"``:


1. **openslide** (the ``openslide-bin`` wheel): Aperio SVS, Hamamatsu NDPI, MIRAX, Leica SCN,
   Philips TIFF, Ventana BIF, DICOM WSI (a ``.dcm`` file or its folder), generic tiled TIFF.
   When OpenSlide reads a file only as a ``generic-tiff`` with fewer levels than tifffile sees
   (OME-TIFF or SubIFD pyramids), tiffslide is preferred for it.
2. **tiffslide**: what OpenSlide cannot open (OME-TIFF, QPTIFF, striped single-level TIFF...).
3. **image**: plain PNG / JPEG / BMP (and TIFFs neither backend reads) via PIL, as one level.

Every backend error becomes a :class:`~idcmap.errors.SlideError` whose message says what to do.
A slide is "probed" when opened (a small read at its coarsest level, as QuPath reads a
thumbnail when it opens a slide) so that undecodable files fail at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from idcmap.errors import SlideError, UnsupportedImageError, UsageError
from idcmap.io.info import build_info
from idcmap.io.jpegtiff import JpegTiffReader
from idcmap.io.mpp import USER_MPP, to_float
from idcmap.io.readers import (
    BACKENDS,
    ImageReader,
    OpenSlideReader,
    Reader,
    TiffSlideReader,
    non_rgb_message,
)
from idcmap.io.remote import open_remote_slide
from idcmap.io.slide import Slide, SlideInfo, close_quietly, probe, reason
from idcmap.io.tiffmeta import TiffFacts, tiff_facts
from idcmap.io.urls import is_url

__all__ = ["SLIDE_SUFFIXES", "open_slide", "slide_info"]

#: File name endings taken as slides when a folder is given.
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".qptiff",
    ".png",
    ".jpg",
    ".jpeg",
)


def _resolve_path(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise SlideError(f"{p}: a broken link (to {os.readlink(p)}); check the link")
        raise SlideError(f"{p}: no such file; check the path")
    if p.is_dir():
        dcm = sorted(p.glob("*.dcm"))
        if dcm:  # a DICOM WSI series: OpenSlide opens it from any of its files
            return str(dcm[0])
        raise SlideError(
            f"{p}: a folder without slides; pass its slide files, or a folder of one DICOM WSI "
            "series (.dcm)"
        )
    if not os.access(p, os.R_OK):
        raise SlideError(f"{p}: permission denied; make the file readable")
    if p.stat().st_size == 0:
        raise SlideError(f"{p}: the file is empty; copy or download it again")
    return str(p)


def _make_reader(backend: str, path: str, scaling: Any) -> Callable[[], Reader]:
    if backend == "openslide":
        return lambda: OpenSlideReader(path)
    if backend == "tiffslide":
        return lambda: TiffSlideReader(path, scaling)
    raise AssertionError(backend)


def open_slide(
    path: str | os.PathLike[str],
    *,
    backend: str = "auto",
    mpp: float | None = None,
    allow_non_rgb: bool = False,
) -> Slide:
    """Open a slide (see the module docstring for backends and the µm/px rules).

    Args:
        path: a slide file (or a folder holding one DICOM WSI series), or an ``http(s)://``,
            ``s3://`` or ``gs://`` URL of a TIFF-based slide (read with tiffslide).
        backend: "auto", "openslide", "tiffslide" or "image".
        mpp: µm per level-0 pixel given by the user; overrides the file's metadata.
        allow_non_rgb: convert 16-bit / single-channel / multi-channel images to 8-bit RGB
            (per-channel min–max) instead of refusing them.

    Raises:
        UsageError: unknown backend or implausible ``mpp``.
        SlideError: missing, unreadable or corrupt file (message says what to try).
        ResolutionError: no usable µm/px and no ``mpp``.
        UnsupportedImageError: not 8-bit RGB and not ``allow_non_rgb``.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if mpp is not None:
        m = to_float(mpp)
        if m is None or not USER_MPP[0] <= m <= USER_MPP[1]:
            raise UsageError(
                f"mpp={mpp} is outside {USER_MPP[0]}–{USER_MPP[1]:g} µm/px; give "
                "the scan's µm per pixel (about 0.25 for 40x, 0.5 for 20x)"
            )
        mpp = m
    if is_url(path):  # fsspec + tiffslide (idcmap.io.remote)
        return open_remote_slide(path, backend=backend, mpp=mpp, allow_non_rgb=allow_non_rgb)
    spath = _resolve_path(path)
    name = Path(spath).name
    facts = tiff_facts(spath)
    if facts is not None and facts.damaged is not None:
        raise SlideError(
            f"{name}: a damaged or truncated TIFF; copy or export it again",
            detail=facts.damaged,
        )
    scaling: Any = None
    if facts is not None and facts.non_rgb is not None:
        if not allow_non_rgb:
            raise UnsupportedImageError(non_rgb_message(spath, facts.non_rgb))
        if backend == "openslide":
            raise UnsupportedImageError(
                f"{name}: OpenSlide would misread this non-RGB image ({facts.non_rgb}); "
                "use backend=tiffslide (or auto) with allow_non_rgb=True"
            )
        scaling = True

    if backend == "auto":  # PIL only for what tifffile cannot parse (tiffslide opens the rest)
        last = [] if facts is not None else ["image"]
        if scaling is not None:
            order = ["tiffslide", *last]
        elif facts is not None and facts.is_ome:
            order = ["tiffslide", "openslide"]
        else:
            order = ["openslide", "tiffslide", *last]
    else:
        order = [backend]

    errors: list[str] = []
    for i, bk in enumerate(order):
        reader: Any = None
        try:
            if bk == "image":
                reader = ImageReader(spath, allow_non_rgb)
                factory = _image_factory(spath, reader)
            else:
                reader = _make_reader(bk, spath, scaling)()
                if bk == "tiffslide" and scaling is True:
                    scaling = reader.scaling
                factory = _make_reader(bk, spath, scaling)
            if (
                bk == "openslide"
                and backend == "auto"
                and facts is not None
                and reader.vendor == "generic-tiff"
                and facts.levels > len(reader.level_dimensions)
                and "tiffslide" in order[i + 1 :]
            ):
                reader.close()  # tiffslide sees the SubIFD / OME levels OpenSlide ignores
                order.insert(i + 1, "tiffslide")
                errors.append(f"{bk}: sees {len(reader.level_dimensions)} of {facts.levels} levels")
                continue
            probe(reader)
        except (UnsupportedImageError, UsageError):
            close_quietly(reader)
            raise
        except Exception as e:
            close_quietly(reader)
            stage = "read" if reader is not None else "open"
            errors.append(f"{bk} ({stage}): {reason(e)}")
            continue
        info = build_info(spath, bk, reader, facts, mpp)
        jpeg = _jpeg_reader(spath, info) if facts is not None and scaling is None else None
        return Slide(info, reader, factory, jpeg)
    raise SlideError(_open_failure(spath, backend, facts), detail="; ".join(errors))


def _jpeg_reader(path: str, info: SlideInfo) -> JpegTiffReader | None:
    """The scaled-IDCT reader and colour facts of a local TIFF-family slide; None when
    tifffile's view of its levels is not one it knows (the backend reads it as before)."""
    try:
        return JpegTiffReader(path, mpp=(info.mpp, info.mpp_y))
    except Exception:
        return None


def _image_factory(path: str, first: ImageReader) -> Callable[[], Reader]:
    return lambda: ImageReader(
        path,
        True,
        shared=first.array,
        fmt=first.vendor,
        dpi=first.dpi,
        converted_from=first.converted_from,
    )


def _open_failure(path: str, backend: str, facts: TiffFacts | None) -> str:
    """The one-line reason a slide could not be opened (each backend's error is the detail)."""
    name = Path(path).name
    if backend != "auto":
        return f"{name}: cannot be read with backend={backend}; try backend=auto"
    if facts is None:
        with open(path, "rb") as f:
            head = f.read(4)
        looks_tiff = head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
        if looks_tiff:
            return f"{name}: a damaged or truncated TIFF; copy or export it again"
        return (
            f"{name}: not a slide or image format idcmap can read; convert it to a tiled "
            "pyramidal TIFF"
        )
    return (
        f"{name}: its pixels cannot be decoded (corrupt, truncated or an unsupported "
        "compression); re-export it"
    )


def slide_info(path: str | os.PathLike[str], **kw: Any) -> SlideInfo:
    """:class:`SlideInfo` of a slide (same keywords as :func:`open_slide`)."""
    with open_slide(path, **kw) as s:
        return s.info
