"""Models: the model file (``modelfile``: JSON config + safetensors, nothing unpickled), the
registered architectures (``archs``), the runtime (``runtime``: device, :class:`IDCModel`,
:func:`load_model`) and the bundled weights (``weights/``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from idcmap._lazy import lazy_exports

if TYPE_CHECKING:
    from idcmap.model.modelfile import ModelConfig as ModelConfig
    from idcmap.model.modelfile import bundled_model_path as bundled_model_path
    from idcmap.model.runtime import IDCModel as IDCModel
    from idcmap.model.runtime import load_model as load_model

_EXPORTS = {
    "IDCModel": "runtime",
    "load_model": "runtime",
    "ModelConfig": "modelfile",
    "bundled_model_path": "modelfile",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
