"""The comparison picture of a predicted IDC mask against the truth, cell by cell."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
from PIL import Image

from idcmap.output.render import legend_panel

__all__ = ["FN_COLOR", "FP_COLOR", "TP_COLOR", "comparison_png"]

#: colours of the comparison picture: both IDC, predicted only, truth only
TP_COLOR = (0, 170, 0)
FP_COLOR = (220, 30, 30)
FN_COLOR = (30, 80, 230)


def _grey_background(base: np.ndarray, slide: str | Path) -> None:
    """Draw a grey thumbnail of ``slide`` over ``base`` (H×W×3, in place) at its size."""
    import tiffslide  # slow to import (zarr, fsspec); only pictures with a background need it

    h, w = base.shape[:2]
    with tiffslide.TiffSlide(str(slide)) as s:
        th = np.asarray(s.get_thumbnail((w, h)).convert("L"))
    gh, gw = min(th.shape[0], h), min(th.shape[1], w)
    base[:gh, :gw] = (th[:gh, :gw, None] * 0.6 + 100).clip(0, 255).astype(np.uint8)


def comparison_png(
    pred: np.ndarray,
    truth: np.ndarray,
    out: str | Path,
    slide: str | Path | None = None,
    scale: int | None = None,
    title: str | None = None,
) -> None:
    """A PNG of the cell grid: green = both IDC (TP), red = predicted only (FP), blue = truth
    only (FN), over a grey thumbnail of the slide when it can be read, with a legend below.

    ``scale`` is the picture px per cell (default: enough for a ~1000-px long side, 2–32).
    """
    rows, cols = pred.shape
    if scale is None:
        scale = int(np.clip(math.ceil(1000 / max(rows, cols, 1)), 2, 32))
    base = np.full((rows * scale, cols * scale, 3), 235, dtype=np.uint8)
    if slide is not None:
        with contextlib.suppress(Exception):  # the PNG is still useful without a background
            _grey_background(base, slide)
    col = np.zeros((rows, cols, 4), dtype=np.float32)
    col[pred & truth] = (*TP_COLOR, 0.65)
    col[pred & ~truth] = (*FP_COLOR, 0.65)
    col[~pred & truth] = (*FN_COLOR, 0.65)
    col = col.repeat(scale, 0).repeat(scale, 1)
    a = col[..., 3:]
    img = Image.fromarray((base * (1 - a) + col[..., :3] * a).astype(np.uint8))
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    legend = legend_panel(
        max(img.width, 480),
        [
            (TP_COLOR, f"IDC in both (true positive, {tp} cells)"),
            (FP_COLOR, f"predicted only (false positive, {fp})"),
            (FN_COLOR, f"truth only (false negative, {fn})"),
            ((235, 235, 235), "neither"),
        ],
        title=title,
    )
    canvas = Image.new("RGB", (max(img.width, legend.width), img.height + legend.height), "white")
    canvas.paste(legend, (0, 0))
    canvas.paste(img, (0, legend.height))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
