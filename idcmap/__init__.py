"""idcmap: invasive ductal carcinoma (IDC) regions on H&E whole-slide images.

``segment_slide(path)`` runs the whole pipeline on one slide; ``load_model()`` loads the bundled
model once for many slides; ``segment_slides(paths, out_dir, client=...)`` runs a batch, in this
process or one Dask task per slide on a cluster. Heavy modules (torch) are imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "segment_slide": "idcmap.api",
    "SlideResult": "idcmap.api",
    "Params": "idcmap.api",
    "load_model": "idcmap.model",
    "IDCModel": "idcmap.model",
    "open_slide": "idcmap.slide",
    "segment_slides": "idcmap.distributed",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'idcmap' has no attribute {name!r}")
