"""Colour facts of a TIFF-family slide's pyramid (generic, SVS, OME, Philips) and the read that
gives full-resolution colour at a target µm/px.

Most scanners store the level nearest 4 µm/px as YCbCr JPEG with 4:2:0 chroma subsampling: its
colour is at 8 µm/px. :func:`level_colour_facts` gives, per level, the compression, photometric,
JPEG colour space and the chroma sampling *as coded* (the SOF marker of the first tile,
JPEGTables merged), not as the ``YCbCrSubSampling`` tag claims (Aperio writes ``(2, 2)`` there
over 1x1 RGB JPEG), and the chroma pixel size in µm. :func:`choose_level` picks the level and
the scaled-IDCT factor (:mod:`idcmap.io.jpegtiff`) to read so that colour is at full resolution.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tifffile

from idcmap.io.jpeg import SOF_BASIC, JpegHeader, jp2k_sampling, parse_jpeg_header
from idcmap.io.mpp import mpp_from_tags, plausible

__all__ = [
    "MPP_TOLERANCE",
    "SCALES",
    "TIFF_JPEG",
    "LevelColour",
    "choose_level",
    "chroma_mpp_per_level",
    "facts_of",
    "level_colour_facts",
    "level_pages",
]

#: Scales the JPEG scaled IDCT decodes directly (output = 1/s of the level's px).
SCALES = (1, 2, 4, 8)
#: Relative slack of µm/px comparisons in :func:`choose_level` (1 %).
MPP_TOLERANCE = 0.01

TIFF_JPEG = 7  # TIFF compression: JPEG ("new-style")
_JP2K = {33003: "YCbCr", 33005: "RGB", 34712: None}  # Aperio JP2K YCbCr / RGB, generic JP2K
_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR = 2, 6


@dataclass(frozen=True)
class LevelColour:
    """Colour facts of one pyramid level.

    Attributes:
        level: index in the pyramid (0 = finest), as tifffile's first series orders it
            (OpenSlide's order for generic TIFF, SVS, OME and Philips pyramids).
        width, height: level px.
        downsample: level-0 px per level px along x (width0 / width).
        mpp, mpp_y: µm per level px (None when the file gives no level-0 µm/px and none was
            passed).
        tiled: stored in tiles (not strips).
        tile_width, tile_height: tile size (0 for strips).
        compression: TIFF compression name ("JPEG", "APERIO_JP2000_YCC", "LZW", ...).
        compression_code: its TIFF code (7 = JPEG).
        photometric: TIFF photometric name ("YCBCR", "RGB", ...).
        tag_subsampling: the ``YCbCrSubSampling`` tag, None when absent.
        jpeg: the first tile's JPEG header (JPEGTables merged), None if not JPEG or unreadable.
        jpeg_tables: the level has a ``JPEGTables`` tag (abbreviated tile streams).
        colorspace: how the samples are coded: "YCbCr", "RGB", "gray"...; None when unknown.
        subsampling: chroma sampling factor (x, y) as coded: (2, 2) for 4:2:0, (1, 1) for
            4:4:4 or RGB; None when unknown.
        readable: :class:`JpegTiffReader` reads this level (tiled 8-bit baseline/progressive
            JPEG); else ``reason`` says why not.
        reason: why the level is not readable ("" when it is).
    """

    level: int
    width: int
    height: int
    downsample: float
    mpp: float | None
    mpp_y: float | None
    tiled: bool
    tile_width: int
    tile_height: int
    compression: str
    compression_code: int
    photometric: str
    tag_subsampling: tuple[int, int] | None
    jpeg: JpegHeader | None
    jpeg_tables: bool
    colorspace: str | None
    subsampling: tuple[int, int] | None
    readable: bool
    reason: str

    @property
    def chroma_mpp_xy(self) -> tuple[float, float] | None:
        """(x, y) µm per chroma sample: level µm/px × the sampling factor."""
        if self.mpp is None or self.subsampling is None:
            return None
        my = self.mpp_y if self.mpp_y is not None else self.mpp
        return (self.mpp * self.subsampling[0], my * self.subsampling[1])

    @property
    def chroma_mpp(self) -> float | None:
        """µm per chroma sample along the coarser axis (None when unknown)."""
        xy = self.chroma_mpp_xy
        return None if xy is None else max(xy)

    def describe(self) -> str:
        """One line for ``idcmap info``: size, µm/px, coding and colour resolution."""
        mpp = f"{self.mpp:.4g} µm/px" if self.mpp is not None else "µm/px unknown"
        if self.jpeg is not None:
            coding = f"JPEG {self.colorspace} {self.jpeg.sampling_name}"
            if self.jpeg_tables:
                coding += " (JPEGTables)"
        else:
            coding = f"{self.compression} {self.photometric}"
            if self.subsampling is not None and self.subsampling != (1, 1):
                coding += f" {self.subsampling[0]}x{self.subsampling[1]}"
        cm = self.chroma_mpp
        colour = f"colour at {cm:.4g} µm/px" if cm is not None else "colour resolution unknown"
        return f"level {self.level}: {self.width}x{self.height} px, {mpp}, {coding}, {colour}"


def _mpp_from_tif(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    """Level-0 µm/px from an Aperio description, OME PhysicalSize, or resolution tags."""

    page = tif.pages.first
    desc = page.description or ""
    m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", desc)
    if m:
        with contextlib.suppress(ValueError, ZeroDivisionError, TypeError):
            v = float(m.group(1))
            if plausible(v):
                return v, v
    if tif.is_philips and tif.philips_metadata:  # DICOM_PIXEL_SPACING "row" "col", in mm
        m = re.search(
            r'Name="DICOM_PIXEL_SPACING"[^>]*>\s*"?([0-9.eE+-]+)"?\s+"?([0-9.eE+-]+)',
            tif.philips_metadata,
        )
        if m:
            with contextlib.suppress(ValueError, ZeroDivisionError, TypeError):
                vy, vx = float(m.group(1)) * 1e3, float(m.group(2)) * 1e3
                if plausible(vx) and plausible(vy):
                    return vx, vy
    if tif.is_ome and tif.ome_metadata:
        mx = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        my = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit.group(1) if unit else "µm")
        if mx and scale is not None:
            with contextlib.suppress(ValueError, ZeroDivisionError, TypeError):
                vx = float(mx.group(1)) * scale
                vy = float(my.group(1)) * scale if my else vx
                if plausible(vx) and plausible(vy):
                    return vx, vy
    return mpp_from_tags(page)[0]  # idcmap's resolution-tag rule (cm/inch, plausible)


def level_pages(tif: tifffile.TiffFile) -> list[Any]:
    """The key page of each pyramid level (finest first): an SVS's tiled pages, as OpenSlide's
    aperio driver takes them (tifffile would call a 2-page SVS's level 1 its thumbnail); else
    the levels of tifffile's first series (pages, SubIFDs, OME or Philips levels)."""
    if tif.is_svs:
        tiled = [p for p in tif.pages if isinstance(p, tifffile.TiffPage) and p.is_tiled]
        if tiled:
            return sorted(tiled, key=lambda p: -int(p.imagewidth))
    series = tif.series[0]
    levels = getattr(series, "levels", None) or [series]
    return [lvl.keyframe for lvl in levels]


def _read_bytes(fh: Any, offset: int, count: int) -> bytes:
    fh.seek(offset)
    return bytes(fh.read(count))


def _level_facts(
    tif: tifffile.TiffFile,
    page: Any,
    level: int,
    w0: int,
    h0: int,
    mpp0: tuple[float, float] | None,
) -> LevelColour:
    h, w = int(page.imagelength), int(page.imagewidth)
    comp = int(page.compression)
    phot = int(page.photometric)
    try:
        comp_name = tifffile.COMPRESSION(comp).name
    except ValueError:
        comp_name = f"compression {comp}"
    try:
        phot_name = tifffile.PHOTOMETRIC(phot).name
    except ValueError:
        phot_name = f"photometric {phot}"
    tag = page.tags.get("YCbCrSubSampling")
    tag_sub: tuple[int, int] | None = None
    if tag is not None:
        tag_sub = (int(tag.value[0]), int(tag.value[1]))
    tiled = bool(page.is_tiled)
    tables = page.jpegtables if comp == TIFF_JPEG else None
    first = _first_segment(tif, page)
    jpeg: JpegHeader | None = None
    colorspace: str | None = None
    sub: tuple[int, int] | None = None
    reason = ""
    if comp == TIFF_JPEG:
        if first is None:
            reason = "no tile data"
        else:
            try:
                jpeg = _first_header(tif, page, tables)
            except (ValueError, struct.error, IndexError) as e:
                reason = f"unreadable JPEG header ({e})"
        if jpeg is not None:
            sub = jpeg.subsampling
            colorspace = _decode_colorspace(jpeg, phot, _is_jfif(first))
            if jpeg.sof not in SOF_BASIC:
                reason = f"JPEG SOF 0x{jpeg.sof:02X} (lossless / arithmetic) not decoded by Pillow"
            elif jpeg.precision != 8:
                reason = f"{jpeg.precision}-bit JPEG"
            elif colorspace not in ("YCbCr", "RGB", "gray"):
                reason = f"JPEG colour space {colorspace}"
            elif int(page.planarconfig) != 1:
                reason = "planar (separate) JPEG samples"
            elif page.extrasamples:
                reason = "extra samples (alpha)"
            elif not tiled:
                reason = "strips, not tiles (e.g. NDPI: one JPEG per level)"
            elif page.tilewidth % 8 or page.tilelength % 8:
                reason = f"tile {page.tilewidth}x{page.tilelength} not a multiple of 8"
    else:
        reason = f"{comp_name} compression, not JPEG"
        if comp in _JP2K:
            colorspace = _JP2K[comp]
            sub = jp2k_sampling(first) if first is not None else None
        elif comp == 6:
            reason = "old-style JPEG (compression 6)"
        elif comp in (1, 5, 8, 32946, 50000, 34925, 32773):  # lossless codecs
            if phot == _PHOTOMETRIC_RGB:
                colorspace, sub = "RGB", (1, 1)
            elif phot == _PHOTOMETRIC_YCBCR:
                colorspace, sub = "YCbCr", tag_sub or (2, 2)  # TIFF default 2x2
            elif phot in (0, 1):
                colorspace, sub = "gray", (1, 1)
    ds = w0 / w if w else 1.0
    dsy = h0 / h if h else 1.0
    mpp = mpp0[0] * ds if mpp0 else None
    mpp_y = mpp0[1] * dsy if mpp0 else None
    return LevelColour(
        level=level,
        width=w,
        height=h,
        downsample=ds,
        mpp=mpp,
        mpp_y=mpp_y,
        tiled=tiled,
        tile_width=int(page.tilewidth) if tiled else 0,
        tile_height=int(page.tilelength) if tiled else 0,
        compression=comp_name,
        compression_code=comp,
        photometric=phot_name,
        tag_subsampling=tag_sub,
        jpeg=jpeg,
        jpeg_tables=bool(tables),
        colorspace=colorspace,
        subsampling=sub,
        readable=not reason,
        reason=reason,
    )


def _first_segment(tif: tifffile.TiffFile, page: Any, limit: int = 1 << 16) -> bytes | None:
    """The start (≤ ``limit`` bytes) of the first non-empty tile/strip of a page: the JPEG
    header or the JP2K SIZ marker is there (an NDPI level is one strip of hundreds of MB)."""
    for off, cnt in zip(page.dataoffsets, page.databytecounts, strict=False):
        if off and cnt:
            return _read_bytes(tif.filehandle, int(off), min(int(cnt), limit))
    return None


def _first_header(tif: tifffile.TiffFile, page: Any, tables: bytes | None) -> JpegHeader:
    """The JPEG header of a page's first tile; reads up to 4 MiB when APP segments (EXIF,
    ICC profiles...) push the SOF past the first 64 KiB."""
    for limit in (1 << 16, 1 << 22):
        data = _first_segment(tif, page, limit)
        if data is None:
            raise ValueError("no tile data")
        try:
            return parse_jpeg_header(data, tables=tables)
        except (ValueError, struct.error, IndexError):
            if len(data) < limit:
                raise
    raise ValueError("no SOF marker in the first 4 MiB")


def _is_jfif(data: bytes | None) -> bool:
    """tifffile's ``is_jfif`` test on a tile: 'JFIF' at byte 6 (APP0 first)."""
    return data is not None and data[6:10] == b"JFIF"


def _decode_colorspace(h: JpegHeader, photometric: int, first_is_jfif: bool) -> str:
    """The colour space the samples are decoded as: libjpeg's guess, except Photometric RGB
    without JFIF, which is RGB (tifffile's ``jpeg_decode_colorspace``)."""
    if len(h.components) == 3 and photometric == _PHOTOMETRIC_RGB and not first_is_jfif:
        return "RGB"
    return h.colorspace


def level_colour_facts(
    path: str | os.PathLike[str], *, mpp: float | tuple[float, float] | None = None
) -> list[LevelColour]:
    """Colour facts of each pyramid level of a TIFF-family slide (finest first).

    Args:
        path: a TIFF, BigTIFF, SVS, OME-TIFF or Philips TIFF.
        mpp: µm per level-0 px (x, or (x, y)); default: from the Aperio ``MPP``, OME
            ``PhysicalSizeX/Y`` or the resolution tags (cm/inch, plausible values only).

    Raises:
        tifffile.TiffFileError / OSError: not a readable TIFF.
    """
    with tifffile.TiffFile(path) as tif:
        return facts_of(tif, mpp)


def facts_of(tif: tifffile.TiffFile, mpp: float | tuple[float, float] | None) -> list[LevelColour]:
    mpp0: tuple[float, float] | None
    if mpp is None:
        mpp0 = _mpp_from_tif(tif)
    elif isinstance(mpp, tuple):
        mpp0 = (float(mpp[0]), float(mpp[1]))
    else:
        mpp0 = (float(mpp), float(mpp))
    pages = level_pages(tif)
    w0, h0 = int(pages[0].imagewidth), int(pages[0].imagelength)
    return [_level_facts(tif, p, i, w0, h0, mpp0) for i, p in enumerate(pages)]


def chroma_mpp_per_level(
    path: str | os.PathLike[str], *, mpp: float | tuple[float, float] | None = None
) -> list[float | None]:
    """µm per chroma sample of each level (level µm/px × coded sampling factor, coarser axis);
    None where the compression or the µm/px is unknown."""
    return [lv.chroma_mpp for lv in level_colour_facts(path, mpp=mpp)]


def choose_level(levels: Sequence[LevelColour], target_mpp: float) -> tuple[int, int]:
    """(level, scale) to read so that colour is at full resolution at ``target_mpp``.

    The coarsest level whose chroma sample is no coarser than ``target_mpp`` (1 % slack), then
    the largest s ∈ {1, 2, 4, 8} with level µm/px × s ≤ ``target_mpp`` (1 % slack); s > 1 only
    when the level is readable by :class:`JpegTiffReader` (scaled decode), else 1. Levels whose
    chroma µm/px is unknown count as full colour (chroma = luma) when they are not JPEG-coded
    and are skipped otherwise. When no level qualifies, level 0 with the largest scale that fits.

    Raises:
        ValueError: no levels, a non-positive target, or a level without µm/px.
    """
    if not levels:
        raise ValueError("no levels")
    if not (target_mpp > 0 and math.isfinite(target_mpp)):
        raise ValueError(f"target_mpp must be a positive number, not {target_mpp!r}")
    limit = target_mpp * (1 + MPP_TOLERANCE)

    def chroma(lv: LevelColour) -> float | None:
        if lv.mpp is None:
            raise ValueError(f"level {lv.level} has no µm/px; pass mpp=")
        if lv.chroma_mpp is not None:
            return lv.chroma_mpp
        return None if lv.compression_code == TIFF_JPEG else max(lv.mpp, lv.mpp_y or lv.mpp)

    ok = [lv for lv in levels if (c := chroma(lv)) is not None and c <= limit]
    best = max(ok, key=lambda lv: lv.mpp or 0.0) if ok else min(levels, key=lambda lv: lv.mpp or 0)
    scale = 1
    coarser_axis = max(best.mpp or 0.0, best.mpp_y or 0.0)
    if best.readable:
        for s in SCALES:
            if coarser_axis * s <= limit:
                scale = s
    return best.level, scale
