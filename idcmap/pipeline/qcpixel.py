"""The QC stage's pixel classifier: colour features of a ~16-µm/px thumbnail and a small MLP.

A per-pixel MLP (numpy forward, weights in ``idcmap/model/weights/qc/qc-v2.json``, trained by
``benchmarks/qc_train.py`` on artefacts painted by :mod:`idcmap.train.artefacts` onto the
training mosaics) over colour features of each thumbnail pixel and of its neighbourhood: optical
density (OD) per channel, OD chromaticity, OD relative to the slide's own tissue median (folds
are "more of the same stain"), luminance, local contrast. Used by :mod:`idcmap.pipeline.qc`
(ink, folds, debris) and :mod:`idcmap.pipeline.ink` (ink left after un-inking).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "CLASSES",
    "REF_GLASS_OD",
    "REF_OD",
    "PixelMLP",
    "load_pixel_model",
    "optical_density",
    "pixel_features",
    "tissue_reference",
    "tissue_reference_rgb",
]

#: classes of the pixel classifier, in its output order
CLASSES = ("clean", "ink", "fold", "debris")

#: Mean tissue optical density (R, G, B) of the 22 training mosaics at 16 µm/px (the mean of the
#: per-mosaic means; tissue mask of :func:`idcmap.pipeline.tissue.tissue_mask_from_rgb`).
#: Computed by ``PYTHONPATH=. python benchmarks/qc_train.py --reference``.
REF_OD = (0.2533, 0.5507, 0.3559)
#: Mean glass OD (R, G, B) of the 19 training mosaics (:func:`idcmap.pipeline.stain.glass_od` of
#: their 16-µm/px thumbnails; per-mosaic spread ±0.006): the QC stage brings every slide's glass
#: to it first, so a scanner's white balance is not taken for ink. Same command as
#: :data:`REF_OD`.
REF_GLASS_OD = (0.0415, 0.0441, 0.0424)
_MODEL_PATH = Path(__file__).parents[1] / "model" / "weights" / "qc" / "qc-v2.json"


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """float32 OD (−log of the transmitted fraction) of uint8 RGB, per channel."""
    return -np.log((rgb.astype(np.float32) + 1.0) / 256.0)


def pixel_features(
    rgb: np.ndarray,
    tissue: np.ndarray,
    where: np.ndarray | None = None,
    version: int = 2,
    ref: np.ndarray | None = None,
    frame: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """float32 rows×cols×F colour features of a ~16-µm/px thumbnail (see the module doc), or
    N×F of the N pixels of ``where`` only.

    ``tissue``: the tissue stage's mask; its median OD is the slide's own reference.
    ``version``: 1, the 19 features of ``qc-v1``; 2 adds the wider context (~300 µm) of the
    density, chromaticity, saturation and relative density, and each pixel's difference from
    it (a mark differs from the tissue around it).
    ``ref``: the slide's reference OD (:func:`tissue_reference`), when ``rgb`` is a crop.
    ``frame``: (row, col, rows, cols), where ``rgb`` is a crop: its origin in the whole
    thumbnail (multiples of 4) and the whole thumbnail's size. With it, and context enough
    round the pixels that matter (44 px), their features are the whole thumbnail's: the
    wide maps are upsampled on the whole thumbnail's geometry, as in training.
    """
    frame = frame or (0, 0, rgb.shape[0], rgb.shape[1])
    if where is not None and np.count_nonzero(where) < 0.25 * where.size:  # few px: gather
        return _features_at(rgb, tissue, where, version, ref, frame)
    od = optical_density(rgb)
    r, g, b = od[..., 0], od[..., 1], od[..., 2]
    s = r + g + b  # (axis reductions over a 3-long last axis are slow in numpy)
    inv = 1.0 / np.maximum(s, 1e-3)
    chrom = (r * inv, g * inv, b * inv)
    if ref is None:
        ref = tissue_reference(od, tissue)
    ref_s = float(max(ref.sum(), 0.05))
    c8 = [rgb[..., i] for i in range(3)]
    lum = (c8[0].astype(np.float32) + c8[1] + c8[2]) / 765.0
    mx = np.maximum(np.maximum(c8[0], c8[1]), c8[2]).astype(np.float32) / 255.0
    mn = np.minimum(np.minimum(c8[0], c8[1]), c8[2]).astype(np.float32) / 255.0
    sat = (mx - mn) / np.maximum(mx, 1e-3)
    base = [
        r,
        g,
        b,
        np.log(s + 0.05),
        chrom[0],
        chrom[1],
        chrom[2],
        lum,
        mx,
        sat,
        np.log((s + 0.05) / ref_s),
        chrom[0] - ref[0] / ref_s,
        chrom[2] - ref[2] / ref_s,
    ]
    feats = list(base)
    # neighbourhood (~100 µm): the same maps smoothed on a 2:1 reduction (cheap), and the
    # local contrast of the density (ink and folds are smooth, tissue is textured)
    for f in (base[3], base[4], base[6], base[8], base[10]):
        feats.append(_smooth(f, 3.0))
    ls = base[3]
    m1 = _smooth(ls, 1.5)
    feats.append(np.sqrt(np.maximum(_smooth(ls * ls, 1.5) - m1 * m1, 0)))
    if version >= 2:
        for f in (base[3], base[4], base[6], base[9], base[10]):
            wide = _smooth_wide(f, 10.0, frame)
            feats += [wide, f - wide]
    if where is not None:
        idx = np.flatnonzero(where)  # once (a boolean index finds its pixels on every use)
        # into the rows of an F×N array, then one transposing copy: ~2x faster than filling
        # the (strided) columns of N×F
        out = np.empty((len(feats), len(idx)), np.float32)
        for i, f in enumerate(feats):
            out[i] = np.take(f, idx)
        return np.ascontiguousarray(out.T)
    return np.stack(feats, -1).astype(np.float32, copy=False)


def _features_at(
    rgb: np.ndarray,
    tissue: np.ndarray,
    where: np.ndarray,
    version: int,
    ref: np.ndarray | None,
    frame: tuple[int, int, int, int],
) -> np.ndarray:
    """:func:`pixel_features` of the pixels of ``where`` only (N×F, the same numbers): the
    per-pixel features from those pixels alone, the neighbourhood ones from the reduced maps
    sampled there (nothing is upsampled to the whole thumbnail)."""
    yy, xx = np.divmod(np.flatnonzero(where), where.shape[1])  # (2-D nonzero is ~10× slower)
    od = optical_density(rgb)
    if ref is None:
        ref = tissue_reference(od, tissue)
    ref_s = float(max(ref.sum(), 0.05))
    s_map = od[..., 0] + od[..., 1] + od[..., 2]
    inv_map = 1.0 / np.maximum(s_map, 1e-3)
    logs_map = np.log(s_map + 0.05)
    chr_map, chb_map = od[..., 0] * inv_map, od[..., 2] * inv_map
    c8 = rgb[yy, xx].astype(np.float32)
    r, g, b = od[yy, xx, 0], od[yy, xx, 1], od[yy, xx, 2]
    s = r + g + b
    inv = 1.0 / np.maximum(s, 1e-3)
    # (max/min over a 3-long axis are ~30× slower in numpy than the pairwise maximum)
    mx = np.maximum(np.maximum(c8[:, 0], c8[:, 1]), c8[:, 2]) / 255.0
    mn = np.minimum(np.minimum(c8[:, 0], c8[:, 1]), c8[:, 2]) / 255.0
    logs = np.log(s + 0.05)
    log_ref = float(np.log(ref_s))
    feats = [
        r, g, b, logs, r * inv, g * inv, b * inv, c8.sum(1) / 765.0, mx,
        (mx - mn) / np.maximum(mx, 1e-3), logs - log_ref,
        r * inv - ref[0] / ref_s, b * inv - ref[2] / ref_s,
    ]  # fmt: skip
    c0, c1, c2 = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx_map = np.maximum(np.maximum(c0, c1), c2).astype(np.float32) / 255.0
    half = (yy // 2, xx // 2)
    logs_3 = _at(_smooth_small(logs_map, 3.0), half)  # once: the density's and relative one's
    feats += [
        logs_3,
        *(_at(_smooth_small(f, 3.0), half) for f in (chr_map, chb_map, mx_map)),
        logs_3 - log_ref,
    ]
    m1 = _at(_smooth_small(logs_map, 1.5), half)
    m2 = _at(_smooth_small(logs_map * logs_map, 1.5), half)
    feats.append(np.sqrt(np.maximum(m2 - m1 * m1, 0)))
    if version >= 2:
        mn_map = np.minimum(np.minimum(c0, c1), c2).astype(np.float32) / 255.0
        sat_map = (mx_map - mn_map) / np.maximum(mx_map, 1e-3)
        logs_wide = _wide_at(logs_map, 10.0, yy, xx, frame)  # once, as above
        for wide, own in (
            (logs_wide, feats[3]),
            (_wide_at(chr_map, 10.0, yy, xx, frame), feats[4]),
            (_wide_at(chb_map, 10.0, yy, xx, frame), feats[6]),
            (_wide_at(sat_map, 10.0, yy, xx, frame), feats[9]),
            (logs_wide - log_ref, feats[10]),
        ):
            feats += [wide, own - wide]
    return np.stack(feats, -1).astype(np.float32, copy=False)


def _smooth_small(f: np.ndarray, sigma: float) -> np.ndarray:
    """:func:`_smooth` before its upsampling: the Gaussian on the 2:1 reduction."""
    h, w = f.shape
    if min(h, w) < 8:
        return ndimage.gaussian_filter(f, sigma, mode="nearest")
    f2 = f[: h - h % 2, : w - w % 2]
    small = (f2[0::2, 0::2] + f2[1::2, 0::2] + f2[0::2, 1::2] + f2[1::2, 1::2]) * 0.25
    return ndimage.gaussian_filter(small, sigma / 2, mode="nearest")


def _at(small: np.ndarray, half: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``small`` (a 2:1 map) at the given half-resolution px (the edge row/col repeated)."""
    return small[np.minimum(half[0], small.shape[0] - 1), np.minimum(half[1], small.shape[1] - 1)]


def _wide_at(
    f: np.ndarray, sigma: float, yy: np.ndarray, xx: np.ndarray, frame: tuple[int, int, int, int]
) -> np.ndarray:
    """:func:`_smooth_wide` of ``f`` at px (yy, xx): the 4:1 map interpolated there."""
    from PIL import Image

    h, w = f.shape
    if min(h, w) < 16:
        return ndimage.gaussian_filter(f, sigma, mode="nearest")[yy, xx].astype(np.float32)
    small = np.asarray(Image.fromarray(f.astype(np.float32), mode="F").reduce(4))
    small = ndimage.gaussian_filter(small, sigma / 4, mode="nearest")
    y0, y1, ty = _lerp4(yy, small.shape[0], frame[0], frame[2])
    x0, x1, tx = _lerp4(xx, small.shape[1], frame[1], frame[3])
    top = small[y0, x0] * (1 - tx) + small[y0, x1] * tx
    bot = small[y1, x0] * (1 - tx) + small[y1, x1] * tx
    return (top * (1 - ty) + bot * ty).astype(np.float32)


def _lerp4(
    i: np.ndarray, n_small: int, start: int, n_full: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear upsampling of a crop's 4:1 reduction (``n_small`` long; the crop starts at px
    ``start``, a multiple of 4, of an image ``n_full`` long) to its px ``i``: the two source
    px and the weight of the second. The source position is PIL's resize of the whole
    image's reduction to the whole image, (x + 0.5) · (its reduction's length / n_full) − 0.5,
    clamped: the geometry the classifier was trained on, whatever the crop."""
    full_small = -(-n_full // 4)
    f = np.clip((i + start + 0.5) * (full_small / n_full) - 0.5, 0, full_small - 1)
    f = np.clip(f - start // 4, 0, n_small - 1)
    i0 = np.minimum(f.astype(np.int64), max(n_small - 2, 0))
    return i0, np.minimum(i0 + 1, n_small - 1), (f - i0).astype(np.float32)


def tissue_reference(od: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """The slide's own tissue OD (median per channel; :data:`REF_OD` without tissue)."""
    sample = od[tissue][::7]  # a subsample is enough for a median
    return np.median(sample, axis=0) if len(sample) > 50 else np.asarray(REF_OD, np.float32)


def tissue_reference_rgb(rgb: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """:func:`tissue_reference` of ``optical_density(rgb)``, the OD computed on the sampled
    pixels only (the same numbers: OD is per pixel)."""
    idx = np.flatnonzero(tissue)[::7]  # (2-D nonzero is ~10× slower)
    sample = np.ascontiguousarray(rgb).reshape(-1, 3)[idx]
    if len(sample) <= 50:
        return np.asarray(REF_OD, np.float32)
    return np.median(optical_density(sample), axis=0)


def _smooth(f: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian of ``sigma`` px, computed at half resolution and upsampled (nearest)."""
    h, w = f.shape
    if min(h, w) < 8:
        return ndimage.gaussian_filter(f, sigma, mode="nearest")
    small = _smooth_small(f, sigma)
    out = np.empty((h, w), small.dtype)
    hh, ww = 2 * small.shape[0], 2 * small.shape[1]
    for dy in (0, 1):
        for dx in (0, 1):
            out[dy:hh:2, dx:ww:2] = small
    if hh < h:
        out[hh:, :ww] = out[hh - 1 : hh, :ww]
    if ww < w:
        out[:, ww:] = out[:, ww - 1 : ww]
    return out


def _smooth_wide(
    f: np.ndarray, sigma: float, frame: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Gaussian of ``sigma`` px, computed on a 4:1 box reduction and upsampled (bilinear, on
    the whole thumbnail's geometry: ``frame`` of :func:`pixel_features`)."""
    from PIL import Image

    h, w = f.shape
    if min(h, w) < 16:
        return ndimage.gaussian_filter(f, sigma, mode="nearest").astype(np.float32)
    frame = frame or (0, 0, h, w)
    small = np.asarray(Image.fromarray(f.astype(np.float32), mode="F").reduce(4))
    small = ndimage.gaussian_filter(small, sigma / 4, mode="nearest")
    y0, y1, ty = _lerp4(np.arange(h), small.shape[0], frame[0], frame[2])
    x0, x1, tx = _lerp4(np.arange(w), small.shape[1], frame[1], frame[3])
    rows = small[y0] * (1 - ty)[:, None] + small[y1] * ty[:, None]
    return (rows[:, x0] * (1 - tx) + rows[:, x1] * tx).astype(np.float32)


def _one_blas_thread() -> Any:
    """threadpoolctl's limit to one BLAS thread when it is installed, else nothing."""
    ctl = _blas_controller()
    if ctl is None:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return ctl.limit(limits=1, user_api="blas")


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's controller, made once: making one looks up every loaded library
    (~0.6 ms, on each of the classifier's calls before)."""
    try:
        from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()


@dataclass(frozen=True)
class PixelMLP:
    """A one-hidden-layer MLP over standardised :func:`pixel_features` (numpy forward)."""

    mean: np.ndarray
    std: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    classes: tuple[str, ...]
    training: dict[str, Any]
    #: the :func:`pixel_features` version it was trained on
    features: int = 1

    def proba(self, x: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """rows×cols×C class probabilities of rows×cols×F features (only at ``where``, if
        given: elsewhere "clean" with probability 1)."""
        sh = x.shape[:-1]
        if where is not None:
            out = np.zeros((*sh, len(self.classes)), np.float32)
            out[..., 0] = 1.0
            if where.any():
                out[where] = self.proba(x[where])
            return out
        # standardisation folded into the first layer: one matmul
        w1 = (self.w1 / self.std[:, None]).astype(np.float32)
        b1 = (self.b1 - (self.mean / self.std) @ self.w1).astype(np.float32)
        with _one_blas_thread():  # these small matmuls only lose to BLAS threads spin-waiting
            h = x.reshape(-1, x.shape[-1]) @ w1
            h += b1  # (in place: the hidden layer is the largest array here)
            np.maximum(h, 0, out=h)
            o = h @ self.w2.astype(np.float32)
            o += self.b2.astype(np.float32)
        # softmax class by class (C is small), on contiguous rows of the C×N transpose
        cols = np.ascontiguousarray(o.T)
        top = cols[0]
        for c in cols[1:]:
            top = np.maximum(top, c)
        e = np.exp(cols - top)
        tot = e[0]
        for c in e[1:]:
            tot = tot + c
        e /= tot
        return np.ascontiguousarray(e.T).reshape(*sh, -1)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "qc-pixel-mlp/1",
            "features": self.features,
            "classes": list(self.classes),
            "training": self.training,
            **{
                k: np.asarray(getattr(self, k)).round(6).tolist()
                for k in ("mean", "std", "w1", "b1", "w2", "b2")
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PixelMLP:
        arr = {k: np.asarray(d[k], np.float32) for k in ("mean", "std", "w1", "b1", "w2", "b2")}
        return cls(
            classes=tuple(d["classes"]),
            training=d.get("training", {}),
            features=int(d.get("features", 1)),
            **arr,
        )


def load_pixel_model(path: str | Path | None = None) -> PixelMLP:
    """The pixel classifier in ``path`` (default: the bundled ``qc-v2``, read once per process:
    it is immutable, and every slide's QC stage asks for it)."""
    return _bundled_pixel_model() if path is None else _read_pixel_model(Path(path))


@functools.cache
def _bundled_pixel_model() -> PixelMLP:
    return _read_pixel_model(_MODEL_PATH)


def _read_pixel_model(path: Path) -> PixelMLP:
    return PixelMLP.from_json(json.loads(path.read_text()))
