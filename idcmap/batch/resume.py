"""What a rerun keeps: a slide whose output folder is finished is skipped only when its outputs
are what this run would write. One made with another model or other output-changing parameters
is reported (``overwrite=True`` redoes it), never kept silently."""

from __future__ import annotations

from pathlib import Path

from idcmap.model.modelfile import ModelConfig
from idcmap.output.cohort import summary_of
from idcmap.params import Params
from idcmap.pipeline.summary import SlideSummary

__all__ = ["RESULT_PARAMS", "finished_with_other_settings", "other_settings"]

#: the :class:`~idcmap.params.Params` that change a slide's outputs; the others say how to
#: compute them (device, workers, batch size, backend, decode)
RESULT_PARAMS = (
    "mpp",
    "min_tissue",
    "tissue_mpp",
    "min_region_um2",
    "min_hole_um2",
    "simplify_um",
    "force_rgb",
    "outline",
    "qc",
    "stain_norm",
)


def other_settings(summary: SlideSummary, config: ModelConfig, params: Params) -> str | None:
    """How a finished slide's settings differ from this run's (``"qc=none, not all"``), or
    None when its outputs are what this run would write: the model (weights and version) first,
    then each parameter of :data:`RESULT_PARAMS`, the stride, and the threshold, σ and
    aggregator where this run sets them (left unset, they are the model's, compared with it)."""
    m = summary.model
    if (m.sha256, m.version) != (config.weights_sha256, config.version):
        return f"model {m.name} {m.version}, not {config.name} {config.version}"
    rec = summary.parameters
    want = {f: getattr(params, f) for f in RESULT_PARAMS if f in rec}
    want["stride_px"] = params.stride_px or config.patch_px
    for f in ("threshold", "smooth_um"):
        if getattr(params, f) is not None:
            want[f] = getattr(params, f)
    if params.aggregator == "none":
        want["aggregator"] = "none"
    for k, v in want.items():
        if rec.get(k) != v:
            return f"{k}={rec.get(k)}, not {v}"
    return None


def finished_with_other_settings(
    folder: Path, config: ModelConfig | None, params: Params | None
) -> str | None:
    """The one-line reason a finished output ``folder`` is not this run's (None: it is, or
    there is no model config and parameters to compare with, or no summary to read)."""
    if config is None or params is None or (summary := summary_of(folder)) is None:
        return None
    why = other_settings(summary, config, params)
    if why is None:
        return None
    return (
        f"done with other settings ({why}); overwrite=True redoes it, or use another output folder"
    )
