"""idcmap: invasive ductal carcinoma (IDC) regions on H&E whole-slide images.

``segment_slide(path)`` runs the whole pipeline on one slide; ``load_model()`` loads the bundled
model once for many slides; ``segment_slides(paths, out_dir, client=...)`` runs a batch, in this
process or one Dask task per slide on a cluster. Heavy modules (torch) are imported on first use.

The package follows the pipeline: :mod:`idcmap.io` (slides) → :mod:`idcmap.pipeline` (tissue,
tiles, model, heatmap, aggregate, regions) → :mod:`idcmap.output` (files) → :mod:`idcmap.batch`
(cohorts, Dask) → :mod:`idcmap.cli`; :mod:`idcmap.model` holds the model files and runtime,
:mod:`idcmap.train` training and evaluation, :mod:`idcmap.viewer` the browser viewer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from idcmap._lazy import lazy_exports

if TYPE_CHECKING:
    from idcmap.batch.cluster import segment_slides as segment_slides
    from idcmap.io.open import open_slide as open_slide
    from idcmap.model.runtime import IDCModel as IDCModel
    from idcmap.model.runtime import load_model as load_model
    from idcmap.params import Params as Params
    from idcmap.pipeline.result import SlideResult as SlideResult
    from idcmap.pipeline.segment import segment_slide as segment_slide

from idcmap.version import __version__

_EXPORTS = {
    "segment_slide": "pipeline.segment",
    "SlideResult": "pipeline.result",
    "Params": "params",
    "load_model": "model.runtime",
    "IDCModel": "model.runtime",
    "open_slide": "io.open",
    "segment_slides": "batch.cluster",
}

__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
