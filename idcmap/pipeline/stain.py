"""Per-slide stain normalisation: map a slide's colour onto the model's training colour.

A model file may carry a ``stain_norm`` section (:attr:`ModelConfig.stain_norm`): a method and
the reference statistics of its training slides. The pipeline then measures the same statistics
once per slide on the tissue pass's thumbnail (~16 µm/px, already read, so this costs nothing
extra), builds the map that takes the slide's statistics to the reference (:class:`StainMap`)
and applies it to every decoded block before the network. A model without the section runs
exactly as before.

Methods. OD is the optical density ``-ln(max(I, 1) / 255)`` of each RGB channel; tissue
statistics are over the tissue pixels of the thumbnail.

* ``"od"``: mean and standard deviation of each channel's tissue OD; the map is an affine per
  channel in OD, i.e. a gain and a gamma per RGB channel, applied as one 256-entry table per
  channel. A scanner's white balance and an even change of stain amount are offsets in OD,
  which move the mean by exactly that offset (box-averaging the thumbnail keeps a gain a gain).
* ``"od-mean"``: the same with the means only (a gain per channel).
* ``"lab"``: Reinhard et al. 2001, mean and standard deviation of Ruderman's lαβ channels.
* ``"macenko"``: Macenko et al. 2009 stain vectors (H, E) and their 99th-percentile
  concentrations; the residual direction (H × E) is kept, so nothing is thrown away.
* ``"glass"``: the colour of the slide's glass (the per-channel median of its brightest
  :data:`GLASS_TOP` of thumbnail pixels) mapped to the reference glass by a gain per channel:
  the scanner's white balance, measured where no stain is.
* ``"glass+<method>"``: the glass gain first; the tissue mask is then redrawn on the corrected
  thumbnail (a tinted glass reads as "tissue" to the saturation test) and ``<method>`` is
  measured and applied on top.

The reference is the mean of the per-slide statistics of the model's training slides, measured
by this same code (:func:`fit_reference`), so slide and reference are measured alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "GLASS_MAX_OD",
    "GLASS_MAX_SAT",
    "GLASS_MAX_SHIFT_OD",
    "GLASS_TOP",
    "METHODS",
    "MIN_TISSUE_PX",
    "StainMap",
    "StainStats",
    "balance_glass",
    "correct_glass",
    "fit_reference",
    "glass_od",
    "measure",
    "optical_density",
    "stain_map",
]

_TISSUE_METHODS = ("od", "od-mean", "lab", "macenko")
METHODS = (*_TISSUE_METHODS, "glass", *(f"glass+{m}" for m in _TISSUE_METHODS))
#: Fewer tissue pixels than this on the thumbnail: statistics are not trusted, no map.
MIN_TISSUE_PX = 200
#: The glass colour is the per-channel median of this brightest fraction of the thumbnail
#: (by mean of R, G, B): glass, and fat, which shows the glass through it.
GLASS_TOP = 0.05
#: Those pixels are glass only when their median is bright (every channel's OD ≤ this, RGB ≳ 180)
#: and grey (saturation ``(max - min) / max`` ≤ :data:`GLASS_MAX_SAT`; a white balance of ±8 %
#: gives ≤ 0.09, pale stroma ≥ 0.15): else the slide has no glass to go by and keeps its own.
GLASS_MAX_OD = 0.35
GLASS_MAX_SAT = 0.13
#: The glass gain is clamped to this OD offset per channel (a gain within 0.74–1.35).
GLASS_MAX_SHIFT_OD = 0.3
#: Standard-deviation ratios and concentration scales are clamped to [1/x, x]: a
#: slide that would need more is not H&E as the model knows it, and stretching it further only
#: amplifies noise.
MAX_SCALE = 2.0
_MACENKO_BETA = 0.15  # OD below this in any channel: too pale for the stain-vector fit
_MACENKO_PCT = 1.0  # angle percentiles (1, 99) give the extreme stain directions
_NEEDS = {
    "od": ("mean", "std"),
    "od-mean": ("mean", "std"),
    "lab": ("mean", "std"),
    "macenko": ("h", "e", "max_c"),
}


def _parts(method: str) -> tuple[bool, str | None]:
    """(glass gain first?, the tissue method or None)."""
    if method not in METHODS:
        raise ValueError(f"stain_norm method {method!r} is unknown; use one of {METHODS}")
    if method == "glass":
        return True, None
    if method.startswith("glass+"):
        return True, method[len("glass+") :]
    return False, method


@dataclass(frozen=True)
class StainStats:
    """A slide's (or the reference's) colour statistics of one method.

    ``values`` holds named vectors: ``glass`` (the glass OD, 3) for the ``glass`` methods;
    ``mean``/``std`` (3 each) for ``od``, ``od-mean`` and ``lab``; ``h``, ``e`` (unit OD
    vectors) and ``max_c`` (2) for ``macenko``."""

    method: str
    values: Mapping[str, tuple[float, ...]]
    notes: tuple[str, ...] = ()  # what the measurement could not do (summary.json)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [round(float(x), 6) for x in v] for k, v in self.values.items()}

    @classmethod
    def from_dict(cls, method: str, d: Mapping[str, Any]) -> StainStats:
        glass, tissue = _parts(method)
        need = (("glass",) if glass else ()) + (_NEEDS[tissue] if tissue else ())
        missing = [k for k in need if k not in d]
        if missing:
            raise ValueError(f"stain_norm ref of {method!r} lacks {missing}")
        values = {k: tuple(float(x) for x in d[k]) for k in need}
        if any(not np.isfinite(v).all() for v in values.values()):
            raise ValueError(f"stain_norm ref of {method!r} holds non-finite numbers")
        return cls(method, values)


_OD_LUT = (-np.log(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """float32 OD ``-ln(max(I, 1)/255)`` of uint8 RGB (same shape)."""
    return _OD_LUT[rgb]


def glass_od(rgb: np.ndarray) -> np.ndarray | None:
    """The OD (3) of the glass: per-channel median of the brightest :data:`GLASS_TOP` pixels;
    None when they do not look like glass (see :data:`GLASS_MAX_SAT`)."""
    px = np.ascontiguousarray(rgb).reshape(-1, 3)
    if len(px) == 0:
        return None
    # 0..765; a histogram finds the top fraction's floor (channel by channel: a reduction over
    # the 3-long axis is ~10x slower in numpy)
    lum = px[:, 0].astype(np.uint16)
    lum += px[:, 1]
    lum += px[:, 2]
    counts = np.bincount(lum, minlength=766)[::-1].cumsum()
    floor = 765 - int(np.searchsorted(counts, max(1, round(len(px) * GLASS_TOP))))
    # (take along the axis: ~4x faster than indexing the rows)
    top = np.median(px.take(np.flatnonzero(lum >= floor), axis=0), axis=0)
    sat = (top.max() - top.min()) / max(float(top.max()), 1.0)
    od = optical_density(top.round().astype(np.uint8)).astype(np.float64)
    if od.max() > GLASS_MAX_OD or sat > GLASS_MAX_SAT:
        return None
    return od


def measure(
    rgb: np.ndarray,
    mask: np.ndarray,
    method: str,
    mask_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    glass_to: Sequence[float] | None = None,
) -> tuple[StainStats | None, np.ndarray]:
    """The ``method`` statistics of the thumbnail ``rgb`` (uint8 rows×cols×3) with tissue
    ``mask`` (bool rows×cols), and the tissue mask they were measured on.

    For a ``glass`` method the slide's glass is first brought to ``glass_to`` (an OD; the
    reference's glass; None: left as it is), the tissue mask redrawn from that corrected
    thumbnail by ``mask_fn`` (when given), and the tissue statistics measured on it. The
    statistics are None when the mask holds fewer than :data:`MIN_TISSUE_PX` pixels or the
    stain fit fails."""
    glass, tissue = _parts(method)
    values: dict[str, tuple[float, ...]] = {}
    notes: tuple[str, ...] = ()
    if glass:
        own = glass_od(rgb)
        if own is None:  # no glass to go by: the slide keeps its own (no gain)
            if glass_to is None:
                return None, mask
            own, notes = np.asarray(glass_to, np.float64), ("no glass found: no glass gain",)
        values["glass"] = _t(own)
        if glass_to is not None:
            rgb = _apply_lut(rgb, _lut_of(_glass_od_map(own, np.asarray(glass_to))))
        if mask_fn is not None:
            mask = mask_fn(rgb)
    if tissue is None:
        return StainStats(method, values, notes), mask
    px = rgb[mask]
    if len(px) < MIN_TISSUE_PX:
        return None, mask
    if tissue in ("od", "od-mean"):
        od = optical_density(px).astype(np.float64)
        values |= {"mean": _t(od.mean(0)), "std": _t(od.std(0))}
    elif tissue == "lab":
        lab = _rgb_to_lab(px.astype(np.float64))
        values |= {"mean": _t(lab.mean(0)), "std": _t(lab.std(0))}
    else:
        found = _macenko(optical_density(px).astype(np.float64))
        if found is None:
            return None, mask
        values |= found
    return StainStats(method, values, notes), mask


def _t(v: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in v)


def _macenko(od: np.ndarray) -> dict[str, tuple[float, ...]] | None:
    od = od[(od > _MACENKO_BETA).all(1)]
    if len(od) < MIN_TISSUE_PX:
        return None
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [2, 1]]  # the two largest eigenvectors span the H-E plane
    plane *= np.sign(plane.sum(0, keepdims=True) + 1e-12)  # positive OD directions
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [_MACENKO_PCT, 100 - _MACENKO_PCT])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)  # haematoxylin absorbs more red
    h, e = _unit(h), _unit(e)
    if abs(float(h @ e)) > 0.995:
        return None
    conc, *_ = np.linalg.lstsq(np.stack([h, e], 1), od.T, rcond=None)
    max_c = np.percentile(conc, 99, axis=1)
    if (max_c <= 0).any():
        return None
    return {"h": _t(h), "e": _t(e), "max_c": _t(max_c)}


def fit_reference(
    thumbnails: Sequence[tuple[np.ndarray, np.ndarray]],
    method: str,
    mask_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> StainStats:
    """The reference of a model from its training slides' (thumbnail, tissue mask) pairs: the
    mean of their statistics (stain vectors averaged and renormalised). For a ``glass`` method
    the glass is averaged first and each slide's tissue measured with its glass brought there,
    as :func:`stain_map` will measure a slide."""
    glass, _ = _parts(method)
    glass_to = None
    if glass:
        found_glass = [g for g in (glass_od(rgb) for rgb, _ in thumbnails) if g is not None]
        if not found_glass:
            raise ValueError("no glass on any slide to fit a glass reference on")
        glass_to = np.mean(found_glass, axis=0)
    found = [measure(rgb, m, method, mask_fn, glass_to)[0] for rgb, m in thumbnails]
    stats = [s for s in found if s is not None]
    if not stats:
        raise ValueError("no slide statistics to fit a stain reference on")
    mean = {k: np.mean([s.values[k] for s in stats], axis=0) for k in stats[0].values}
    for k in ("h", "e"):
        if k in mean:
            mean[k] = _unit(mean[k])
    return StainStats(method, {k: _t(v) for k, v in mean.items()})


# ---- the map ------------------------------------------------------------------------------------


class StainMap:
    """The per-slide colour map ``source`` statistics → ``target`` (the model's reference).

    Call it on uint8 …×3 RGB (a block, a batch of patches); it returns a new uint8 array of
    the same shape. Per-channel methods are one lookup table per channel; ``lab`` and
    ``macenko`` follow a per-channel glass table with a 3×3 map per pixel."""

    def __init__(self, source: StainStats, target: StainStats) -> None:
        if source.method != target.method:
            raise ValueError(f"stain statistics of {source.method} and {target.method}")
        self.source, self.target = source, target
        self.method = source.method
        glass, tissue = _parts(self.method)
        s, t = source.values, target.values
        od = _OD_LUT.astype(np.float64)[:, None]  # 256×1: each channel's OD per value
        if glass:
            od = _glass_od_map(np.asarray(s["glass"]), np.asarray(t["glass"]), od)  # 256×3
        self._lut: np.ndarray | None = None
        self._lab: tuple[np.ndarray, np.ndarray] | None = None
        self._od_matrix: np.ndarray | None = None
        if tissue in (None, "od", "od-mean"):
            if tissue is not None:
                scale = np.ones(3)
                if tissue == "od":
                    scale = _ratio(t["std"], s["std"])
                od = (od - np.asarray(s["mean"])) * scale + np.asarray(t["mean"])
            self._lut = _lut_of(od)
            return
        if glass:
            self._lut = _lut_of(od)
        if tissue == "lab":
            k = _ratio(t["std"], s["std"])
            c = np.asarray(t["mean"]) - np.asarray(s["mean"]) * k
            # an affine per lαβ channel is an affine map of log LMS (lαβ is linear in it)
            a = _LOGLMS_FROM_LAB @ np.diag(k) @ _LAB_FROM_LOGLMS
            self._lab = (a.T.astype(np.float32), (_LOGLMS_FROM_LAB @ c * np.log(10.0)))
        else:
            ms = np.stack([s["h"], s["e"], _unit(np.cross(s["h"], s["e"]))])
            mt = np.stack([t["h"], t["e"], _unit(np.cross(t["h"], t["e"]))])
            scale = np.diag([*_ratio(t["max_c"], s["max_c"]), 1.0])
            # row-vector OD: concentrations = od @ inv(ms); od' = conc @ scale @ mt
            self._od_matrix = (np.linalg.inv(ms) @ scale @ mt).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """What the summary records: the method and the slide's own statistics."""
        d: dict[str, Any] = {"method": self.method, "slide": self.source.to_dict()}
        if self.source.notes:
            d["notes"] = list(self.source.notes)
        return d

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
            raise ValueError(f"expected uint8 …×3 RGB, got {rgb.dtype} {rgb.shape}")
        if self._lut is not None:
            rgb = _apply_lut(rgb, self._lut)
        if self._lab is None and self._od_matrix is None:
            return rgb
        flat = rgb.reshape(-1, 3)
        if self._lab is not None:
            a, b = self._lab
            lin = np.maximum(flat.astype(np.float32), 1.0) @ (_LMS_FROM_RGB.T / 255.0)
            lms = np.exp(np.log(np.maximum(lin, 1e-6)) @ a + b.astype(np.float32))
            return _u8(lms @ (_RGB_FROM_LMS.T * 255.0)).reshape(rgb.shape)
        assert self._od_matrix is not None
        od = optical_density(flat) @ self._od_matrix
        return _u8(_from_od(od)).reshape(rgb.shape)


def correct_glass(rgb: np.ndarray, reference: StainStats) -> np.ndarray:
    """``rgb`` with its glass brought to the reference's (a gain per channel; ``rgb`` itself
    when the reference has no glass or the image none to go by): the thumbnail a ``glass``
    method's tissue mask is drawn on."""
    target = reference.values.get("glass")
    return rgb if target is None else balance_glass(rgb, target)


def balance_glass(
    rgb: np.ndarray, target_od: Sequence[float], own: np.ndarray | None = None
) -> np.ndarray:
    """``rgb`` with its glass (:func:`glass_od`, or ``own`` when measured already) brought to
    the OD ``target_od`` by a gain per channel (clamped, :data:`GLASS_MAX_SHIFT_OD`); ``rgb``
    itself when it has no glass to go by. A scanner's white balance is such a gain: this
    takes it off."""
    if own is None:
        own = glass_od(rgb)
    if own is None:
        return rgb
    return _apply_lut(rgb, _lut_of(_glass_od_map(own, np.asarray(target_od, np.float64))))


def stain_map(
    thumbnail: np.ndarray,
    mask: np.ndarray,
    reference: StainStats,
    mask_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[StainMap | None, np.ndarray]:
    """The map of one slide from its tissue thumbnail and mask (None: too little tissue), and
    the tissue mask it was measured on (redrawn by ``mask_fn`` for a ``glass`` method)."""
    glass_to = reference.values.get("glass")
    src, mask = measure(thumbnail, mask, reference.method, mask_fn, glass_to)
    return (None if src is None else StainMap(src, reference)), mask


def _ratio(t: Sequence[float], s: Sequence[float]) -> np.ndarray:
    r = np.asarray(t, np.float64) / np.maximum(np.asarray(s, np.float64), 1e-6)
    return np.clip(r, 1 / MAX_SCALE, MAX_SCALE)


def _glass_od_map(src: np.ndarray, dst: np.ndarray, od: np.ndarray | None = None) -> np.ndarray:
    """256×3 OD of each channel value (``od``: the identity) after the glass gain src → dst
    (an OD offset, clamped to a gain within [1/MAX_SCALE, MAX_SCALE])."""
    if od is None:
        od = _OD_LUT.astype(np.float64)[:, None]
    return od + np.clip(dst - src, -GLASS_MAX_SHIFT_OD, GLASS_MAX_SHIFT_OD)


def _lut_of(od: np.ndarray) -> np.ndarray:
    """3×256 uint8 table of each channel from its 256×3 mapped OD."""
    return np.ascontiguousarray(_u8(_from_od(od)).T)


def _apply_lut(rgb: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``rgb`` (uint8 …×3) through a 3×256 table per channel: Pillow's ``point`` on the px as
    rows of an image (the same bytes as ``np.take`` per channel, 2.5 against 5.6 ms per Mpx:
    the tile pass maps every block it reads)."""
    from PIL import Image

    if rgb.ndim < 3 or rgb.size == 0:  # (a flat list of px: one px per image row is slow)
        out = np.empty_like(rgb)
        for c in range(3):
            np.take(lut[c], rgb[..., c], out=out[..., c])
        return out
    rows = np.ascontiguousarray(rgb).reshape(-1, rgb.shape[-2], 3)
    mapped = Image.fromarray(rows).point(lut.reshape(-1).tolist())
    return np.array(mapped).reshape(rgb.shape)  # (a writable copy: np.asarray's is not)


def _from_od(od: np.ndarray) -> np.ndarray:
    return 255.0 * np.exp(-od)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / max(float(np.linalg.norm(v)), 1e-12)


# Reinhard et al. 2001: RGB -> LMS, log10, -> lαβ (as :mod:`idcmap.train.degrade`)
_LMS_FROM_RGB = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]],
    dtype=np.float32,
)
_RGB_FROM_LMS = np.linalg.inv(_LMS_FROM_RGB.astype(np.float64)).astype(np.float32)
_LAB_FROM_LOGLMS = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64
)
_LOGLMS_FROM_LAB = np.linalg.inv(_LAB_FROM_LOGLMS)


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Ruderman lαβ (float64 N×3) of RGB values on 0–255 (N×3), floored at 1/255."""
    lms = np.maximum(np.maximum(rgb, 1.0) / 255.0 @ _LMS_FROM_RGB.T.astype(np.float64), 1e-6)
    return np.log10(lms) @ _LAB_FROM_LOGLMS.T
