"""A seeded painter of realistic slide artefacts on an RGB image (benchmarks and tests).

Standalone (numpy, scipy, PIL). Every painter takes a uint8 rows×cols×3 RGB image at a known
µm/px and a :class:`numpy.random.Generator`, and returns the painted image and a bool mask of
what it painted (the ground truth of the QC stage, :mod:`idcmap.pipeline.qc`):

* **ink** — pathologist's marker (blue, green, black, red): a circle round a given region, a
  stroke, or dots; 0.3–1.5 mm wide. Over tissue it is translucent and multiplicative
  (``out = rgb · (1 − α + α·ink/255)``, α 0.3–0.8): a dye, as marker ink is; over glass it is
  opaque (α 0.85–0.97; ``on_glass="translucent"``: the mark's own α there too). α is
  modulated by low-frequency noise (uneven marker) and the edges are soft. ``blend="paint"``
  mixes the ink's colour over the pixels instead (``out = (1 − α)·rgb + α·ink``, an image
  editor's translucent layer): it flattens the tissue under it by 1 − α, where a dye keeps its
  contrast in optical density.
* **fold** — tissue folded over tissue: a band where the optical density is multiplied by
  1.6–2.3 (two layers), i.e. darker and more saturated; only over tissue.
* **blur** — an out-of-focus band (Gaussian blur, σ 6–16 µm) blended in with soft edges;
  labelled where it covers tissue.
* **debris** — small dark blobs (dust, pigment; 40–400 µm) and air bubbles (thin dark rims,
  0.3–1.5 mm radius, slightly brighter inside).
* **border** — a black scanner border along one or two image edges (0.2–1.5 mm).

Places (``where``): ``"idc"`` (centred in ``region``), ``"near"`` (0.3–2 mm outside
``region``), ``"glass"`` (centred off tissue), ``"tissue"`` (anywhere on tissue).

Example::

    rng = np.random.default_rng(0)
    painted = paint(rgb, 4.0, kinds=("ink",), seed=0, region=idc_mask)
    painted.rgb, painted.masks["ink"]
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

__all__ = [
    "INK_COLOURS",
    "KINDS",
    "PLACES",
    "Painted",
    "ink_over_patch",
    "paint",
    "paint_blur",
    "paint_border",
    "paint_debris",
    "paint_fold",
    "paint_ink",
    "rough_tissue",
]

KINDS = ("ink", "fold", "blur", "debris", "border")
PLACES = ("idc", "near", "glass", "tissue")
#: Marker colours (RGB of the dried ink on glass, opaque).
INK_COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (30, 60, 160),
    "green": (25, 120, 70),
    "black": (28, 28, 34),
    "red": (190, 30, 45),
}


@dataclass
class Painted:
    """A painted image, a bool mask per kind painted, and what was painted (for reports)."""

    rgb: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    specs: list[dict[str, Any]] = field(default_factory=list)


def rough_tissue(rgb: np.ndarray) -> np.ndarray:
    """A quick tissue mask of a full-resolution image (saturation > 0.07, smoothed)."""
    small = np.asarray(Image.fromarray(rgb).reduce(4)).astype(np.float32)
    mx, mn = small.max(2), small.min(2)
    sat = (mx - mn) / np.maximum(mx, 1.0)
    m = ndimage.uniform_filter(sat, 5) > 0.07
    up = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(rgb.shape[1::-1]))
    return up > 127


# ---- geometry helpers ---------------------------------------------------------------------------


def _noise(shape: tuple[int, int], rng: np.random.Generator, cell_px: float) -> np.ndarray:
    """Smooth noise in [-1, 1] with features ~``cell_px`` px (bilinear upsampling)."""
    h, w = shape
    gh, gw = max(2, math.ceil(h / cell_px) + 1), max(2, math.ceil(w / cell_px) + 1)
    g = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((w, h), Image.Resampling.BICUBIC)).clip(
        -1, 1
    )


def _soft(mask_l: Image.Image, px: float) -> np.ndarray:
    """float32 [0, 1] of an 'L' image, edges softened by a Gaussian of ``px`` px."""
    if px > 0.5:
        mask_l = mask_l.filter(ImageFilter.GaussianBlur(px))
    return np.asarray(mask_l, dtype=np.float32) / 255.0


def _ink_alpha(tissue: np.ndarray, a_tissue: float, a_glass: float) -> np.ndarray:
    """A marker's opacity: ``a_tissue`` over ``tissue``, ``a_glass`` elsewhere, the step
    softened over 6 px (a marker runs on across a lumen's edge)."""
    a_map = np.where(tissue, a_tissue, a_glass).astype(np.float32)
    return _soft(Image.fromarray((a_map * 255).round().astype(np.uint8)), 6)


def _pick_point(
    rng: np.random.Generator,
    where: str,
    tissue: np.ndarray,
    region: np.ndarray | None,
    mpp: float,
) -> tuple[float, float]:
    """(x, y) px: a random point of the asked place (falls back to tissue, then anywhere)."""
    cand: np.ndarray | None = None
    if where == "idc" and region is not None and region.any():
        cand = region
    elif where == "near" and region is not None and region.any():
        sub = 8
        r_small = region[::sub, ::sub]
        d = ndimage.distance_transform_edt(~r_small) * sub * mpp
        ring = (d > 300) & (d < 2000) & tissue[::sub, ::sub]
        if ring.any():
            ys, xs = np.nonzero(ring)
            i = rng.integers(len(ys))
            return float(xs[i] * sub), float(ys[i] * sub)
    elif where == "glass":
        sub = 8
        g = ~tissue[::sub, ::sub]
        d = ndimage.distance_transform_edt(g) * sub * mpp
        ok = d > 500
        if ok.any():
            ys, xs = np.nonzero(ok)
            i = rng.integers(len(ys))
            return float(xs[i] * sub), float(ys[i] * sub)
    if cand is None or not cand.any():
        cand = tissue if tissue.any() else np.ones_like(tissue)
    ys, xs = np.nonzero(cand[::4, ::4])
    i = rng.integers(len(ys))
    return float(xs[i] * 4), float(ys[i] * 4)


def _curve(
    rng: np.random.Generator, x: float, y: float, length_px: float, n: int = 24
) -> list[tuple[float, float]]:
    """A smooth random curve of about ``length_px`` through (x, y)."""
    a0 = rng.uniform(0, 2 * np.pi)
    curv = rng.uniform(-1.5, 1.5) / max(length_px, 1)
    t = np.linspace(-0.5, 0.5, n) * length_px
    ang = a0 + curv * t + 0.2 * np.sin(t / max(length_px, 1) * 2 * np.pi * rng.uniform(0.5, 2))
    dx, dy = np.cos(ang) * (t[1] - t[0]), np.sin(ang) * (t[1] - t[0])
    xs, ys = np.cumsum(dx), np.cumsum(dy)
    xs += x - xs[n // 2]
    ys += y - ys[n // 2]
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def _band(shape: tuple[int, int], pts: list[tuple[float, float]], width_px: float) -> Image.Image:
    img = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(img).line(pts, fill=255, width=max(1, round(width_px)), joint="curve")
    r = width_px / 2
    d = ImageDraw.Draw(img)
    for x, y in (pts[0], pts[-1]):  # round caps
        d.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return img


# ---- painters -----------------------------------------------------------------------------------


def paint_ink(
    rgb: np.ndarray,
    mpp: float,
    rng: np.random.Generator,
    *,
    colour: str = "blue",
    shape: str = "stroke",
    where: str = "tissue",
    region: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    width_mm: float | None = None,
    alpha: float | None = None,
    blend: str = "dye",
    on_glass: str = "opaque",
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Marker ink: ``shape`` ``circle`` (round ``region``, else round a point), ``stroke``
    or ``dots``; ``blend`` ``dye`` (multiplicative) or ``paint`` (the ink's colour mixed
    over the pixels; see the module doc); ``on_glass`` ``opaque`` (α 0.85–0.97 where the
    mark crosses glass) or ``translucent`` (the mark's own α there too). Returns (image, bool
    mask, spec)."""
    if blend not in ("dye", "paint"):
        raise ValueError(f"unknown ink blend {blend!r}; known: dye, paint")
    if on_glass not in ("opaque", "translucent"):
        raise ValueError(f"unknown ink on glass {on_glass!r}; known: opaque, translucent")
    tissue = rough_tissue(rgb) if tissue is None else tissue
    h, w = rgb.shape[:2]
    width_mm = float(rng.uniform(0.3, 1.5)) if width_mm is None else width_mm
    alpha = float(rng.uniform(0.3, 0.8)) if alpha is None else alpha
    wpx = width_mm * 1000 / mpp
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        if region is not None and region.any():
            ys, xs = np.nonzero(region[::4, ::4])
            x0, x1, y0, y1 = xs.min() * 4, xs.max() * 4 + 4, ys.min() * 4, ys.max() * 4 + 4
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            margin = rng.uniform(0.3, 1.2) * 1000 / mpp
            rx, ry = (x1 - x0) / 2 * 1.15 + margin, (y1 - y0) / 2 * 1.15 + margin
        else:
            cx, cy = _pick_point(rng, where, tissue, region, mpp)
            rx = ry = rng.uniform(1.5, 4) * 1000 / mpp
        t = np.linspace(0, 2 * np.pi * rng.uniform(0.85, 1.05), 180)
        wob = (
            1 + 0.06 * np.sin(3 * t + rng.uniform(0, 6)) + 0.04 * np.sin(5 * t + rng.uniform(0, 6))
        )
        t0 = rng.uniform(0, 2 * np.pi)
        pts = list(
            zip(
                (cx + rx * wob * np.cos(t + t0)).tolist(),
                (cy + ry * wob * np.sin(t + t0)).tolist(),
                strict=True,
            )
        )
        d.line(pts, fill=255, width=max(1, round(wpx)), joint="curve")
    elif shape == "stroke":
        x, y = _pick_point(rng, where, tissue, region, mpp)
        length = rng.uniform(2, 8) * 1000 / mpp
        img = _band((h, w), _curve(rng, x, y, length), wpx)
    elif shape == "dots":
        n = int(rng.integers(1, 5))
        for _ in range(n):
            x, y = _pick_point(rng, where, tissue, region, mpp)
            r = wpx * rng.uniform(0.8, 1.6)
            d.ellipse((x - r, y - r, x + r, y + r), fill=255)
    else:
        raise ValueError(f"unknown ink shape {shape!r}")
    cover = _soft(img, wpx * 0.03 + 1)
    glass_alpha = rng.uniform(0.85, 0.97)  # (drawn either way: the same marks otherwise)
    if on_glass == "translucent":
        glass_alpha = alpha
    a_map = _ink_alpha(tissue, alpha, glass_alpha)
    a_map = (a_map * (1 + 0.12 * _noise((h, w), rng, 200))).clip(0, 1) * cover
    c = np.asarray(INK_COLOURS[colour], np.float32) / 255.0
    a = a_map[..., None]
    if blend == "dye":
        out = rgb.astype(np.float32) * (1 - a + a * c)
    else:
        out = rgb.astype(np.float32) * (1 - a) + a * (c * 255.0)
    spec = {
        "kind": "ink",
        "colour": colour,
        "shape": shape,
        "where": where,
        "width_mm": round(width_mm, 2),
        "alpha": round(alpha, 2),
        "blend": blend,
        "on_glass": on_glass,
    }
    return out.round().clip(0, 255).astype(np.uint8), cover > 0.5, spec


def ink_over_patch(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``patch`` (uint8 H×W×3, 4 µm/px) under marker ink as :func:`paint_ink` lays it: a
    mark wider than the patch (or its soft edge across it, one time in three), a marker colour
    ±12 per channel, α U(0.25, 0.85) over tissue and U(0.85, 0.97) (or the same α) where the
    rough tissue mask sees glass, dye or paint with equal odds. For training a network that
    reads the cells under ink as they are (:class:`idcmap.train.degrade.ScannerAugment`'s
    ``p_ink``)."""
    h, w = patch.shape[:2]
    cols = np.array(list(INK_COLOURS.values()), np.float32)
    c = (cols[rng.integers(len(cols))] + rng.normal(0, 12, 3)).clip(0, 255) / 255.0
    a_tissue = rng.uniform(0.25, 0.85)
    a_glass = rng.uniform(0.85, 0.97) if rng.random() < 0.6 else a_tissue
    a_map = _ink_alpha(rough_tissue(patch), a_tissue, a_glass)
    a_map = a_map * (1 + 0.12 * rng.uniform(-1, 1))  # (the uneven marker, over a patch)
    if rng.random() < 0.35:  # the mark's soft edge crosses the patch
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = (xx - rng.uniform(0, w)) * np.cos(theta) + (yy - rng.uniform(0, h)) * np.sin(theta)
        a_map = a_map / (1 + np.exp(-d / rng.uniform(1.5, 6)))
    a = a_map.clip(0, 1)[..., None]
    x = patch.astype(np.float32)
    out = x * (1 - a + a * c) if rng.random() < 0.5 else x * (1 - a) + a * c * 255
    return out.round().clip(0, 255).astype(np.uint8)


def paint_fold(
    rgb: np.ndarray,
    mpp: float,
    rng: np.random.Generator,
    *,
    where: str = "tissue",
    region: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    width_mm: float | None = None,
    factor: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A fold: optical density × ``factor`` (1.6–2.3) in a band over tissue."""
    tissue = rough_tissue(rgb) if tissue is None else tissue
    h, w = rgb.shape[:2]
    width_mm = float(rng.uniform(0.3, 1.2)) if width_mm is None else width_mm
    factor = float(rng.uniform(1.6, 2.3)) if factor is None else factor
    wpx = width_mm * 1000 / mpp
    x, y = _pick_point(rng, where, tissue, region, mpp)
    band = _soft(_band((h, w), _curve(rng, x, y, rng.uniform(2, 6) * 1000 / mpp), wpx), 4)
    t_soft = _soft(Image.fromarray(tissue.astype(np.uint8) * 255), 4)
    a = band * t_soft
    od = -np.log((rgb.astype(np.float32) + 1) / 256)
    od2 = od * (1 + (factor - 1) * a[..., None])
    out = 256 * np.exp(-od2) - 1
    spec = {
        "kind": "fold",
        "where": where,
        "width_mm": round(width_mm, 2),
        "factor": round(factor, 2),
    }
    return out.round().clip(0, 255).astype(np.uint8), a > 0.5, spec


def paint_blur(
    rgb: np.ndarray,
    mpp: float,
    rng: np.random.Generator,
    *,
    where: str = "tissue",
    region: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    width_mm: float | None = None,
    sigma_um: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """An out-of-focus band: Gaussian blur of σ ``sigma_um`` (6–16 µm) over 1–4 mm."""
    tissue = rough_tissue(rgb) if tissue is None else tissue
    h, w = rgb.shape[:2]
    width_mm = float(rng.uniform(1.0, 4.0)) if width_mm is None else width_mm
    sigma_um = float(rng.uniform(6, 16)) if sigma_um is None else sigma_um
    wpx = width_mm * 1000 / mpp
    x, y = _pick_point(rng, where, tissue, region, mpp)
    band = _soft(_band((h, w), _curve(rng, x, y, rng.uniform(4, 12) * 1000 / mpp), wpx), wpx / 8)
    blurred = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma_um / mpp)))
    out = rgb * (1 - band[..., None]) + blurred * band[..., None]
    spec = {
        "kind": "blur",
        "where": where,
        "width_mm": round(width_mm, 2),
        "sigma_um": round(sigma_um, 1),
    }
    return out.round().clip(0, 255).astype(np.uint8), (band > 0.5) & tissue, spec


def paint_debris(
    rgb: np.ndarray,
    mpp: float,
    rng: np.random.Generator,
    *,
    where: str = "tissue",
    region: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    n_blobs: int | None = None,
    n_bubbles: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Dark blobs (40–400 µm) scattered round a point, and air-bubble rims."""
    tissue = rough_tissue(rgb) if tissue is None else tissue
    h, w = rgb.shape[:2]
    n_blobs = int(rng.integers(5, 25)) if n_blobs is None else n_blobs
    n_bubbles = int(rng.integers(0, 3)) if n_bubbles is None else n_bubbles
    blob = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(blob)
    x0, y0 = _pick_point(rng, where, tissue, region, mpp)
    spread = 1500 / mpp
    for _ in range(n_blobs):
        x, y = x0 + rng.normal(0, spread), y0 + rng.normal(0, spread)
        r = rng.uniform(20, 200) / mpp
        pts = [
            (
                x + r * rng.uniform(0.6, 1.3) * math.cos(a),
                y + r * rng.uniform(0.6, 1.3) * math.sin(a),
            )
            for a in np.linspace(0, 2 * np.pi, 9)[:-1]
        ]
        d.polygon(pts, fill=255)
    rim = Image.new("L", (w, h), 0)
    inside = Image.new("L", (w, h), 0)
    dr, di = ImageDraw.Draw(rim), ImageDraw.Draw(inside)
    for _ in range(n_bubbles):
        x, y = x0 + rng.normal(0, spread), y0 + rng.normal(0, spread)
        r = rng.uniform(300, 1500) / mpp
        t = max(2, round(rng.uniform(15, 40) / mpp))
        dr.ellipse((x - r, y - r, x + r, y + r), outline=255, width=t)
        di.ellipse((x - r + t, y - r + t, x + r - t, y + r - t), fill=255)
    a_blob = _soft(blob, 1.5) * rng.uniform(0.85, 1.0)
    a_rim = _soft(rim, 1) * 0.75
    a_in = _soft(inside, 2) * 0.25
    out: np.ndarray = rgb.astype(np.float32)
    out = out * (1 - a_in[..., None]) + 250 * a_in[..., None]
    dark = np.asarray([40, 34, 30], np.float32) * rng.uniform(0.5, 1.5)
    out = out * (1 - a_blob[..., None]) + dark * a_blob[..., None]
    out = out * (1 - a_rim[..., None]) + np.float32(70) * a_rim[..., None]
    mask = (a_blob > 0.4) | (a_rim > 0.4)
    spec = {"kind": "debris", "where": where, "blobs": n_blobs, "bubbles": n_bubbles}
    return out.round().clip(0, 255).astype(np.uint8), mask, spec


def paint_border(
    rgb: np.ndarray,
    mpp: float,
    rng: np.random.Generator,
    *,
    edges: Iterable[str] | None = None,
    width_mm: float | None = None,
    **_: Any,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A black scanner border along ``edges`` (top/bottom/left/right; default 1–2 random)."""
    h, w = rgb.shape[:2]
    if edges is None:
        names = ["top", "bottom", "left", "right"]
        edges = list(rng.choice(names, size=int(rng.integers(1, 3)), replace=False))
    edges = list(edges)
    width_mm = float(rng.uniform(0.2, 1.5)) if width_mm is None else width_mm
    wpx = width_mm * 1000 / mpp
    mask = np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for e in edges:
        jag = 1 + 0.1 * _noise((h, w), rng, 300)
        if e == "top":
            mask |= yy < wpx * jag
        elif e == "bottom":
            mask |= (h - 1 - yy) < wpx * jag
        elif e == "left":
            mask |= xx < wpx * jag
        else:
            mask |= (w - 1 - xx) < wpx * jag
    out = rgb.copy()
    noise = rng.integers(0, 14, (h, w, 1)).astype(np.uint8)
    out[mask] = noise[mask].repeat(3, -1)
    spec = {"kind": "border", "edges": edges, "width_mm": round(width_mm, 2)}
    return out, mask, spec


PAINTERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray, dict[str, Any]]]] = {
    "ink": paint_ink,
    "fold": paint_fold,
    "blur": paint_blur,
    "debris": paint_debris,
    "border": paint_border,
}


def paint(
    rgb: np.ndarray,
    mpp: float,
    kinds: Iterable[str] = KINDS,
    *,
    seed: int = 0,
    region: np.ndarray | None = None,
    where: str | None = None,
    n_each: int = 1,
    **kw: Any,
) -> Painted:
    """Paint ``n_each`` artefacts of each of ``kinds`` (seeded; random shapes/colours/places
    unless given in ``kw``, which is passed to each painter that accepts it).

    Args:
        rgb: uint8 rows×cols×3 at ``mpp`` µm/px.
        region: bool rows×cols, the region ink circles go round and ``where="idc"`` means.
        where: place (:data:`PLACES`); default random among them.
    """
    rng = np.random.default_rng(seed)
    tissue = rough_tissue(rgb)
    out = Painted(rgb=rgb.copy())
    for kind in kinds:
        if kind not in PAINTERS:
            raise ValueError(f"unknown artefact kind {kind!r}; known: {KINDS}")
        m_all = np.zeros(rgb.shape[:2], bool)
        for _ in range(n_each):
            args = dict(kw)
            if kind != "border":
                args.setdefault("where", where or str(rng.choice(PLACES)))
                args["region"], args["tissue"] = region, tissue
            if kind == "ink":
                args.setdefault("colour", str(rng.choice(list(INK_COLOURS))))
                args.setdefault("shape", str(rng.choice(["circle", "stroke", "dots"])))
            ok = inspect.signature(PAINTERS[kind]).parameters
            args = {k: v for k, v in args.items() if k in ok or "_" in ok}
            img, m, spec = PAINTERS[kind](out.rgb, mpp, rng, **args)
            out.rgb = img
            m_all |= m
            out.specs.append(spec)
        out.masks[kind] = m_all
    return out
