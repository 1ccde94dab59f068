"""Opt-in output: the heatmap and the QC mask as a pyramidal OME-TIFF aligned with the slide.

One pixel is one heatmap cell, so that the image overlays the slide at its physical size:
``PhysicalSizeX/Y`` are the cell's width and height in µm (:attr:`Heatmap.cell_um`), and
pixel (0, 0) is the cell whose top-left corner is the slide's top-left corner (QuPath's frame:
OpenSlide's ``bounds-x/-y`` origin when the slide has one). Pixel ``(row, col)`` covers level-0
px ``x ∈ [col·w, (col+1)·w)``, ``y ∈ [row·h, (row+1)·h)`` with ``(w, h) = cell_level0_px``,
exactly as the heatmap's cells do (:mod:`idcmap.pipeline.heatmap`), so µm ``x·mpp`` of the
slide is µm ``x·mpp`` of this image.

Channels (uint8, one plane each, :data:`CHANNELS`):

0. IDC probability: the refined probability the regions are drawn from, ``round(p·255)``;
   0 where the model evaluated nothing (read channel 2 to tell "0" from "not evaluated").
1. QC artefact: 0 none, else the code of :data:`QC_CODES` (ink 1, fold 2, blur 3, debris 4,
   border 5) of the kind that covers the largest share of the cell, when that share is at
   least :data:`QC_CELL_FRACTION`; all 0 for a run without QC.
2. Tissue: 255 where the model evaluated the cell (the tissue the summary's area counts).
3. Tile probability: the tiles' own probability (``heatmap.npz``'s ``prob``), ``round(p·255)``.

Pyramid: reduced levels as SubIFDs (OME-TIFF ≥ 6 / Bio-Formats ≥ 6 reads them; so do
tifffile and tiffslide), each half the size of the one above (odd sizes round up), down to
:data:`SMALLEST_LEVEL_PX`; probabilities are averaged over the evaluated cells of
each 2×2 block, the tissue is any of the block's, the QC code the most frequent non-zero one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from idcmap.params import QC_KINDS
from idcmap.pipeline.heatmap import Heatmap
from idcmap.pipeline.tiles import cell_fraction
from idcmap.pipeline.tissue import TissueMask

__all__ = [
    "CHANNELS",
    "QC_CELL_FRACTION",
    "QC_CODES",
    "SMALLEST_LEVEL_PX",
    "TILE_PX",
    "HeatmapImage",
    "heatmap_image",
    "probability_u8",
    "qc_codes",
    "write_ome_tiff",
]

#: Channel names, in order (OME ``Channel/@Name``).
CHANNELS = ("IDC probability", "QC artefact", "Tissue", "Tile probability")
#: Display colours of the channels (RGB; OME ``Channel/@Color``, QuPath's default display).
CHANNEL_COLORS = ((200, 0, 0), (40, 80, 220), (128, 128, 128), (255, 0, 255))
#: QC channel value of each artefact kind (0 = none), in :data:`idcmap.params.QC_KINDS` order.
QC_CODES: dict[str, int] = {kind: i for i, kind in enumerate(QC_KINDS, start=1)}
#: A cell gets an artefact's code when the artefact covers at least this share of it (a quarter:
#: the stroke of a pen, ~0.5 mm wide, marks the 200-µm cells it crosses, not only those it fills).
QC_CELL_FRACTION = 0.25
#: Tile side (px) of every level. A heatmap is small (a 20-mm slide is 100 cells of 200 µm):
#: small tiles keep a level from being one mostly empty tile.
TILE_PX = 64
#: Reduced levels are added while the largest side is above this (an icon-sized overview
#: that viewers take for thumbnails).
SMALLEST_LEVEL_PX = 32


@dataclass(frozen=True)
class HeatmapImage:
    """The OME-TIFF's content before it is written.

    Attributes:
        prob: float32 rows×cols refined probability, NaN where not evaluated.
        tile_prob: float32 rows×cols tile probability, NaN where not evaluated.
        qc: uint8 rows×cols QC codes (:data:`QC_CODES`, 0 none).
        cell_um: (width, height) of one pixel (cell) in µm.
        name: the image's name (the slide's stem).
        description: one paragraph saying what the channels hold and how pixels map to the
            slide (OME ``Image/Description``).
    """

    prob: np.ndarray
    tile_prob: np.ndarray
    qc: np.ndarray
    cell_um: tuple[float, float]
    name: str
    description: str

    def planes(self) -> np.ndarray:
        """uint8 4×rows×cols, the channels of :data:`CHANNELS` at full resolution."""
        return _planes(self.prob, self.tile_prob, self.qc)


def probability_u8(prob: np.ndarray) -> np.ndarray:
    """uint8 ``round(p·255)`` of a probability map, 0 where NaN."""
    p = np.nan_to_num(np.asarray(prob, np.float64), nan=0.0)
    return np.rint(np.clip(p, 0.0, 1.0) * 255).astype(np.uint8)


def _planes(prob: np.ndarray, tile_prob: np.ndarray, qc: np.ndarray) -> np.ndarray:
    evaluated = np.isfinite(tile_prob) | np.isfinite(prob)
    return np.stack(
        [
            probability_u8(prob),
            qc.astype(np.uint8),
            np.where(evaluated, 255, 0).astype(np.uint8),
            probability_u8(tile_prob),
        ]
    )


def qc_codes(
    masks: Mapping[str, np.ndarray] | None, thumbnail: TissueMask, heatmap: Heatmap
) -> np.ndarray:
    """uint8 QC code per heatmap cell (see the module doc).

    Args:
        masks: the QC stage's masks (:attr:`SlideResult.qc_masks`): ``blur`` on the heatmap's
            cells, the other kinds on the tissue thumbnail's grid; None: no QC (all 0).
        thumbnail: the tissue stage's grid (its ``origin_level0_px`` and ``px_level0``).
        heatmap: the heatmap whose cells get the codes.
    """
    rows, cols = heatmap.shape
    out = np.zeros((rows, cols), np.uint8)
    if not masks:
        return out
    cw, ch = heatmap.cell_level0_px
    best = np.zeros((rows, cols), np.float64)
    for kind in QC_KINDS:  # the first kind wins a tie
        m = masks.get(kind)
        if m is None or not m.any():
            continue
        if m.shape == (rows, cols) and kind == "blur":
            share = m.astype(np.float64)
        else:
            share = cell_fraction(replace(thumbnail, mask=m), rows, cols, cw, ch)
        take = (share >= QC_CELL_FRACTION) & (share > best)
        out[take] = QC_CODES[kind]
        best = np.where(take, share, best)
    return out


def heatmap_image(
    *,
    heatmap: Heatmap,
    smoothed: Heatmap,
    qc_masks: Mapping[str, np.ndarray] | None,
    thumbnail: TissueMask,
    name: str,
    threshold: float,
    bounds_level0_px: Sequence[int] = (0, 0),
) -> HeatmapImage:
    """The OME-TIFF's content of one slide's result.

    Args:
        heatmap: tile probabilities (channel 3, and the grid).
        smoothed: the refined probability the regions are drawn from (channel 0).
        qc_masks: the QC stage's masks, or None without QC.
        thumbnail: the tissue stage's grid (where ``qc_masks`` other than blur live).
        name: the slide's stem.
        threshold: the region threshold (said in the description).
        bounds_level0_px: (x, y, ...) of the slide's bounds origin in OpenSlide's full frame.
    """
    cw, ch = heatmap.cell_level0_px
    um_x, um_y = heatmap.cell_um
    bx, by = (int(v) for v in bounds_level0_px[:2])
    kinds = ", ".join(f"{k} {c}" for k, c in QC_CODES.items())
    frame = f"; that corner is OpenSlide's level-0 px ({bx}, {by})" if bx or by else ""
    description = (
        f"idcmap heatmap of {name}: one pixel = one heatmap cell of {cw:g} x {ch:g} level-0 px "
        f"({um_x:g} x {um_y:g} um); pixel (0, 0) starts at the slide's top-left corner{frame}, "
        "so at its physical size the image overlays the slide. Channels: 0 IDC probability "
        f"(refined; x255; the regions are drawn at {threshold:.4g} = {threshold * 255:.1f}/255), "
        f"1 QC artefact (0 none, {kinds}; the kind covering the largest share of the cell, "
        f"at least {QC_CELL_FRACTION:g}{'' if qc_masks is not None else '; no QC ran'}), "
        "2 tissue the model evaluated (255), 3 tile probability (x255); 0 = not evaluated."
    )
    return HeatmapImage(
        prob=np.asarray(smoothed.prob, np.float32),
        tile_prob=np.asarray(heatmap.prob, np.float32),
        qc=qc_codes(qc_masks, thumbnail, heatmap),
        cell_um=(float(um_x), float(um_y)),
        name=name,
        description=description,
    )


# ---- pyramid ------------------------------------------------------------------------------------


def _pad_even(a: np.ndarray, fill: float) -> np.ndarray:
    h, w = a.shape
    return np.pad(a, ((0, h % 2), (0, w % 2)), constant_values=fill)


def _halve_mean(a: np.ndarray) -> np.ndarray:
    """2×2 mean of the finite values (NaN where none)."""
    b = _pad_even(a.astype(np.float64), np.nan)
    h, w = b.shape
    blocks = b.reshape(h // 2, 2, w // 2, 2)
    n = np.isfinite(blocks).sum((1, 3))
    s = np.nansum(blocks, (1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan).astype(np.float32)


def _halve_mode(codes: np.ndarray) -> np.ndarray:
    """2×2 most frequent non-zero code (the lowest code of a tie), 0 where all are 0."""
    b = _pad_even(codes, 0)
    h, w = b.shape
    blocks = b.reshape(h // 2, 2, w // 2, 2)
    counts = np.stack([(blocks == c).sum((1, 3)) for c in range(1, len(QC_CODES) + 1)])
    best = counts.argmax(0).astype(np.uint8) + 1
    return np.where(counts.max(0) > 0, best, 0).astype(np.uint8)


def pyramid(image: HeatmapImage, smallest_px: int = SMALLEST_LEVEL_PX) -> list[np.ndarray]:
    """uint8 C×h×w planes of every level, full resolution first, each reduced level half the
    one above (odd sizes round up) while the largest side is above ``smallest_px``."""
    prob, tile_prob, qc = image.prob, image.tile_prob, image.qc
    levels = [_planes(prob, tile_prob, qc)]
    while max(prob.shape) > smallest_px:
        prob, tile_prob, qc = _halve_mean(prob), _halve_mean(tile_prob), _halve_mode(qc)
        levels.append(_planes(prob, tile_prob, qc))
    return levels


# ---- writing ------------------------------------------------------------------------------------


def _ome_color(rgb: Sequence[int]) -> int:
    """OME's Color: RGBA packed in a signed 32-bit int."""
    r, g, b = (int(v) for v in rgb)
    v = (r << 24) | (g << 16) | (b << 8) | 255
    return v - (1 << 32) if v >= 1 << 31 else v


def write_ome_tiff(image: HeatmapImage, path: str | Path, *, tile_px: int = TILE_PX) -> None:
    """Write ``image`` as a tiled, zlib-compressed pyramidal OME-TIFF (see the module doc)."""
    import tifffile

    if tile_px % 16 or tile_px <= 0:
        raise ValueError(f"tile_px={tile_px} must be a positive multiple of 16 (TIFF tiles)")
    levels = pyramid(image)
    um_x, um_y = image.cell_um
    metadata = {
        "axes": "CYX",
        "Name": image.name,
        "Description": image.description,
        "PhysicalSizeX": um_x,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": um_y,
        "PhysicalSizeYUnit": "µm",
        "Channel": {"Name": list(CHANNELS), "Color": [_ome_color(c) for c in CHANNEL_COLORS]},
    }
    opts = {
        "photometric": "minisblack",
        "tile": (tile_px, tile_px),
        "compression": "zlib",
        "resolutionunit": "CENTIMETER",
    }
    with tifffile.TiffWriter(path, ome=True, bigtiff=False) as tif:
        tif.write(
            levels[0],
            subifds=len(levels) - 1,
            resolution=(1e4 / um_x, 1e4 / um_y),
            metadata=metadata,
            **opts,
        )
        for k, planes in enumerate(levels[1:], start=1):
            # one pixel of level k is 2^k cells (the OME-XML holds level 0's size only)
            tif.write(
                planes,
                subfiletype=1,
                resolution=(1e4 / (um_x * 2**k), 1e4 / (um_y * 2**k)),
                metadata=None,
                **opts,
            )
