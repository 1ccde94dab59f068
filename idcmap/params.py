"""Every knob of one run (:class:`Params`), with its unit and its check.

A light module (no torch): the CLI takes its defaults from here without loading the pipeline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from idcmap.errors import UsageError
from idcmap.io.mpp import USER_MPP
from idcmap.io.readers import BACKENDS, Backend

__all__ = [
    "AGGREGATORS",
    "DECODES",
    "OUTLINES",
    "QC_KINDS",
    "STAIN_NORMS",
    "Aggregator",
    "Decode",
    "Outline",
    "Params",
    "StainNorm",
    "parse_qc_kinds",
]

#: Region outline styles: the threshold contour of the smoothed heatmap, or the cell edges.
Outline = Literal["smooth", "cells"]
OUTLINES: tuple[Outline, ...] = get_args(Outline)

#: Values of :attr:`Params.aggregator`.
Aggregator = Literal["auto", "none"]
AGGREGATORS: tuple[Aggregator, ...] = get_args(Aggregator)
#: Values of :attr:`Params.decode`.
Decode = Literal["auto", "pillow", "torch"]
DECODES: tuple[Decode, ...] = get_args(Decode)
#: Values of :attr:`Params.stain_norm`.
StainNorm = Literal["auto", "none"]
STAIN_NORMS: tuple[StainNorm, ...] = get_args(StainNorm)
#: Artefact kinds of the QC stage (:mod:`idcmap.pipeline.qc`).
QC_KINDS = ("ink", "fold", "blur", "debris", "border")


def parse_qc_kinds(spec: str | Iterable[str] | None) -> frozenset[str]:
    """``"all"``/None → every kind; ``"none"`` → none; ``"ink,fold"`` or an iterable → those."""
    if spec is None or spec == "all":
        return frozenset(QC_KINDS)
    if isinstance(spec, str):
        if not spec.strip():  # an empty --qc "" is a slip, not "none": say so
            raise ValueError(f"no QC kind given; use none, all or some of {QC_KINDS}")
        spec = [] if spec.strip() == "none" else [s.strip() for s in spec.split(",")]
    out = frozenset(spec)
    bad = out - set(QC_KINDS)
    if bad:
        raise ValueError(f"unknown QC kind(s) {sorted(bad)}; use none, all or some of {QC_KINDS}")
    return out


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class Params:
    """Every knob of one run, with its unit. ``None`` means "the model's default"."""

    stride_px: int | None = None  # model px; default = patch size
    threshold: float | None = None  # region threshold of the smoothed heatmap; default: model
    smooth_um: float | None = None  # heatmap smoothing sigma, µm; default = the model's
    # region stage: "auto" = the model's learned aggregator when it has one, else the fixed
    # Gaussian (smooth_um); "none" = the fixed Gaussian. A smooth_um given implies "none".
    aggregator: Aggregator = "auto"
    mpp: float | None = None  # µm per level-0 px, overrides the slide's metadata
    backend: Backend = "auto"
    device: str = "auto"
    batch_size: int = 512
    workers: int = 2  # background reader threads
    # torch threads for the model on CPU during the call (restored after); None leaves torch's
    # process-wide setting alone (the CLI passes the cores left beside the readers)
    torch_threads: int | None = None
    min_tissue: float = 0.2  # tissue fraction a tile needs to be evaluated
    tissue_mpp: float = 16.0  # µm/px of the tissue mask
    min_region_um2: float = 40_000.0  # IDC regions smaller than this are dropped
    min_hole_um2: float = 40_000.0  # holes smaller than this are filled
    simplify_um: float = 2.0  # polygon simplification tolerance
    force_rgb: bool = False  # process non-brightfield images anyway
    outline: Outline = "smooth"  # region outlines: "smooth" (threshold contour) or "cells" (edges)
    # QC stage (idcmap.pipeline.qc): artefact kinds it finds (and removes or corrects): "all"
    # (the default: docs/qc.md#on-by-default), "none" (0.2.0's behaviour) or a
    # comma list of ink, fold, blur, debris, border
    qc: str = "all"
    # JPEG tiles: "pillow" (libjpeg's scaled IDCT in the reader threads), "torch" (batched
    # torchvision decode on the model's device — nvjpeg on CUDA — then a box reduction there;
    # needs torchvision), "auto" = torch when the model runs on CUDA, else pillow
    decode: Decode = "auto"
    # per-slide stain normalisation (idcmap.pipeline.stain): "auto" = the model's own when its
    # file carries one (a model without it runs as before), "none" = the colour as read
    stain_norm: StainNorm = "auto"

    def validate(self) -> None:
        """Check every knob; a bad value raises :class:`UsageError` naming it (``name=value``).

        What needs the model (the stride dividing the patch size) or the machine (a CUDA
        device being there) is checked where they are known.
        """
        if self.stride_px is not None and (
            not isinstance(self.stride_px, int) or self.stride_px <= 0
        ):
            raise UsageError(f"stride_px={self.stride_px} must be a positive integer (model px)")
        if self.threshold is not None and not (0.0 <= self.threshold <= 1.0):
            raise UsageError(f"threshold={self.threshold} must lie in [0, 1] (an IDC probability)")
        lo, hi = USER_MPP
        if self.mpp is not None and not (math.isfinite(self.mpp) and lo <= self.mpp <= hi):
            raise UsageError(
                f"mpp={self.mpp} must be µm per pixel between {lo:g} and {hi:g} (0.25 for 40x)"
            )
        if self.backend not in BACKENDS:
            raise UsageError(f"backend={self.backend} is unknown; use one of {', '.join(BACKENDS)}")
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise UsageError(f"device={self.device} is unknown; use auto, cpu, cuda, cuda:N or mps")
        if self.aggregator not in AGGREGATORS:
            raise UsageError(
                f"aggregator={self.aggregator!r} is unknown; use {' or '.join(AGGREGATORS)}"
            )
        if self.batch_size < 1:
            raise UsageError(f"batch_size={self.batch_size} must be ≥ 1")
        if self.workers < 0:
            raise UsageError(f"workers={self.workers} must be ≥ 0")
        if self.torch_threads is not None and (
            not isinstance(self.torch_threads, int) or self.torch_threads < 1
        ):
            raise UsageError(f"torch_threads={self.torch_threads} must be a positive integer")
        for name in ("min_region_um2", "min_hole_um2", "simplify_um", "tissue_mpp", "smooth_um"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise UsageError(f"{name}={v} must be a number ≥ 0")
        if self.tissue_mpp <= 0:
            raise UsageError(f"tissue_mpp={self.tissue_mpp} must be µm per pixel > 0")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise UsageError(f"min_tissue={self.min_tissue} must lie in [0, 1]")
        try:
            parse_qc_kinds(self.qc)
        except ValueError as e:
            raise UsageError(f"qc={self.qc!r}: {e}") from None
        if self.decode not in DECODES:
            raise UsageError(f"decode={self.decode!r} is unknown; use {', '.join(DECODES)}")
        if self.stain_norm not in STAIN_NORMS:
            raise UsageError(
                f"stain_norm={self.stain_norm!r} is unknown; use {' or '.join(STAIN_NORMS)}"
            )
        if self.outline not in OUTLINES:
            raise UsageError(f"outline={self.outline!r} must be one of {', '.join(OUTLINES)}")
