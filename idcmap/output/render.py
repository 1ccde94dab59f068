"""Pictures people read: the heatmap over the slide, the mask, the evaluation comparison.

* Text uses the DejaVu Sans fonts shipped in ``idcmap/fonts`` (µ, σ, ≥, ² render everywhere;
  Pillow's default font draws them as boxes).
* The heatmap overlay is **transparent where the probability is low** and strong where it is
  high (opacity ramps up from ``fade_from`` to the region threshold), so the H&E stays visible
  outside suspicious areas; the probability is interpolated linearly between cell centres (the
  same surface the smooth outlines follow).
* Region outlines are a bright line on a dark halo, readable on any colour, and numbered 1..N
  in GeoJSON order (``IDC 1`` … ``IDC N``).
* A scale bar in mm and a colour bar with the region threshold marked.

Geometry: a picture pixel ``(i, j)`` of the thumbnail covers level-0 x from
``thumb_origin_level0_px[0] + j · thumb_px_level0[0]`` (likewise y), as in
the heatmap picture; polygons are in level-0 px (QuPath frame).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from scipy import ndimage

from idcmap.pipeline.heatmap import Heatmap

__all__ = [
    "FONT_DIR",
    "font",
    "heatmap_picture",
    "legend_panel",
    "mask_picture",
    "nice_scale_length_um",
    "overlay_alpha",
]

PathLike = str | os.PathLike[str]
FONT_DIR = Path(__file__).parent / "fonts"
_HALO = (0, 0, 0)
_LINE = (255, 255, 255)


# viridis, sampled every 0.1 (the published colour map); interpolated linearly to 256 entries
_VIRIDIS_ANCHORS = np.array(
    [
        (68, 1, 84),
        (72, 36, 117),
        (65, 68, 135),
        (53, 95, 141),
        (42, 120, 142),
        (33, 145, 140),
        (34, 168, 132),
        (68, 191, 112),
        (122, 209, 81),
        (189, 223, 38),
        (253, 231, 37),
    ],
    dtype=np.float64,
)


def colormap_lut(n: int = 256) -> np.ndarray:
    """uint8 ``n × 3`` viridis look-up table (index ``round(p · (n - 1))`` for probability p)."""
    t = np.linspace(0.0, 1.0, n)
    xp = np.linspace(0.0, 1.0, len(_VIRIDIS_ANCHORS))
    lut = np.stack([np.interp(t, xp, _VIRIDIS_ANCHORS[:, k]) for k in range(3)], axis=1)
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8)


def _as_rgb(thumbnail: np.ndarray) -> np.ndarray:
    t = np.asarray(thumbnail)
    if t.dtype != np.uint8:
        raise ValueError(f"thumbnail must be uint8, got {t.dtype}")
    if t.ndim == 2:
        t = np.repeat(t[:, :, None], 3, axis=2)
    if t.ndim != 3 or t.shape[2] not in (3, 4):
        raise ValueError(f"thumbnail must be H×W, H×W×3 or H×W×4, got shape {t.shape}")
    return np.ascontiguousarray(t[:, :, :3])


@lru_cache(maxsize=32)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (bold) at ``size`` px, from the package's ``fonts`` folder."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(FONT_DIR / name), size=max(6, int(size)))


def _viridis() -> np.ndarray:
    return colormap_lut().astype(np.float32)


def overlay_alpha(
    prob: np.ndarray, threshold: float, *, fade_from: float = 0.2, max_alpha: float = 0.6
) -> np.ndarray:
    """Opacity of the heatmap colour at probability ``prob``.

    0 up to ``fade_from``, a smooth ramp (smoothstep) up to ``max_alpha`` at ``threshold``,
    ``max_alpha`` above it; NaN → 0.
    """
    hi = max(float(threshold), fade_from + 1e-3)
    t = np.clip((np.nan_to_num(prob, nan=0.0) - fade_from) / (hi - fade_from), 0.0, 1.0)
    return (max_alpha * t * t * (3 - 2 * t)).astype(np.float32)


def nice_scale_length_um(um_per_px: float, target_px: float) -> float:
    """A round length (1, 2 or 5 × 10^k µm) close to ``target_px`` picture pixels."""
    want = um_per_px * target_px
    k = 10 ** math.floor(math.log10(want))
    return float(min((m * k for m in (1, 2, 5, 10)), key=lambda v: abs(math.log(v / want))))


def _format_length(um: float) -> str:
    if um >= 1000:
        mm = um / 1000
        return f"{mm:g} mm"
    return f"{um:g} µm"


def _sample_surface(
    heatmap: Heatmap, xs_level0: np.ndarray, ys_level0: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Probability at picture pixel centres: linear between cell centres (NaN cells do not
    pull their neighbours towards 0), shown only where the nearest cell is in tissue.

    Returns:
        (prob, shown): float32 and bool, ``len(ys) × len(xs)``.
    """
    prob = np.asarray(heatmap.prob, dtype=np.float64)
    rows, cols = prob.shape
    ox, oy = (float(v) for v in heatmap.origin_level0_px)
    cw, ch = (float(v) for v in heatmap.cell_level0_px)
    gx = (xs_level0 - ox) / cw - 0.5  # grid coordinate with cell centres on integers
    gy = (ys_level0 - oy) / ch - 0.5
    cx, cy = np.floor(gx + 0.5).astype(np.int64), np.floor(gy + 0.5).astype(np.int64)
    okx, oky = (cx >= 0) & (cx < cols), (cy >= 0) & (cy < rows)
    shown = np.zeros((len(ys_level0), len(xs_level0)), dtype=bool)
    out = np.full(shown.shape, np.nan, dtype=np.float32)
    if rows == 0 or cols == 0 or not okx.any() or not oky.any():
        return out, shown
    tissue = np.isfinite(prob)
    shown[np.ix_(oky, okx)] = tissue[np.ix_(cy[oky], cx[okx])]
    # bilinear on a grid of picture px is separable: rows, then columns, as two matrix
    # products (the same values as map_coordinates(order=1, mode="nearest"), far cheaper)
    wy, wx = _lerp_weights(gy, rows), _lerp_weights(gx, cols)
    num = wy @ (np.where(tissue, prob, 0.0) @ wx.T)
    den = wy @ (tissue.astype(np.float64) @ wx.T)
    with np.errstate(invalid="ignore", divide="ignore"):
        val = num / den
    out[shown] = val[shown].astype(np.float32)
    return out, shown


def _lerp_weights(g: np.ndarray, n: int) -> np.ndarray:
    """len(g)×n weights of linear interpolation at grid coordinates ``g`` (clamped to the
    grid: the edge cells' values hold beyond their centres)."""
    g = np.clip(g, 0, n - 1)
    w = np.zeros((len(g), n), np.float64)
    if n == 1:
        w[:, 0] = 1.0
        return w
    i0 = np.minimum(np.floor(g).astype(np.int64), n - 2)
    f = g - i0
    at = np.arange(len(g))
    w[at, i0] = 1.0 - f
    w[at, i0 + 1] = f
    return w


def _outline(
    draw: ImageDraw.ImageDraw,
    geom: shapely.Geometry,
    to_px: np.ndarray,
    width: int,
) -> None:
    """Dark halo then bright line along every ring of ``geom`` (``to_px`` = [ax, bx, ay, by])."""
    ax, bx, ay, by = to_px
    rings: list[np.ndarray] = []
    for part in shapely.get_parts(geom):
        if isinstance(part, shapely.Polygon) and not part.is_empty:
            for ring in (part.exterior, *part.interiors):
                c = np.asarray(ring.coords)[:, :2]
                rings.append(np.column_stack([ax * c[:, 0] + bx, ay * c[:, 1] + by]))
    for colour, w in ((_HALO, width + 4), (_LINE, width)):
        for c in rings:
            pts = [tuple(p) for p in c.tolist()]
            draw.line(pts, fill=colour, width=w, joint="curve")


def _label_point(geom: shapely.Geometry) -> tuple[float, float]:
    """A point well inside the polygon (pole of inaccessibility), where its number goes."""
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, shapely.Polygon)]
    poly = max(parts, key=lambda p: p.area) if parts else geom
    try:
        from shapely.ops import polylabel

        tol = max(1e-6, math.sqrt(max(poly.area, 1e-12)) / 50)
        p = polylabel(poly, tolerance=tol)
    except Exception:  # degenerate shapes: any point inside will do
        p = poly.representative_point()
    return float(p.x), float(p.y)


def heatmap_picture(
    heatmap: Heatmap,
    thumbnail: np.ndarray,
    thumb_origin_level0_px: tuple[float, float],
    thumb_px_level0: tuple[float, float],
    *,
    threshold: float,
    polygons: Sequence[shapely.Geometry] = (),
    tissue: np.ndarray | None = None,
    title: str | None = None,
    caption: str | None = None,
    mpp_x: float | None = None,
    mpp_y: float | None = None,
    max_side: int = 2000,
    min_side: int = 1000,
    fade_from: float = 0.2,
    max_alpha: float = 0.6,
) -> Image.Image:
    """The heatmap over the slide thumbnail, with numbered outlines, a scale bar and a colour bar.

    Args:
        heatmap: the (smoothed) heatmap whose surface is drawn.
        thumbnail: uint8 H×W×3 (or ×4, or H×W) picture of the slide.
        thumb_origin_level0_px: level-0 (x, y) of the thumbnail's top-left corner.
        thumb_px_level0: level-0 px per thumbnail px, (x, y).
        threshold: the region threshold: full opacity from there, marked on the colour bar.
        polygons: region outlines in level-0 px, numbered 1..N in this order.
        tissue: bool mask on the thumbnail's grid (H×W): the overlay is drawn on tissue only,
            so glass inside a 200-µm cell stays clean (None: the whole cell).
        title: first header line (e.g. ``"8955: IDC probability (smoothed, σ 100 µm)"``).
        caption: second header line (e.g. counts and areas).
        mpp_x: µm per level-0 px along x for the scale bar (default ``heatmap.slide_mpp``).
        mpp_y: along y (default ``mpp_x``).
        max_side: upper bound of the picture part's long side, px.
        min_side: a smaller thumbnail is enlarged until its long side reaches this.
        fade_from: probability below which the overlay is fully transparent.
        max_alpha: overlay opacity at and above the threshold.
    """
    thumb = _as_rgb(thumbnail)
    th, tw = thumb.shape[:2]
    if th == 0 or tw == 0:
        raise ValueError("empty thumbnail")
    sx, sy = (float(v) for v in thumb_px_level0)
    tx, ty = (float(v) for v in thumb_origin_level0_px)
    mx = float(heatmap.slide_mpp if mpp_x is None else mpp_x)
    my = mx if mpp_y is None else float(mpp_y)

    scale = min(max_side / max(tw, th), max(1.0, min_side / max(tw, th)))
    pw, ph = max(1, round(tw * scale)), max(1, round(th * scale))
    img = Image.fromarray(thumb, "RGB")
    if (pw, ph) != (tw, th):
        img = img.resize(
            (pw, ph), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        )
    base = np.asarray(img, dtype=np.float32)
    psx, psy = sx * tw / pw, sy * th / ph  # level-0 px per picture px

    xs = tx + (np.arange(pw) + 0.5) * psx
    ys = ty + (np.arange(ph) + 0.5) * psy
    prob, shown = _sample_surface(heatmap, xs, ys)
    lut = _viridis()
    idx = np.clip(np.rint(np.nan_to_num(prob) * 255), 0, 255).astype(np.int64)
    a = np.where(shown, overlay_alpha(prob, threshold, fade_from=fade_from, max_alpha=max_alpha), 0)
    if tissue is not None:
        t = np.asarray(tissue, dtype=bool)
        if t.shape != (th, tw):
            raise ValueError(f"tissue mask shape {t.shape} != thumbnail shape {(th, tw)}")
        ti = np.minimum((np.arange(ph) * th) // ph, th - 1)
        tj = np.minimum((np.arange(pw) * tw) // pw, tw - 1)
        # soften the 16-µm mask's edge by one picture pixel
        a = a * ndimage.uniform_filter(t[np.ix_(ti, tj)].astype(np.float32), 3)
    # base · (1 − a) + colour · a, in place (the same float32 operations, no temporaries)
    w = a[..., None]
    colour = lut[idx]
    colour *= w
    base *= 1 - w
    base += colour
    np.clip(np.rint(base, out=base), 0, 255, out=base)
    picture = Image.fromarray(base.astype(np.uint8), "RGB")

    # outlines and numbers
    draw = ImageDraw.Draw(picture)
    line_w = int(np.clip(round(max(pw, ph) / 600), 2, 4))
    to_px = np.array([1 / psx, -tx / psx, 1 / psy, -ty / psy])
    for geom in polygons:
        _outline(draw, geom, to_px, line_w)
    num_font = font(int(np.clip(round(max(pw, ph) / 40), 16, 40)), bold=True)
    for k, geom in enumerate(polygons, start=1):
        lx, ly = _label_point(geom)
        draw.text(
            (lx / psx - tx / psx, ly / psy - ty / psy),
            str(k),
            fill=_LINE,
            font=num_font,
            anchor="mm",
            stroke_width=max(2, num_font.size // 7),
            stroke_fill=_HALO,
        )

    # scale bar (bottom left, on a white plate)
    fs = int(np.clip(round(max(pw, ph) / 70), 13, 22))
    um_per_px = psx * mx
    bar_um = nice_scale_length_um(um_per_px, pw / 6)
    bar_px = round(bar_um / um_per_px)
    label = _format_length(bar_um)
    f = font(fs)
    tw_label = draw.textlength(label, font=f)
    pad = max(6, fs // 2)
    plate_w = max(bar_px, tw_label) + 2 * pad
    plate_h = fs + 3 * pad + 6
    x0, y1 = pad, ph - pad
    draw.rounded_rectangle(
        (x0, y1 - plate_h, x0 + plate_w, y1), radius=4, fill=(255, 255, 255), outline=(60, 60, 60)
    )
    bx0, by = x0 + pad, y1 - pad - 3
    draw.rectangle((bx0, by - 6, bx0 + bar_px, by), fill=(0, 0, 0))
    draw.text((bx0 + bar_px / 2, by - 10), label, fill=(0, 0, 0), font=f, anchor="md")
    if abs(mx - my) > 1e-6 * mx:  # anisotropic pixels: the bar is horizontal
        draw.text((x0 + plate_w + pad, by), "(horizontal)", fill=(0, 0, 0), font=font(fs - 2))

    # canvas: header on top, picture, colour bar panel right
    margin = 14
    header_lines = [s for s in (title, caption) if s]
    title_fs, cap_fs = fs + 5, fs
    header_h = margin + sum(
        (title_fs if i == 0 and title else cap_fs) + 8 for i, _ in enumerate(header_lines)
    )
    panel_w = int(fs * 13)
    bar_h = int(min(max(ph - 6 * fs, 10 * fs), 420))
    canvas_h = max(ph + header_h + margin, header_h + bar_h + 11 * fs + 30)
    canvas = Image.new("RGB", (margin + pw + panel_w, canvas_h), (255, 255, 255))
    canvas.paste(picture, (margin, header_h))
    cd = ImageDraw.Draw(canvas)
    y = margin
    for i, text in enumerate(header_lines):
        size = title_fs if i == 0 and title else cap_fs
        cd.text((margin, y), text, fill=(0, 0, 0) if i == 0 else (60, 60, 60), font=font(size))
        y += size + 8
    cd.rectangle(
        (margin - 1, header_h - 1, margin + pw, header_h + ph), outline=(120, 120, 120), width=1
    )
    _colour_bar(
        cd,
        canvas,
        margin + pw + 2 * fs,
        header_h,
        bar_h,
        fs,
        threshold,
        fade_from,
        max_alpha,
        lut,
        bool(len(polygons)),
    )
    return canvas


def _colour_bar(
    cd: ImageDraw.ImageDraw,
    canvas: Image.Image,
    x0: int,
    top: int,
    bar_h: int,
    fs: int,
    threshold: float,
    fade_from: float,
    max_alpha: float,
    lut: np.ndarray,
    has_regions: bool,
) -> None:
    f = font(fs)
    small = font(max(11, fs - 2))
    cd.text((x0 - fs, top), "IDC probability", fill=(0, 0, 0), font=f)
    bar_top = top + 2 * fs
    bar_w = int(fs * 1.6)
    p = np.linspace(1.0, 0.0, bar_h)
    a = overlay_alpha(p, threshold, fade_from=fade_from, max_alpha=max_alpha)[:, None]
    # as the overlay looks over a light, H&E-pink background
    bg = np.array([238.0, 214.0, 228.0])
    col = bg * (1 - a) + lut[np.clip(np.rint(p * 255), 0, 255).astype(np.int64)] * a
    strip = np.repeat(np.clip(np.rint(col), 0, 255).astype(np.uint8)[:, None, :], bar_w, axis=1)
    canvas.paste(Image.fromarray(strip, "RGB"), (x0, bar_top))
    cd.rectangle((x0 - 1, bar_top - 1, x0 + bar_w, bar_top + bar_h), outline=(0, 0, 0))

    def y_of(v: float) -> int:
        return bar_top + round((1 - v) * (bar_h - 1))

    yt = y_of(threshold)
    for v in (0.0, 0.5, 1.0):
        yv = y_of(v)
        cd.line((x0 + bar_w, yv, x0 + bar_w + 5, yv), fill=(0, 0, 0), width=1)
        if abs(yv - yt) > 1.8 * fs:  # the threshold's own label says it there
            cd.text((x0 + bar_w + 8, yv), f"{v:g}", fill=(0, 0, 0), font=small, anchor="lm")
    cd.line((x0 - 5, yt, x0 + bar_w + 5, yt), fill=(0, 0, 0), width=5)
    cd.line((x0 - 5, yt, x0 + bar_w + 5, yt), fill=(255, 255, 255), width=2)
    cd.text(
        (x0 + bar_w + 8, yt - fs * 0.9), f"≥ {threshold:.2f}", fill=(0, 0, 0), font=f, anchor="lm"
    )
    cd.text((x0 + bar_w + 8, yt + fs * 0.3), "IDC region", fill=(0, 0, 0), font=small, anchor="lm")
    y = bar_top + bar_h + fs
    notes = [f"clear below {fade_from:g}", "(H&E shows through)"]
    if has_regions:
        notes += ["", "outlines: IDC regions,", "numbered as in the", "GeoJSON (IDC 1, 2, …)"]
    for line in notes:
        cd.text((x0 - fs, y), line, fill=(70, 70, 70), font=small)
        y += int(small.size) + 4


def save_png(
    image: Image.Image,
    path: PathLike,
    text: dict[str, str] | None = None,
    *,
    compress_level: int = 6,
) -> None:
    """Write a PNG with optional tEXt chunks (e.g. what a pixel means). ``compress_level``: zlib's
    0–9; 1 suits photographic pictures (half the time of 6, ~10 % larger)."""
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_itxt(k, v)
    image.save(path, format="PNG", compress_level=compress_level, pnginfo=info)


def mask_px_per_cell(
    shape: tuple[int, ...], *, min_side: int = 1000, max_px_per_cell: int = 32
) -> int:
    """``k`` of :func:`mask_picture` for a mask of ``shape`` (rows, cols)."""
    long_side = max(shape) if shape and min(shape) > 0 else 1
    return int(np.clip(math.ceil(min_side / max(long_side, 1)), 1, max_px_per_cell))


def mask_picture(
    mask: np.ndarray, *, min_side: int = 1000, max_px_per_cell: int = 32
) -> tuple[Image.Image, int]:
    """The IDC mask at a size a person can open: each cell as a ``k × k`` block (nearest).

    ``k`` is the smallest integer that brings the long side to ``min_side`` px (at most
    ``max_px_per_cell``; 1 for big grids), so picture pixel ``(i, j)`` is cell
    ``(i // k, j // k)`` exactly. 255 = IDC, 0 = not.

    Returns:
        (8-bit grey image, k).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    k = mask_px_per_cell(m.shape, min_side=min_side, max_px_per_cell=max_px_per_cell)
    arr = np.where(m.astype(bool), 255, 0).astype(np.uint8)
    if k > 1:
        arr = arr.repeat(k, axis=0).repeat(k, axis=1)
    return Image.fromarray(arr, "L"), k


def legend_panel(
    width: int, items: Sequence[tuple[tuple[int, int, int], str]], title: str | None = None
) -> Image.Image:
    """A white strip with coloured swatches and their labels (wrapped to ``width``)."""
    fs = int(np.clip(round(width / 45), 13, 20))
    f, ft = font(fs), font(fs + 2, bold=True)
    pad = fs
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if title:
        width = max(width, int(probe.textlength(title, font=ft)) + 2 * pad)
    x, y = pad, pad + ((fs + 2 + pad // 2) if title else 0)
    rows_h = fs + 8
    placed: list[tuple[int, int, tuple[int, int, int], str]] = []
    for colour, label in items:
        w = int(fs * 1.4 + 6 + probe.textlength(label, font=f) + 2 * pad)
        if x + w > width and x > pad:
            x, y = pad, y + rows_h
        placed.append((x, y, colour, label))
        x += w
    height = y + rows_h + pad
    panel = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(panel)
    if title:
        d.text((pad, pad // 2 + 2), title, fill=(0, 0, 0), font=ft)
    for x, y, colour, label in placed:
        s = int(fs * 1.4)
        d.rectangle((x, y, x + s, y + fs + 2), fill=colour, outline=(40, 40, 40))
        d.text((x + s + 6, y + (fs + 2) / 2), label, fill=(0, 0, 0), font=f, anchor="lm")
    return panel
