"""The optical density of pen ink over tissue, measured where a mark's edge crosses tissue.

Marker ink is a dye: in optical density (OD = −log of the transmitted fraction, per channel)
it adds to whatever lies under it. Where a mark's edge crosses tissue, the tissue runs on under
the ink, so the mean OD just inside the edge minus the mean just outside is the ink's own OD
(:func:`edge_steps`; rings 64–160 µm from the edge, past the mark's soft rim). Marks of
different colours overlap and touch, so the ink mask is not one ink: the steps are grouped by
colour (k-means, at most :data:`MAX_INKS` inks), each group's steps are spread over the ink
with a wide normalised Gaussian (markers are uneven), and each ink pixel takes the group — or
the sum of two, where marks overlap — that leaves the most tissue-like OD under it (the
Mahalanobis distance to the slide's own tissue OD outside the ink, negative OD penalised;
labels smoothed by a 7×7 majority). Measured on painted mosaics (19 slides, the painted mask):
mean |OD error| of the un-inked tissue 0.17 with one field per connected mark, 0.12 so.

A mark can also behave like paint rather than a dye: an image editor's translucent layer
mixes the ink's colour over the pixels (``out = (1 − α)·rgb + α·ink``) and flattens the tissue
under it by 1 − α, where a dye dims its light and its fine structure alike. At the same edge
rings, a dye's tissue keeps the share of its texture that it keeps of its light; paint keeps
less. :func:`paint_opacity` tells them apart and measures paint's opacity, so that the tissue
under it, flattened, is not taken for glass (:func:`idcmap.pipeline.ink.ink_over_tissue`).

Used by :mod:`idcmap.pipeline.qc`, which takes the field off the pixels
(:mod:`idcmap.pipeline.ink`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from idcmap.pipeline.ink import texture

__all__ = ["MAX_INKS", "PAINT_RATIO", "edge_steps", "ink_field", "paint_opacity"]

#: The rings either side of a mark's edge whose mean OD difference is the ink's OD (µm from
#: the edge): past the soft rim of the mark (measured: rings 32–128 µm gave 80 % of the ink's
#: OD on painted marks, 64–160 µm 95–100 %).
RING_UM = (64.0, 160.0)
#: Sigma of the local means along the edge (µm).
STEP_SMOOTH_UM = 64.0
#: The steps measured along the edge are spread inside the mark with this sigma (µm).
SPREAD_UM = 320.0
#: Fewer edge px over tissue than this: no field (the ink lies on glass).
MIN_EDGE_PX = 5
#: At most this many inks (colours/strengths) per slide; groups of steps closer than
#: :data:`MERGE_OD` are one ink.
MAX_INKS = 4
MERGE_OD = 0.15
MIN_INK_SHARE = 0.05
#: Weight of the distance prior: an ink is likelier where its own edge is near (−log of
#: how much of the edge's spread reaches the px, capped at 1).
NEAR_WEIGHT = 1.0
#: Penalty weight of negative OD left under a candidate ink (per 0.05 OD, squared).
NEGATIVE_PENALTY = 4.0
#: The ink is paint, not a dye, when the tissue under its edges keeps less than this share of
#: the texture it would keep as a dye: the median over the edge of (texture ratio / light
#: ratio), inner ring against outer (:func:`paint_opacity`). Measured on the battery's marks
#: (4 mosaics × 3 seeds, thumbnails): dye 0.87–1.39; paint 0.36–0.76, and ~0.9 for black
#: paint, which dims like a dye.
PAINT_RATIO = 0.8
#: A paint's opacity (1 − the texture ratio) is kept within this range.
PAINT_OPACITY = (0.05, 0.9)


def edge_steps(
    od: np.ndarray, ink: np.ndarray, tissue: np.ndarray, mpp: float
) -> tuple[np.ndarray, np.ndarray]:
    """The ink's edge over tissue and its OD step there: (bool rows×cols edge px, float32
    N×3 steps, one per edge px in C order)."""
    edge, ring_means = _rings(ink, tissue, mpp)
    if edge.sum() < MIN_EDGE_PX:
        return np.zeros(ink.shape, bool), np.zeros((0, 3), np.float32)
    steps = np.empty((int(edge.sum()), 3), np.float32)
    for c in range(3):
        m_in, m_out = ring_means(od[..., c])
        steps[:, c] = (m_in - m_out)[edge]
    return edge, steps


def _rings(
    ink: np.ndarray, tissue: np.ndarray, mpp: float
) -> tuple[np.ndarray, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    """The ink's edge px over tissue, and a function that gives a map's local means along it:
    (inner ring, outer ring), rows×cols (:data:`RING_UM`, :data:`STEP_SMOOTH_UM`)."""
    d_in = ndimage.distance_transform_edt(ink)
    d_out = ndimage.distance_transform_edt(~ink)
    r0, r1 = RING_UM[0] / mpp, RING_UM[1] / mpp
    outer = ~ink & tissue & (d_out >= r0) & (d_out <= r1)
    inner = ink & (d_in >= r0) & (d_in <= r1)
    s = STEP_SMOOTH_UM / mpp
    w_out = ndimage.gaussian_filter(outer.astype(np.float32), s)
    w_in = ndimage.gaussian_filter(inner.astype(np.float32), s)
    edge = ink & (d_in <= 1.5) & (w_out > 0.05) & (w_in > 0.05)

    def ring_means(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m_in = ndimage.gaussian_filter(x * inner, s) / np.maximum(w_in, 1e-6)
        m_out = ndimage.gaussian_filter(x * outer, s) / np.maximum(w_out, 1e-6)
        return m_in, m_out

    return edge, ring_means


def _kmeans(x: np.ndarray, k: int, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Centres and labels; deterministic (farthest-point start)."""
    centres = [x[np.argmax(((x - x.mean(0)) ** 2).sum(1))]]
    for _ in range(1, k):
        d = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[np.argmax(d)])
    c = np.asarray(centres, np.float64)
    labels = np.zeros(len(x), np.int64)
    for _ in range(iterations):
        labels = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (labels == j).any():
                c[j] = x[labels == j].mean(0)
    return c, labels


def _inks(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group the steps into inks: the most groups (≤ :data:`MAX_INKS`) whose centres are all
    at least :data:`MERGE_OD` apart and that each hold at least :data:`MIN_INK_SHARE` of the
    edge (a few odd steps, where the tissue differs across the edge, are not an ink)."""
    x = steps.astype(np.float64)
    best = (x.mean(0, keepdims=True), np.zeros(len(x), np.int64))
    for k in range(2, min(MAX_INKS, len(x)) + 1):
        c, labels = _kmeans(x, k)
        d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(k) * 1e9
        sizes = np.bincount(labels, minlength=k)
        if d.min() < MERGE_OD or sizes.min() < max(MIN_INK_SHARE * len(x), 4 * MIN_EDGE_PX):
            break
        best = (c, labels)
    return best


def _spread(
    mask_px: tuple[np.ndarray, np.ndarray],
    values: np.ndarray,
    fallback: np.ndarray,
    shape: tuple[int, int],
    sigma_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """float32 rows×cols×3: ``values`` (N×3, at the N px ``mask_px``) spread by a normalised
    Gaussian of ``sigma_px``, ``fallback`` (3) where no value reaches; and rows×cols, how
    much of them reaches each px (the Gaussian's sum, in px). Computed on a 4:1 grid and
    upsampled (bilinear): the result is smooth, and a wide Gaussian at full resolution is
    slow."""

    h, w = shape
    k = 4 if sigma_px >= 8 and min(h, w) >= 16 else 1
    hs, ws = -(-h // k), -(-w // k)
    ys, xs = mask_px[0] // k, mask_px[1] // k
    den = np.zeros((hs, ws), np.float64)
    np.add.at(den, (ys, xs), 1.0)
    den = ndimage.gaussian_filter(den, sigma_px / k)
    out = np.empty((h, w, 3), np.float32)
    support = _upsample(den.astype(np.float32) * k * k, k, h, w)
    for ch in range(3):
        num = np.zeros((hs, ws), np.float64)
        np.add.at(num, (ys, xs), values[:, ch])
        num = ndimage.gaussian_filter(num, sigma_px / k)
        small = np.where(den > 1e-3, num / np.maximum(den, 1e-9), fallback[ch]).astype(np.float32)
        out[..., ch] = _upsample(small, k, h, w)
    return out, support


def _upsample(small: np.ndarray, k: int, h: int, w: int) -> np.ndarray:
    from PIL import Image

    if k == 1:
        return small
    big = Image.fromarray(small, mode="F").resize(
        (small.shape[1] * k, small.shape[0] * k), Image.Resampling.BILINEAR
    )
    return np.asarray(big)[:h, :w]


def ink_field(rgb: np.ndarray, ink: np.ndarray, tissue: np.ndarray, mpp: float) -> np.ndarray:
    """float32 rows×cols×3: the ink's OD at each pixel of ``ink`` (0 elsewhere; see the module
    doc). All 0 when the ink never crosses ``tissue`` (it lies on glass).

    Args:
        rgb: uint8 rows×cols×3 thumbnail (~16 µm/px).
        ink: bool rows×cols, the ink found.
        tissue: bool rows×cols, tissue outside the ink (the tissue stage's mask).
        mpp: µm per thumbnail px.
    """
    out = np.zeros((*ink.shape, 3), np.float32)
    if not ink.any():
        return out
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    edge, steps = edge_steps(od, ink, tissue, mpp)
    if not len(steps):
        return out
    centres, labels = _inks(steps)
    px = np.nonzero(edge)
    spread = SPREAD_UM / mpp
    fields, near = [], []
    for j, c in enumerate(centres):
        sel = labels == j
        f, support = _spread((px[0][sel], px[1][sel]), steps[sel], c, ink.shape, spread)
        fields.append(np.maximum(f, 0.0))
        near.append(-np.log(np.clip(support[ink], 1e-3, 1.0)))  # 0 where its edge is near
    k = len(fields)
    cands = [(j,) for j in range(k)] + [(a, b) for a in range(k) for b in range(a + 1, k)]
    # the slide's own tissue OD, outside the ink: what is left under the right ink looks like it
    plain = tissue & ~ink & (ndimage.distance_transform_edt(~ink) > 3)
    sample = od[plain][::3] if plain.sum() > 50 else od[~ink][::3]
    mu = sample.mean(0)
    inv = np.linalg.inv(np.cov(sample.T) + np.eye(3) * 1e-3).astype(np.float32)
    low = np.stack([ndimage.gaussian_filter(od[..., ch], 2.0) for ch in range(3)], -1)[ink]
    scores = np.empty((len(cands), len(low)), np.float32)
    for i, cand in enumerate(cands):
        v = sum(fields[j][ink] for j in cand)
        rest = low - v
        r = rest - mu
        scores[i] = np.einsum("ni,ij,nj->n", r, inv, r)
        scores[i] += NEGATIVE_PENALTY * ((np.minimum(rest, 0) / 0.05) ** 2).sum(-1)
        scores[i] += NEAR_WEIGHT * np.max([near[j] for j in cand], axis=0)
    pick = np.full(ink.shape, -1, np.int64)
    pick[ink] = scores.argmin(0)
    ys, xs = np.nonzero(ink)
    box = (slice(max(ys.min() - 4, 0), ys.max() + 5), slice(max(xs.min() - 4, 0), xs.max() + 5))
    votes = np.stack(
        [ndimage.uniform_filter((pick[box] == i).astype(np.float32), 7) for i in range(len(cands))]
    )
    choice = np.full(ink.shape, -1, np.int64)
    choice[box] = votes.argmax(0)
    for i, cand in enumerate(cands):
        m = ink & (choice == i)
        out[m] = sum(fields[j][m] for j in cand)
    return out


def paint_opacity(
    rgb: np.ndarray, ink: np.ndarray, tissue: np.ndarray, mpp: float
) -> np.ndarray | None:
    """float32 rows×cols: the opacity of ink that behaves like paint (0 off the ink; see the
    module doc), or None when it behaves like a dye (the usual case) or never crosses
    ``tissue``. Each edge px's opacity is 1 − its texture ratio (inner ring / outer ring),
    spread over the ink as :func:`ink_field` spreads its steps.

    Args:
        rgb: uint8 rows×cols×3 thumbnail (~16 µm/px).
        ink: bool rows×cols, the ink found.
        tissue: bool rows×cols, tissue outside the ink.
        mpp: µm per thumbnail px.
    """
    if not ink.any():
        return None
    edge, ring_means = _rings(ink, tissue, mpp)
    if edge.sum() < MIN_EDGE_PX:
        return None
    light = rgb[..., 0].astype(np.float32) + rgb[..., 1] + rgb[..., 2]
    t_in, t_out = ring_means(texture(rgb))
    l_in, l_out = ring_means(light)
    tex_ratio = (t_in / np.maximum(t_out, 1e-3))[edge]
    light_ratio = (l_in / np.maximum(l_out, 1e-3))[edge]
    if float(np.median(tex_ratio / np.maximum(light_ratio, 1e-3))) >= PAINT_RATIO:
        return None
    opacity = np.clip(1.0 - tex_ratio, *PAINT_OPACITY)
    ys, xs = np.nonzero(edge)
    spread, _ = _spread(
        (ys, xs),
        np.repeat(opacity[:, None], 3, axis=1),
        np.full(3, np.median(opacity)),
        ink.shape,
        SPREAD_UM / mpp,
    )
    return np.where(ink, spread[..., 0], 0.0).astype(np.float32)
