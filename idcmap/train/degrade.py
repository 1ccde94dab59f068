"""Realistic degradations of uint8 RGB images: scanner, compression and laboratory shifts.

Standalone (numpy, Pillow, scikit-image only): every function takes a ``uint8`` array of shape
``H×W×3`` (RGB; most also accept leading batch dimensions ``…×H×W×3``) and returns a new
``uint8`` array of the same shape; nothing is modified in place and nothing is random except
:class:`ScannerAugment`, which is driven by the ``numpy.random.Generator`` it is given.

Units:

* JPEG ``quality`` is Pillow's 1–95 scale; ``subsampling`` is the chroma subsampling of the
  YCbCr encoding: ``"4:4:4"`` (full-resolution colour), ``"4:2:2"`` (chroma halved
  horizontally), ``"4:2:0"`` (halved both ways, what most scanners' JPEG levels store).
* White balance ``gains`` multiply the linear 0–255 value of R, G, B (1 = unchanged).
* HED shifts are in scikit-image's stain units (:func:`skimage.color.rgb2hed`: optical density
  divided by ``ln(1e6)`` ≈ 13.8; 0.01 adds ≈ 0.14 natural-log OD of that stain); scales multiply
  the stain's concentration.
* Reinhard colour transfer works in Ruderman's lαβ space (Reinhard et al. 2001); ``alpha`` is the
  strength (0 = unchanged, 1 = the target's mean and standard deviation per channel).
* Blur ``sigma_px`` is the standard deviation of the Gaussian in pixels of the input.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from idcmap.train.artefacts import ink_over_patch

__all__ = [
    "SUBSAMPLING",
    "LabStats",
    "ScannerAugment",
    "blur",
    "hed_shift",
    "jpeg",
    "lab_stats",
    "lab_to_rgb",
    "load_refs",
    "od_offset",
    "reinhard",
    "reinhard_to",
    "rgb_to_lab",
    "white_balance",
]

#: Pillow's ``subsampling=`` code of each chroma subsampling.
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}

# Ruifrok & Johnston stain vectors as scikit-image uses them (rows: H, E, DAB OD in RGB)
from skimage.color import hed_from_rgb as _HED_FROM_RGB  # noqa: E402
from skimage.color import rgb_from_hed as _RGB_FROM_HED  # noqa: E402

_LOG_ADJUST = np.log(1e-6)  # scikit-image's normalisation of optical density

# Reinhard et al. 2001: RGB -> LMS, log10, -> lαβ
_LMS_FROM_RGB = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
_RGB_FROM_LMS = np.linalg.inv(_LMS_FROM_RGB)
_LAB_FROM_LOGLMS = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64
)
_LOGLMS_FROM_LAB = np.linalg.inv(_LAB_FROM_LOGLMS)


def _check(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim < 3:
        raise TypeError("expected a uint8 array of shape …×H×W×3")
    if img.shape[-1] != 3:
        raise ValueError(f"expected 3 channels (RGB) in the last axis, got shape {img.shape}")
    return img


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---- compression ---------------------------------------------------------------------------------


def jpeg(img: np.ndarray, quality: int = 80, subsampling: str = "4:2:0") -> np.ndarray:
    """Encode ``img`` (H×W×3) as a baseline YCbCr JPEG with Pillow and decode it again.

    ``quality``: Pillow's 1–95; ``subsampling``: ``"4:4:4"``, ``"4:2:2"`` or ``"4:2:0"``.
    """
    _check(img)
    if img.ndim != 3:
        raise ValueError("jpeg() takes one H×W×3 image")
    if subsampling not in SUBSAMPLING:
        raise ValueError(f"subsampling={subsampling!r}: use one of {list(SUBSAMPLING)}")
    if not 1 <= int(quality) <= 95:
        raise ValueError(f"quality={quality} must be in 1..95")
    buf = io.BytesIO()
    Image.fromarray(img).save(
        buf, format="JPEG", quality=int(quality), subsampling=SUBSAMPLING[subsampling]
    )
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()


# ---- colour --------------------------------------------------------------------------------------


def white_balance(img: np.ndarray, gains: Sequence[float] | np.ndarray) -> np.ndarray:
    """Multiply R, G, B by ``gains`` (linear, on 0–255; e.g. ``(0.93, 0.95, 1.0)`` is bluish).

    ``gains`` of shape (3,) or broadcastable to ``img`` (e.g. N×1×1×3 for a batch)."""
    _check(img)
    g = np.asarray(gains, dtype=np.float32)
    if g.shape[-1] != 3:
        raise ValueError("gains need 3 values (R, G, B)")
    return _to_u8(img.astype(np.float32) * g)


def od_offset(img: np.ndarray, od: Sequence[float] | np.ndarray) -> np.ndarray:
    """Add ``od`` (natural-log optical density per R, G, B channel) to every pixel: a uniform
    absorber over the image (positive) or its over-removal (negative, brighter, clipped at 255).

    What un-inking leaves under a marker: the ink's OD field is estimated, smooth over a few
    hundred µm, so within a patch its error is one offset, of either sign, in the ink's colour.
    ``od`` of shape (3,) or broadcastable to ``img`` (e.g. N×1×1×3 for a batch)."""
    _check(img)
    d = np.asarray(od, dtype=np.float32)
    if d.shape[-1] != 3:
        raise ValueError("od needs 3 values (R, G, B)")
    return _to_u8(img.astype(np.float32) * np.exp(-d))


def hed_shift(
    img: np.ndarray,
    h: float | np.ndarray = 0.0,
    e: float | np.ndarray = 0.0,
    h_scale: float | np.ndarray = 1.0,
    e_scale: float | np.ndarray = 1.0,
) -> np.ndarray:
    """Change the haematoxylin / eosin content (colour deconvolution, Ruifrok & Johnston).

    Each pixel's stain concentrations (scikit-image units, see the module) become
    ``c_H * h_scale + h`` and ``c_E * e_scale + e``; DAB is kept. Parameters may be arrays
    broadcastable to ``img.shape[:-3] + (1, 1)`` for per-image values in a batch. Unlike
    ``skimage.color.rgb2hed`` + ``hed2rgb`` no concentration is clipped at 0, so zero shift and
    unit scale give back the image (to rounding)."""
    _check(img)
    rgb = np.maximum(img.astype(np.float32) / 255.0, 1e-6)
    m_in = (_HED_FROM_RGB / _LOG_ADJUST).astype(np.float32)
    stains = (np.log(rgb).reshape(-1, 3) @ m_in).reshape(img.shape)
    lead = (*img.shape[:-3], 1, 1)

    def arr(v: float | np.ndarray) -> np.ndarray:
        a = np.asarray(v, dtype=np.float32)
        return np.broadcast_to(a, lead) if a.ndim else a

    stains[..., 0] = stains[..., 0] * arr(h_scale) + arr(h)
    stains[..., 1] = stains[..., 1] * arr(e_scale) + arr(e)
    m_out = (_RGB_FROM_HED * _LOG_ADJUST).astype(np.float32)
    out = np.exp((stains.reshape(-1, 3) @ m_out).reshape(img.shape))
    return _to_u8(out * 255.0)


def rgb_to_lab(img: np.ndarray) -> np.ndarray:
    """Ruderman lαβ of uint8 RGB (float32, same shape); RGB values are floored at 1/255."""
    rgb = np.maximum(img.astype(np.float32), 1.0).reshape(-1, 3) / 255.0
    lms = np.maximum(rgb @ _LMS_FROM_RGB.T.astype(np.float32), 1e-6)
    return (np.log10(lms) @ _LAB_FROM_LOGLMS.T.astype(np.float32)).reshape(img.shape)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_lab`, rounded and clipped to uint8."""
    flat = lab.reshape(-1, 3)
    lms = 10.0 ** (flat @ _LOGLMS_FROM_LAB.T.astype(flat.dtype))
    return _to_u8((lms @ _RGB_FROM_LMS.T.astype(flat.dtype) * 255.0).reshape(lab.shape))


@dataclass(frozen=True)
class LabStats:
    """Mean and standard deviation of l, α, β over an image's tissue pixels."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def tissue_pixels(img: np.ndarray, max_mean: float = 220.0) -> np.ndarray:
    """Boolean mask of pixels darker than glass (mean of R, G, B < ``max_mean`` on 0–255)."""
    return img.astype(np.float32).mean(-1) < max_mean


def lab_stats(img: np.ndarray, tissue_only: bool = True) -> LabStats:
    """lαβ statistics of ``img`` (any leading shape), over tissue pixels by default (all
    pixels if fewer than 100 are tissue)."""
    _check(img)
    lab = rgb_to_lab(img).reshape(-1, 3)
    if tissue_only:
        m = tissue_pixels(img).reshape(-1)
        if m.sum() >= 100:
            lab = lab[m]
    mu, sd = lab.mean(0), np.maximum(lab.std(0), 1e-6)
    return LabStats(tuple(float(v) for v in mu), tuple(float(v) for v in sd))  # type: ignore[arg-type]


def reinhard(
    img: np.ndarray,
    source: LabStats,
    target: LabStats,
    alpha: float | np.ndarray = 1.0,
) -> np.ndarray:
    """Reinhard colour transfer: map lαβ channel statistics ``source`` → ``target`` and blend
    with strength ``alpha`` (0: unchanged, 1: full transfer; an array broadcastable to
    ``img.shape[:-3] + (1, 1, 1)`` for a batch). The map is global (the same for every pixel,
    glass included), as a different lab's stain and camera would be."""
    _check(img)
    lab = rgb_to_lab(img)
    mu_s, sd_s = np.asarray(source.mean), np.asarray(source.std)
    mu_t, sd_t = np.asarray(target.mean), np.asarray(target.std)
    a = np.asarray(alpha, dtype=np.float64)
    return _affine_lab(img, lab, sd_t / sd_s, mu_t - mu_s * sd_t / sd_s, a)


def _affine_lab(
    img: np.ndarray, lab: np.ndarray, scale: np.ndarray, offset: np.ndarray, alpha: np.ndarray
) -> np.ndarray:
    """lab → lab + alpha·(lab·scale + offset − lab), back to RGB; arrays broadcast over lab."""
    k = (1 + alpha * (scale - 1)).astype(np.float32)
    c = (alpha * offset).astype(np.float32)
    return lab_to_rgb(lab * k + c)


def reinhard_to(img: np.ndarray, reference: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """:func:`reinhard` from ``img``'s own tissue statistics to ``reference``'s."""
    return reinhard(img, lab_stats(img), lab_stats(reference), alpha)


# ---- optics --------------------------------------------------------------------------------------


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur (in H and W) of an …×H×W×3 image, standard deviation ``sigma_px`` pixels
    (0: a copy)."""
    _check(img)
    if sigma_px < 0:
        raise ValueError("sigma_px must be ≥ 0")
    if sigma_px == 0:
        return img.copy()
    from scipy.ndimage import gaussian_filter

    sig = [0.0] * (img.ndim - 3) + [sigma_px, sigma_px, 0.0]
    return _to_u8(gaussian_filter(img.astype(np.float32), sigma=sig, mode="nearest"))


# ---- random augmentation -------------------------------------------------------------------------


def load_refs(paths: Sequence[str | Path]) -> dict[str, LabStats]:
    """lαβ tissue statistics of reference images (e.g. ``shared/data/stain-refs/*.png``)."""
    out = {}
    for p in paths:
        with Image.open(p) as im:
            out[Path(p).stem] = lab_stats(np.asarray(im.convert("RGB")))
    return out


@dataclass
class ScannerAugment:
    """Random "another lab, another scanner" degradation of a batch of uint8 N×H×W×3 patches.

    In the order the physics applies them, each with its own probability per image: marker ink
    over the patch (:func:`idcmap.train.artefacts.ink_over_patch`; off unless ``p_ink`` > 0), stain
    amount (HED scale ``1 ± hed_scale`` and shift ``± hed_shift`` per stain), colour transfer to
    one of ``refs`` at strength U(0, ``transfer_max``) from ``source`` (the training data's
    lαβ statistics), an OD offset of a random direction and size U(0, ``od_max``) (what
    un-inking leaves: :func:`od_offset`; off unless ``p_od`` > 0), white balance gains
    U(``gain_range``) per channel, Gaussian blur U(0, ``blur_max``) px, and last a JPEG
    re-encode at quality U(``quality_range``) with the chroma subsampling drawn from
    ``subsampling_p``. Deterministic given the generator.
    """

    source: LabStats | None = None
    refs: Sequence[LabStats] = ()
    p_hed: float = 0.5
    hed_scale: float = 0.10
    hed_shift: float = 0.012
    p_transfer: float = 0.3
    transfer_max: float = 0.8
    p_od: float = 0.0
    od_max: float = 0.2
    p_gain: float = 0.5
    gain_range: tuple[float, float] = (0.91, 1.05)
    p_ink: float = 0.0
    p_blur: float = 0.15
    blur_max: float = 0.8
    p_jpeg: float = 0.8
    quality_range: tuple[int, int] = (60, 95)
    subsampling_p: dict[str, float] = field(
        default_factory=lambda: {"4:2:0": 0.6, "4:2:2": 0.25, "4:4:4": 0.15}
    )

    def fit(self, patches: np.ndarray) -> ScannerAugment:
        """A copy with ``source`` measured on (every 10th of) the training patches."""
        import dataclasses

        return dataclasses.replace(self, source=lab_stats(patches[::10]))

    def __call__(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _check(batch)
        if batch.ndim != 4:
            raise ValueError("ScannerAugment takes a batch N×H×W×3")
        x = batch.copy()
        n = len(x)
        if n == 0:
            return x
        # marker ink on the glass, scanned with the rest (no draw when off, as p_od)
        if self.p_ink > 0:
            for i in np.flatnonzero(rng.random(n) < self.p_ink):
                x[i] = ink_over_patch(x[i], rng)
        # stain amount
        sel = np.flatnonzero(rng.random(n) < self.p_hed)
        if len(sel):
            k = len(sel)
            sc = 1 + rng.uniform(-self.hed_scale, self.hed_scale, (k, 2))
            sh = rng.uniform(-self.hed_shift, self.hed_shift, (k, 2))
            r = (k, 1, 1)
            x[sel] = hed_shift(
                x[sel],
                sh[:, 0].reshape(r),
                sh[:, 1].reshape(r),
                sc[:, 0].reshape(r),
                sc[:, 1].reshape(r),
            )
        # colour transfer to another lab's statistics
        if self.refs and self.source is not None:
            sel = np.flatnonzero(rng.random(n) < self.p_transfer)
            if len(sel):
                k = len(sel)
                mu_s, sd_s = np.asarray(self.source.mean), np.asarray(self.source.std)
                pick = rng.integers(len(self.refs), size=k)
                mu_t = np.array([self.refs[j].mean for j in pick]).reshape(k, 1, 1, 3)
                sd_t = np.array([self.refs[j].std for j in pick]).reshape(k, 1, 1, 3)
                a = rng.uniform(0, self.transfer_max, (k, 1, 1, 1))
                scale = sd_t / sd_s
                x[sel] = _affine_lab(x[sel], rgb_to_lab(x[sel]), scale, mu_t - mu_s * scale, a)
        # a uniform absorber, or its over-removal, in any colour (no draw when off: the
        # generator's stream, and so earlier recipes, stay as they were)
        sel = np.flatnonzero(rng.random(n) < self.p_od) if self.p_od > 0 else np.empty(0, int)
        if len(sel):
            k = len(sel)
            u = rng.normal(size=(k, 3))
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            d = u * rng.uniform(0, self.od_max, (k, 1))
            x[sel] = od_offset(x[sel], d.reshape(k, 1, 1, 3))
        # scanner white balance
        sel = np.flatnonzero(rng.random(n) < self.p_gain)
        if len(sel):
            g = rng.uniform(*self.gain_range, (len(sel), 1, 1, 3))
            x[sel] = white_balance(x[sel], g)
        # optics
        sel = np.flatnonzero(rng.random(n) < self.p_blur)
        if len(sel):  # one sigma per batch: a vectorised filter
            x[sel] = blur(x[sel], float(rng.uniform(0.2, self.blur_max)))
        # compression, last
        names = list(self.subsampling_p)
        probs = np.array([self.subsampling_p[s] for s in names], dtype=np.float64)
        probs /= probs.sum()
        lo, hi = self.quality_range
        for i in np.flatnonzero(rng.random(n) < self.p_jpeg):
            sub = names[int(rng.choice(len(names), p=probs))]
            x[i] = jpeg(x[i], int(rng.integers(lo, hi + 1)), sub)
        return x
