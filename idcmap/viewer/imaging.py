"""Pixels for the viewer: Deep Zoom tiles from the slide, thumbnails, the heatmap overlay.

Slides are opened with :func:`idcmap.io.slide.open_slide` (same backends, µm/px rules and error
messages as ``idcmap run``); openslide-python's :class:`~openslide.deepzoom.DeepZoomGenerator`
lays out the Deep Zoom pyramid over the slide's *bounds rectangle* (``limit_bounds=True``), so a
Deep Zoom level-0 pixel is a pixel of QuPath's frame, the frame of every idcmap output.

A tile's pixels are read by the pipeline's rule (:meth:`~idcmap.io.slide.Slide.read_level_for_mpp`
at the Deep Zoom level's µm/px, then :meth:`~idcmap.io.slide.Slide.read_scaled`): the level whose
colour is as fine as the tile's pixels, decoded at 1/2, 1/4 or 1/8 where it is tiled JPEG, so
the viewer shows at 4 µm/px the colour the model saw.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from openslide import AbstractSlide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image, ImageDraw, ImageFont

from idcmap.errors import IDCMapError, SlideError
from idcmap.io.open import open_slide
from idcmap.io.slide import PX_EPS, Slide

__all__ = [
    "OVERLAY_STOPS",
    "SlideCache",
    "SlideEntry",
    "file_key",
    "overlay_png",
    "placeholder_png",
]

TILE_PX = 254
"""Deep Zoom tile side (+1 px overlap each side = 256, as OpenSeadragon prefers)."""
TILE_OVERLAP_PX = 1
JPEG_QUALITY = 85
#: Tiles are encoded with full-resolution colour (4:4:4; Pillow's default 4:2:0 would halve the
#: colour resolution the read keeps): 0.9-1.1x the bytes of 4:2:0 tiles of the nearest level
#: on a 40x 4:2:0 slide (`benchmarks/read_rules.py`'s tiles, 12-20 KB).
JPEG_SUBSAMPLING = 0
THUMB_PX = 256
"""Long side of a batch-table thumbnail."""

#: Heatmap overlay colours: (probability, (r, g, b), opacity). Interpolated linearly; low
#: probabilities are transparent so the H&E stays readable, high ones nearly opaque.
OVERLAY_STOPS: tuple[tuple[float, tuple[int, int, int], float], ...] = (
    (0.0, (49, 54, 149), 0.0),
    (0.25, (69, 117, 180), 0.0),
    (0.45, (116, 173, 209), 0.15),
    (0.6, (254, 224, 144), 0.5),
    (0.75, (253, 174, 97), 0.65),
    (0.9, (244, 109, 67), 0.75),
    (1.0, (215, 48, 39), 0.8),
)


class _BoundsGeometry(AbstractSlide):
    """The geometry :class:`DeepZoomGenerator` needs (levels, bounds), read from a
    :class:`~idcmap.io.slide.SlideInfo`; pixels come from :class:`SlideEntry` instead."""

    def __init__(self, slide: Slide) -> None:
        super().__init__()
        info = slide.info
        self._slide = slide
        bx, by, bw, bh = info.bounds_level0_px
        self._props = {
            "openslide.bounds-x": str(bx),
            "openslide.bounds-y": str(by),
            "openslide.bounds-width": str(bw),
            "openslide.bounds-height": str(bh),
        }

    @classmethod
    def detect_format(cls, filename: Any) -> str | None:
        return None

    def close(self) -> None:
        pass

    @property
    def level_count(self) -> int:
        return self._slide.info.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._slide.info.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._slide.info.level_downsamples

    @property
    def properties(self) -> Mapping[str, str]:
        return self._props

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        # OpenSlide's rule: the last level whose downsample is not above the requested one
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        return Image.fromarray(self._slide.read_region(location, level, size)).convert("RGBA")


class _Handles:
    """Up to ``limit`` handles on one slide, one per concurrent tile request."""

    def __init__(self, first: Slide, limit: int) -> None:
        self._all = [first]
        self._free = [first]
        self._limit = max(1, limit)
        self._cond = threading.Condition()
        self._closed = False

    @contextmanager
    def get(self) -> Iterator[Slide]:
        with self._cond:
            while not self._free and len(self._all) >= self._limit:
                self._cond.wait()
            handle = self._free.pop() if self._free else None
            if handle is None:
                handle = self._all[0].reopen()
                self._all.append(handle)
        try:
            yield handle
        finally:
            with self._cond:
                if self._closed:
                    handle.close()
                else:
                    self._free.append(handle)
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for h in self._free:
                h.close()
            self._free.clear()


@dataclass
class SlideEntry:
    """An open slide (or why it cannot be opened) and its Deep Zoom layout."""

    key: tuple[Any, ...]
    error: str | None
    handles: _Handles | None = None
    dz: DeepZoomGenerator | None = None
    missing: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.dz is not None

    def tile_jpeg(self, level: int, col: int, row: int) -> bytes | None:
        """JPEG of one Deep Zoom tile; None when the level or address does not exist.

        Raises:
            SlideError: the slide cannot be read (the entry remembers why).
        """
        if not self.ok or self.dz is None or self.handles is None:
            raise SlideError(self.error or "slide not open")
        dz = self.dz
        if not (0 <= level < dz.level_count):
            return None
        cols, rows = dz.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            return None
        (loc, _level, _size), z_size = (
            dz.get_tile_coordinates(level, (col, row)),
            dz.get_tile_dimensions(level, (col, row)),
        )
        level0_per_px = 2.0 ** (dz.level_count - 1 - level)  # level-0 px per Deep Zoom px
        try:
            with self.handles.get() as slide:
                arr = tile_pixels(slide, loc, z_size, level0_per_px)
        except IDCMapError as e:
            self.error = str(e)
            raise
        img = Image.fromarray(arr)
        if img.size != z_size:
            # Deep Zoom levels between slide levels are integer reductions: box-average those
            # (a pyramid's own filter, ~5x cheaper than Lanczos), then fit the last pixel
            f = min(img.width // max(1, z_size[0]), img.height // max(1, z_size[1]))
            if f >= 2:
                img = img.reduce(f)
            if img.size != z_size:
                img = img.resize(z_size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
        return buf.getvalue()

    def thumbnail_jpeg(self, regions: list[dict[str, Any]]) -> bytes:
        """A ≤ 256-px picture of the bounds rectangle with the region outlines."""
        if not self.ok or self.handles is None:
            raise SlideError(self.error or "slide not open")
        with self.handles.get() as slide:
            info = slide.info
            _, _, bw, bh = info.bounds_level0_px
            target_mpp = max(bw * info.mpp, bh * info.mpp_y) / THUMB_PX
            try:
                rgb, (sx, sy) = slide.read_at_mpp(target_mpp)
            except IDCMapError as e:
                self.error = str(e)
                raise
        img = Image.fromarray(rgb)
        draw = ImageDraw.Draw(img)
        for reg in regions:
            for poly in reg["polygons"]:
                for ring in poly:
                    pts = [(x / sx, y / sy) for x, y in ring]
                    if len(pts) >= 2:
                        draw.line(pts, fill=(0, 0, 0), width=4)
                        draw.line(pts, fill=(0, 230, 255), width=2)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=88)
        return buf.getvalue()

    def close(self) -> None:
        if self.handles is not None:
            self.handles.close()


def tile_pixels(
    slide: Slide, loc_level0_px: tuple[int, int], size: tuple[int, int], level0_per_px: float
) -> np.ndarray:
    """The slide under a Deep Zoom tile of ``size`` px at ``loc_level0_px`` (full frame), read
    by the pipeline's rule at its µm/px: at least ``size``, at most ~8x it a side (a read px
    is never coarser than a tile px beyond the rule's 1 % slack); the caller reduces it."""
    info = slide.info
    rl = slide.read_level_for_mpp(level0_per_px * info.mpp)
    d = rl.downsample
    x, y = math.floor(loc_level0_px[0] / d + PX_EPS), math.floor(loc_level0_px[1] / d + PX_EPS)
    f = level0_per_px / d  # read px per tile px
    w = max(1, min(math.ceil(size[0] * f - PX_EPS), rl.dimensions[0] - x))
    h = max(1, min(math.ceil(size[1] * f - PX_EPS), rl.dimensions[1] - y))
    return slide.read_scaled(rl, (x, y), (w, h))


class SlideCache:
    """Open slides by key, least recently used closed beyond ``capacity`` (per process)."""

    def __init__(self, capacity: int = 8, handles_per_slide: int = 4) -> None:
        self._capacity = max(1, capacity)
        self._handles = handles_per_slide
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, SlideEntry] = OrderedDict()
        self._opening: dict[str, threading.Lock] = {}

    def get(self, name: str, path: Path | None, summary: Mapping[str, Any]) -> SlideEntry:
        """The entry for slide folder ``name`` whose slide file is ``path``; opened at most once
        per (path, file size and mtime) and kept until evicted."""
        key = file_key(path)
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.key == key:
                self._entries.move_to_end(name)
                return entry
            opening = self._opening.setdefault(name, threading.Lock())
        with opening:  # one open per slide at a time; others wait for it
            with self._lock:
                entry = self._entries.get(name)
                if entry is not None and entry.key == key:
                    return entry
            new = _open_entry(key, path, summary, self._handles)
            with self._lock:
                old = self._entries.pop(name, None)
                self._entries[name] = new
                evicted = [self._entries.popitem(last=False)[1] for _ in range(self._excess())]
            for e in [old, *evicted]:
                if e is not None:
                    e.close()
            return new

    def _excess(self) -> int:
        return max(0, len(self._entries) - self._capacity)

    def close(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for e in entries:
            e.close()


def file_key(path: Path | None) -> tuple[Any, ...]:
    """Identity of a file's current content: path, mtime and size (or why there is none)."""
    if path is None:
        return ("none",)
    try:
        st = path.stat()
    except OSError:
        return (str(path), "missing")
    return (str(path), st.st_mtime_ns, st.st_size)


def _open_entry(
    key: tuple[Any, ...], path: Path | None, summary: Mapping[str, Any], handles: int
) -> SlideEntry:
    recorded = summary.get("slide") or {}
    if path is None:
        return SlideEntry(key, "The summary does not say which slide file was analysed")
    if not path.exists():
        return SlideEntry(
            key,
            f"The slide file {recorded.get('path') or path} is not there any more (moved, "
            "renamed or deleted); the outputs are shown without the slide picture",
            missing=True,
        )
    mpp = recorded.get("mpp") if recorded.get("mpp_source") == "user" else None
    backend = (
        recorded.get("backend") if recorded.get("backend") in ("openslide", "tiffslide") else "auto"
    )
    try:
        slide = open_slide(
            path,
            backend=str(backend),
            mpp=float(mpp) if isinstance(mpp, (int, float)) else None,
            allow_non_rgb=recorded.get("converted_from") is not None,
        )
    except IDCMapError as e:
        return SlideEntry(key, f"The slide file cannot be read: {e}")
    except Exception as e:  # a backend failure idcmap does not know: still one line
        return SlideEntry(key, f"The slide file cannot be read: {type(e).__name__}: {e}")
    expected = recorded.get("bounds_level0_px")
    if isinstance(expected, list) and [int(v) for v in expected] != list(
        slide.info.bounds_level0_px
    ):
        slide.close()
        return SlideEntry(
            key,
            "The slide file has changed since the run (its size differs from the summary's); "
            "the outputs would not line up with it",
        )
    dz = DeepZoomGenerator(
        _BoundsGeometry(slide), tile_size=TILE_PX, overlap=TILE_OVERLAP_PX, limit_bounds=True
    )
    return SlideEntry(key, None, _Handles(slide, handles), dz)


def overlay_png(
    prob: np.ndarray,
    *,
    smooth: bool = False,
    cell_aspect: float = 1.0,
    max_px: int = 2_500_000,
) -> bytes:
    """RGBA PNG of a probability grid (NaN = not tissue → transparent), coloured with
    :data:`OVERLAY_STOPS`, each cell enlarged to kx × ky px (k ≤ 16, at most ``max_px`` pixels).

    ``smooth=False``: nearest neighbour, so that cell edges stay crisp when the browser scales
    the picture (the tiles the model saw). ``smooth=True``: bilinear between cell centres (over
    tissue cells only), for a map that is itself smooth; the tissue outline stays cell-exact.
    ``cell_aspect``: a cell's height / width in slide px (1 for square pixels): the picture gets
    the heatmap's true aspect ratio, as the viewer scales it by its width alone.
    """
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim != 2 or p.size == 0:
        raise ValueError("the heatmap is empty")
    rows, cols = p.shape
    kx = int(max(1, min(16, math.isqrt(max_px // (rows * cols)))))
    ky = max(1, round(kx * cell_aspect)) if math.isfinite(cell_aspect) and cell_aspect > 0 else kx
    valid = np.isfinite(p)
    v = np.clip(np.where(valid, p, 0.0), 0.0, 1.0)
    if kx > 1 or ky > 1:
        tissue = np.repeat(np.repeat(valid, ky, axis=0), kx, axis=1)
        if smooth:
            from scipy import ndimage

            def up(a: np.ndarray) -> np.ndarray:
                return ndimage.zoom(a, (ky, kx), order=1, mode="nearest", grid_mode=True)

            w = valid.astype(np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                v = np.clip(up(v * w) / np.maximum(up(w), 1e-6), 0.0, 1.0)
        else:
            v = np.repeat(np.repeat(v, ky, axis=0), kx, axis=1)
        valid = tissue
    xs = np.array([s[0] for s in OVERLAY_STOPS])
    rgba = np.zeros((*v.shape, 4), np.uint8)
    for c in range(3):
        rgba[..., c] = np.rint(np.interp(v, xs, [s[1][c] for s in OVERLAY_STOPS]))
    alpha = np.interp(v, xs, [s[2] for s in OVERLAY_STOPS]) * 255
    rgba[..., 3] = np.where(valid, np.rint(alpha), 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def placeholder_png(text: str, size: tuple[int, int] = (THUMB_PX, 170)) -> bytes:
    """A grey picture with a short message (the thumbnail of a slide that cannot be read)."""
    img = Image.new("RGB", size, (236, 236, 236))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, size[0] - 1, size[1] - 1), outline=(190, 190, 190))
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        font = ImageFont.load_default()
    lines = text.split("\n")
    y = size[1] // 2 - 12 * len(lines)
    for line in lines:
        w = draw.textlength(line, font=font)
        draw.text(((size[0] - w) / 2, y), line, fill=(90, 90, 90), font=font)
        y += 24
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
