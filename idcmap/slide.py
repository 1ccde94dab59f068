"""Slide stage: open a whole-slide image and read RGB pixels at a known µm/px.

Backends, tried in this order with ``backend="auto"``:

1. **openslide** (the ``openslide-bin`` wheel): Aperio SVS, Hamamatsu NDPI, MIRAX, Leica SCN,
   Philips TIFF, Ventana BIF, DICOM WSI (a ``.dcm`` file or its folder), generic tiled TIFF.
   When OpenSlide reads a file only as a ``generic-tiff`` with fewer levels than tifffile sees
   (OME-TIFF or SubIFD pyramids), tiffslide is preferred for it.
2. **tiffslide**: what OpenSlide cannot open (OME-TIFF, QPTIFF, striped single-level TIFF...).
3. **image**: plain PNG / JPEG / BMP (and TIFFs neither backend reads) via PIL, as one level.

Every backend error becomes a :class:`~idcmap.errors.SlideError` whose message says what to do.
A slide is "probed" when opened (a small read at its coarsest level, as QuPath reads a
thumbnail when it opens a slide) so that undecodable files fail at once.

Coordinates (``*_level0_px``) are level-0 pixels of the *full frame*, as OpenSlide's
``read_region`` takes them. Some formats (MIRAX, Hamamatsu VMS, Leica, Ventana...) report
``openslide.bounds-x/-y/-width/-height``: the rectangle that holds image data.
:attr:`SlideInfo.bounds_level0_px` keeps it. **QuPath** (``OpenslideImageServer``, qupath/qupath
``qupath-extension-openslide/src/main/java/qupath/lib/images/servers/openslide/
OpenslideImageServer.java``) reads the four bounds properties when present and sets the image
width/height to ``bounds-width/-height``; ``readTile`` adds ``boundsX/boundsY`` to every request
before calling OpenSlide. So a QuPath pixel ``(x, y)`` is OpenSlide level-0 pixel
``(x + bounds-x, y + bounds-y)``: **QuPath coordinates = level-0 coordinates minus the bounds
origin**, and the image is the bounds rectangle (unless the user opened it with ``--no-crop``).
QuPath paints transparent pixels over ``openslide.background-color`` when given; idcmap uses white.
idcmap's outputs use that QuPath frame; :func:`to_qupath_px` converts.

Resolution (µm per level-0 pixel), first that applies:
``mpp=`` from the user (source ``"user"``); the backend's ``openslide.mpp-x/-y`` or
``tiffslide.mpp-x/-y`` when plausible; TIFF ``XResolution/YResolution`` when ``ResolutionUnit``
is centimeter or inch and the value is plausible (0.05–20 µm/px: 72/96-dpi tags give ~350/265
µm/px and are refused); a PNG/JPEG's dpi under the same rule; else :class:`ResolutionError`.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from idcmap.errors import (
    MppMismatchWarning,
    ResolutionError,
    SlideError,
    UnsupportedImageError,
    UsageError,
)

__all__ = [
    "BACKENDS",
    "Slide",
    "SlideInfo",
    "open_slide",
    "slide_info",
    "to_qupath_px",
]

BACKENDS = ("auto", "openslide", "tiffslide", "image")
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
PLAUSIBLE_MPP = (0.05, 20.0)
"""µm/px accepted from file metadata (backend properties, TIFF tags, image dpi)."""
USER_MPP = (0.01, 100.0)
"""µm/px accepted from the user (``mpp=``)."""
_CHUNK_PX = 4096
#: Slack of the float arithmetic between level-0 px and level px (x / downsample, rounded down
#: or up): far below a pixel, far above the rounding error of coordinates below 2**31 px. One
#: value for every snap in slide.py and tiles.py.
PX_EPS = 1e-6
_PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
_MPP_HINT = "pass mpp=0.25 for a 40x scan, mpp=0.5 for 20x"


@dataclass(frozen=True)
class SlideInfo:
    """What idcmap knows about a slide.

    Attributes:
        path: the file opened.
        backend: "openslide" | "tiffslide" | "image".
        vendor: OpenSlide / tiffslide vendor ("aperio", "generic-tiff", "ome"...), or the image
            format ("png", "jpeg"...).
        level_dimensions: (width, height) in level px, per level.
        level_downsamples: level-0 px per level px, per level (need not be integers).
        mpp: µm per level-0 pixel along x.
        mpp_y: µm per level-0 pixel along y.
        mpp_source: where ``mpp`` came from: "user", "openslide.mpp-x", "tiffslide.mpp-x",
            "tiff-resolution", "image-dpi".
        bounds_level0_px: (x, y, width, height) of the image-data rectangle in full-frame
            level-0 px (OpenSlide ``bounds-*``), else (0, 0, width0, height0).
        objective_power: scanner objective magnification, if the file says.
        converted_from: None for 8-bit RGB; else what was converted to RGB because the user
            allowed it (e.g. "uint16, 3 channels").
    """

    path: str
    backend: str
    vendor: str | None
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_y: float
    mpp_source: str
    bounds_level0_px: tuple[int, int, int, int]
    objective_power: float | None
    converted_from: str | None = None

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in px."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["level_dimensions"] = [list(x) for x in self.level_dimensions]
        d["level_downsamples"] = list(self.level_downsamples)
        d["bounds_level0_px"] = list(self.bounds_level0_px)
        return d


def to_qupath_px(info: SlideInfo, x_level0_px: float, y_level0_px: float) -> tuple[float, float]:
    """Full-frame level-0 px → QuPath's frame (bounds origin subtracted, see module docstring)."""
    return x_level0_px - info.bounds_level0_px[0], y_level0_px - info.bounds_level0_px[1]


# --------------------------------------------------------------------------- backends


class _Reader(Protocol):
    """One open handle of a backend. ``read`` gets an in-level request and may raise anything."""

    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, Any]
    vendor: str | None

    def read(
        self, location_level0_px: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...

    def close(self) -> None: ...


def _flatten_alpha(arr: np.ndarray) -> np.ndarray:
    """uint8 H×W×4 (straight alpha) → H×W×3 over white; H×W×3 unchanged."""
    if arr.shape[2] == 3:
        return arr
    if int(arr[..., 3].min()) == 255:  # opaque (the usual case): no float or uint16 copies
        return np.ascontiguousarray(arr[..., :3])
    rgb = arr[..., :3].astype(np.uint16)
    a = arr[..., 3:4].astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class _OpenSlideReader:
    def __init__(self, path: str) -> None:
        import openslide

        self._osr = openslide.OpenSlide(path)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            (int(w), int(h)) for w, h in self._osr.level_dimensions
        )
        self.level_downsamples: tuple[float, ...] = tuple(
            float(d) for d in self._osr.level_downsamples
        )
        self.properties = dict(self._osr.properties)
        self.vendor = self.properties.get("openslide.vendor")

    def read(
        self, location_level0_px: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        img = self._osr.read_region(location_level0_px, level, size)
        # only alpha's minimum matters: the extrema of one band cost a third of all four's
        alpha_min: Any = img.getchannel("A").getextrema()[0] if img.mode == "RGBA" else 0
        if alpha_min == 255:
            return np.asarray(img.convert("RGB"))  # opaque: PIL drops alpha in one C pass
        return _flatten_alpha(np.asarray(img.convert("RGBA")))

    def close(self) -> None:
        self._osr.close()


class _Scaling:
    """Per-channel min–max scaling of a non-RGB image to 8-bit RGB (computed once per file)."""

    def __init__(self, sample: np.ndarray) -> None:
        flat = sample.reshape(-1, sample.shape[-1]).astype(np.float64)
        self.lo = flat.min(axis=0) if flat.size else np.zeros(sample.shape[-1])
        self.hi = flat.max(axis=0) if flat.size else np.ones(sample.shape[-1])

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        span = np.where(self.hi > self.lo, self.hi - self.lo, 1.0)
        scaled = (arr.astype(np.float32) - self.lo) / span * 255.0
        out = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
        c = out.shape[2]
        if c == 1:
            return np.repeat(out, 3, axis=2)
        if c == 2:
            return np.concatenate([out, np.zeros_like(out[..., :1])], axis=2)
        return np.ascontiguousarray(out[..., :3])


class _TiffSlideReader:
    def __init__(self, path: Any, scaling: _Scaling | bool | None = None) -> None:
        """``scaling``: None for 8-bit RGB; True to compute a :class:`_Scaling`; or one to reuse."""
        import tiffslide

        self._ts = tiffslide.TiffSlide(path)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            (int(w), int(h)) for w, h in self._ts.level_dimensions
        )
        self.level_downsamples: tuple[float, ...] = tuple(
            float(d) for d in self._ts.level_downsamples
        )
        self.properties = dict(self._ts.properties)
        self.vendor = self.properties.get("tiffslide.vendor")
        if scaling is True:
            scaling = _Scaling(self._sample())
        self.scaling: _Scaling | None = scaling or None

    def _sample(self) -> np.ndarray:
        """The coarsest level (its central 4096² px at most): for min–max scaling."""
        lvl = len(self.level_dimensions) - 1
        w, h = self.level_dimensions[lvl]
        cw, ch = min(w, _CHUNK_PX), min(h, _CHUNK_PX)
        d = self.level_downsamples[lvl]
        loc = (math.ceil((w - cw) // 2 * d), math.ceil((h - ch) // 2 * d))
        return self._raw(loc, lvl, (cw, ch))

    def _raw(self, loc: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        arr = np.asarray(self._ts.read_region(loc, level, size, as_array=True, padding=True))
        return arr[..., None] if arr.ndim == 2 else arr

    def read(
        self, location_level0_px: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        arr = self._raw(location_level0_px, level, size)
        if self.scaling is not None:
            return self.scaling(arr)
        if arr.dtype != np.uint8 or arr.shape[2] not in (3, 4):
            raise UnsupportedImageError(
                f"tiffslide returned {arr.dtype} with {arr.shape[2]} "
                "channels; allow_non_rgb=True processes it anyway"
            )
        return _flatten_alpha(arr)

    def close(self) -> None:
        self._ts.close()


class _ImageReader:
    """A plain image held in memory as one level (shared read-only between handles)."""

    def __init__(
        self,
        path: str,
        allow_non_rgb: bool,
        *,
        shared: np.ndarray | None = None,
        fmt: str | None = None,
        dpi: tuple[float, float] | None = None,
        converted_from: str | None = None,
    ) -> None:
        self.converted_from = converted_from
        self.dpi = dpi
        self.vendor = fmt
        if shared is None:
            with Image.open(path) as im:
                im.load()
                self.vendor = (im.format or Path(path).suffix.lstrip(".")).lower()
                info_dpi = im.info.get("dpi")
                if info_dpi is not None:
                    self.dpi = (float(info_dpi[0]), float(info_dpi[1]))
                shared = self._to_rgb(im, path, allow_non_rgb)
            shared.setflags(write=False)
        self.array = shared
        h, w = shared.shape[:2]
        self.level_dimensions: tuple[tuple[int, int], ...] = ((int(w), int(h)),)
        self.level_downsamples: tuple[float, ...] = (1.0,)
        self.properties: dict[str, Any] = {}

    def _to_rgb(self, im: Image.Image, path: str, allow_non_rgb: bool) -> np.ndarray:
        if im.mode == "RGB":
            return np.asarray(im).copy()
        if im.mode in ("RGBA", "LA", "P", "PA", "RGBX", "RGBa"):
            return _flatten_alpha(np.asarray(im.convert("RGBA")))
        if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            return np.asarray(im.convert("RGB")).copy()
        arr = np.asarray(im)
        arr = arr[..., None] if arr.ndim == 2 else arr
        what = f"{arr.dtype}, {arr.shape[2]} channel{'s' * (arr.shape[2] != 1)} (mode {im.mode})"
        if not allow_non_rgb:
            raise UnsupportedImageError(_non_rgb_message(path, what))
        self.converted_from = what
        return _Scaling(arr)(arr)

    def read(
        self, location_level0_px: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        x, y = location_level0_px
        w, h = size
        return self.array[y : y + h, x : x + w]

    def close(self) -> None:
        pass


def _non_rgb_message(path: str, what: str) -> str:
    return (
        f"{Path(path).name}: not 8-bit brightfield RGB ({what}); allow_non_rgb=True "
        "processes it anyway (channels min–max scaled to RGB)"
    )


# --------------------------------------------------------------------------- TIFF facts


@dataclass
class _TiffFacts:
    """What tifffile says about a TIFF (None fields when unknown)."""

    non_rgb: str | None = None
    levels: int = 1
    is_ome: bool = False
    res_mpp: tuple[float, float] | None = None
    res_note: str | None = None


def _tiff_facts(path: str) -> _TiffFacts | None:
    """Inspect the first page with tifffile; None when the file is not a readable TIFF."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            facts = _TiffFacts(is_ome=bool(tif.is_ome))
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
            facts.res_mpp, facts.res_note = _mpp_from_tags(page)
            return facts
    except Exception:
        return None


def _mpp_from_tags(page: Any) -> tuple[tuple[float, float] | None, str | None]:
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
    if not (_plausible(mx) and _plausible(my)):
        dpi = xres * 25400 / per_unit
        return None, (f"its TIFF tags say {mx:.4g} µm/px ({dpi:.0f} dpi), a screen value")
    return (mx, my), None


def _plausible(mpp: float | None) -> bool:
    return mpp is not None and math.isfinite(mpp) and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------- Slide


class Slide:
    """An open slide: 8-bit RGB reads in level-0 px, µm/px, pyramid levels.

    Not for concurrent use from several threads: each worker calls :meth:`reopen`.
    """

    def __init__(self, info: SlideInfo, reader: _Reader, factory: Callable[[], _Reader]) -> None:
        self.info = info
        self._reader: _Reader | None = reader
        self._factory = factory
        self._failed: tuple[str, str] | None = None  # (message, detail) of a failed read
        self._lock = threading.Lock()

    # -- resolution

    def level_mpp(self, level: int) -> float:
        """µm per pixel (x) of ``level``."""
        self._check_level(level)
        return self.info.mpp * self.info.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """The coarsest level whose µm/px ≤ ``target_mpp`` × 1.01 (so reads only downsample).

        Level 0 when every level is coarser than ``target_mpp``.
        """
        if not (target_mpp > 0 and math.isfinite(target_mpp)):
            raise UsageError(f"target µm/px must be a positive number, not {target_mpp!r}")
        best, best_mpp = 0, -1.0
        for lvl in range(self.info.level_count):
            m = self.level_mpp(lvl)
            if m <= target_mpp * 1.01 and m > best_mpp:
                best, best_mpp = lvl, m
        return best

    # -- reading

    def read_region(
        self, location_level0_px: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """uint8 H×W×3 RGB of ``size`` = (width, height) level px at ``location_level0_px``.

        Like OpenSlide: the location is full-frame level-0 px (bounds not subtracted); pixels
        outside the image or transparent are white (255). Backend errors → :class:`SlideError`,
        and the handle is marked failed (OpenSlide errors stick to it).
        """
        self._check_level(level)
        w, h = int(size[0]), int(size[1])
        if w < 0 or h < 0:
            raise UsageError(f"read_region size must be ≥ 0, not {size!r}")
        if w == 0 or h == 0:
            return np.full((h, w, 3), 255, np.uint8)
        x0, y0 = int(location_level0_px[0]), int(location_level0_px[1])
        d = self.info.level_downsamples[level]
        lw, lh = self.info.level_dimensions[level]
        lx, ly = math.floor(x0 / d + PX_EPS), math.floor(y0 / d + PX_EPS)
        ix0, iy0 = max(lx, 0), max(ly, 0)
        ix1, iy1 = min(lx + w, lw), min(ly + h, lh)
        if ix1 <= ix0 or iy1 <= iy0:
            return np.full((h, w, 3), 255, np.uint8)
        # a clipped start is always 0: keep the caller's location otherwise (exact pixels)
        loc = (x0 if ix0 == lx else 0, y0 if iy0 == ly else 0)
        part = self._read(loc, level, (ix1 - ix0, iy1 - iy0))
        if part.shape[:2] == (h, w):  # wholly inside the level: no white canvas to copy into
            return part
        out = np.full((h, w, 3), 255, np.uint8)
        out[iy0 - ly : iy1 - ly, ix0 - lx : ix1 - lx] = part
        return out

    def _read(self, loc: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if self._failed is not None:
            raise SlideError(self._failed[0], detail=self._failed[1])
        if self._reader is None:
            raise SlideError(f"{self._name}: the slide was closed; open it again")
        try:
            with self._lock:
                arr = self._reader.read(loc, level, size)
        except UnsupportedImageError:
            raise
        except Exception as e:
            other = "tiffslide" if self.info.backend == "openslide" else "openslide"
            self._failed = (
                f"{self._name}: cannot read pixels at level {level} (corrupt or truncated?); "
                f"re-export or re-scan it, or try backend={other}",
                f"{self.info.backend} read of {size[0]}x{size[1]} px at {loc}: {_reason(e)}",
            )
            raise SlideError(self._failed[0], detail=self._failed[1]) from e
        if arr.shape != (size[1], size[0], 3) or arr.dtype != np.uint8:
            self._failed = (
                f"{self._name}: {self.info.backend} returned {arr.shape} "
                f"{arr.dtype} for a {size[0]}x{size[1]} read; try another backend=",
                "",
            )
            raise SlideError(self._failed[0])
        return arr

    def read_at_mpp(self, target_mpp: float) -> tuple[np.ndarray, tuple[float, float]]:
        """The whole bounds rectangle at ~``target_mpp`` µm/px, antialiased.

        Reads :meth:`best_level_for_mpp` in chunks of ≤ 4096² level px, averages integer blocks
        per chunk (seam-free), then resizes the small result with a box filter.

        Returns:
            (rgb uint8 rows×cols×3, (level-0 px per output px along x, along y)); output pixel
            (r, c) covers level-0 x in ``[bx + c·sx, bx + (c+1)·sx)`` with ``bx`` the bounds x.
        """
        bx, by, bw, bh = self.info.bounds_level0_px
        out_w = max(1, round(bw * self.info.mpp / target_mpp))
        out_h = max(1, round(bh * self.info.mpp_y / target_mpp))
        level = self.best_level_for_mpp(target_mpp)
        d = self.info.level_downsamples[level]
        lx0, ly0 = math.floor(bx / d + PX_EPS), math.floor(by / d + PX_EPS)
        lw = max(1, math.ceil((bx + bw) / d - PX_EPS) - lx0)
        lh = max(1, math.ceil((by + bh) / d - PX_EPS) - ly0)
        k = max(1, min(lw // out_w, lh // out_h))
        chunk = max(k, (_CHUNK_PX // k) * k)
        small = np.empty((math.ceil(lh / k), math.ceil(lw / k), 3), np.uint8)
        chunks = [(cx, cy) for cy in range(0, lh, chunk) for cx in range(0, lw, chunk)]

        def read_chunks(handle: Slide, todo: list[tuple[int, int]]) -> None:
            for cx, cy in todo:
                cw, ch = min(chunk, lw - cx), min(chunk, lh - cy)
                loc = (math.ceil((lx0 + cx) * d - PX_EPS), math.ceil((ly0 + cy) * d - PX_EPS))
                part = handle.read_region(loc, level, (cw, ch))
                small[
                    cy // k : cy // k + math.ceil(ch / k), cx // k : cx // k + math.ceil(cw / k)
                ] = _block_mean(part, k)

        if len(chunks) < 4:
            read_chunks(self, chunks)
        else:  # a slide without a coarse level: decode with one extra handle per core
            from concurrent.futures import ThreadPoolExecutor

            n = min(len(chunks), os.cpu_count() or 1)
            handles = [self] + [self.reopen() for _ in range(n - 1)]
            try:
                with ThreadPoolExecutor(max_workers=n) as pool:
                    jobs = [
                        pool.submit(read_chunks, h, chunks[i::n]) for i, h in enumerate(handles)
                    ]
                    for job in jobs:
                        job.result()
            finally:
                for h in handles[1:]:
                    h.close()
        if small.shape[:2] != (out_h, out_w):
            small = np.asarray(Image.fromarray(small).resize((out_w, out_h), Image.Resampling.BOX))
        return small, (bw / out_w, bh / out_h)

    # -- handles

    def reopen(self) -> Slide:
        """An independent handle on the same file (one per worker thread)."""
        try:
            reader = self._factory()
        except Exception as e:
            raise SlideError(f"{self._name}: cannot reopen", detail=_reason(e)) from e
        return Slide(self.info, reader, self._factory)

    def close(self) -> None:
        reader, self._reader = self._reader, None
        _close_quietly(reader)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (
            f"Slide({i.path!r}, backend={i.backend!r}, {i.dimensions[0]}x{i.dimensions[1]} px, "
            f"{i.level_count} levels, {i.mpp:.4g} µm/px)"
        )

    @property
    def _name(self) -> str:
        return Path(self.info.path).name

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.info.level_count:
            raise UsageError(
                f"level {level} does not exist; {self._name} has levels "
                f"0..{self.info.level_count - 1}"
            )


def _block_mean(arr: np.ndarray, k: int) -> np.ndarray:
    """Mean of k×k blocks (edge-padded to a multiple of k), uint8."""
    if k == 1:
        return arr
    if arr.dtype == np.uint8 and arr.shape[2] == 3:
        return np.asarray(Image.fromarray(arr).reduce(k))  # C box average; partial edge blocks
    h, w = arr.shape[:2]
    ph, pw = (-h) % k, (-w) % k
    if ph or pw:
        arr = np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hh, ww = arr.shape[0] // k, arr.shape[1] // k
    m = arr.reshape(hh, k, ww, k, 3).mean(axis=(1, 3), dtype=np.float32)
    return (m + 0.5).astype(np.uint8)


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# --------------------------------------------------------------------------- opening


def _resolve_path(path: str | os.PathLike[str]) -> str:
    p = Path(path)
    if not p.exists():
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


def _make_reader(backend: str, path: str, scaling: Any) -> Callable[[], _Reader]:
    if backend == "openslide":
        return lambda: _OpenSlideReader(path)
    if backend == "tiffslide":
        return lambda: _TiffSlideReader(path, scaling)
    raise AssertionError(backend)


def _probe(reader: _Reader) -> None:
    """Read ≤ 16×16 px at the centre of the coarsest level: fail now on undecodable data."""
    lvl = len(reader.level_dimensions) - 1
    w, h = reader.level_dimensions[lvl]
    d = reader.level_downsamples[lvl]
    pw, ph = min(16, w), min(16, h)
    loc = (math.ceil((w - pw) // 2 * d - PX_EPS), math.ceil((h - ph) // 2 * d - PX_EPS))
    reader.read(loc, lvl, (pw, ph))


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
        m = _float(mpp)
        if m is None or not USER_MPP[0] <= m <= USER_MPP[1]:
            raise UsageError(
                f"mpp={mpp} is outside {USER_MPP[0]}–{USER_MPP[1]:g} µm/px; give "
                "the scan's µm per pixel (about 0.25 for 40x, 0.5 for 20x)"
            )
        mpp = m
    if isinstance(path, str) and "://" in path:  # a URL: fsspec + tiffslide (idcmap.remote)
        from .remote import is_url, open_remote_slide

        if is_url(path):
            return open_remote_slide(path, backend=backend, mpp=mpp, allow_non_rgb=allow_non_rgb)
    spath = _resolve_path(path)
    name = Path(spath).name
    facts = _tiff_facts(spath)
    scaling: Any = None
    if facts is not None and facts.non_rgb is not None:
        if not allow_non_rgb:
            raise UnsupportedImageError(_non_rgb_message(spath, facts.non_rgb))
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
                reader = _ImageReader(spath, allow_non_rgb)
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
            _probe(reader)
        except (UnsupportedImageError, UsageError):
            _close_quietly(reader)
            raise
        except Exception as e:
            _close_quietly(reader)
            stage = "read" if reader is not None else "open"
            errors.append(f"{bk} ({stage}): {_reason(e)}")
            continue
        info = _build_info(spath, bk, reader, facts, mpp)
        return Slide(info, reader, factory)
    raise SlideError(_open_failure(spath, backend, facts), detail="; ".join(errors))


def _image_factory(path: str, first: _ImageReader) -> Callable[[], _Reader]:
    return lambda: _ImageReader(
        path,
        True,
        shared=first.array,
        fmt=first.vendor,
        dpi=first.dpi,
        converted_from=first.converted_from,
    )


def _close_quietly(reader: Any) -> None:
    if reader is not None:
        with contextlib.suppress(Exception):
            reader.close()


def _open_failure(path: str, backend: str, facts: _TiffFacts | None) -> str:
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


def _build_info(
    path: str, backend: str, reader: Any, facts: _TiffFacts | None, user_mpp: float | None
) -> SlideInfo:
    props = reader.properties
    w0, h0 = reader.level_dimensions[0]
    mpp, mpp_y, source = _resolution(path, backend, reader, facts, user_mpp)
    if user_mpp is not None:
        _warn_if_contradicted(path, backend, reader, facts, user_mpp)
    bounds = (0, 0, w0, h0)
    if backend == "openslide":
        b = [_float(props.get(f"openslide.bounds-{k}")) for k in ("x", "y", "width", "height")]
        if all(v is not None for v in b):
            bx, by, bw, bh = (int(v) for v in b)  # type: ignore[arg-type]
            if bw > 0 and bh > 0 and bx >= 0 and by >= 0 and bx + bw <= w0 and by + bh <= h0:
                bounds = (bx, by, bw, bh)
    obj = _float(props.get(f"{backend}.objective-power"))
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


def _resolution(
    path: str, backend: str, reader: Any, facts: _TiffFacts | None, user_mpp: float | None
) -> tuple[float, float, str]:
    """(mpp_x, mpp_y, source) by the rules in the module docstring."""
    if user_mpp is not None:
        return user_mpp, user_mpp, "user"
    notes: list[str] = []
    if backend in ("openslide", "tiffslide"):
        mx = _float(reader.properties.get(f"{backend}.mpp-x"))
        my = _float(reader.properties.get(f"{backend}.mpp-y")) or mx
        if _plausible(mx) and _plausible(my):
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
        if _plausible(mx) and _plausible(my):
            return mx, my, "image-dpi"
        notes.append(f"its {dpi[0]:.0f} dpi tag means nothing for a slide")
    note = f" ({'; '.join(notes)})" if notes else ""
    raise ResolutionError(f"{Path(path).name}: no usable µm/px metadata{note}; {_MPP_HINT}")


#: ``mpp=`` may differ from the slide's own metadata by this factor before a warning.
MPP_MISMATCH = 1.25


def _warn_if_contradicted(
    path: str, backend: str, reader: Any, facts: _TiffFacts | None, user_mpp: float
) -> None:
    """Warn (:class:`MppMismatchWarning`) when ``mpp=`` contradicts the slide's metadata by
    more than 25 %: areas would be off by the square of the ratio (e.g. 100x for 10x)."""
    try:
        meta, _, source = _resolution(path, backend, reader, facts, None)
    except ResolutionError:
        return  # nothing to contradict
    if max(user_mpp / meta, meta / user_mpp) > MPP_MISMATCH:
        warnings.warn(
            MppMismatchWarning(
                f"{Path(path).name}: mpp={user_mpp:g} contradicts the slide's own "
                f"{meta:.4g} µm/px ({source}); if that is right, areas are off "
                f"{(user_mpp / meta) ** 2:.3g}x"
            ),
            stacklevel=4,
        )


def slide_info(path: str | os.PathLike[str], **kw: Any) -> SlideInfo:
    """:class:`SlideInfo` of a slide (same keywords as :func:`open_slide`)."""
    with open_slide(path, **kw) as s:
        return s.info
