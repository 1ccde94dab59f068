"""A slide's front: what the pipeline computes before the model — the tissue mask and the QC
stage's artefact masks — with nothing of torch.

:func:`~idcmap.pipeline.segment.segment_slide` computes it itself unless given one
(``front=``). ``idcmap run`` computes the fronts in a second process, one slide ahead, the first
while its own process imports torch and loads the model (:mod:`idcmap.batch.ahead`): on a
2-core machine the import keeps one core busy for ~2 s and leaves the other idle, and the
tissue and QC stages are the slide's costliest steps before the model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from idcmap.io.open import open_slide
from idcmap.io.slide import Slide
from idcmap.model.modelfile import ModelConfig
from idcmap.params import Params
from idcmap.pipeline.qc import QCMasks, find_artefacts, parse_kinds
from idcmap.pipeline.stain import StainStats, correct_glass
from idcmap.pipeline.tissue import TissueMask, detect_tissue

__all__ = [
    "Front",
    "artefacts_of",
    "compute_front",
    "front_key",
    "stain_reference",
    "tissue_from_tile_pass",
    "tissue_of",
]


@dataclass(frozen=True)
class Front:
    """A slide's tissue mask and artefact masks, as :func:`segment_slide` would compute them.

    Attributes:
        key: what it was computed from (:func:`front_key`); ``segment_slide`` checks it.
        tissue: the tissue stage's mask (before QC) and its thumbnail.
        qc_masks: :func:`~idcmap.pipeline.qc.find_artefacts` of that thumbnail for the
            ``qc`` kinds asked (blur aside: it needs the tile pass); None when QC is off.
        seconds: the stages' own wall times where they ran (``tissue``, ``qc_artefacts``).
    """

    key: str
    tissue: TissueMask
    qc_masks: QCMasks | None
    seconds: dict[str, float] = field(default_factory=dict)


def front_key(path: str | Path, params: Params, config: ModelConfig) -> str:
    """The inputs a front depends on, as one string: the slide, the reading and tissue
    parameters, the QC kinds, and the model's µm/px and stain reference."""
    return json.dumps(
        [
            str(path),
            params.backend,
            params.mpp,
            params.force_rgb,
            params.tissue_mpp,
            sorted(parse_kinds(params.qc)),
            params.stain_norm,
            config.mpp,
            config.stain_norm,
        ],
        sort_keys=True,
        default=str,
    )


def stain_reference(section: Mapping[str, Any]) -> StainStats | None:
    """The reference statistics of a model file's ``stain_norm`` section (None: empty)."""
    if not section:
        return None
    return StainStats.from_dict(str(section["method"]), section["ref"])


def tissue_from_tile_pass(slide: Slide, tissue_mpp: float, model_mpp: float) -> bool:
    """Whether the tissue mask is drawn from the tile pass's own blocks (one pass) rather than
    from a read of its own: when both reads, by the same rule (:meth:`Slide.read_level_for_mpp`),
    decode the same level at the same scale, a separate tissue read would decode the whole level
    a second time. A coarser level, or the same level decoded at a smaller scale (1/8 where the
    tiles take 1/4), costs less than evaluating every glass tile of a one-pass grid."""
    tissue, tiles = slide.read_level_for_mpp(tissue_mpp), slide.read_level_for_mpp(model_mpp)
    return (tissue.level, tissue.scale) == (tiles.level, tiles.scale)


def tissue_of(slide: Slide, params: Params, stain_ref: StainStats | None) -> TissueMask:
    """The tissue stage of ``slide``: drawn on the glass-corrected thumbnail when the model
    corrects the glass (a tinted glass passes the saturation test; the tiles follow it)."""
    recolour = None
    if stain_ref is not None and "glass" in stain_ref.values:
        recolour = partial(correct_glass, reference=stain_ref)
    return detect_tissue(slide, target_mpp=params.tissue_mpp, recolour=recolour)


def artefacts_of(tissue: TissueMask, params: Params, *, unink: bool = True) -> QCMasks:
    """The QC stage's artefact masks of the tissue's thumbnail (the ``qc`` kinds, blur aside)."""
    return find_artefacts(
        tissue.thumbnail,
        tissue.mpp,
        tissue.mask,
        kinds=parse_kinds(params.qc) - {"blur"},
        mpp_y=tissue.mpp_y,
        unink=unink,
    )


def compute_front(path: str | Path, params: Params, config: ModelConfig) -> Front | None:
    """The front of the slide at ``path`` for these ``params`` and a model of this ``config``;
    None when the slide's tissue comes from the tile pass (:func:`tissue_from_tile_pass`: the
    model must run first).

    Raises what :func:`~idcmap.io.open.open_slide` and the stages raise for a bad slide.
    """
    stain_ref = stain_reference(config.stain_norm) if params.stain_norm == "auto" else None
    kinds = parse_kinds(params.qc)
    with open_slide(
        path, backend=params.backend, mpp=params.mpp, allow_non_rgb=params.force_rgb
    ) as slide:
        if tissue_from_tile_pass(slide, params.tissue_mpp, config.mpp) and stain_ref is None:
            return None
        t = time.perf_counter()
        tissue = tissue_of(slide, params, stain_ref)
        seconds = {"tissue": time.perf_counter() - t}
        masks = None
        if kinds:
            t = time.perf_counter()
            masks = artefacts_of(tissue, params)
            seconds["qc_artefacts"] = time.perf_counter() - t
    return Front(front_key(path, params, config), tissue, masks, seconds)
