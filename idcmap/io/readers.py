"""Readers: one class per backend (OpenSlide, tiffslide, PIL), behind the :class:`Reader`
interface that :class:`~idcmap.io.slide.Slide` reads through. Each returns uint8 RGB, alpha
flattened over white.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
from PIL import Image

from idcmap.errors import UnsupportedImageError

__all__ = [
    "BACKENDS",
    "Backend",
    "ImageReader",
    "OpenSlideReader",
    "Reader",
    "Scaling",
    "TiffSlideReader",
    "flatten_alpha",
    "non_rgb_message",
]

#: Slide readers: "auto" tries OpenSlide, then tiffslide, then PIL.
Backend = Literal["auto", "openslide", "tiffslide", "image"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)

CHUNK_PX = 4096


class Reader(Protocol):
    """One open handle of a backend. ``read`` gets an in-level request and may raise anything."""

    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, Any]
    vendor: str | None

    def read(
        self, location_level0_px: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray: ...

    def close(self) -> None: ...


def flatten_alpha(arr: np.ndarray) -> np.ndarray:
    """uint8 H×W×4 (straight alpha) → H×W×3 over white; H×W×3 unchanged."""
    if arr.shape[2] == 3:
        return arr
    if int(arr[..., 3].min()) == 255:  # opaque (the usual case): no float or uint16 copies
        return np.ascontiguousarray(arr[..., :3])
    rgb = arr[..., :3].astype(np.uint16)
    a = arr[..., 3:4].astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class OpenSlideReader:
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
        return flatten_alpha(np.asarray(img.convert("RGBA")))

    def close(self) -> None:
        self._osr.close()


class Scaling:
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


class TiffSlideReader:
    def __init__(self, path: Any, scaling: Scaling | bool | None = None) -> None:
        """``scaling``: None for 8-bit RGB; True to compute a :class:`Scaling`; or one to reuse."""
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
            scaling = Scaling(self._sample())
        self.scaling: Scaling | None = scaling or None

    def _sample(self) -> np.ndarray:
        """The coarsest level (its central 4096² px at most): for min–max scaling."""
        lvl = len(self.level_dimensions) - 1
        w, h = self.level_dimensions[lvl]
        cw, ch = min(w, CHUNK_PX), min(h, CHUNK_PX)
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
        return flatten_alpha(arr)

    def close(self) -> None:
        self._ts.close()


class ImageReader:
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
            return flatten_alpha(np.asarray(im.convert("RGBA")))
        if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            return np.asarray(im.convert("RGB")).copy()
        arr = np.asarray(im)
        arr = arr[..., None] if arr.ndim == 2 else arr
        what = f"{arr.dtype}, {arr.shape[2]} channel{'s' * (arr.shape[2] != 1)} (mode {im.mode})"
        if not allow_non_rgb:
            raise UnsupportedImageError(non_rgb_message(path, what))
        self.converted_from = what
        return Scaling(arr)(arr)

    def read(
        self, location_level0_px: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        x, y = location_level0_px
        w, h = size
        return self.array[y : y + h, x : x + w]

    def close(self) -> None:
        pass


def non_rgb_message(path: str, what: str) -> str:
    return (
        f"{Path(path).name}: not 8-bit brightfield RGB ({what}); allow_non_rgb=True "
        "processes it anyway (channels min–max scaled to RGB)"
    )
