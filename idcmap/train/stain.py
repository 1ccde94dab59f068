"""Fitting a model's stain normalisation (:mod:`idcmap.pipeline.stain`) on its training slides.

Each slide is read as the pipeline's tissue pass reads it (:func:`detect_tissue` at
``tissue_mpp``), its statistics are measured as the pipeline will measure a slide, and their
mean becomes the reference in the model file's ``stain_norm`` section. The network weights and
everything else in the file are kept: the result is the same model that maps every slide's
colour onto its training slides' before the network.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from idcmap.errors import UsageError
from idcmap.io.open import open_slide
from idcmap.model.modelfile import ModelConfig, find_config, read_config, save_config
from idcmap.model.modelfile import weights_path as model_weights
from idcmap.pipeline.stain import METHODS, StainStats, fit_reference
from idcmap.pipeline.tissue import detect_tissue, tissue_mask_from_rgb

__all__ = ["fit_slides_reference", "write_stain_norm"]


def fit_slides_reference(
    slides: Sequence[str | Path], method: str, tissue_mpp: float = 16.0
) -> StainStats:
    """The ``method`` reference of ``slides`` (their tissue pass at ``tissue_mpp`` µm/px)."""
    if method not in METHODS:
        raise UsageError(f"method={method!r} is unknown; use one of {', '.join(METHODS)}")
    if not slides:
        raise UsageError("fitting a stain reference needs slides")
    thumbs = []
    mpps = []
    for s in slides:
        with open_slide(s) as slide:
            t = detect_tissue(slide, target_mpp=tissue_mpp)
        thumbs.append((t.thumbnail, t.mask))
        mpps.append((t.mpp, t.mpp_y))
    mpp_x, mpp_y = mpps[0]

    def redraw(rgb: Any) -> Any:  # the thumbnails are all at ~tissue_mpp
        return tissue_mask_from_rgb(rgb, mpp_x, mpp_y)

    return fit_reference(thumbs, method, redraw)


def write_stain_norm(
    slides: Sequence[str | Path],
    out: str | Path,
    *,
    model: str | Path | None = None,
    method: str = "glass",
    tissue_mpp: float = 16.0,
    name: str | None = None,
    version: str | None = None,
    command: str | None = None,
) -> ModelConfig:
    """Write ``model`` (a model file or bundled name; default idc-v4, the
    default model's network) to ``out`` with a
    ``stain_norm`` section fitted on ``slides``. Returns the config as written."""
    t0 = time.perf_counter()
    src = find_config(model if model is not None else "idc-v4")
    cfg = read_config(src)
    ref = fit_slides_reference(slides, method, tissue_mpp)
    section = {
        "method": method,
        "ref": ref.to_dict(),
        "tissue_mpp": tissue_mpp,
        "fitted_on": sorted(Path(s).stem for s in slides),
        "seconds": round(time.perf_counter() - t0, 1),
        "command": command,
    }
    new = cfg.replace(name=name or cfg.name, version=version or cfg.version, stain_norm=section)
    return save_config(new, out, model_weights(src, cfg))
