"""Slide stage: read RGB pixels of an open whole-slide image at a known µm/px.

The handle (:class:`Slide`) of a slide opened by :func:`idcmap.io.open.open_slide` (which
chooses the backend), its facts (:class:`SlideInfo`), and what to read for a target µm/px
(:class:`ReadLevel`). Reads go through the backend's :class:`~idcmap.io.readers.Reader`, or
through the slide's scaled-IDCT JPEG reader (:mod:`idcmap.io.jpegtiff`).

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
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from idcmap.errors import SlideError, UnsupportedImageError, UsageError
from idcmap.io.colour import MPP_TOLERANCE, LevelColour, choose_level
from idcmap.io.jpegtiff import JpegTiffReader, TileDecoder
from idcmap.io.readers import CHUNK_PX, Reader

__all__ = ["PX_EPS", "ReadLevel", "Slide", "SlideInfo", "to_qupath_px"]

#: Slack of the float arithmetic between level-0 px and level px (x / downsample, rounded down
#: or up): far below a pixel, far above the rounding error of coordinates below 2**31 px. One
#: value for every snap in slide.py and tiles.py.
PX_EPS = 1e-6


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


@dataclass(frozen=True)
class ReadLevel:
    """A pyramid level seen at 1/``scale``: what a reader at a target µm/px reads.

    Attributes:
        level: the pyramid level.
        scale: 1, or 2/4/8: the level decoded at that fraction (JPEG scaled IDCT) or
            box-averaged, so one read px is ``scale`` × ``scale`` level px.
        downsample: level-0 px per read px along x (level downsample × scale).
        dimensions: (width, height) in read px.
        chroma_mpp: µm per colour sample of a read px (coarser axis), None when unknown.
        reason: one line saying why this level and scale.
    """

    level: int
    scale: int
    downsample: float
    dimensions: tuple[int, int]
    chroma_mpp: float | None
    reason: str


class Slide:
    """An open slide: 8-bit RGB reads in level-0 px, µm/px, pyramid levels.

    Not for concurrent use from several threads: each worker calls :meth:`reopen`.
    ``jpeg``: the slide's scaled-IDCT reader (:class:`~idcmap.io.jpegtiff.JpegTiffReader`,
    thread-safe, shared by every handle), None when its levels are not tiled JPEG TIFF.
    """

    def __init__(
        self,
        info: SlideInfo,
        reader: Reader,
        factory: Callable[[], Reader],
        jpeg: JpegTiffReader | None = None,
    ) -> None:
        self.info = info
        self._reader: Reader | None = reader
        self._factory = factory
        self._failed: tuple[str, str] | None = None  # (message, detail) of a failed read
        self._lock = threading.Lock()
        self._jpeg = jpeg
        self._owns_jpeg = True
        #: colour facts of each level (:class:`~idcmap.io.colour.LevelColour`), None if unknown
        self.colour: tuple[LevelColour | None, ...] = tuple(
            None if jpeg is None or (j := jpeg.level_for_size(w, h)) is None else jpeg.levels[j]
            for w, h in info.level_dimensions
        )

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

    def read_level_for_mpp(self, target_mpp: float) -> ReadLevel:
        """What to read for pixels at ``target_mpp`` with full-resolution colour.

        With colour facts for every level (tiled JPEG / lossless TIFF): the coarsest level
        whose chroma sample is no coarser than ``target_mpp``, decoded at the largest scale
        1/2/4/8 that stays at or below it (:func:`~idcmap.io.colour.choose_level`; e.g. a
        40x 4:2:0 pyramid's 1-µm level at 1/4 for 4 µm/px, not the 4-µm level whose colour
        is at 8 µm/px). Without them: :meth:`best_level_for_mpp` at scale 1.
        """
        ds, dims = self.info.level_downsamples, self.info.level_dimensions
        if self._jpeg is None or any(c is None for c in self.colour):
            lvl = self.best_level_for_mpp(target_mpp)
            return ReadLevel(
                lvl, 1, ds[lvl], dims[lvl], None, "nearest finer level (colour facts unknown)"
            )
        facts = [replace(c, level=i) for i, c in enumerate(self.colour) if c is not None]
        lvl, s = choose_level(facts, target_mpp)
        c = facts[lvl]
        # the scaled IDCT keeps chroma at full resolution of the reduced image (libjpeg scales
        # subsampled components less), so a read's colour is the coarser of the two
        chroma = None if c.chroma_mpp is None else max(c.chroma_mpp, self.level_mpp(lvl) * s)
        coded = f"{c.colorspace} {c.jpeg.sampling_name}" if c.jpeg is not None else c.compression
        why = (
            f"level {lvl} ({self.level_mpp(lvl):.4g} µm/px, {coded})"
            + (f" decoded at 1/{s}" if s > 1 else "")
            + (f": colour at {chroma:.4g} µm/px" if chroma is not None else "")
        )
        if chroma is not None and chroma > target_mpp * (1 + MPP_TOLERANCE):
            why += f", coarser than {target_mpp:g} µm/px: no level has finer colour"
        if not c.readable:  # e.g. NDPI strips, JPEG 2000: the backend reads it, no scaled IDCT
            why += f"; no scaled decode ({c.reason})"
        return ReadLevel(
            lvl,
            s,
            ds[lvl] * s,
            (math.ceil(dims[lvl][0] / s), math.ceil(dims[lvl][1] / s)),
            chroma,
            why,
        )

    # -- reading

    def read_scaled(
        self,
        rl: ReadLevel,
        location_px: tuple[int, int],
        size: tuple[int, int],
        *,
        executor: Executor | None = None,
        decoder: TileDecoder | None = None,
    ) -> np.ndarray:
        """uint8 H×W×3 of ``size`` read px of ``rl`` at ``location_px`` (read px of ``rl``,
        full frame); white outside the level. Scale 1 is :meth:`read_region`; a scale > 1 is
        the scaled-IDCT decode where the level allows it (its tiles decoded on ``executor``
        when given), else the box mean of a full read.

        ``decoder`` (a :class:`~idcmap.io.jpegtiff.TileDecoder`, e.g. nvjpeg through
        :class:`~idcmap.io.jpegtorch.TorchTileDecoder`): where the level is tiled JPEG, its
        tiles are decoded with it in one batch, scale 1 included, and box-reduced."""
        (x, y), (w, h), s = location_px, size, rl.scale
        d = self.info.level_downsamples[rl.level]

        def level0(v: int) -> int:  # the first level-0 px of level px v (any downsample)
            return math.ceil(v * d - PX_EPS)

        jpeg, jl = self._jpeg, self._jpeg_level(rl, any_scale=decoder is not None)
        if jl is None and s == 1:
            return self.read_region((level0(x), level0(y)), rl.level, (w, h))
        if jpeg is None or jl is None:
            full = self.read_region((level0(x * s), level0(y * s)), rl.level, (w * s, h * s))
            return block_mean(full, s)
        if self._failed is not None:
            raise SlideError(self._failed[0], detail=self._failed[1])
        try:
            return jpeg.read_scaled(jl, s, x, y, w, h, executor=executor, decoder=decoder)
        except Exception as e:
            self._failed = (
                f"{self._name}: cannot decode the JPEG tiles of level {rl.level} (corrupt or "
                "truncated?); re-export or re-scan it",
                f"scaled read of {w}x{h} px at 1/{s}, ({x}, {y}): {reason(e)}",
            )
            raise SlideError(self._failed[0], detail=self._failed[1]) from e

    def _jpeg_level(self, rl: ReadLevel, *, any_scale: bool = False) -> int | None:
        """The JPEG reader's level that reads ``rl`` scaled (None: read through the backend);
        ``any_scale``: scale 1 too (a batch decoder reads it)."""
        jpeg = self._jpeg
        if jpeg is None or (rl.scale == 1 and not any_scale):
            return None
        jl = jpeg.level_for_size(*self.info.level_dimensions[rl.level])
        return jl if jl is not None and jpeg.supports(jl, rl.scale) else None

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
                f"{self.info.backend} read of {size[0]}x{size[1]} px at {loc}: {reason(e)}",
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

        Reads what :meth:`read_level_for_mpp` chooses (the tile pass's rule: full-resolution
        colour, a level maybe decoded at 1/2, 1/4, 1/8) in chunks of ≤ 4096² level px, averages
        integer blocks per chunk (seam-free), then resizes the small result with a box filter.

        Returns:
            (rgb uint8 rows×cols×3, (level-0 px per output px along x, along y)); output pixel
            (r, c) covers level-0 x in ``[bx + c·sx, bx + (c+1)·sx)`` with ``bx`` the bounds x.
        """
        bx, by, bw, bh = self.info.bounds_level0_px
        out_w = max(1, round(bw * self.info.mpp / target_mpp))
        out_h = max(1, round(bh * self.info.mpp_y / target_mpp))
        rl = self.read_level_for_mpp(target_mpp)
        d = rl.downsample  # level-0 px per read px
        lx0, ly0 = math.floor(bx / d + PX_EPS), math.floor(by / d + PX_EPS)
        lw = max(1, math.ceil((bx + bw) / d - PX_EPS) - lx0)
        lh = max(1, math.ceil((by + bh) / d - PX_EPS) - ly0)
        k = max(1, min(lw // out_w, lh // out_h))
        # ≤ 4096² level px per chunk: a scaled read takes chunks of fewer read px
        chunk = max(k, (CHUNK_PX // rl.scale // k) * k)
        small = np.empty((math.ceil(lh / k), math.ceil(lw / k), 3), np.uint8)
        chunks = [(cx, cy) for cy in range(0, lh, chunk) for cx in range(0, lw, chunk)]

        def read_chunks(
            handle: Slide, todo: list[tuple[int, int]], pool: Executor | None = None
        ) -> None:
            for cx, cy in todo:
                cw, ch = min(chunk, lw - cx), min(chunk, lh - cy)
                part = handle.read_scaled(rl, (lx0 + cx, ly0 + cy), (cw, ch), executor=pool)
                small[
                    cy // k : cy // k + math.ceil(ch / k), cx // k : cx // k + math.ceil(cw / k)
                ] = block_mean(part, k)

        n = min(len(chunks), os.cpu_count() or 1)
        if self._jpeg_level(rl) is not None:  # thread-safe: decode each chunk's tiles on a pool
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                read_chunks(self, chunks, pool)
        elif len(chunks) < 4:
            read_chunks(self, chunks)
        else:  # a slide without a coarse level: decode with one extra handle per core
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
            raise SlideError(f"{self._name}: cannot reopen", detail=reason(e)) from e
        other = Slide(self.info, reader, self._factory, self._jpeg)
        other._owns_jpeg = False  # the first handle closes the shared JPEG reader
        return other

    def close(self) -> None:
        reader, self._reader = self._reader, None
        close_quietly(reader)
        if self._owns_jpeg and self._jpeg is not None:
            self._jpeg.close()

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


def block_mean(arr: np.ndarray, k: int) -> np.ndarray:
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


def reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def probe(reader: Reader) -> None:
    """Read ≤ 16×16 px at the centre of the coarsest level: fail now on undecodable data."""
    lvl = len(reader.level_dimensions) - 1
    w, h = reader.level_dimensions[lvl]
    d = reader.level_downsamples[lvl]
    pw, ph = min(16, w), min(16, h)
    loc = (math.ceil((w - pw) // 2 * d - PX_EPS), math.ceil((h - ph) // 2 * d - PX_EPS))
    reader.read(loc, lvl, (pw, ph))


def close_quietly(reader: Any) -> None:
    if reader is not None:
        with contextlib.suppress(Exception):
            reader.close()
