"""What tifffile says about a TIFF before any backend opens it: pixel type (refuse or convert
non-RGB), pyramid depth (OME / SubIFD levels OpenSlide misses), resolution tags, and pixel data
that is missing or lies past the end of the file (a truncated copy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from idcmap.io.mpp import mpp_from_tags


@dataclass
class TiffFacts:
    """What tifffile says about a TIFF (None fields when unknown)."""

    non_rgb: str | None = None
    levels: int = 1
    is_ome: bool = False
    res_mpp: tuple[float, float] | None = None
    res_note: str | None = None
    damaged: str | None = None


#: image pages checked for their pixel data (a pyramid has a few; stacks need no more)
MAX_PAGES_CHECKED = 64


def _damage(tif: Any) -> str | None:
    """Why the file's image data cannot all be there, or None. A truncated copy keeps its
    header, so backends open it; tiffslide then reads the lost tiles as blank (a slide with
    "no tissue"), OpenSlide fails on the first lost tile. Either way say so before reading."""
    size = int(tif.filehandle.size)  # a local file or a remote object's file handle
    for i, page in enumerate(tif.pages[:MAX_PAGES_CHECKED]):
        if page is None or not getattr(page, "shape", None):
            continue
        offsets, counts = page.dataoffsets, page.databytecounts
        if not offsets or len(offsets) != len(counts):
            return f"image {i} has no pixel data"
        ends = np.asarray(offsets, dtype=np.int64) + np.asarray(counts, dtype=np.int64)
        if int(ends.max()) > size:
            return f"image {i}'s pixel data ends past the file's {size:,} bytes"
    return None


def tiff_facts(path: str) -> TiffFacts | None:
    """Inspect the first page with tifffile; None when the file is not a readable TIFF."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            facts = TiffFacts(is_ome=bool(tif.is_ome))
            dtype = np.dtype(page.dtype) if page.dtype is not None else None
            spp = int(page.samplesperpixel)
            phot = int(page.photometric)
            if dtype is not None and dtype != np.uint8:
                facts.non_rgb = f"{dtype.name}, {spp} sample{'s' * (spp != 1)} per pixel"
            elif spp == 1 and phot != 3:  # 3 = PALETTE
                facts.non_rgb = "single channel (grayscale or fluorescence)"
            elif spp == 2 or spp > 4:
                facts.non_rgb = f"{spp} channels"
            if facts.is_ome and facts.non_rgb is None:
                s0 = tif.series[0]
                if "C" in s0.axes and s0.shape[s0.axes.index("C")] > 1 and spp == 1:
                    facts.non_rgb = f"{s0.shape[s0.axes.index('C')]}-channel OME (fluorescence?)"
            try:
                facts.levels = len(tif.series[0].levels)
            except Exception:
                facts.levels = 1
            facts.res_mpp, facts.res_note = mpp_from_tags(page)
            facts.damaged = _damage(tif)
            return facts
    except Exception:
        return None
