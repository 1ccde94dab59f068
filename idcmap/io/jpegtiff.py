"""Scaled-IDCT region reads of the tiled-JPEG levels of a TIFF-family slide.

:class:`JpegTiffReader` reads a level-px rectangle of one tiled-JPEG level at scale 1/s
(s ∈ {1, 2, 4, 8}), fetching only the tiles it needs from a :class:`~idcmap.io.bytesource.
ByteSource` (a local file read with ``os.pread``, or an fsspec object read with range requests;
thread-safe either way) and decoding each one at 1/s with libjpeg's scaled IDCT (Pillow
:meth:`PIL.Image.Image.draft`: the DCT domain, so a 1/4 decode costs a fraction of a full one
and its colour is at full resolution of the reduced image). Other levels raise
:class:`JpegReadUnsupported`, so callers fall back to OpenSlide / tiffslide.

Colour: a TIFF's JPEG tile is decoded as libjpeg would guess from its markers (JFIF → YCbCr;
Adobe APP14 → its transform; else component ids), except that a ``Photometric = RGB`` tile
without a JFIF marker is decoded as RGB, which is tifffile's rule (``jpeg_decode_colorspace``);
where libjpeg's guess would differ, an Adobe APP14 marker is inserted before the SOF.

A :class:`TileDecoder` given to :meth:`JpegTiffReader.read_region` decodes a region's tiles in
one batch instead (:class:`idcmap.io.jpegtorch.TorchTileDecoder`: torchvision, nvjpeg on CUDA):
the reader hands it each tile's complete stream (tables merged, colour fixed as above) and
where the tile's reduced px go.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tifffile
from PIL import Image, JpegImagePlugin

from idcmap.io.bytesource import ByteSource, LocalSource
from idcmap.io.colour import SCALES, LevelColour, facts_of, level_pages
from idcmap.io.jpeg import adobe_marker, merge_tables, parse_jpeg_header

__all__ = ["JpegReadUnsupported", "JpegTiffReader", "TileDecoder", "TilePlacement"]


class JpegReadUnsupported(Exception):
    """The level cannot be read by :class:`JpegTiffReader`; read it with OpenSlide/tiffslide."""


@dataclass(frozen=True)
class TilePlacement:
    """One tile of a region read, for a :class:`TileDecoder`.

    Attributes:
        stream: the tile's complete JPEG stream (JPEGTables merged, colour marker fixed).
        valid_px: (w, h) of the tile's px inside the level (edge tiles: less than a tile).
        src_px: (x0, y0, x1, y1): the part of the tile, decoded, cropped to ``valid_px`` and
            reduced 1/s (each px the mean of the s×s valid px under it, as ``Image.reduce``),
            that the output takes.
        dst_px: (x, y) in the output where ``src_px``'s corner goes.
    """

    stream: bytes
    valid_px: tuple[int, int]
    src_px: tuple[int, int, int, int]
    dst_px: tuple[int, int]


class TileDecoder(Protocol):
    """Decodes the tiles of one region read at once (a batch), reduces them 1/``scale`` with a
    box filter and pastes them into a white ``size`` = (w, h) uint8 RGB array.

    ``device_ok``: the streams are baseline YCbCr JPEG, which a device decoder (nvjpeg)
    decodes as libjpeg does; else it decodes them on the CPU.
    """

    def decode_region(
        self,
        tiles: Sequence[TilePlacement],
        scale: int,
        size: tuple[int, int],
        *,
        device_ok: bool,
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class _LevelIndex:
    facts: LevelColour
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    tables: bytes | None
    tiles_across: int
    tiles_down: int
    fix_colour: int | None  # Adobe transform to insert before the SOF, None: decode as is
    baseline_ycbcr: bool  # what a device decoder decodes as libjpeg does


class JpegTiffReader:
    """Scaled-IDCT reads of the tiled-JPEG levels of a TIFF-family slide.

    Reads its tiles from one thread-safe :class:`~idcmap.io.bytesource.ByteSource`:
    :meth:`read_region` may be called from several threads at once.

    Args:
        source: the slide: a local path, or a byte source (e.g. an
            :class:`~idcmap.io.bytesource.FsspecSource` for a URL); the reader closes it.
        mpp: µm per level-0 px, as in :func:`level_colour_facts`.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | ByteSource,
        *,
        mpp: float | tuple[float, float] | None = None,
    ) -> None:
        self._source: ByteSource | None = None
        src = LocalSource(source) if isinstance(source, (str, os.PathLike)) else source
        try:
            with src.open() as fh, tifffile.TiffFile(fh) as tif:
                self.levels: tuple[LevelColour, ...] = tuple(facts_of(tif, mpp))
                self._index: list[_LevelIndex | None] = []
                for lv, page in zip(self.levels, level_pages(tif), strict=True):
                    self._index.append(self._make_index(lv, page) if lv.readable else None)
        except BaseException:
            src.close()
            raise
        self.name = src.name
        self._source = src

    @staticmethod
    def _make_index(lv: LevelColour, page: Any) -> _LevelIndex:
        assert lv.jpeg is not None
        fix = None
        if lv.colorspace != lv.jpeg.colorspace:  # e.g. Photometric RGB, ids 1-2-3, no markers
            fix = 0 if lv.colorspace == "RGB" else 1
        return _LevelIndex(
            facts=lv,
            offsets=tuple(int(v) for v in page.dataoffsets),
            counts=tuple(int(v) for v in page.databytecounts),
            tables=page.jpegtables or None,
            # the stored grid: Philips levels' tags give padded sizes that tifffile corrects
            tiles_across=math.ceil(int(page.tags["ImageWidth"].value) / lv.tile_width),
            tiles_down=math.ceil(int(page.tags["ImageLength"].value) / lv.tile_height),
            fix_colour=fix,
            baseline_ycbcr=fix is None
            and lv.colorspace == "YCbCr"
            and lv.jpeg.sof in (0xC0, 0xC1)
            and lv.jpeg.precision == 8,
        )

    # -- public

    def supports(self, level: int, scale: int = 1) -> bool:
        """Whether :meth:`read_region` reads ``level`` at ``scale``."""
        try:
            self._check(level, scale)
        except JpegReadUnsupported:
            return False
        return True

    def read_region(
        self,
        level: int,
        x: int,
        y: int,
        w: int,
        h: int,
        scale: int = 1,
        *,
        executor: Executor | None = None,
        decoder: TileDecoder | None = None,
    ) -> np.ndarray:
        """uint8 RGB of the level-px rectangle (x, y, w, h) reduced 1/``scale``.

        Output pixel (r, c) is the mean of level px ``[x + s·c, x + s·c + s) × [y + s·r, ...)``
        (libjpeg's scaled IDCT; at the level's right/bottom edge, of the px inside the level
        only). Pixels outside the level are white. Shape: ceil(h/s) × ceil(w/s) × 3.

        Args:
            level: pyramid level (see :attr:`levels`).
            x, y: top-left in level px; multiples of ``scale`` (may be negative).
            w, h: size in level px (≥ 0).
            scale: 1, 2, 4 or 8.
            executor: decode tiles on it (e.g. a ThreadPoolExecutor; Pillow releases the GIL
                while it decodes); None: in the calling thread.
            decoder: decode the tiles with it, all at once (:class:`TileDecoder`); then each
                output px is the box mean of the *full* decode's px (not the scaled IDCT's).

        Raises:
            JpegReadUnsupported: the level is not tiled 8-bit JPEG (fall back to another reader).
            ValueError: bad scale, origin not a multiple of it, negative size.
            OSError: the file cannot be read.
        """
        ix = self._check(level, scale)
        s = scale
        if x % s or y % s:
            raise ValueError(f"x={x}, y={y} must be multiples of scale={s}")
        if w < 0 or h < 0:
            raise ValueError(f"negative size {w}x{h}")
        ow, oh = -(-w // s), -(-h // s)
        out = np.full((oh, ow, 3), 255, np.uint8)
        lv = ix.facts
        tw, th = lv.tile_width, lv.tile_height
        # the level px covered by the output: [x, x + ow*s) clipped to the level
        ax0, ay0 = max(x, 0), max(y, 0)
        ax1, ay1 = min(x + ow * s, lv.width), min(y + oh * s, lv.height)
        if ax1 <= ax0 or ay1 <= ay0:
            return out
        jobs = [
            (tx, ty)
            for ty in range(ay0 // th, (ay1 - 1) // th + 1)
            for tx in range(ax0 // tw, (ax1 - 1) // tw + 1)
        ]

        def paste(tx: int, ty: int, tile: np.ndarray) -> None:
            tx0, ty0 = tx * tw, ty * th  # tile origin, level px
            bx0, by0 = max(tx0, ax0), max(ty0, ay0)
            bx1, by1 = min(tx0 + tw, ax1), min(ty0 + th, ay1)
            sx0, sy0 = (bx0 - tx0) // s, (by0 - ty0) // s
            sx1, sy1 = -(-(bx1 - tx0) // s), -(-(by1 - ty0) // s)
            dx0, dy0 = (bx0 - x) // s, (by0 - y) // s
            out[dy0 : dy0 + sy1 - sy0, dx0 : dx0 + sx1 - sx0] = tile[sy0:sy1, sx0:sx1]

        streams = self._fetch(ix, jobs)
        if decoder is not None:
            rect = (x, y, ax0, ay0, ax1, ay1)
            return self._decode_with(decoder, ix, jobs, streams, rect, s, out)
        if executor is None or len(jobs) < 2:
            for (tx, ty), st in zip(jobs, streams, strict=True):
                paste(tx, ty, self._tile(ix, tx, ty, s, st))
        else:
            futs = [
                (tx, ty, executor.submit(self._tile, ix, tx, ty, s, st))
                for (tx, ty), st in zip(jobs, streams, strict=True)
            ]
            for tx, ty, f in futs:
                paste(tx, ty, f.result())
        return out

    def _decode_with(
        self,
        decoder: TileDecoder,
        ix: _LevelIndex,
        jobs: list[tuple[int, int]],
        streams: list[bytes | None],
        rect: tuple[int, int, int, int, int, int],
        s: int,
        out: np.ndarray,
    ) -> np.ndarray:
        """:meth:`read_region`'s tiles through ``decoder``: the same geometry as its paste."""
        x, y, ax0, ay0, ax1, ay1 = rect
        lv = ix.facts
        tw, th = lv.tile_width, lv.tile_height
        tiles = []
        for (tx, ty), stream in zip(jobs, streams, strict=True):
            if stream is None:
                continue  # sparse: white, as the output already is
            tx0, ty0 = tx * tw, ty * th
            bx0, by0 = max(tx0, ax0), max(ty0, ay0)
            bx1, by1 = min(tx0 + tw, ax1), min(ty0 + th, ay1)
            tiles.append(
                TilePlacement(
                    stream,
                    (min(tw, lv.width - tx0), min(th, lv.height - ty0)),
                    (
                        (bx0 - tx0) // s,
                        (by0 - ty0) // s,
                        -(-(bx1 - tx0) // s),
                        -(-(by1 - ty0) // s),
                    ),
                    ((bx0 - x) // s, (by0 - y) // s),
                )
            )
        if not tiles:
            return out
        oh, ow = out.shape[:2]
        return decoder.decode_region(tiles, s, (ow, oh), device_ok=ix.baseline_ycbcr)

    def scaled_dimensions(self, level: int, scale: int) -> tuple[int, int]:
        """(width, height) of ``level`` read at 1/``scale``: ceil(level size / scale)."""
        lv = self.levels[level]
        return -(-lv.width // scale), -(-lv.height // scale)

    def read_scaled(
        self,
        level: int,
        scale: int,
        x: int,
        y: int,
        w: int,
        h: int,
        *,
        executor: Executor | None = None,
        decoder: TileDecoder | None = None,
    ) -> np.ndarray:
        """uint8 RGB h×w×3 of the *scaled* level (``level`` seen at 1/``scale``, as if it were
        a level of downsample ``level downsample × scale``): its px (x, y, w, h), each the mean
        of the s×s level px under it. Any integers (aligned by construction); white outside.

        This is the call a slide reader needs: treat (level, scale) as a virtual level.
        """
        s = scale
        return self.read_region(
            level, x * s, y * s, w * s, h * s, s, executor=executor, decoder=decoder
        )

    def level_for_size(self, width: int, height: int) -> int | None:
        """The index of the level of this size (to match another backend's level), or None."""
        for lv in self.levels:
            if (lv.width, lv.height) == (width, height):
                return lv.level
        return None

    def read_tile(self, level: int, tx: int, ty: int, scale: int = 1) -> np.ndarray:
        """Tile (tx, ty) of ``level`` decoded at 1/``scale``: uint8 RGB, ceil(tile/s) px a side
        (the part inside the level only, for edge tiles)."""
        ix = self._check(level, scale)
        if not (0 <= tx < ix.tiles_across and 0 <= ty < ix.tiles_down):
            raise ValueError(f"tile ({tx}, {ty}) outside level {level}")
        return self._tile(ix, tx, ty, scale, self._fetch(ix, [(tx, ty)])[0])

    def close(self) -> None:
        src, self._source = self._source, None
        if src is not None:
            src.close()

    def __enter__(self) -> JpegTiffReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals

    def _check(self, level: int, scale: int) -> _LevelIndex:
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level {level} does not exist (0..{len(self.levels) - 1})")
        ix = self._index[level]
        if ix is None:
            raise JpegReadUnsupported(
                f"{self.name} level {level}: {self.levels[level].reason}; "
                "read it with OpenSlide or tiffslide"
            )
        if ix.facts.tile_width % scale or ix.facts.tile_height % scale:
            raise JpegReadUnsupported(
                f"level {level}: tile {ix.facts.tile_width}x{ix.facts.tile_height} "
                f"not a multiple of scale {scale}"
            )
        if self._source is None:
            raise ValueError(f"{self.name}: the reader was closed")
        return ix

    def _fetch(self, ix: _LevelIndex, tiles: list[tuple[int, int]]) -> list[bytes | None]:
        """The complete JPEG stream of each tile (tables merged, colour fixed), all fetched in
        one call to the source; None for a sparse tile (no data: white)."""
        src = self._source
        if src is None:
            raise ValueError(f"{self.name}: the reader was closed")
        want: list[tuple[int, int]] = []
        where: list[int | None] = []
        for tx, ty in tiles:
            i = ty * ix.tiles_across + tx
            n = ix.counts[i] if i < len(ix.counts) else 0
            off = ix.offsets[i] if i < len(ix.offsets) else 0
            where.append(len(want) if n and off else None)
            if n and off:
                want.append((off, n))
        got = src.read_ranges(want)
        return [None if k is None else self._complete(ix, got[k]) for k in where]

    @staticmethod
    def _complete(ix: _LevelIndex, data: bytes) -> bytes:
        stream = merge_tables(data, ix.tables)
        if ix.fix_colour is not None:
            sof = parse_jpeg_header(stream).sof_offset
            stream = stream[:sof] + adobe_marker(ix.fix_colour) + stream[sof:]
        return stream

    @staticmethod
    def _tile(ix: _LevelIndex, tx: int, ty: int, s: int, stream: bytes | None) -> np.ndarray:
        """Tile (tx, ty) decoded from ``stream`` at 1/s, cropped to the level: ceil(valid/s)
        px (edge tiles exact)."""
        lv = ix.facts
        tw, th = lv.tile_width, lv.tile_height
        vw, vh = min(tw, lv.width - tx * tw), min(th, lv.height - ty * th)
        ow, oh = -(-vw // s), -(-vh // s)
        if stream is None:
            return np.full((oh, ow, 3), 255, np.uint8)
        im: Image.Image = JpegImagePlugin.JpegImageFile(io.BytesIO(stream))
        sw, sh = im.size  # the frame; a full tile, or (some writers) only the valid part
        # a tile cut by the level's edge at a px that is not a multiple of s: a scaled pixel
        # would average the encoder's padding; decode it whole and average the valid px only
        exact = s > 1 and ((vw < tw and vw % s) or (vh < th and vh % s))
        if s > 1 and not exact:
            im.draft("RGB", (max(1, sw // s), max(1, sh // s)))
            if im.size != (-(-sw // s), -(-sh // s)):
                raise OSError(f"tile ({tx}, {ty}): scaled decode gave {im.size} px")
        if im.mode != "RGB":
            im = im.convert("RGB")
        arr = np.asarray(im)
        need = (vh, vw) if s == 1 or exact else (oh, ow)
        if arr.shape[0] < need[0] or arr.shape[1] < need[1]:
            raise OSError(
                f"tile ({tx}, {ty}) decodes to {arr.shape[1]}x{arr.shape[0]} px, "
                f"{need[1]}x{need[0]} needed"
            )
        if exact:
            arr = np.asarray(Image.fromarray(arr[:vh, :vw]).reduce(s))
        return arr[:oh, :ow]
